"""The learning curve of a training run: validation PSNR/SSIM per epoch and the training loss,
from the files train.py writes in ``--model_save_dir``::

    python -m tools.learning_curve results/demo/checkpoints
    python -m tools.learning_curve results/demo/checkpoints --plot docs/images/demo_curve.png

Prints a Markdown table (epoch, step, mean training loss of the epoch, validation PSNR and
SSIM in ``--metric``'s convention, firing rate) from ``val_metrics.csv`` and
``train_steps.csv``; ``--plot`` draws the loss and the validation PSNR against the step.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any, Sequence

from data.io import DataError, write_bytes_atomic
from utils.metrics import PROTOCOLS


def read_curve(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, float]]]:
    """``(validations, steps)``: the rows of ``val_metrics.csv`` (numbers) and of
    ``train_steps.csv`` (step, epoch, loss, lr)."""
    run_dir = Path(run_dir)
    val_path, step_path = run_dir / "val_metrics.csv", run_dir / "train_steps.csv"
    if not val_path.is_file():
        raise DataError(f"{val_path} does not exist: train.py writes it when the run validates (--val_dir, or "
                        "--preset demo); pass the run's --model_save_dir")
    with open(val_path, newline="", encoding="utf-8") as fh:
        validations = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]
    steps: list[dict[str, float]] = []
    if step_path.is_file():
        with open(step_path, newline="", encoding="utf-8") as fh:
            steps = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    return validations, steps


def epoch_losses(steps: list[dict[str, float]]) -> dict[int, float]:
    """Mean training loss per epoch."""
    sums: dict[int, list[float]] = {}
    for row in steps:
        sums.setdefault(int(row["epoch"]), []).append(row["loss"])
    return {epoch: sum(v) / len(v) for epoch, v in sums.items()}


def table(validations: list[dict[str, Any]], steps: list[dict[str, float]], metric: str) -> str:
    """Markdown table, one row per validation."""
    losses = epoch_losses(steps)
    lines = [f"| epoch | step | train loss | val PSNR {metric} (dB) | val SSIM {metric} | firing rate |",
             "|--:|--:|--:|--:|--:|--:|"]
    for v in validations:
        epoch = int(v["epoch"])
        loss = f"{losses[epoch]:.4f}" if epoch in losses else "-"
        lines.append(f"| {epoch} | {int(v['step'])} | {loss} | {v[f'psnr_{metric}']:.2f} | "
                     f"{v[f'ssim_{metric}']:.4f} | {v.get('firing_rate', float('nan')):.4f} |")
    return "\n".join(lines)


def plot(validations: list[dict[str, Any]], steps: list[dict[str, float]], metric: str, path: Path,
         reference: float | None = None) -> None:
    """Training loss (per step, and its epoch means) and validation PSNR against the step;
    ``reference`` draws the rainy inputs' PSNR as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(9, 3.2))
    if steps:
        ax_loss.plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=0.5, alpha=0.4, color="C0")
        last_step = {int(s["epoch"]): s["step"] for s in steps}
        means = epoch_losses(steps)
        ax_loss.plot([last_step[e] for e in means], list(means.values()), color="C0", label="epoch mean")
        ax_loss.set_yscale("log")
        ax_loss.legend()
    ax_loss.set(xlabel="step", ylabel="training loss", title="training")
    ax_val.plot([v["step"] for v in validations], [v[f"psnr_{metric}"] for v in validations], "o-", color="C1",
                ms=3, label="derained")
    if reference is not None:
        ax_val.axhline(reference, ls="--", color="grey", label="rainy input")
    ax_val.set(xlabel="step", ylabel=f"PSNR {metric} (dB)", title="validation")
    ax_val.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.learning_curve", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="the run's --model_save_dir (holds val_metrics.csv)")
    p.add_argument("--metric", choices=PROTOCOLS, default="matlab-y", help="PSNR/SSIM convention to show")
    p.add_argument("--plot", type=Path, default=None, help="also draw the curve into this PNG")
    p.add_argument("--reference", type=float, default=None,
                   help="PSNR of the rainy inputs (drawn as a dashed line on the plot)")
    args = p.parse_args(argv)
    try:
        validations, steps = read_curve(args.run_dir)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(validations, steps, args.metric))
    if args.plot is not None:
        plot(validations, steps, args.metric, args.plot, args.reference)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
