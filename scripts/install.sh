#!/usr/bin/env bash
# Install this project's dependencies into the current Python environment (idempotent).
# Prints a line per package pip fetches or installs; on failure, pip's whole output.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

pip_install() {
    local log status
    log=$(mktemp)
    set +e
    "$PYTHON" -m pip install --disable-pip-version-check --root-user-action=ignore --progress-bar off "$@" 2>&1 \
        | tee "$log" | grep --line-buffered -E "^(Collecting|Installing collected|Successfully installed)" \
        | sed -u 's/^/[install]   /'
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        echo "[install] pip failed (exit $status); its output:" >&2
        cat "$log" >&2
        rm -f "$log"
        exit "$status"
    fi
    rm -f "$log"
}

echo "[install] 1/2 requirements.txt (torch==2.13.0, numpy, scikit-image, OpenCV, ...): up to a minute on a fresh machine"
pip_install -r requirements.txt
# spikingjelly 2.0.0 declares torchvision and torchaudio as requirements; pip would pull them and
# a multi-GB CUDA torch. It uses neither (its only other import, loguru, is in requirements.txt),
# and torchvision does not even import beside the CPU torch, so install it without dependencies.
echo "[install] 2/2 spikingjelly==2.0.0 (without its torchvision/torchaudio requirements)"
pip_install --no-deps spikingjelly==2.0.0
echo "[install] done: $("$PYTHON" -c 'import torch, spikingjelly.activation_based; print("torch", torch.__version__)')"
