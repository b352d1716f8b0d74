"""The learning check: train.py trains the tiny VLIFNet for a fixed number of steps on synthetic
rain, and the validation PSNR must rise well above the rainy inputs'. Exactness tests catch a
changed function; this catches a change that stops the network from learning (a detached
gradient, a broken surrogate, a wrong loss sign or schedule)."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from cli_helpers import TINY_NET_FLAGS, load_script
from data.synthetic_rain import make_paired_dataset
from utils.metrics import psnr

STEPS = 48  # 16 epochs of 3 batches of 4 (11 training pairs, the last partial batch dropped)
MIN_GAIN_DB = 2.0  # over the rainy inputs, matlab-y; measured: see the test docstring
MIN_RISE_DB = 1.5  # from the first validation (after 12 steps) to the last


def _mean_input_psnr(folder: Path) -> float:
    values = []
    for path in sorted((folder / "input").iterdir()):
        rainy = cv2.imread(str(path))[..., ::-1]
        clean = cv2.imread(str(folder / "target" / path.name))[..., ::-1]
        values.append(psnr(rainy, clean, "matlab-y"))
    return float(np.mean(values))


def test_training_learns_to_remove_synthetic_rain(tmp_path):
    """Measured on the 2-core AMD EPYC machine: validation 20.7 dB after 12 steps and 23.4 dB
    after 48, against 20.3 dB for the rainy inputs: +3.1 dB, where the bound asks +2.0; a
    network that does not learn stays at or below the inputs. The rain is the "medium" preset
    (the "heavy" of those measurements); today's denser "heavy" gained only +2.15 dB in 48 steps
    (Intel Xeon, 2026-12-07), too close to the bound for another CPU's rounding."""
    train_dir = make_paired_dataset(tmp_path / "train", "train", "medium", seed=0, size=(64, 64))
    val_dir = make_paired_dataset(tmp_path / "val", "test", "medium", seed=1, size=(64, 80))
    run = tmp_path / "run"
    rc = load_script("train").main([
        *TINY_NET_FLAGS, "--train_dir", str(train_dir), "--val_dir", str(val_dir), "--model_save_dir", str(run),
        "--patch_size_train", "48", "--batch_size", "4", "--num_epochs", "16", "--val_epochs", "4",
        "--lr", "2e-3", "--min_lr", "1e-5", "--warmup_epochs", "0", "--loss", "l1", "--flips",
        "--num_workers", "0", "--crop_size", "0", "--no-progress", "--no-tensorboard"])
    assert rc == 0
    with open(run / "val_metrics.csv", newline="") as fh:
        curve = list(csv.DictReader(fh))
    with open(run / "train_steps.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == STEPS
    assert [int(r["epoch"]) for r in curve] == [4, 8, 12, 16]
    first, last = float(curve[0]["psnr_matlab-y"]), float(curve[-1]["psnr_matlab-y"])
    rainy = _mean_input_psnr(val_dir)
    assert last >= rainy + MIN_GAIN_DB, (first, last, rainy)
    assert last >= first + MIN_RISE_DB, (first, last, rainy)
