#!/usr/bin/env bash
# GPU check (docs/speed.md, "GPU check"): on a machine with a CUDA GPU, print the versions, run
# tests/test_cuda.py and tests/test_triton.py, the CUDA benchmark, a 20-step bf16 training run on
# the demo data (and test.py on its checkpoint) and a 2-process torchrun, each step under a
# timeout, all in under 8 minutes.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default $GPU_CHECK_OUT, else gpu_check_out/
#
# Writes gpu_check.log, gpu_check.json, bench.json and pytest_cuda.xml to OUT_DIR; the demo data,
# checkpoints and images go to a temporary folder that is removed at the end. Exit status: 0 when
# every step passed or when torch sees no CUDA GPU (nothing is checked then), 1 when any failed.
#
# Wheels in .whl/ (the dependencies for Python 3.12, docs/speed.md) are installed with
# pip --no-index --no-deps into $GPU_CHECK_SITE (default /tmp/site), which goes first on
# PYTHONPATH; only distributions the machine lacks (or has in another version) are installed,
# and torch, triton, CuPy, numpy and nvidia-* never are: the machine's torch stays.
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET (seconds for all steps, default 450;
# a step's timeout is cut to what is left), GPU_CHECK_WHEELS (default .whl), GPU_CHECK_SITE
# (default /tmp/site), GPU_CHECK_FORCE=1 (skip the CUDA check, to exercise the script on a CPU
# machine) and GPU_CHECK_DEVICE (device of the benchmark and training steps, default cuda).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
OUT_DIR=${1:-${GPU_CHECK_OUT:-$ROOT/gpu_check_out}}
mkdir -p "$OUT_DIR" || exit 1
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG=$OUT_DIR/gpu_check.log
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT
STEPS=$WORK/steps.tsv
PYTHON=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
WHEELS=${GPU_CHECK_WHEELS:-$ROOT/.whl}
BUDGET=${GPU_CHECK_BUDGET:-450}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
DATA=$WORK/demo_data
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
START=$(date +%s)
FAILED=0

now() { date +%s.%N; }

# step NAME TIMEOUT_S CMD...: run CMD under a timeout (cut to the budget left), log it, record
# "name, status, seconds, exit code" in $STEPS; a failure is remembered, and the script goes on.
step() {
    local name=$1 limit=$2 left t0 pid rc status seconds
    shift 2
    left=$((BUDGET - ($(date +%s) - START)))
    ((left < limit)) && limit=$left
    if ((limit < 5)); then
        echo "=== $name: SKIPPED, the time budget of ${BUDGET}s is spent"
        printf '%s\tskipped\t0\t-\n' "$name" >>"$STEPS"
        FAILED=1
        return 0
    fi
    echo "=== $name (timeout ${limit}s): $*"
    t0=$(now)
    if declare -F "$1" >/dev/null; then
        set -- bash -c '"$@"' _ "$@"  # an exported function of this script
    fi
    timeout --kill-after=10 "$limit" "$@" </dev/null &
    pid=$!
    wait "$pid"
    rc=$?
    kill -KILL -- "-$pid" 2>/dev/null  # what outlived the step in its process group (timeout's own)
    seconds=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    [[ $status == ok ]] || FAILED=1
    echo "=== $name: $status (exit $rc, ${seconds}s)"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$seconds" "$rc" >>"$STEPS"
    return 0
}

install_wheels() {
    local before after list wheels
    before=$("$PYTHON" -c 'import torch; print(torch.__version__, torch.__file__)') || return 1
    list=$("$PYTHON" - "$WHEELS" <<'EOF'
"""Print the wheels to install: distributions missing here or here in another version."""
import importlib.metadata as md
import re
import sys
from pathlib import Path

NEVER = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch_triton.*|cupy.*|numpy|nvidia_.*)$")
for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    if NEVER.match(re.sub(r"[-_.]+", "_", name).lower()):
        print(f"not installing {whl.name}: the machine's own build is used", file=sys.stderr)
        continue
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have == version:
        print(f"{name} {have}: already installed", file=sys.stderr)
    else:
        print(f"{name} {version}: installing" + (f" (machine has {have})" if have else ""), file=sys.stderr)
        print(whl)
EOF
    ) || return 1
    if [[ -n $list ]]; then
        mapfile -t wheels <<<"$list"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --disable-pip-version-check --target "$SITE" "${wheels[@]}" || return 1
    fi
    after=$(PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c \
        'import torch; print(torch.__version__, torch.__file__)') || return 1
    if [[ $before != "$after" ]]; then
        echo "torch changed from '$before' to '$after': remove torch from $SITE and .whl/" >&2
        return 1
    fi
    echo "torch untouched: $after"
}

