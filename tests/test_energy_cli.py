"""``python -m tools.energy`` as a user runs it: a clean stderr, and the op_counter cross-check."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.energy import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch", ["esdnet", "vlifnet"])
def test_an_energy_run_prints_no_triton_notice(arch):
    """spikingjelly's own LIF registers its operator with ``torch.library.triton_op`` on first
    use, and a torch without Triton logs "Triton not available" twice; the meter keeps the
    project's LIF kernel, so an energy run never starts spikingjelly's LIF code."""
    run = subprocess.run([sys.executable, "-m", "tools.energy", "--arch", arch, "--size", "8", "8"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "total" in run.stdout
    assert "Triton not available" not in run.stderr


def test_cli_op_counter_flag_prints_and_writes_both_counts(tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["--arch", "esdnet", "--size", "8", "8", "--batch_stats", "--op_counter", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["op_counter"]["mac"] == s["mac_ops"] > 0
    assert s["op_counter"]["outside_layers"] == {"mac": 0, "synop": 0}
    assert "spikingjelly op_counter" in capsys.readouterr().out
