"""Measure the fast spiking kernels and fast inference against the reference, same process.

    python -m tools.speed [--quick] [--json OUT] [--only neurons train inference]
                             [--threads N] [--device cpu|cuda] [--bf16 auto|on|off]

Prints a Markdown table (median milliseconds, speed-up, peak memory, largest output
difference) and, with ``--json``, writes the records with the machine and load they were
measured under. ``--quick`` takes fewer repetitions (same shapes). The bf16 rows are left out
on a CPU without bfloat16 instructions unless ``--bf16 on`` (emulated there, they take hours).
See docs/speed.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from data.io import write_text_atomic
from models.kernels import native
from utils.allocator import keep_freed_memory
from utils.training.device import bf16_is_emulated
from utils.logger import setup_logging

from .cases import all_cases
from .measure import Record, machine_info, measure_pair

log = logging.getLogger("benchmarks")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(records: Sequence[Record]) -> str:
    """Markdown table of the records."""
    rows = [
        "| case | reference ms | fast ms | speed-up | max abs diff | peak MB ref | peak MB fast | faulted ref / fast |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        rows.append(
            f"| {r.name} | {_fmt(r.reference_ms, '.1f')} | {r.fast_ms:.1f} | "
            f"{_fmt(r.speedup, '.2f') + 'x' if r.speedup else '-'} | {_fmt(r.max_abs_diff, '.2e')} | "
            f"{_fmt(r.reference_peak_mb, '.0f')} | {_fmt(r.fast_peak_mb, '.0f')} | {_faulted(r)} |"
        )
    return "\n".join(rows)


def _faulted(r: Record) -> str:
    """``faulted/timed`` samples of each path: a row whose samples faulted their memory in times
    the allocator as much as the paths (the log says which sample)."""
    ref = f"{r.faulted_samples('reference')}/{len(r.reference_samples_ms)}" if r.reference_samples_ms else "-"
    return f"{ref} / {r.faulted_samples('fast')}/{len(r.fast_samples_ms)}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions (same shapes); 10-20 min on 2 cores")
    p.add_argument("--json", type=Path, default=None, help="write the records and machine info to this file")
    p.add_argument("--only", nargs="+", choices=["neurons", "train", "inference"], default=None,
                   help="run only these case groups")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--keep_freed_memory", action="store_true",
                   help="apply train.py's and test.py's malloc settings (utils/allocator.py) to both paths; "
                        "off by default, so that the reference path stays what the released code ran")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="the bf16 rows; auto: unless this CPU has no bfloat16 instructions (emulated, ~100x slower)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.keep_freed_memory:
        keep_freed_memory()  # as train.py and test.py do (utils/allocator.py)
    setup_logging()  # also keeps torch's "Triton not available" notices (reference LIF) out
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.error("--device cuda given but CUDA is not available")
        return 2
    meta = machine_info(device)
    meta["kernels"] = "native" if device.type == "cpu" and native.load() is not None else "torch"
    meta["quick"] = args.quick
    meta["keep_freed_memory"] = args.keep_freed_memory
    meta["bf16_emulated"] = bf16_is_emulated(device)
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and not meta["bf16_emulated"])
    log.info("machine: %s", json.dumps(meta))
    if not bf16:
        log.info("bf16 rows left out (%s)", "--bf16 off" if args.bf16 == "off" else
                 "this CPU has no bfloat16 instructions, so bf16 is emulated; --bf16 on measures it anyway")
    records: list[Record] = []
    for group, build in all_cases(device, args.quick, bf16).items():
        if args.only and group not in args.only:
            continue
        for pair in build():
            log.info("%s: %s", pair.name, pair.description)
            records.append(measure_pair(pair, device, log.info))
            log.info("%s", table(records[-1:]).splitlines()[-1])
    if hasattr(os, "getloadavg"):
        meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    text = table(records)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "records": [
            {**asdict(r), "reference_faulted_samples": r.faulted_samples("reference"),
             "fast_faulted_samples": r.faulted_samples("fast")} for r in records]}
        write_text_atomic(args.json, json.dumps(payload, indent=2))
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