versions() {
    nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader ||
        echo "nvidia-smi failed or is missing"
    "$PYTHON" - "$WORK/versions.json" <<'EOF'
"""Print and save the versions of the GPU stack and the project's dependencies."""
import importlib
import importlib.metadata as md
import json
import platform
import subprocess
import sys

import torch

info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
if info["gpus"]:
    info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    info["bf16"] = torch.cuda.is_bf16_supported()
try:
    info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip()
except (OSError, subprocess.SubprocessError):
    info["driver"] = None
modules = {"triton": "triton", "cupy": "cupy", "spikingjelly": "spikingjelly", "numpy": "numpy",
           "scipy": "scipy", "scikit-image": "skimage", "opencv": "cv2", "pillow": "PIL", "tqdm": "tqdm",
           "loguru": "loguru", "tensorboardX": "tensorboardX", "pytest": "pytest"}
for key, module in modules.items():
    try:
        mod = importlib.import_module(module)
        info[key] = getattr(mod, "__version__", None) or md.version(key)
    except Exception as exc:  # a missing or broken package is reported, not fatal here
        info[key] = f"unavailable ({type(exc).__name__}: {exc})"
for key, value in info.items():
    print(f"{key:>14}: {value}")
with open(sys.argv[1], "w") as fh:
    json.dump(info, fh, indent=1)
EOF
}

