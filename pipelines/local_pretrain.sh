#!/usr/bin/env bash
# Pretrain on this machine.
#   pipelines/local_pretrain.sh [CONFIG] [key=value ...]
# e.g. pipelines/local_pretrain.sh configs/pretrain/default.yaml data.root=/data/my_cohort trainer.max_epochs=30
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/pretrain/default.yaml}
shift || true
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m medmm.pipelines.pretrain --config "$config" "$@"
