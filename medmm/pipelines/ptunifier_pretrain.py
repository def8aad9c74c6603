"""PTUnifier pretraining run: what ``python -m medmm.pipelines.pretrain`` does when the
config's ``model.name`` is ``ptunifier`` (the pretrain pipeline dispatches here).

Same cohort, DataModule, MLflow logging and checkpointing as the contrastive run; then
the model is exported (safetensors + config.yaml, the input of
``python -m medmm.pipelines.finetune``) and evaluated zero-shot on the held-out split
by ITC retrieval in both directions.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

from medmm.config.ptunifier import PTUnifierPretrainConfig

EXPORT_DIR = "export"


def export_model(model, cfg, folder: Path) -> Path:
    """Weights as safetensors (never pickle) + the resolved config as YAML."""
    from safetensors.torch import save_file

    from medmm.config.core import to_yaml

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text(to_yaml(cfg))
    return folder


def itc_retrieval(model, loader, ks=(1, 5, 10), label_ks=(1, 5)) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Held-out retrieval from ITC embeddings: X-ray -> report and report -> X-ray."""
    import torch

    from medmm.metrics.retrieval import retrieval_metrics
    from medmm.tasks.ptunifier_pretrain import itc_embeddings

    model.eval()
    imgs, txts, labels = [], [], []
    with torch.no_grad():
        for batch in loader:
            i, t = itc_embeddings(model, batch["xray"], batch["report_ids"], batch["report_mask"])
            imgs.append(i.numpy())
            txts.append(t.numpy())
            labels.append(batch["labels"].numpy())
    img, txt, lab = np.concatenate(imgs), np.concatenate(txts), np.concatenate(labels)
    sim = img @ txt.T
    metrics = {f"xray_to_report.{k}": v for k, v in retrieval_metrics(sim, lab, lab, ks, label_ks).items()}
    metrics.update({f"report_to_xray.{k}": v for k, v in retrieval_metrics(sim.T, lab, lab, ks, label_ks).items()})
    return metrics, img, txt


def run(cfg: PTUnifierPretrainConfig, resume: bool = False):
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    from mlflow.tracking import MlflowClient

    from medmm.data.datamodule import PretrainDataModule
    from medmm.pipelines.pretrain import PretrainOutcome, _trainer, start_or_resume_run
    from medmm.tasks.ptunifier_pretrain import PTUnifierPretrainTask
    from medmm.tracking.run_context import log_json_artifact, log_run_context

    start = time.perf_counter()
    logger, tracking_uri, ckpt_path, run_dir = start_or_resume_run(cfg, resume)
    run_id = logger.run_id

    dm = PretrainDataModule(cfg.data, max_tokens=cfg.model.text.max_tokens, seed=cfg.seed,
                            tokenizer_path=cfg.model.text.model_path)
    dm.setup()
    data_s = time.perf_counter() - start
    for s in dm.cohort.skipped:
        print(f"WARNING: skipped {s['path']}: {s['problem']}", file=sys.stderr)
    client = MlflowClient(tracking_uri)
    log_run_context(client, run_id, cfg, dm.manifest, dm.cohort.skipped)
    client.log_metric(run_id, "data.n_skipped_studies", len(dm.cohort.skipped))
    for split in ("train", "val", "test"):
        client.log_metric(run_id, f"data.n_{split}_studies", len(dm.cohort.indices(split)))

    task = PTUnifierPretrainTask(cfg)
    trainer = _trainer(cfg, logger, run_dir / "checkpoints")
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    train_s = time.perf_counter() - start - data_s

    export = export_model(task.model, cfg, run_dir / EXPORT_DIR)
    client.log_artifacts(run_id, str(export), artifact_path="model_export")
    metrics, _, _ = itc_retrieval(task.model, dm.test_dataloader())
    eval_s = time.perf_counter() - start - data_s - train_s
    step = int(trainer.global_step)
    for name, value in {"time.data_s": data_s, "time.train_s": train_s, "time.eval_s": eval_s}.items():
        client.log_metric(run_id, name, value)
    for name, value in metrics.items():
        client.log_metric(run_id, f"test.{name}".replace("@", "_at_"), value, step=step)
    log_json_artifact(client, run_id, "test_metrics.json", metrics)
    client.set_tag(run_id, "export_dir", str(export.resolve()))
    client.set_terminated(run_id)
    table = "\n".join(f"{k:32s} {v:.3f}" for k, v in metrics.items())
    table += f"\n\nexported model: {export}\ntime: data {data_s:.0f} s, train {train_s:.0f} s, eval {eval_s:.0f} s"
    return PretrainOutcome(run_id, tracking_uri, metrics, table, None, len(dm.cohort.skipped))
