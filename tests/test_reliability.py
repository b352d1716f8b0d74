"""Crash safety, resuming, the non-finite loss guard, mixed precision and bad inputs (issue #7).

Every row of the table in docs/reliability.md points at a test here (or in test_ddp.py).
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from cli_helpers import TINY_NET_FLAGS, load_script
from data.dataset import EpochBatchSampler, PairedImageDataset
from data.io import DataError, check_images, check_output_dir, read_image
from models import build_model
from utils.checkpoint import atomic_save, make_checkpoint, read_checkpoint
from utils.training.device import setup_amp
from utils.training.guards import NonFiniteGuard, NonFiniteLossError, RunError, check_finite_weights
from utils.training.signals import GracefulStop
from utils.training.resume import find_resume_checkpoint, remove_stale_temp_files

ROOT = Path(__file__).resolve().parents[1]


train_cli, test_cli = load_script("train"), load_script("test")
NET_FLAGS = TINY_NET_FLAGS
RUN_FLAGS = ["--patch_size_train", "16", "--num_workers", "0", "--no-progress", "--no-tensorboard", "--seed", "3",
             "--warmup_epochs", "0", "--lr", "5e-3", "--loss", "l1"]


def _losses(run_dir: Path) -> list[list[str]]:
    with open(run_dir / "train_steps.csv", newline="") as fh:
        return list(csv.reader(fh))[1:]


# ----------------------------------------------------------------------------- sampler
def test_sampler_shards_each_epoch_between_ranks():
    n, batch, world = 7, 2, 2
    samplers = [EpochBatchSampler(n, batch, seed=5, rank=r, world_size=world) for r in range(world)]
    single = EpochBatchSampler(n, batch * world, seed=5)
    for epoch in (1, 2):
        for s in (*samplers, single):
            s.set_epoch(epoch)
        per_rank = [list(s) for s in samplers]
        assert [len(b) for b in per_rank] == [2, 2] and samplers[0].batches_per_epoch() == 2
        for b in range(2):  # rank batches together = the single-process batch of 4 (last one wraps around)
            together = sorted(i for r in range(world) for _, i in per_rank[r][b])
            expected = [i for _, i in list(single)[b]]
            expected += [i for _, i in list(single)[0]][: batch * world - len(expected)]
            assert together == sorted(expected)
        seen = {i for r in range(world) for bt in per_rank[r] for _, i in bt}
        assert seen == set(range(n)) and all(e == epoch for r in per_rank for bt in r for e, _ in bt)
    samplers[1].set_epoch(2, start_batch=1)  # resuming mid-epoch skips the batches already done
    assert list(samplers[1]) == per_rank[1][1:]
    samplers[0].set_epoch(1)
    first = list(samplers[0])
    samplers[0].set_epoch(2)
    assert list(samplers[0]) != first  # reshuffled every epoch
    old = EpochBatchSampler(n, 3, seed=5)
    old.set_epoch(1)
    assert [i for b in old for _, i in b] == list(np.random.default_rng([5, 1]).permutation(n))  # one process: as before


# ----------------------------------------------------------------------------- signals
def test_graceful_stop_turns_signals_into_a_request():
    previous = signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # Python runs the handler between bytecodes
        assert stop.requested and stop.exit_code == 130 and stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is previous


def test_sigterm_mid_epoch_then_resume_auto_repeats_the_losses(tmp_path, pipeline_write_pairs):
    """A real SIGTERM to the whole process group (as a scheduler sends it, data-loader worker
    included), in the middle of an epoch; ``--resume auto`` continues bit for bit."""
    data = pipeline_write_pairs(tmp_path / "data", names=tuple("abcdefgh"), size=(16, 16))  # 8 steps per epoch
    common = ["--train_dir", str(data), "--num_epochs", "2", "--batch_size", "1", *NET_FLAGS, *RUN_FLAGS]
    assert train_cli.main([*common, "--model_save_dir", str(tmp_path / "full")]) == 0
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "train.py", *common, "--model_save_dir", str(cut), "--resume", "auto",
                             "--num_workers", "1"], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not ((cut / "train_steps.csv").is_file() and len(_losses(cut)) >= 2):
            assert proc.poll() is None and time.time() < deadline, "training did not start"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    ckpt = torch.load(cut / "last.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and not ckpt["epoch_done"] and 2 <= ckpt["batch_in_epoch"] < 8  # mid-epoch
    assert ckpt["global_step"] == len(_losses(cut))
    log_text = (cut / "train.log").read_text()
    assert "starting a new run" in log_text and "stopped by signal 15" in log_text and "--resume auto" in log_text
    assert not list(cut.glob(".*.tmp"))
    assert train_cli.main(["--resume", "auto", "--model_save_dir", str(cut), "--no-progress", "--num_workers", "0"]) == 0
    assert "--resume auto: continuing from" in (cut / "train.log").read_text()
    full = _losses(tmp_path / "full")
    assert len(full) == 16 and _losses(cut) == full  # steps, epochs, losses (repr, bit for bit), lrs


# A separate interpreter (not os.fork: a fork of this multi-threaded process can deadlock in the
# child) starts atomic_save of a large checkpoint, stops half-way through writing the
# temporary file, says so on stdout and waits to be killed.
_HALF_WRITTEN_SAVE = """
import io, sys, time
import torch
from utils.checkpoint import atomic_save

