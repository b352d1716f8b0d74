"""train.py as a new user meets it (issue #11): default workers that fit the machine, a small
best.pth, and a failed start that leaves nothing behind."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest
import torch

from cli_helpers import TINY_NET_FLAGS, load_script, train_tiny_run
from options.train_options import parse_train_args
from utils.checkpoint import load_model
from utils.training.resume import has_training_state

train_cli = load_script("train")
RUN_FLAGS = ["--patch_size_train", "16", "--batch_size", "1", "--no-progress", "--no-tensorboard", "--seed", "3",
             "--warmup_epochs", "0", "--lr", "5e-3", "--loss", "l1"]


def test_default_workers_fit_the_machine_and_torch_does_not_warn(tmp_path, pipeline_write_pairs):
    cpus = len(os.sched_getaffinity(0))
    assert parse_train_args(["--train_dir", "x"]).num_workers == min(4, cpus)
    data = pipeline_write_pairs(tmp_path / "data", names=("a", "b"), size=(16, 16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = train_cli.main(["--train_dir", str(data), "--model_save_dir", str(tmp_path / "run"), "--max_steps", "2",
                             *TINY_NET_FLAGS, *RUN_FLAGS])  # no --num_workers: the default
    assert rc == 0
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "worker processes in total" in m], messages


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, pipeline_write_pairs):
    """Two steps with EMA and validation: writes last.pth and best.pth."""
    return train_tiny_run(tmp_path_factory.mktemp("best"), pipeline_write_pairs,
                          ["--ema_decay", "0.9", "--num_workers", "0", *TINY_NET_FLAGS, *RUN_FLAGS],
                          train_size=(16, 16), val_size=(16, 24), names=("a", "b"))


def test_best_pth_holds_the_weights_only(ema_run):
    _, run = ema_run
    last = torch.load(run / "last.pth", weights_only=True)
    best = torch.load(run / "best.pth", weights_only=True)
    assert set(best) == {"format", "arch", "config", "state_dict", "epoch", "global_step", "best", "args"}
    assert not has_training_state(best) and has_training_state(last) and "raw_state_dict" in last
    assert best["best"] == last["best"] and best["best"]["value"] is not None and best["global_step"] == 2
    assert all(torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items())  # the EMA weights
    # last.pth: EMA + raw weights + two AdamW moments; best.pth: one copy of the weights
    assert (run / "best.pth").stat().st_size < 0.4 * (run / "last.pth").stat().st_size
    model, ckpt = load_model(run / "best.pth")
    assert model.config == last["config"] and ckpt["args"]["ema_decay"] == 0.9


def test_resume_from_best_pth_says_to_use_weights(ema_run, tmp_path, caplog):
    root, run = ema_run
    with caplog.at_level(logging.ERROR):
        rc = train_cli.main(["--resume", str(run / "best.pth"), "--model_save_dir", str(tmp_path / "r"),
                             "--num_workers", "0", "--no-progress"])
    assert rc == 2 and "best.pth holds weights but no training state" in caplog.text
    assert "use --weights to fine-tune from it, or resume from last.pth" in caplog.text
    assert not (tmp_path / "r").exists()
    rc = train_cli.main(["--train_dir", str(root / "train"), "--weights", str(run / "best.pth"), "--max_steps", "1",
                         "--model_save_dir", str(tmp_path / "ft"), "--num_workers", "0", *RUN_FLAGS])
    assert rc == 0 and (tmp_path / "ft" / "last.pth").is_file()


def _missing_target(data: Path) -> list[str]:
    (data / "target" / "b.png").unlink()
    return []


def _fp16_on_cpu(data: Path) -> list[str]:
    if torch.cuda.is_available():
        pytest.skip("float16 runs where CUDA is present")
    return ["--amp", "fp16", "--device", "cpu"]


def _overlap_not_below_crop(data: Path) -> list[str]:
    return ["--val_dir", str(data), "--crop_size", "8", "--overlap_size", "8"]


@pytest.mark.parametrize("spoil", [_missing_target, _fp16_on_cpu, _overlap_not_below_crop],
                         ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "empty-folder"])
def test_a_failed_start_writes_nothing(spoil, existing, tmp_path, pipeline_write_pairs, caplog):
    data = pipeline_write_pairs(tmp_path / "data", names=("a", "b"), size=(16, 16))
    flags = spoil(data)
    run = tmp_path / "runs" / "first"
    if existing:
        run.mkdir(parents=True)
    with caplog.at_level(logging.ERROR):
        try:
            rc = train_cli.main(["--train_dir", str(data), "--model_save_dir", str(run), "--num_workers", "0",
                                 *TINY_NET_FLAGS, *RUN_FLAGS, *flags])
        except SystemExit as exc:  # argparse's exit for bad options
            rc = exc.code
    assert rc == 2
    if existing:
        assert list(run.iterdir()) == []  # not even train.log
    else:
        assert not (tmp_path / "runs").exists()  # neither the folder nor its parent


def test_the_log_of_a_started_run_begins_with_its_command(tmp_path, pipeline_write_pairs):
    data = pipeline_write_pairs(tmp_path / "data", names=("a",), size=(16, 16))
    run = tmp_path / "run"
    assert train_cli.main(["--train_dir", str(data), "--model_save_dir", str(run), "--max_steps", "1",
                           "--num_workers", "0", *TINY_NET_FLAGS, *RUN_FLAGS]) == 0
    lines = (run / "train.log").read_text().splitlines()
    assert "command: train.py --train_dir" in lines[0]  # held in memory until the run started writing
    assert any("training on 1 pairs" in line for line in lines) and "stopped at --max_steps 1" in lines[-1]
