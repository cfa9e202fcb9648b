#!/usr/bin/env bash
# The main job, set-up included (scripts/setup.sh): train a small mtlm_llama on the bundled Tiny Shakespeare
# (mtlm/configs/shakespeare-char.yaml, about 5 minutes on 2 CPU cores), then generate from it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mtlm train --overwrite "$@"
mtlm generate runs/shakespeare-char --prompt "ROMEO:" --max-new-tokens 120 --seed 0
