#!/usr/bin/env bash
# The whole test suite, set-up included: a virtual environment in .venv with the CPU build of torch, mtlm and its
# test extras; then pytest on two workers, offline. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --disable-pip-version-check torch==2.13.0
pip install --quiet --disable-pip-version-check -e ".[dev]"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
exec python -m pytest -n 2 "$@"
