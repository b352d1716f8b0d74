"""Multi-process pieces on CPU with gloo: synchronised tdBN."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from spikingjelly.activation_based import layer

from utils.training.distributed import SyncThresholdDependentBatchNorm2d, convert_sync_tdbn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_bn_worker(rank: int, port: int, x: torch.Tensor, w: torch.Tensor, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        net = convert_sync_tdbn(torch.nn.Sequential(layer.ThresholdDependentBatchNorm2d(alpha=1.0, v_th=0.5, num_features=3)))
        xs = x[:, rank::2].clone().requires_grad_(True)  # [T, B/2, C, H, W]: this rank's half
        y = net(xs)
        (y * w[:, rank::2]).sum().backward()
        results[rank] = (y.detach(), xs.grad, net[0].weight.grad.clone(), net[0].running_var.clone())
    finally:
        dist.destroy_process_group()


def test_sync_tdbn_over_two_processes_equals_one_big_batch():
    x, w = torch.randn(4, 6, 3, 5, 5), torch.randn(4, 6, 3, 5, 5)
    results = mp.Manager().dict()
    mp.spawn(_sync_bn_worker, args=(free_port(), x, w, results), nprocs=2)

    bn = layer.ThresholdDependentBatchNorm2d(alpha=1.0, v_th=0.5, num_features=3)
    xr = x.clone().requires_grad_(True)
    y = bn(xr)
    (y * w).sum().backward()
    for rank in range(2):
        out, grad, _, running_var = results[rank]
        assert torch.allclose(out, y[:, rank::2].detach(), atol=1e-5)
        assert torch.allclose(grad, xr.grad[:, rank::2], atol=1e-5)
        assert torch.allclose(running_var, bn.running_var, atol=1e-5)
    assert torch.allclose(results[0][2] + results[1][2], bn.weight.grad, rtol=1e-4)


def test_conversion_covers_tdbn_and_keeps_state_dict(tiny_config):
    from models import build_model

    net = build_model("vlifnet", **tiny_config)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    n_bn = sum(isinstance(m, layer.ThresholdDependentBatchNorm2d) for m in net.modules())
    convert_sync_tdbn(net)
    assert sum(isinstance(m, SyncThresholdDependentBatchNorm2d) for m in net.modules()) == n_bn > 0
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    # in one process the synchronised layer is plain tdBN
    x = torch.rand(1, 3, 16, 16)
    ref = build_model("vlifnet", **tiny_config)
    ref.load_state_dict(before)
    assert torch.equal(net.train()(x), ref.train()(x))
