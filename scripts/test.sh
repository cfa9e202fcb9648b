#!/usr/bin/env bash
# The whole test suite, set-up included (scripts/setup.sh with the flax extra), on two workers, offline. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,flax
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
exec python -m pytest -n 2 "$@"
