"""Multi-process training through torchrun on CPU (gloo, 2 processes)."""
from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cli_helpers import TINY_NET_FLAGS
from models import build_model
from utils.checkpoint import load_model
from utils.training.distributed import parameter_digest, replica_digests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_keep_identical_weights_and_learn(tmp_path, pipeline_write_pairs):
    data = pipeline_write_pairs(tmp_path / "data", names=tuple("abcdefgh"), size=(24, 24))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "train.py", "--train_dir", str(data), "--model_save_dir", str(run),
           *TINY_NET_FLAGS, "--batch_size", "2", "--patch_size_train", "16", "--num_epochs", "6", "--warmup_epochs", "0",
           "--lr", "5e-3", "--loss", "l1", "--sync_bn", "--num_workers", "0", "--no-progress", "--no-tensorboard",
           "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log_text = (run / "train.log").read_text()
    assert "2 processes x batch 2 = global batch 4; 2 steps per epoch" in log_text  # 8 pairs sharded
    assert "tdBN layers synchronised over 2 processes" in log_text
    # after every epoch both ranks compared weight digests; the last one is of the saved weights
    digests = re.findall(r"step (\d+): 2 processes hold identical weights \(sha256 (\w+)\)", log_text)
    assert [int(step) for step, _ in digests] == [2, 4, 6, 8, 10, 12]
    model, ckpt = load_model(run / "last.pth")
    assert ckpt["world_size"] == 2 and ckpt["global_step"] == 12
    assert parameter_digest(model).startswith(digests[-1][1])
    with open(run / "train_steps.csv", newline="") as fh:
        losses = [float(row["loss"]) for row in csv.DictReader(fh)]  # mean over both processes
    assert len(losses) == 12
    assert sum(losses[-4:]) / 4 < 0.9 * sum(losses[:4]) / 4, losses


def _digest_worker(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        net = build_model("vlifnet", dim=16, en_num_blocks=(1, 1, 2, 2), de_num_blocks=(1, 1, 1, 1))
        same = replica_digests(net)
        if rank == 1:
            with torch.no_grad():
                net.output[0].weight.view(-1)[0] += 1e-7  # one drifted weight
        results[rank] = (same, replica_digests(net))
    finally:
        dist.destroy_process_group()


def test_replica_check_sees_one_drifted_weight():
    results = mp.Manager().dict()
    mp.spawn(_digest_worker, args=(free_port(), results), nprocs=2)
    for rank in (0, 1):
        same, drifted = results[rank]
        assert len(same) == 2 and same[0] == same[1]
        assert drifted[0] == same[0] and drifted[1] != drifted[0]


END_WORKER_SCRIPT = """
import atexit, logging, sys
from pathlib import Path
from utils.training.distributed import end_worker
out = Path(sys.argv[1])
atexit.register(lambda: (out / "finalised").write_text("yes"))
logging.basicConfig(filename=out / "run.log", level=logging.INFO)
logging.getLogger("worker").info("last record before the end")
end_worker(3)
sys.exit(0)
"""


def test_end_worker_skips_interpreter_shutdown_only_under_torchrun(tmp_path):
    """A torchrun worker ends with its status, logs flushed, without the interpreter shutdown in
    which gloo's threads abort it; a plain run is left to exit as usual."""
    for world, expected_code, finalised in (("2", 3, False), ("1", 0, True)):
        out = tmp_path / f"world{world}"
        out.mkdir()
        env = {**os.environ, "WORLD_SIZE": world, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-c", END_WORKER_SCRIPT, str(out)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == expected_code, proc.stderr
        assert "last record before the end" in (out / "run.log").read_text()
        assert (out / "finalised").exists() == finalised
