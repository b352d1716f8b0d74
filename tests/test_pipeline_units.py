"""Unit tests of the training/testing pipeline: loss, schedule, tiling, data, RNG state."""
from __future__ import annotations

import logging
import math

import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from data.dataset import EpochBatchSampler, PairedImageDataset, pair_by_name
from data.io import DataError, read_image, to_tensor, to_uint8, write_png
from models import build_model
from options.train_options import parse_train_args
from utils.losses import SSIMLoss, ssim_differentiable, ssim_map
from utils.cuda_graphs import GraphedForward
from utils.inference import blend_weight, restore, restore_stream, tile_starts
from utils.training.firing import firing_rate
from utils.training.rng import get_rng_state, set_rng_state
from utils.training.schedule import build_scheduler, lr_at_epoch


# ----------------------------------------------------------------------------- loss
def test_ssim_of_identical_images_is_one():
    x = torch.rand(2, 3, 20, 24)
    assert ssim_differentiable(x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert SSIMLoss()(x, x).item() == pytest.approx(0.0, abs=1e-6)


def test_ssim_of_constant_images_matches_closed_form_inside():
    a, b = 0.3, 0.7
    x = torch.full((1, 3, 24, 24), a, dtype=torch.float64)  # float32 E[x^2] - mu^2 cancels noisily
    y = torch.full_like(x, b)
    inner = ssim_map(x, y)[..., 5:-5, 5:-5]  # zero padding only matters within 5 px of the border
    expected = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)
    assert torch.allclose(inner, torch.full_like(inner, expected), atol=1e-5)
    assert ssim_differentiable(x, y).item() != pytest.approx(expected, abs=1e-3)  # the border is part of the mean


def test_ssim_matches_independent_numpy_implementation():
    rng = np.random.default_rng(3)
    x, y = rng.random((3, 17, 21)), rng.random((3, 17, 21))
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    win = np.outer(g / g.sum(), g / g.sum())
    maps = []
    for c in range(3):
        def blur(img):
            return ndi.correlate(img, win, mode="constant", cval=0.0)

        mx, my = blur(x[c]), blur(y[c])
        vx, vy, cov = blur(x[c] ** 2) - mx**2, blur(y[c] ** 2) - my**2, blur(x[c] * y[c]) - mx * my
        maps.append((2 * mx * my + 1e-4) * (2 * cov + 9e-4) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4)))
    got = ssim_differentiable(torch.from_numpy(x)[None].float(), torch.from_numpy(y)[None].float()).item()
    assert got == pytest.approx(float(np.mean(maps)), abs=1e-5)


def test_ssim_loss_is_not_clamped_and_has_gradients():
    x = (torch.rand(1, 3, 16, 16) * 1.4 - 0.2).requires_grad_()
    loss = SSIMLoss()(x, torch.rand(1, 3, 16, 16))
    loss.backward()
    assert 0 < loss.item() < 2 and x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- schedule
def test_losses_by_name():
    from utils.losses import build_loss

    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert torch.equal(build_loss("mse")(x, y), torch.nn.functional.mse_loss(x, y))
    assert torch.equal(build_loss("l1")(x, y), torch.nn.functional.l1_loss(x, y))
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("l3")


def test_released_schedule_values():
    lrs = [lr_at_epoch(e, 1e-3, 1e-7, 3, 1000) for e in range(1, 1001)]
    assert lrs[:4] == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3], rel=1e-12)
    t, period = 4, 997  # epoch 8: fifth cosine epoch
    assert lrs[7] == pytest.approx(1e-7 + (1e-3 - 1e-7) * (1 + math.cos(math.pi * t / period)) / 2, rel=1e-12)
    assert lrs[-1] == pytest.approx(1e-7 + (1e-3 - 1e-7) * (1 + math.cos(math.pi * 996 / 997)) / 2, rel=1e-12)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_scheduler_steps_once_per_epoch():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = build_scheduler(opt, 1e-3, 1e-7, 3, 10)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at_epoch(e, 1e-3, 1e-7, 3, 10) for e in range(1, 11)], rel=1e-12)
    assert seen[0] == 0.0 and seen[3] == pytest.approx(1e-3)


