#!/usr/bin/env bash
# The whole test suite, set-up included (scripts/setup.sh with the dev and flax extras, at the versions of
# requirements/lock.txt), on two workers, offline. Extra arguments go to pytest.
# `scripts/test.sh --oldest` runs the compatibility tests (generation, cache, remote code, parity: -m compat) in
# .venv-oldest instead, with every two-sided bound of setup.py at its lower end (requirements/oldest.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--oldest" ]]; then
    shift
    export MTLM_VENV=.venv-oldest MTLM_LOCK=requirements/oldest.txt
    set -- -m compat "$@"
fi
bash scripts/setup.sh dev,flax
. "${MTLM_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
exec python -m pytest -n 2 "$@"
