#!/usr/bin/env bash
# Pretrain with NPROC processes on each of NNODES machines, started by torchrun (DDP; the
# contrastive loss gathers every process's embeddings with gradients: loss.gather=true).
# One MLflow run: process 0 opens it, checkpoints, evaluates and prints the results.
#   NPROC=8 pipelines/torchrun_pretrain.sh [CONFIG] [key=value ...]                      # 8 GPUs, one machine
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 NPROC=8 pipelines/torchrun_pretrain.sh ...    # on host0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=host0 NPROC=8 pipelines/torchrun_pretrain.sh ...    # on host1
#   ACCELERATOR=cpu NPROC=2 pipelines/torchrun_pretrain.sh configs/pretrain/tiny.yaml   # CPU processes (gloo)
# ACCELERATOR: gpu (default; NCCL) or cpu (gloo). NPROC: processes per machine (default: its GPUs).
# data.batch_size is per process: the contrastive batch is batch_size x NPROC x NNODES.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/pretrain/default.yaml}
shift || true
ACCELERATOR=${ACCELERATOR:-gpu}
NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
NNODES=${NNODES:-1}
if [ "$NPROC" -lt 1 ]; then
  echo "error: no GPU found: set NPROC (and ACCELERATOR=cpu for CPU processes)" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1
exec .venv/bin/torchrun --nnodes "$NNODES" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$NPROC" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  -m medmm.pipelines.pretrain --config "$config" \
  trainer.accelerator="$ACCELERATOR" trainer.devices="$NPROC" trainer.num_nodes="$NNODES" "$@"
