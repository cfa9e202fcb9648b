#!/usr/bin/env bash
# Creates .venv (if needed) with the CPU build of torch, then mtlm with the extras named in $1 (e.g. dev,flax).
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --disable-pip-version-check torch==2.13.0
pip install --quiet --disable-pip-version-check -e ".${1:+[$1]}"
