"""Multi-process training helpers for ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N train.py ...`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
:func:`setup` reads them, picks NCCL on CUDA and gloo on CPU, and pins each process to its
GPU. A plain ``python train.py`` is a world of one and needs none of this.

Batch-norm synchronisation: tdBN is a ``BatchNorm2d`` subclass that flattens ``[T, B, ...]``
to ``[T*B, ...]`` before normalising. ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``
would replace it with a SyncBatchNorm that does *not* flatten, which treats the batch axis as
channels, and PyTorch's SyncBatchNorm runs on GPUs only. :class:`SyncThresholdDependentBatchNorm2d`
keeps tdBN's flattening and state-dict keys and all-reduces the per-channel sums itself
(differentiably, in float32 also under mixed precision), on any device and backend.

Agreement between processes: every decision that changes the control flow (skip a step with a
non-finite loss, stop on a signal) is taken from all-reduced values (:func:`sync_step`,
:func:`any_process`), so the processes never disagree and wait for each other forever.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import torch.nn as nn
from spikingjelly.activation_based import layer

from utils.training.guards import RunError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str | None = None) -> DistInfo:
    """Initialise the default process group from torchrun's environment (no-op for one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device_type or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_worker(code: int) -> None:
    """End a ``torchrun`` worker with ``code`` at once, without Python's interpreter shutdown;
    a plain single-process run returns and exits as usual.

    Why: DistributedDataParallel keeps a reference to its process group that Python's garbage
    collector cannot see (measured with torch 2.13: the gloo group's worker threads outlive
    ``destroy_process_group`` and the wrapper's deletion), so those threads still run while the
    interpreter shuts down. A worker thread that drops the last reference to a tensor Python
    created (an all-reduced stop flag) must take the GIL; a finalising interpreter answers by
    ending the thread, the unwinding meets a ``noexcept`` frame and the finished run aborts with
    "terminate called without an active exception" (SIGABRT). Seen once in about 50 two-process
    runs on a loaded 2-core machine; the core dump's stack: ``ProcessGroupGloo::runLoop`` ->
    ``~AsyncAllreduceWork`` -> ``TensorImpl::decref_pyobject`` -> ``take_gil`` -> ``pthread_exit``
    -> ``std::terminate``. Every output is written and closed before this is called (checkpoints
    atomically, the logs here), so skipping the shutdown loses nothing.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    _exit_now(code)


def _exit_now(code: int) -> NoReturn:
    logging.shutdown()  # flush and close train.log and the console handler
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sync_step(loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
    """Mean of the scalar ``loss`` over processes, and whether any process asks to stop.

    One all-reduce per step; a NaN/inf loss on any process makes the mean non-finite on all.
    """
    if not _active():
        return float(loss.detach()), stop
    both = torch.stack([loss.detach().float().reshape(()), torch.tensor(float(stop), device=loss.device)])
    dist.all_reduce(both)
    return float(both[0]) / dist.get_world_size(), bool(both[1] > 0)


def any_process(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every process if ``flag`` is True on any of them."""
    if not _active():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value)
    return bool(value[0] > 0)


def max_over_processes(value: int, device: torch.device | str = "cpu") -> int:
    """The largest ``value`` over processes (e.g. the signal number that stopped any of them)."""
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0])


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` (any picklable value) on every process."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over processes (returns it unchanged for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def parameter_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in state-dict order (equal digests: identical weights)."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().to("cpu", copy=True).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def replica_digests(module: nn.Module) -> list[str]:
    """:func:`parameter_digest` of every process, by rank (one entry for a single process).

    DistributedDataParallel keeps the replicas identical by construction; this checks it, so a
    process that drifted (a skipped all-reduce, a non-deterministic kernel, a bad GPU) is caught
    before its weights are trusted.
    """
    digest = parameter_digest(module)
    if not _active():
        return [digest]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, digest)
    return out


def check_replicas(module: nn.Module, step: int) -> None:
    """Every process holds the same weights (DDP's promise, checked at every save); RunError if not."""
    digests = replica_digests(module)
    if len(set(digests)) != 1:
        differ = [rank for rank, d in enumerate(digests) if d != digests[0]]
        raise RunError(f"step {step}: the weights of process(es) {differ} differ from process 0's; the replicas "
                       "drifted apart (a failed all-reduce or a faulty device): resume from the last checkpoint")
    log.info("step %d: %d processes hold identical weights (sha256 %s)", step, len(digests), digests[0][:16])


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncThresholdDependentBatchNorm2d(layer.ThresholdDependentBatchNorm2d):
    """tdBN whose training statistics are computed over all processes' ``T*B`` samples."""

    def super_forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().super_forward(x)
        C = x.shape[1]
        xf = x.float()  # statistics in float32 also under autocast: E[x^2] - E[x]^2 cancels
        count = torch.full((1,), x.numel() / C, device=x.device, dtype=xf.dtype)
        local = torch.cat([xf.sum(dim=(0, 2, 3)), xf.square().sum(dim=(0, 2, 3)), count])
        total = _AllReduceSum.apply(local)
        n = total[-1]
        mean = total[:C] / n
        var = (total[C:2 * C] / n - mean.square()).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)
        # written out: F.batch_norm treats given statistics as constants, but gradients must
        # flow through the global mean and variance as they do in ordinary training-mode BN
        scale = self.weight * torch.rsqrt(var + self.eps)
        out = (xf - mean[None, :, None, None]) * scale[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(x.dtype)


def unsynced_batchnorms(module: nn.Module) -> list[str]:
    """Names of the batch-norm layers in ``module`` that do not synchronise over processes."""
    return [name for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not isinstance(m, (SyncThresholdDependentBatchNorm2d, nn.SyncBatchNorm))]


def convert_sync_tdbn(module: nn.Module) -> nn.Module:
    """Replace every tdBN in ``module`` by :class:`SyncThresholdDependentBatchNorm2d` (in place).

    Parameters and buffers are shared with the replaced layers, so state-dict keys and values
    are unchanged. Returns ``module``.
    """
    for name, child in module.named_children():
        if isinstance(child, layer.ThresholdDependentBatchNorm2d) and not isinstance(
            child, SyncThresholdDependentBatchNorm2d
        ):
            sync = SyncThresholdDependentBatchNorm2d(
                alpha=child.alpha, v_th=child.v_th, num_features=child.num_features,
                eps=child.eps, momentum=child.momentum,
            )
            sync.weight, sync.bias = child.weight, child.bias
            sync.running_mean, sync.running_var = child.running_mean, child.running_var
            sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_tdbn(child)
    return module


def sync_batchnorm(module: nn.Module, world_size: int) -> None:
    """``--sync_bn``: every tdBN of ``module`` computes its statistics over the batches of all
    processes (in place); RunError if a batch norm was left unconverted."""
    convert_sync_tdbn(module)
    left = unsynced_batchnorms(module)
    if left:
        raise RunError(f"--sync_bn: {len(left)} batch-norm layers were not converted (first: {left[0]})")
    n = sum(isinstance(m, SyncThresholdDependentBatchNorm2d) for m in module.modules())
    log.info("--sync_bn: %d tdBN layers synchronised over %d processes", n, world_size)
