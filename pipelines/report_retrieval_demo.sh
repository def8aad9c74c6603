#!/bin/bash
# Reduced-scale demo runs of pretrain -> retrieval index -> report generation (the runs behind
# the report-generation and retrieval results pages), all tracked in ./mlflow.db
set -x
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
PY=.venv/bin/python
U=sqlite:///$PWD/mlflow.db
nice -n 10 $PY -m medmm.pipelines.pretrain --config configs/pretrain/default.yaml tracking.uri=$U output_dir=runs/pretrain trainer.max_epochs=1 trainer.limit_train_batches=8 data.batch_size=32 eval.examples_figure=true tracking.run_name=demo-reduced || exit 1
nice -n 10 $PY -m medmm.pipelines.retrieve build --config configs/retrieve/default.yaml tracking.uri=$U tracking.run_name=demo-index || exit 1
nice -n 10 $PY -m medmm.pipelines.report train --config configs/report/default.yaml tracking.uri=$U decoder.num_layers=1 decoder.max_tokens=64 trainer.max_epochs=1 trainer.limit_train_batches=40 data.batch_size=16 generation.max_new_tokens=60 eval.max_studies=120 tracking.run_name=demo-reduced || exit 1
