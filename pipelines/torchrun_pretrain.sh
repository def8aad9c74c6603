#!/usr/bin/env bash
# Pretrain on GPUS GPUs of each of NNODES machines with torchrun (DDP; the contrastive
# loss gathers every process's embeddings with gradients: loss.gather=true).
#   GPUS=8 pipelines/torchrun_pretrain.sh [CONFIG] [key=value ...]                       # one machine
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 GPUS=8 pipelines/torchrun_pretrain.sh ...     # on host0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=host0 GPUS=8 pipelines/torchrun_pretrain.sh ...     # on host1
# data.batch_size is per process: the contrastive batch is batch_size x GPUS x NNODES.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/pretrain/default.yaml}
shift || true
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
NNODES=${NNODES:-1}
export HF_HUB_OFFLINE=1
exec .venv/bin/torchrun --nnodes "$NNODES" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$GPUS" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  -m medmm.pipelines.pretrain --config "$config" \
  trainer.accelerator=gpu trainer.devices="$GPUS" trainer.num_nodes="$NNODES" "$@"
