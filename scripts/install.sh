#!/usr/bin/env bash
# Install this project's dependencies into the current Python environment (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
"$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r requirements.txt
# spikingjelly 2.0.0 declares torchvision and torchaudio as requirements; pip would pull them and
# a multi-GB CUDA torch. It uses neither (its only other import, loguru, is in requirements.txt),
# and torchvision does not import beside the CPU torch, so install it without dependencies.
"$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps spikingjelly==2.0.0
