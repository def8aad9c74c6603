"""A persistent retrieval index of a cohort (``python -m medmm.pipelines.retrieve``).

``build`` embeds every study of the cohort with a pretrained model and writes one FAISS
index per modality, stamped with the weights' and the manifest's hashes, and logs the
build to MLflow. ``query`` embeds one X-ray, ECG or text with the same model and returns
the top-k studies with their scores and report text; an index built from other weights or
another cohort is refused (exit code 2).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA

from medmm.cohort.manifest import Manifest
from medmm.config.core import ConfigError
from medmm.console import Number, headline
from medmm.data.datamodule import PretrainDataModule
from medmm.data.inputs import input_batch
from medmm.io.errors import MedmmInputError
from medmm.io.findings import FINDINGS
from medmm.metrics.retrieval import retrieval_metrics
from medmm.retrieval.index import IndexParams, StudyIndex
from medmm.tracking.figures import retrieval_examples_figure, show_cohort_examples
from medmm.tracking.pipeline_run import (
    finish,
    log_cohort_summary,
    log_context,
    log_figure,
    log_json,
    log_metrics,
    run_name,
    start_run,
)
from medmm.tracking.run_context import source_tag
from medmm.tracking.store import default_tracking_uri
from medmm.workflows.preflight import CohortNeeds, check_before_run, decoded_cohort_outputs
from medmm.workflows.pretrained import embed_loader, load_pretrained
from medmm.workflows.retrieve.config import RetrieveConfig


@dataclass
class BuildOutcome:
    run_id: str
    tracking_uri: str
    index_path: Path
    metrics: dict[str, float]

    def __str__(self) -> str:  # what the command prints
        # the test split's retrieval through the stored index (a check that it answers as the embeddings do)
        numbers = []
        for key, value in self.metrics.items():
            if key.startswith("test."):  # test.<query>_to_<candidate>.<metric>
                direction, _, metric = key.removeprefix("test.").rpartition(".")
                label = f"test {direction.replace('_to_', ' -> ')} {metric.replace('_at_', '@')} (through the index)"
                numbers.append(Number(label, value))
        notes = [f"index of {int(self.metrics['index.n_studies'])} studies written to {self.index_path} "
                 f"(embedding took {self.metrics.get('time.embed_s', float('nan')):.0f} s)"]
        return headline("retrieval index built", numbers, run_id=self.run_id, tracking_uri=self.tracking_uri,
                        table="results/index_meta.json", notes=notes)


def _params(cfg: RetrieveConfig):
    i = cfg.index
    return IndexParams(exact_max=i.exact_max, approximate=i.approximate, hnsw_m=i.hnsw_m,
                       hnsw_ef_construction=i.hnsw_ef_construction, hnsw_ef_search=i.hnsw_ef_search,
                       ivf_nlist=i.ivf_nlist, ivf_nprobe=i.ivf_nprobe)


def _load_model(cfg: RetrieveConfig, tracking_uri: str):
    if not cfg.pretrained.source:
        raise ConfigError("pretrained.source is required: an MLflow model URI or a folder of a pretraining model")
    return load_pretrained(cfg.pretrained.source, cfg.pretrained.kind,
                           tracking_uri=cfg.pretrained.tracking_uri or tracking_uri)


def build(cfg: RetrieveConfig) -> BuildOutcome:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    facts = check_before_run(cfg.tracking.uri,
                             output_dirs=decoded_cohort_outputs(cfg.data, cfg.index.path, "index.path"),
                             cohort=CohortNeeds(cfg.data.root, ("xray",), limit_studies=cfg.data.limit_studies,
                                                why="a retrieval index"),
                             pretrained=cfg.pretrained.source, pretrained_tracking_uri=cfg.pretrained.tracking_uri,
                             needs_pretrained=True)
    tracking_uri = cfg.tracking.uri or default_tracking_uri()
    pretrained = _load_model(cfg, tracking_uri)
    backbone = pretrained.backbone()  # the retrieval embeddings of either pretraining family
    # the model's encoders and the cohort's files decide what is indexed, before a run is opened
    modalities = cfg.index.resolve(backbone.modalities, facts.modalities)
    pcfg = pretrained.config
    data = cfg.data.model_copy(update={"image_size": pcfg.data.image_size, "ecg_fs": pcfg.data.ecg_fs,
                                       "augment": False})
    client, run_id, _ = start_run(tracking_uri, cfg.tracking.experiment, run_name(cfg, "retrieve"), "retrieve")
    dm = PretrainDataModule(data, max_tokens=pcfg.model.text.max_tokens, seed=cfg.seed,
                            tokenizer_path=pcfg.model.text.model_path)
    dm.setup()
    log_context(client, run_id, "retrieve", cfg, dm.manifest, dm.cohort.skipped)
    manifest_sha = dm.manifest.content_hash()
    client.set_tag(run_id, "pretrained_weights_sha256", pretrained.weights_sha256)
    client.set_tag(run_id, "pretrained_source", source_tag(pretrained.source, cfg))
    client.set_tag(run_id, "index_modalities", ",".join(modalities))

    start = time.perf_counter()
    parts, index_parts = [], []
    for split in ("train", "val", "test"):
        if len(dm.cohort.indices(split)):
            emb, _, idx = embed_loader(backbone, dm.loader(split), modalities)
            parts.append(emb)
            index_parts.append(idx)
    order = np.concatenate(index_parts)
    embeddings = {m: np.concatenate([p[m] for p in parts]) for m in modalities}
    embed_s = time.perf_counter() - start
    studies = pd.DataFrame({"study_id": dm.cohort.study_ids[order], "split": dm.cohort.splits[order],
                            "report_text": dm.cohort.report_text[order]})
    meta = {"checkpoint_sha256": pretrained.weights_sha256, "manifest_sha256": manifest_sha,
            "pretrained_source": pretrained.source, "pretrained_kind": pretrained.kind,
            "image_size": pcfg.data.image_size, "ecg_fs": pcfg.data.ecg_fs}
    index = StudyIndex.build(cfg.index.path, embeddings, studies, _params(cfg), meta)

    metrics = {"index.n_studies": float(len(studies)), "time.embed_s": embed_s,
               **{f"index.{m}.build_s": v["build_s"] for m, v in index.meta["modalities"].items()},
               **{f"index.{m}.bytes": float((Path(cfg.index.path) / f"{m}.faiss").stat().st_size) for m in modalities}}
    # Sanity of the stored index: the test split's X-ray -> report retrieval through it
    # must equal the exact computation on the embeddings it holds.
    test = np.flatnonzero(studies["split"].values == "test")
    if {"xray", "report"} <= set(modalities) and len(test) > 1:
        sim = embeddings["xray"][test] @ embeddings["report"][test].T
        metrics.update({f"test.xray_to_report.{k.replace('@', '_at_')}": v
                        for k, v in retrieval_metrics(sim, ks=(1, 5)).items()})
    log_metrics(client, run_id, metrics)
    log_cohort_summary(client, run_id, dm.cohort)
    if len(test) > 1:  # test-split embeddings + findings for the notebooks' embedding map (no identifiers)
        _log_test_embeddings(client, run_id, embeddings, dm.cohort.labels[order][test], test)
        log_figure(client, run_id, embedding_map_figure(embeddings[modalities[0]][test], dm.cohort.labels[order][test],
                                                        modalities[0]), "embedding_map")
    if {"xray", "report"} <= set(modalities) and len(test) > 1 and \
            show_cohort_examples(cfg.examples_figure, cfg.data.root):
        # the gallery shows the cohort's X-rays and report text: the demo's, or where the user turns it on
        rows = order[test]
        log_figure(client, run_id, retrieval_examples_figure(
            dm.cohort.xray[rows[:4]].astype("float32"), dm.cohort.labels[rows],
            embeddings["xray"][test[:4]] @ embeddings["report"][test].T, [str(t) for t in dm.cohort.report_text[rows]],
            dm.cohort.labels[rows]), "retrieval_examples")
    log_json(client, run_id, "index_meta.json", {k: v for k, v in index.meta.items() if k != "pretrained_source"}
             | {"pretrained_source": source_tag(pretrained.source, cfg)})
    finish(client, run_id)
    return BuildOutcome(run_id, tracking_uri, Path(cfg.index.path), metrics)


def _log_test_embeddings(client, run_id, embeddings, labels, rows) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test_embeddings.npz"
        np.savez(path, labels=labels, **{m: e[rows] for m, e in embeddings.items()})
        client.log_artifact(run_id, str(path), artifact_path="results")


def embedding_map_figure(vectors: np.ndarray, labels: np.ndarray, modality: str):
    """2-D PCA map of the test split's embeddings, one panel per finding (positive in colour)."""
    import matplotlib  # the non-interactive backend is chosen only where a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = PCA(n_components=2, random_state=0).fit_transform(vectors)
    cols = 3
    rows = -(-len(FINDINGS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (j, finding) in zip(axes.flat, enumerate(FINDINGS)):
        pos = labels[:, j] > 0
        ax.scatter(xy[~pos, 0], xy[~pos, 1], s=6, c="#cccccc")
        ax.scatter(xy[pos, 0], xy[pos, 1], s=8, c="#d62728")
        ax.set_title(f"{finding} ({int(pos.sum())})", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    for ax in list(axes.flat)[len(FINDINGS):]:
        ax.axis("off")
    fig.suptitle(f"test split, {modality} embeddings (PCA)", fontsize=10)
    fig.tight_layout()
    return fig


def query(cfg: RetrieveConfig, kind: str, value: str, k: int, against: str) -> list[dict]:
    """Top-``k`` studies for one X-ray / ECG file or text."""
    pretrained = _load_model(cfg, cfg.tracking.uri or default_tracking_uri())
    try:
        manifest_sha = Manifest.load(cfg.data.root).content_hash()
    except FileNotFoundError as exc:
        raise MedmmInputError(cfg.data.root, f"cannot check the index against its cohort: {exc}") from None
    index = StudyIndex.load(cfg.index.path, checkpoint_sha256=pretrained.weights_sha256,
                            manifest_sha256=manifest_sha)
    column = {"xray": "xray", "ecg": "ecg", "text": "report"}[kind]
    with torch.no_grad():
        emb = pretrained.backbone().embed(column, input_batch(column, [value], pretrained.config,
                                                              pretrained.tokenizer))
    return index.search(emb.numpy(), against, k)[0]