imports() {
    "$PYTHON" - <<'EOF'
"""Import everything the steps need, so that a missing dependency is named once, up front."""
import importlib
import importlib.util
import sys

missing = []
for module in ("spikingjelly", "loguru", "tqdm", "tensorboardX", "skimage.metrics", "skimage.data", "cv2",
               "PIL", "scipy.ndimage", "pytest", "models", "data.synthetic_rain", "tools.speed.run"):
    try:
        importlib.import_module(module)
    except Exception as exc:
        missing.append(f"{module} ({type(exc).__name__}: {exc})")
for script in ("train", "test"):
    try:
        spec = importlib.util.spec_from_file_location(f"{script}_cli", f"{script}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    except Exception as exc:
        missing.append(f"{script}.py ({type(exc).__name__}: {exc})")
if missing:
    sys.exit("cannot import: " + "; ".join(missing) + ". Bring the wheels in .whl/ (docs/speed.md, GPU check).")
print("all imports work")
EOF
}

pytest_cuda() {
    local junit=$OUT_DIR/pytest_cuda.xml
    "$PYTHON" -m pytest -q -rs -p no:cacheprovider --junitxml "$junit" tests/test_cuda.py tests/test_triton.py
    local rc=$?
    "$PYTHON" - "$junit" "${GPU_CHECK_FORCE:-0}" <<'EOF' || rc=1
"""A skipped CUDA test on a CUDA machine is a failure."""
import sys
import xml.etree.ElementTree as ET

suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite[0]
skipped = int(suite.get("skipped", 0))
if skipped and sys.argv[2] != "1":
    sys.exit(f"{skipped} CUDA tests were skipped on a machine with CUDA")
EOF
    return $rc
}

demo_data() {
    "$PYTHON" -c 'import sys; from data.synthetic_rain import make_demo_dataset
print(make_demo_dataset(sys.argv[1]))' "$DATA"
}

train_bf16() {
    local run=$WORK/train_bf16
    "$PYTHON" train.py --preset demo --train_dir "$DATA/train" --model_save_dir "$run" --max_steps 20 \
        --amp bf16 --device "$DEVICE" --no-progress || return 1
    "$PYTHON" - "$run" <<'EOF'
"""20 steps logged with finite losses, and a checkpoint."""
import csv
import math
import sys
from pathlib import Path

run = Path(sys.argv[1])
with open(run / "train_steps.csv", newline="") as fh:
    losses = [float(row["loss"]) for row in csv.DictReader(fh)]
assert len(losses) == 20 and all(map(math.isfinite, losses)), losses
assert (run / "last.pth").is_file()
print(f"20 steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
EOF
}

test_demo() {
    local out=$WORK/derained
    "$PYTHON" test.py --data_path "$DATA/test/input" --target_path "$DATA/test/target" \
        --weights "$WORK/train_bf16/last.pth" --save_path "$out" --device "$DEVICE" || return 1
    "$PYTHON" -c 'import json, math, sys
means = json.load(open(sys.argv[1]))["means"]["derained"]
psnr = {k: v for k, v in means.items() if k.startswith("psnr_")}
assert psnr and all(math.isfinite(v) for v in psnr.values()), means
print("PSNR finite:", {k: round(v, 2) for k, v in psnr.items()})' "$out/metrics.json"
}

torchrun_2() {
    local run=$WORK/torchrun device=cpu port gpus
    local tiny=(--arch vlifnet --dim 16 --en_num_blocks 1 1 2 2 --de_num_blocks 1 1 1 1)
    gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
    if [[ $DEVICE == cuda* ]] && ((gpus >= 2)); then
        device=cuda
        echo "2 processes with NCCL on 2 of the $gpus GPUs"
    else
        echo "2 processes on CPU with gloo: $gpus GPU(s), and NCCL needs one GPU per process"
    fi
    port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    OMP_NUM_THREADS=1 "$PYTHON" -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 \
        --master_port "$port" train.py --train_dir "$DATA/train" --model_save_dir "$run" "${tiny[@]}" \
        --batch_size 2 --patch_size_train 32 --max_steps 4 --warmup_epochs 0 --loss l1 --sync_bn \
        --num_workers 0 --no-progress --no-tensorboard --device "$device" || return 1
    grep -E "step 4: 2 processes hold identical weights" "$run/train.log"
}

write_json() {
    "$PYTHON" - "$OUT_DIR" "$WORK" "$DEVICE" "${GPU_CHECK_FORCE:-0}" "$(($(date +%s) - START))" "${1:-}" <<'EOF'
"""gpu_check.json: versions, steps, pytest counts and the benchmark records."""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, work, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
forced, seconds, note = sys.argv[4] == "1", int(sys.argv[5]), sys.argv[6]


def load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


steps = []
if (work / "steps.tsv").is_file():
    for line in (work / "steps.tsv").read_text().splitlines():
        name, status, secs, rc = line.split("\t")
        steps.append({"name": name, "status": status, "seconds": float(secs), "exit": None if rc == "-" else int(rc)})
pytest = None
try:
    suite = ET.parse(out / "pytest_cuda.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    pytest = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
except (OSError, ET.ParseError, IndexError):
    pass
payload = {"ok": all(s["status"] == "ok" for s in steps), "note": note or None, "device": device,
           "forced": forced, "seconds": seconds, "versions": load(work / "versions.json"), "steps": steps,
           "pytest": pytest, "benchmark": load(out / "bench.json")}
(out / "gpu_check.json").write_text(json.dumps(payload, indent=1))
print(f"wrote {out / 'gpu_check.json'}")
EOF
}

main() {
    echo "GPU check of $ROOT at $(date -u +%FT%TZ); output in $OUT_DIR"
    : >"$STEPS"
    rm -f "$OUT_DIR"/{bench,gpu_check}.json "$OUT_DIR/pytest_cuda.xml"
    if [[ ${GPU_CHECK_FORCE:-0} == 1 ]]; then
        echo "GPU_CHECK_FORCE=1: not checking for CUDA; steps run on device '$DEVICE'"
    elif ! "$PYTHON" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
        echo "no CUDA GPU visible to torch ($PYTHON): nothing to check, exiting 0"
        write_json "no CUDA GPU: nothing checked"
        return 0
    fi
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        step wheels 60 install_wheels
        export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "no wheels in $WHEELS: using the machine's packages"
        export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    fi
    step versions 60 versions
    step imports 60 imports
    step pytest_cuda 150 pytest_cuda
    step benchmark 150 "$PYTHON" -m tools.speed --device "$DEVICE" --quick --json "$OUT_DIR/bench.json"
    step demo_data 60 demo_data
    step train_bf16 90 train_bf16
    step test_demo 45 test_demo
    step torchrun_2 60 torchrun_2
    write_json
    if ((FAILED)); then
        echo "GPU check FAILED: $(awk -F'\t' '$2 != "ok" { printf "%s%s (%s)", sep, $1, $2; sep = ", " }' "$STEPS")"
        return 1
    fi
    echo "GPU check passed ($(($(date +%s) - START)) s)"
}

export -f install_wheels versions imports pytest_cuda demo_data train_bf16 test_demo torchrun_2
export ROOT OUT_DIR WORK PYTHON SITE WHEELS DEVICE DATA
main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