# ----------------------------------------------------------------------------- tiling
class _LocalNet(nn.Module):
    """Cheap stand-in with a 5x5 receptive field: tile borders change its output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 5, padding=2)
        torch.nn.init.normal_(self.conv.weight, std=0.2)

    def forward(self, x):
        return torch.tanh(self.conv(x)) + x


def _released_tiling(net, img, crop=80, overlap=8):
    """The released loop for sides > crop: one tile at a time, centre-weighted blend."""
    _, _, H, W = img.shape
    stride = crop - overlap
    ys = list(range(0, H - crop + 1, stride)) + ([H - crop] if (H - crop) % stride else [])
    xs = list(range(0, W - crop + 1, stride)) + ([W - crop] if (W - crop) % stride else [])
    c = torch.arange(crop, dtype=torch.float64)
    w = (1 / torch.sqrt((c[:, None] - crop / 2) ** 2 + (c[None] - crop / 2) ** 2 + 1e-3)).float()
    out, wsum = torch.zeros_like(img), torch.zeros_like(img[:, :1])
    with torch.no_grad():
        for y in ys:
            for x in xs:
                out[..., y:y + crop, x:x + crop] += net(img[..., y:y + crop, x:x + crop]) * w
                wsum[..., y:y + crop, x:x + crop] += w
    return out / wsum


def test_tile_starts_align_last_tile_to_border():
    assert tile_starts(200, 80, 72) == [0, 72, 120]
    assert tile_starts(152, 80, 72) == [0, 72]
    assert tile_starts(80, 80, 72) == [0] and tile_starts(81, 80, 72) == [0, 1] and tile_starts(5, 5, 72) == [0]


def test_blend_weight_is_centre_heavy():
    w = blend_weight(80, 80)
    assert w[40, 40] == pytest.approx(1 / math.sqrt(1e-3), rel=1e-5)
    assert w[0, 0] == pytest.approx(1 / math.sqrt(2 * 40**2 + 1e-3), rel=1e-5)


@pytest.mark.parametrize("tile_batch", [1, 3, 64])
def test_batched_tiling_equals_released_loop(tile_batch):
    net = _LocalNet()
    img = torch.rand(2, 3, 100, 170)
    expected = _released_tiling(net, img)
    assert torch.allclose(restore(net, img, 80, 8, tile_batch), expected, atol=1e-5)
    whole = restore(net, img, 0)
    assert not torch.allclose(whole, expected, atol=1e-4)  # tiling really differs from whole-image


@pytest.mark.parametrize("size", [(1, 1), (37, 53), (80, 80), (81, 81), (80, 200), (3, 90)])
def test_tiling_any_size(size):
    img = torch.rand(1, 3, *size)
    out = restore(_LocalNet(), img, 80, 8, 16)
    assert out.shape == img.shape and torch.isfinite(out).all()


def test_single_tile_equals_whole_image():
    net = _LocalNet()  # a single tile per side: the blend weights cancel
    img = torch.rand(1, 3, 37, 53)
    assert torch.allclose(restore(net, img, 80, 8, 16), restore(net, img, 0), atol=1e-6)


@pytest.mark.exactness
def test_tiling_real_network_batched_equals_one_at_a_time(tiny_config):
    # float64: another batch size may pick other convolution kernels, and in float32 their
    # rounding can flip a spike on some CPU; in float64 it cannot (SPEC 5b)
    net = build_model("vlifnet", **tiny_config).eval().double()
    img = torch.rand(1, 3, 20, 30, dtype=torch.float64)
    one = restore(net, img, crop_size=16, overlap=4, tile_batch=1)  # 2 x 3 tiles
    batched = restore(net, img, crop_size=16, overlap=4, tile_batch=3)
    assert one.shape == img.shape and one.dtype == torch.float64
    assert torch.allclose(one, batched, rtol=0, atol=1e-9)


def test_streamed_tiles_share_calls_across_images_and_equal_one_at_a_time():
    calls = []

    class Counting(_LocalNet):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    net = Counting()
    sizes = [(100, 170), (100, 170), (37, 53), (100, 170), (1, 1)]  # 6, 6, 1, 6, 1 tiles
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for hw in sizes]
    # the released loop crashes below 80 pixels; a single tile's blend weights cancel
    with torch.no_grad():
        expected = [to_uint8((_released_tiling(net, x) if min(hw) >= 80 else net(x))[0])
                    for x, hw in ((to_tensor(img)[None], img.shape[:2]) for img in images)]
    calls.clear()
    streamed = list(restore_stream(net, iter(images), 80, 8, tile_batch=4))
    assert len(streamed) == len(images)
    for (inp, out), ref, img in zip(streamed, expected, images):
        assert inp is img and out.shape == img.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - ref).max() <= 1  # float rounding can cross a .5 now and then
        assert (out == ref).mean() > 0.999
    # 12 tiles of the first two images in 3 calls of 4; a new tile shape starts a new call
    assert calls == [4, 4, 4, 1, 4, 2, 1]


def test_stream_of_whole_images_equals_restore():
    net = _LocalNet()
    images = [np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
              for i, (h, w) in enumerate([(37, 53), (8, 5)])]
    for img, (inp, out) in zip(images, restore_stream(net, images, crop_size=0, device="cpu")):
        assert inp is img
        assert (out == to_uint8(restore(net, to_tensor(img)[None], 0)[0])).all()


def test_tiling_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        restore(_LocalNet(), torch.rand(1, 3, 90, 90), 80, 80)


# ----------------------------------------------------------------------------- data
def test_pairs_by_name_not_position(tmp_path, pipeline_write_pairs):
    root = pipeline_write_pairs(tmp_path / "d", names=("b", "a"))
    (root / "target" / "a.png").rename(root / "target" / "a_.png")  # sorted position would still "pair"
    with pytest.raises(DataError, match=r"no target \(first: a\.png\).*no input \(first: a_\.png\)"):
        pair_by_name(root / "input", root / "target")


def test_pairs_jpg_with_png_by_stem(tmp_path, pipeline_write_pairs):
    root = pipeline_write_pairs(tmp_path / "d", names=("x",))
    img = cv2.imread(str(root / "input" / "x.png"))
    cv2.imwrite(str(root / "input" / "x.jpg"), img)
    (root / "input" / "x.png").unlink()
    assert [(i.name, t.name) for i, t in pair_by_name(root / "input", root / "target")] == [("x.jpg", "x.png")]


def test_size_mismatch_too_small_and_corrupt_are_named(tmp_path, pipeline_write_pairs):
    root = pipeline_write_pairs(tmp_path / "d", names=("a", "b"))
    too_small = r"a\.png is 48x32, smaller than the 64x64 crop.*--patch_size_train to at most 32"
    with pytest.raises(DataError, match=too_small):
        PairedImageDataset(root, patch_size=64)
    cv2.imwrite(str(root / "target" / "b.png"), np.zeros((30, 48, 3), np.uint8))
    with pytest.raises(DataError, match=r"size mismatch.*b\.png is 48x32.*b\.png is 48x30"):
        PairedImageDataset(root, patch_size=16)
    (root / "target" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"cannot read image .*target/b\.png.*corrupt"):
        PairedImageDataset(root, patch_size=16)


def test_grey_rgba_16bit_are_converted_and_reported_once(tmp_path, caplog):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    cv2.imwrite(str(tmp_path / "g2.png"), grey)
    bgra = np.dstack([np.full((3, 4, 3), (10, 20, 30), np.uint8), np.zeros((3, 4), np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    cv2.imwrite(str(tmp_path / "w.png"), (grey.astype(np.uint16) * 257)[..., None].repeat(3, 2))
    noted: set[str] = set()
    with caplog.at_level(logging.WARNING):
        g, g2 = read_image(tmp_path / "g.png", noted), read_image(tmp_path / "g2.png", noted)
        a, w = read_image(tmp_path / "a.png", noted), read_image(tmp_path / "w.png", noted)
    assert g.shape == (3, 4, 3) and (g[..., 0] == grey).all() and (g == g2).all()
    assert (a[0, 0] == (30, 20, 10)).all()  # BGRA on disk -> RGB
    assert w.dtype == np.uint8 and (w[..., 0] == grey).all()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is grey:" in m for m in messages) == 1 and any("is RGBA:" in m for m in messages)
    assert any("is 16-bit:" in m for m in messages)


def test_png_round_trip_is_lossless(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    write_png(tmp_path / "o.png", img)
    assert (read_image(tmp_path / "o.png") == img).all()
    assert (to_uint8(to_tensor(img)) == img).all()
    assert not list(tmp_path.glob(".*.tmp"))


def test_crops_reproducible_across_workers_and_epochs(tmp_path, pipeline_write_pairs):
    root = pipeline_write_pairs(tmp_path / "d", names=("a", "b", "c"))
    ds = PairedImageDataset(root, patch_size=16, seed=5)

    def epoch_batches(workers, epoch, start=0):
        sampler = EpochBatchSampler(len(ds), 2, seed=5)
        sampler.set_epoch(epoch, start)
        return [b["input"] for b in DataLoader(ds, batch_sampler=sampler, num_workers=workers)]

    e1, e1_workers, e2 = epoch_batches(0, 1), epoch_batches(2, 1), epoch_batches(0, 2)
    assert len(e1) == 2 and e1[0].shape == (2, 3, 16, 16) and e1[1].shape == (1, 3, 16, 16)
    assert all(torch.equal(a, b) for a, b in zip(e1, e1_workers))
    assert not torch.equal(torch.cat(e1), torch.cat(e2))  # new crops / order each epoch
    assert torch.equal(epoch_batches(0, 2, start=1)[0], e2[1])  # mid-epoch resume skips exactly


def test_flipped_crops_keep_pairs_aligned(tmp_path, pipeline_write_pairs):
    root = pipeline_write_pairs(tmp_path / "d", names=("a",))
    plain, flipped = PairedImageDataset(root, 16, seed=1), PairedImageDataset(root, 16, seed=1, flips=True)
    for epoch in range(1, 6):
        p, f = plain[(epoch, 0)], flipped[(epoch, 0)]
        candidates = [p["input"], p["input"].flip(-1), p["input"].flip(-2), p["input"].flip(-1, -2)]
        k = next(i for i, c in enumerate(candidates) if torch.equal(c, f["input"]))
        expected_target = [p["target"], p["target"].flip(-1), p["target"].flip(-2), p["target"].flip(-1, -2)][k]
        assert torch.equal(f["target"], expected_target)


# ----------------------------------------------------------------------------- options and state
def test_presets_and_explicit_flags():
    args = parse_train_args(["--preset", "rain200l"])
    assert args.use_refinement is True and str(args.train_dir) == "datasets/Rain200L/train"
    assert parse_train_args(["--preset", "rain200l", "--no-use_refinement"]).use_refinement is False
    args = parse_train_args(["--train_dir", "x", "--lr", "2e-4", "--batch_size", "3"])
    assert args.lr == 2e-4 and args.batch_size == 3 and args.num_epochs == 1000 and args.warmup_epochs == 3
    assert args.patch_size_train == 64 and args.min_lr == 1e-7 and args.seed == 1234 and not args.flips
    demo = parse_train_args(["--preset", "demo", "--batch_size", "2"])
    assert demo.dim == 16 and demo.batch_size == 2 and demo.loss == "mse"
    saved = dict(vars(parse_train_args(["--preset", "demo"])), num_epochs=7, max_steps=3, train_dir="t")
    resumed = parse_train_args(["--resume", "r.pth", "--lr", "5e-4"], saved=saved)
    assert resumed.num_epochs == 7 and resumed.lr == 5e-4 and resumed.max_steps is None and resumed.dim == 16


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    import random

    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert (np.random.rand(3) == expected[1]).all() and random.random() == expected[2]


def test_firing_rate_counts_lif_outputs(tiny_config):
    net = build_model("vlifnet", **tiny_config).eval()
    with torch.no_grad(), firing_rate(net) as rate:
        net(torch.rand(1, 3, 16, 16))
    assert rate["neurons"] > 10 and 0.0 < rate["rate"] < 1.0
    assert not any(m._forward_hooks for m in net.modules())


def test_graphed_forward_runs_the_network_itself_off_cuda():
    """On CPU input (and with gradients on) nothing is recorded: the network runs as it is."""
    calls = []

    def net(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return x * 2

    forward = GraphedForward(net)
    x = torch.rand(2, 3, 8, 8)
    expected = restore(net, x, 4, 1, tile_batch=3)
    eager_calls = len(calls)
    assert torch.equal(restore(forward, x, 4, 1, tile_batch=3), expected)
    assert len(calls) == 2 * eager_calls  # every tile batch went through the network itself
    assert torch.equal(forward(x.requires_grad_()), x * 2)
    assert forward.graphs == {} and not forward.failed
