"""CUDA graphs for inference: a network's forward replayed as one graph per input shape.

A VLIFNet forward is about 2,000 operators (docs/speed.md), each a kernel launch of a few
microseconds on a GPU, whatever the tile batch. :class:`GraphedForward` records them once per
input shape and dtype as a CUDA graph (after two eager warm-up calls, which also build the
Triton kernels) and then replays the graph: the same kernels on the same addresses, so the same
results as eager calls, without the per-launch cost. ``test.py --cuda_graphs`` turns it on.

What it needs from the network, which VLIFNet and ESDNet meet in inference: no synchronisation
with the host inside the forward, and parameters that do not move between calls. Forward hooks
do not run on a replay (so ``--energy`` cannot be combined with it). Under autocast the
graphs are recorded with autocast's cast cache off, since a cached cast would be freed when the
caller's autocast block ends. Where recording fails, the failure is logged once and the network
runs eagerly from then on.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

WARMUP_CALLS = 2
MAX_GRAPHS = 4  # input shapes recorded; calls of further shapes (whole images of many sizes) run eagerly


class GraphedForward:
    """``net(x)`` for CUDA ``x`` in inference, replayed from a CUDA graph recorded for ``x``'s shape,
    dtype and autocast state (for the first :data:`MAX_GRAPHS` of them); any other call (CPU input,
    gradients on, recording failed) runs ``net`` itself. Returns a fresh tensor each call, as
    ``net`` does."""

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor]):
        self.net = net
        self.graphs: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.cuda.CUDAGraph]] = {}
        self.pool = None  # one memory pool for every graph: they never run at the same time
        self.failed = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda" or self.failed or torch.is_grad_enabled():
            return self.net(x)
        amp = torch.is_autocast_enabled("cuda")
        key = (tuple(x.shape), x.dtype, x.device, amp, torch.get_autocast_dtype("cuda") if amp else None)
        if key not in self.graphs:
            if len(self.graphs) >= MAX_GRAPHS:
                return self.net(x)
            try:
                self.graphs[key] = self._record(x, amp)
            except Exception as exc:  # noqa: BLE001 - any failure to record: run eagerly
                self.failed = True
                log.warning("CUDA graph recording failed (%s); running the network eagerly instead", exc)
                return self.net(x)
        static_in, static_out, graph = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _record(self, x: torch.Tensor, amp: bool) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.CUDAGraph]:
        static_in = x.clone()
        cast = (torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False) if amp
                else torch.autocast("cuda", enabled=False))
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side), cast:
            for _ in range(WARMUP_CALLS):
                self.net(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), cast:
            static_out = self.net(static_in)
        log.info("CUDA graph recorded for input %s %s", list(x.shape), str(x.dtype).replace("torch.", ""))
        return static_in, static_out, graph
