#!/usr/bin/env bash
# Creates the virtual environment $MTLM_VENV (.venv) with the CPU build of torch, then mtlm with the extras named in
# $1 (e.g. dev,flax), every dependency at the exact version $MTLM_LOCK (requirements/lock.txt) names: the versions
# the test suite passed with (scripts/lock.py regenerates them). Idempotent and quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MTLM_VENV:-.venv}"
lock="${MTLM_LOCK:-requirements/lock.txt}"
python3 -m venv "$venv"
. "$venv/bin/activate"
pip install --quiet --disable-pip-version-check torch==2.13.0
pip install --quiet --disable-pip-version-check --constraint "$lock" -e ".${1:+[$1]}"