real_save = torch.save

def half_save(obj, fh):
    buf = io.BytesIO()
    real_save(obj, buf)
    fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    fh.flush()
    print("writing", flush=True)
    time.sleep(120)  # killed here

torch.save = half_save
atomic_save({"arch": "vlifnet", "config": {}, "state_dict": {"w": torch.full((500_000,), 2.0)},
             "optimizer": {}, "rng": {}, "epoch": 1, "global_step": 2}, sys.argv[1])
"""


def _training_ckpt(value: float, size: int = 3) -> dict:
    return {"arch": "vlifnet", "config": {}, "state_dict": {"w": torch.full((size,), value)}, "optimizer": {},
            "rng": {}, "epoch": 1, "global_step": int(value)}


def test_kill_9_during_a_save_leaves_the_last_checkpoint_intact(tmp_path):
    last = tmp_path / "last.pth"
    atomic_save(_training_ckpt(1.0), last)
    child = subprocess.Popen([sys.executable, "-c", _HALF_WRITTEN_SAVE, str(last)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing", child.stderr.read()  # in the middle of writing
        temps = list(tmp_path.glob(".last.pth.*.tmp"))
        assert len(temps) == 1 and temps[0].stat().st_size > 100_000
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert torch.equal(read_checkpoint(last)["state_dict"]["w"], torch.ones(3))  # the old file, whole
    path, ckpt = find_resume_checkpoint(tmp_path)
    assert path == last and ckpt["global_step"] == 1
    assert remove_stale_temp_files(tmp_path) == temps and not temps[0].exists()


def test_resume_auto_skips_unreadable_checkpoints(tmp_path, caplog):
    assert find_resume_checkpoint(tmp_path / "missing") is None
    atomic_save(_training_ckpt(3.0), tmp_path / "epoch_3.pth")
    atomic_save(_training_ckpt(5.0), tmp_path / "epoch_5.pth")
    exported = build_model("vlifnet", dim=16, en_num_blocks=[1, 1, 2, 2], de_num_blocks=[1, 1, 1, 1])
    atomic_save(exported.state_dict(), tmp_path / "exported.pth")  # released-style weights: not resumable
    data = (tmp_path / "epoch_5.pth").read_bytes()
    (tmp_path / "last.pth").write_bytes(data[: len(data) // 2])  # e.g. a copy cut short
    now = time.time()
    os.utime(tmp_path / "epoch_3.pth", (now - 30, now - 30))
    os.utime(tmp_path / "epoch_5.pth", (now - 20, now - 20))
    os.utime(tmp_path / "exported.pth", (now - 10, now - 10))
    with caplog.at_level(logging.WARNING):
        path, ckpt = find_resume_checkpoint(tmp_path)
    assert path.name == "epoch_5.pth" and ckpt["global_step"] == 5
    assert "skipping " + str(tmp_path / "last.pth") in caplog.text and "truncated" in caplog.text
    assert "exported.pth: it holds weights but no training state" in caplog.text
    (tmp_path / "epoch_5.pth").unlink()
    (tmp_path / "epoch_3.pth").unlink()
    assert find_resume_checkpoint(tmp_path) is None


# ----------------------------------------------------------------------------- non-finite losses, AMP, clipping
def _nan_loss_on(steps: set[int] | None):
    """A ``build_loss`` replacement whose loss is NaN at the given 1-based calls (None: always)."""
    real = train_cli.build_loss

    def build(name: str) -> nn.Module:
        base, calls = real(name), [0]

        def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            value = base(a, b)
            return value * float("nan") if steps is None or calls[0] in steps else value

        return loss

    return build


def test_nonfinite_loss_skips_the_step_then_stops_the_run(tmp_path, pipeline_write_pairs, monkeypatch, caplog):
    data = pipeline_write_pairs(tmp_path / "data", names=("a", "b"), size=(16, 16))
    common = ["--train_dir", str(data), "--batch_size", "1", "--num_epochs", "2", *NET_FLAGS, *RUN_FLAGS]
    monkeypatch.setattr(train_cli, "build_loss", _nan_loss_on({2}))
    with caplog.at_level(logging.WARNING):
        assert train_cli.main([*common, "--model_save_dir", str(tmp_path / "once")]) == 0
    rows = _losses(tmp_path / "once")
    assert [r[2] for r in rows][1] == "nan" and all(np.isfinite(float(r[2])) for i, r in enumerate(rows) if i != 1)
    assert "step 2: the loss is nan (batch: " in caplog.text and "optimiser step skipped" in caplog.text
    assert torch.isfinite(torch.load(tmp_path / "once" / "last.pth", weights_only=True)["state_dict"]
                          ["patch_embed.proj.weight"]).all()

    monkeypatch.setattr(train_cli, "build_loss", _nan_loss_on(None))
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        rc = train_cli.main([*common, "--model_save_dir", str(tmp_path / "always"), "--max_nonfinite", "2"])
    assert rc == 3
    assert "the loss was nan for 2 steps in a row (steps 1 to 2" in caplog.text and "--grad_clip" in caplog.text
    assert not list((tmp_path / "always").glob("*.pth")) and len(_losses(tmp_path / "always")) == 2


def test_weights_with_nan_are_never_saved():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    check_finite_weights(net, 7)
    with torch.no_grad():
        net[1].weight[0, 1] = float("inf")
    with pytest.raises(RunError, match=r"step 7 the weights hold NaN/inf \(first: 1\.weight\).*nothing was saved"):
        check_finite_weights(net, 7)


def test_guard_counts_only_consecutive_nonfinite_losses():
    guard = NonFiniteGuard(2)
    assert guard.check(0.5, 1) and not guard.check(float("inf"), 2) and guard.check(0.4, 3)
    assert not guard.check(float("nan"), 4)
    with pytest.raises(NonFiniteLossError, match="for 2 steps in a row"):
        guard.check(float("nan"), 5, ["x", "y"])


def test_gradient_clipping_limits_the_update(tmp_path, pipeline_write_pairs):
    """One step of train.py's loop. AdamW's first update is ``lr * g / (|g| + eps)`` per weight:
    about ``lr`` unclipped; with the total norm clipped far below ``eps`` (1e-8), a tenth of it."""
    data = pipeline_write_pairs(tmp_path / "data", names=("a",), size=(16, 16))
    common = ["--train_dir", str(data), "--batch_size", "1", "--max_steps", "1", *NET_FLAGS, *RUN_FLAGS]
    names = [n for n, _ in build_model("vlifnet", dim=16, en_num_blocks=[1, 1, 2, 2],
                                       de_num_blocks=[1, 1, 1, 1]).named_parameters()]

    def weights(run: str, *flags: str) -> dict[str, torch.Tensor]:
        assert train_cli.main([*common, "--model_save_dir", str(tmp_path / run), *flags]) == 0
        state = torch.load(tmp_path / run / "last.pth", weights_only=True)["state_dict"]
        return {n: state[n] for n in names}  # parameters only: batch-norm statistics move without a step

    start = weights("start", "--warmup_epochs", "1")  # epoch 1 of a warm-up runs at lr 0
    moved = {run: max(float((w - start[n]).abs().max()) for n, w in weights(run, *flags).items())
             for run, flags in (("free", ()), ("clipped", ("--grad_clip", "1e-9")))}
    assert moved["free"] == pytest.approx(5e-3, rel=0.05)  # --lr 5e-3 in RUN_FLAGS
    assert moved["clipped"] < 0.2 * moved["free"]


def test_amp_choices_on_cpu(tmp_path, pipeline_write_pairs, caplog):
    with pytest.raises(RunError, match="--amp fp16 needs a CUDA device.*use --amp bf16 or --amp off"):
        setup_amp("fp16", torch.device("cpu"))
    assert setup_amp("off", torch.device("cpu")).dtype is None
    data = pipeline_write_pairs(tmp_path / "data", names=("a", "b"), size=(16, 16))
    common = ["--train_dir", str(data), "--batch_size", "2", "--max_steps", "1", *NET_FLAGS, *RUN_FLAGS]
    with caplog.at_level(logging.ERROR):
        assert train_cli.main([*common, "--model_save_dir", str(tmp_path / "fp16"), "--amp", "fp16"]) == 2
    assert "--amp fp16 needs a CUDA device" in caplog.text and not (tmp_path / "fp16").exists()
    assert train_cli.main([*common, "--model_save_dir", str(tmp_path / "fp32")]) == 0
    assert train_cli.main([*common, "--model_save_dir", str(tmp_path / "bf16"), "--amp", "bf16",
                           "--grad_clip", "1.0"]) == 0
    fp32, bf16 = float(_losses(tmp_path / "fp32")[0][2]), float(_losses(tmp_path / "bf16")[0][2])
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=0.05)  # bfloat16 really ran, and close
    assert torch.load(tmp_path / "bf16" / "last.pth", weights_only=True)["args"]["amp"] == "bf16"


# ----------------------------------------------------------------------------- bad data
def _zero_byte(root: Path) -> str:
    (root / "input" / "b.png").write_bytes(b"")
    return r"input/b\.png is empty \(0 bytes\).*copy it again, or remove it"


def _only_text(root: Path) -> str:
    for p in (root / "target").iterdir():
        p.unlink()
    (root / "target" / "notes.txt").write_text("not an image")
    return r"no images .* in .*target \(it holds only 1 other files, first: notes\.txt\); check the path"


def _empty(root: Path) -> str:
    for p in (root / "input").iterdir():
        p.unlink()
    return r"no images .* in .*input \(it is empty\); check the path"


def _corrupt(root: Path) -> str:
    (root / "target" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    return r"cannot read image .*target/a\.png .*corrupt or not an image: re-export it"


def _image_named_png_is_text(root: Path) -> str:
    (root / "input" / "a.png").write_text("hello")
    return r"cannot read image .*input/a\.png .*re-export it, or remove it and its partner"


def _missing_partner(root: Path) -> str:
    (root / "target" / "b.png").unlink()
    return r"1 in .*input have no target \(first: b\.png\).*rename the files"


def _size_mismatch(root: Path) -> str:
    cv2.imwrite(str(root / "target" / "a.png"), np.zeros((20, 16, 3), np.uint8))
    return r"size mismatch: .*input/a\.png is 16x16 but its target .*target/a\.png is 16x20.*fix or remove the pair"


def _too_small(root: Path) -> str:
    for side in ("input", "target"):
        cv2.imwrite(str(root / side / "b.png"), np.zeros((16, 12, 3), np.uint8))
    return r"input/b\.png is 12x16, smaller than the 16x16 crop; remove it, or lower --patch_size_train to at most 12"


def _nan_tiff(root: Path) -> str:
    img = np.full((16, 16, 3), 0.5, np.float32)
    img[3, 4, 1] = np.nan
    (root / "input" / "b.png").unlink()
    cv2.imwrite(str(root / "input" / "b.tiff"), img)
    return r"input/b\.tiff holds 1 NaN/inf values \(first at row 3, column 4\).*re-export the image without them"


def _float_out_of_range(root: Path) -> str:
    (root / "target" / "b.png").unlink()
    cv2.imwrite(str(root / "target" / "b.tif"), np.full((16, 16), 2.5, np.float32))
    return r"target/b\.tif is a float image with values in \[2\.5, 2\.5\].*rescale it, or save it as an 8- or 16-bit PNG"


BAD_DATA = [_zero_byte, _only_text, _empty, _corrupt, _image_named_png_is_text, _missing_partner, _size_mismatch,
            _too_small, _nan_tiff, _float_out_of_range]


@pytest.mark.parametrize("spoil", BAD_DATA, ids=lambda f: f.__name__.strip("_"))
def test_train_stops_on_bad_data_with_file_and_fix(spoil, tmp_path, pipeline_write_pairs, caplog):
    data = pipeline_write_pairs(tmp_path / "data", names=("a", "b"), size=(16, 16))
    pattern = spoil(data)
    run = tmp_path / "run"
    with caplog.at_level(logging.ERROR):
        rc = train_cli.main(["--train_dir", str(data), "--model_save_dir", str(run), "--batch_size", "1",
                             *NET_FLAGS, *RUN_FLAGS])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and re.search(pattern, errors[0]), errors
    assert not run.exists()  # a failed start writes nothing: no folder, log, checkpoint or step log


def test_non_image_files_are_skipped_by_name_and_never_paired(tmp_path, pipeline_write_pairs, caplog):
    data = pipeline_write_pairs(tmp_path / "data", names=("a", "b"), size=(16, 16))
    (data / "input" / "Thumbs.db").write_bytes(b"\x00" * 10)
    (data / "target" / "b.txt").write_text("the clean b")  # same stem as an image: still not paired
    with caplog.at_level(logging.WARNING):
        ds = PairedImageDataset(data, patch_size=16)
    assert [(i.name, t.name) for i, t in ds.pairs] == [("a.png", "a.png"), ("b.png", "b.png")]
    assert "skipping 1 files that are not images (Thumbs.db)" in caplog.text
    assert "skipping 1 files that are not images (b.txt)" in caplog.text


def test_float_images_in_range_are_converted(tmp_path, caplog):
    img = np.linspace(0, 1, 4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    cv2.imwrite(str(tmp_path / "f.tiff"), img)
    with caplog.at_level(logging.WARNING):
        check_images([tmp_path / "f.tiff"])
        out = read_image(tmp_path / "f.tiff", set())
    assert out.dtype == np.uint8 and (out == np.round(img[..., ::-1] * 255).astype(np.uint8)).all()
    assert "is 32-bit float: converted to 8-bit RGB" in caplog.text


# ----------------------------------------------------------------------------- bad checkpoints
@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    """Files that train.py must refuse with a clear message."""
    d = tmp_path_factory.mktemp("ckpts")
    tiny = dict(dim=16, en_num_blocks=[1, 1, 2, 2], de_num_blocks=[1, 1, 1, 1])
    vlif, esd = build_model("vlifnet", **tiny), build_model("esdnet", **tiny)
    good = make_checkpoint(vlif, args={}, optimizer={"state": {}, "param_groups": []}, scheduler={}, rng={},
                           epoch=1, batch_in_epoch=0, global_step=1, epoch_done=True,
                           best={"metric": None, "value": None, "epoch": None})
    torch.save(good, d / "bad_optimizer.pth")
    torch.save({**good, "state_dict": esd.state_dict()}, d / "other_network.pth")
    raw = io.BytesIO()
    torch.save(good, raw)
    (d / "truncated.pth").write_bytes(raw.getvalue()[: len(raw.getvalue()) // 3])
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).state_dict(), d / "unrelated.pth")
    torch.save(vlif.state_dict(), d / "raw_weights.pth")
    return d


BAD_CHECKPOINTS = [
    ("--resume", "truncated.pth", r"cannot read checkpoint .*truncated\.pth.*truncated or not a PyTorch checkpoint"),
    ("--weights", "truncated.pth", r"cannot read checkpoint .*truncated\.pth.*download or copy it again"),
    ("--resume", "other_network.pth", r"checkpoint .*other_network\.pth does not fit VLIFNet.*missing keys.*Try:"),
    ("--weights", "other_network.pth", r"checkpoint .*other_network\.pth does not fit VLIFNet.*Try:"),
    ("--weights", "unrelated.pth", r"no 'patch_embed\.proj\.weight': it is not a VLIFNet or ESDNet checkpoint"),
    ("--resume", "unrelated.pth", r"no 'patch_embed\.proj\.weight': it is not a VLIFNet or ESDNet checkpoint"),
    ("--resume", "raw_weights.pth", r"raw_weights\.pth holds weights but no training state.*use --weights"),
    ("--resume", "bad_optimizer.pth", r"bad_optimizer\.pth: cannot restore the training state.*--weights"),
]


@pytest.mark.parametrize("flag,name,pattern", BAD_CHECKPOINTS, ids=[f"{f[2:]}-{n[:-4]}" for f, n, _ in BAD_CHECKPOINTS])
def test_train_refuses_bad_checkpoints_cleanly(flag, name, pattern, bad_checkpoints, tmp_path, pipeline_write_pairs,
                                               caplog):
    data = pipeline_write_pairs(tmp_path / "data", names=("a",), size=(16, 16))
    run = tmp_path / "run"
    with caplog.at_level(logging.ERROR):
        rc = train_cli.main(["--train_dir", str(data), "--model_save_dir", str(run), flag, str(bad_checkpoints / name),
                             "--batch_size", "1", *RUN_FLAGS])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and re.search(pattern, errors[0]), errors
    assert not run.exists()


# ----------------------------------------------------------------------------- output folders
def test_unwritable_model_save_dir_fails_before_training(tmp_path, pipeline_write_pairs, caplog):
    data = pipeline_write_pairs(tmp_path / "data", names=("a",), size=(16, 16))
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the run folder should be")
    for target, pattern in ((blocker, r"taken \(--model_save_dir\) is a file, not a folder; pass another path"),
                            (blocker / "run", r"cannot write to the output folder .*taken/run \(--model_save_dir\): "
                                              r"Not a directory; pass a folder you can write to")):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            rc = train_cli.main(["--train_dir", str(data), "--model_save_dir", str(target), *RUN_FLAGS])
        assert rc == 2 and re.search(pattern, caplog.text), caplog.text
    assert blocker.read_text().startswith("a file")


def test_unwritable_folder_is_reported(tmp_path, monkeypatch):
    """A folder the process may not write to (root ignores permission bits, so the refusal is
    simulated where the probe file is created), and a full disk."""
    import errno
    import tempfile as tempfile_module

    def refuse(code):
        def mkstemp(*_args, **_kwargs):
            raise OSError(code, os.strerror(code))
        return mkstemp

    for code, text in ((errno.EACCES, "Permission denied"), (errno.ENOSPC, "No space left on device")):
        monkeypatch.setattr(tempfile_module, "mkstemp", refuse(code))
        with pytest.raises(DataError, match=rf"cannot write to the output folder .*out \(--save_path\): {text}; "
                                            r"pass a folder you can write to with --save_path"):
            check_output_dir(tmp_path / "out", "--save_path")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.pth"
    torch.save(make_checkpoint(build_model("vlifnet", dim=16, en_num_blocks=[1, 1, 2, 2],
                                           de_num_blocks=[1, 1, 1, 1])), path)
    return path


def test_test_py_unwritable_save_path(tmp_path, pipeline_write_pairs, tiny_weights, caplog):
    data = pipeline_write_pairs(tmp_path / "d", names=("a",), size=(16, 16))
    (tmp_path / "taken").write_text("file")
    with caplog.at_level(logging.ERROR):
        rc = test_cli.main(["--data_path", str(data / "input"), "--weights", str(tiny_weights),
                            "--save_path", str(tmp_path / "taken" / "out"), "--crop_size", "0"])
    assert rc == 2 and "(--save_path): Not a directory; pass a folder you can write to" in caplog.text


def test_test_py_rejects_nan_input_before_writing(tmp_path, pipeline_write_pairs, tiny_weights, caplog):
    data = pipeline_write_pairs(tmp_path / "d", names=("a", "b"), size=(16, 16))
    img = np.full((16, 16, 3), 0.5, np.float32)
    img[0, 0, 0] = np.inf
    (data / "input" / "b.png").unlink()
    cv2.imwrite(str(data / "input" / "b.tiff"), img)
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        rc = test_cli.main(["--data_path", str(data / "input"), "--weights", str(tiny_weights),
                            "--save_path", str(out), "--crop_size", "0"])
    assert rc == 2 and "b.tiff holds 1 NaN/inf values" in caplog.text
    assert not out.exists() or not list(out.iterdir())  # a.png was not written either
