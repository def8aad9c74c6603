"""MulModSeg's claims over seeds: Dice and HD95 per class and modality, mean +- sd, written
to docs/results/segmentation_claims.md.

    python benchmarks/segment_claims.py                                     # phantoms, seeds 0 1 2
    python benchmarks/segment_claims.py --config configs/segment/real.yaml \\
        --out docs/results/segmentation_claims_real.md
    python benchmarks/segment_claims.py --parts a --seeds 0 trainer.threads=2   # one piece

Parts, each seed one MLflow run per arm (``python -m medmm.pipelines.segment train`` on the
config with the same seed and ``--steps`` budget):

- a: the text-conditioned heads beside the plain head matched to their parameter count
  (``variants=[text, none_matched]``), alternating CT / MR steps;
- b: the text-conditioned heads on mixed CT + MR batches (``trainer.batching=mixed``: the
  same patches as in a, half the optimiser steps);
- c: the text-conditioned heads trained on CT alone and on MR alone (``data.modalities``),
  each as many optimiser steps as the joint model of a.

A finished run of the store with the same resolved config (seed included) is read instead
of trained again: pieces run apart (``--parts a``, then ``--parts b c``) and a last call with
every part writes the whole page without training. key=value overrides apply to every arm
before its own settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from medmm.config.core import build_config
from medmm.tracking.run_context import commit_label
from medmm.training.precision import cpu_identity
from medmm.workflows.segment.config import SegmentConfig
from medmm.workflows.segment.run import VARIANT_NAMES, metric_key, train

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "medmm-segment-claims"
# the page reads metrics only: test masks, example figures and a registered model would cost time and disk
LEAN = ["save_test_masks=false", "examples_figure=false", "tracking.register_model=false"]
# part -> arm -> the settings that make it, applied after the caller's overrides so that none undoes them
ARMS = {
    "a": {"joint": ["variants=[text, none_matched]", "trainer.batching=alternating"]},
    "b": {"mixed": ["variants=[text]", "trainer.batching=mixed"]},
    "c": {"ct": ["variants=[text]", "trainer.batching=alternating", "data.modalities=[ct]"],
          "mr": ["variants=[text]", "trainer.batching=alternating", "data.modalities=[mr]"]},
}
# table column of each (part, variant): part c's two arms share one column, each filling its modality
COLUMNS = {("a", "text"): "MulModSeg", ("a", "none_matched"): VARIANT_NAMES["none_matched"],
           ("b", "text"): "MulModSeg, mixed batches", ("c", "text"): "MulModSeg, one modality"}
METRICS = {"dice": ("Dice", 3), "hd95": ("HD95 (mm)", 1)}
PART_TEXT = {
    "a": "**MulModSeg** (text-conditioned heads, CT and MR batches alternating, one step each) and the "
         "**{matched}** (the same backbone; the plain head plus a global image-feature branch and a hidden layer: "
         "{params}), trained in one run on the same patches, {steps} optimiser steps each",
    "b": "**MulModSeg, mixed batches**: one CT and one MR batch joined per step (the same patches as a), {steps} "
         "optimiser steps",
    "c": "**MulModSeg, one modality**: one model trained on CT alone and one on MR alone, each scored on its "
         "modality, {steps} optimiser steps each (the joint model's count, so each sees twice as many batches of "
         "its modality)",
}


def arm_config(args, part: str, arm: str, seed: int) -> SegmentConfig:
    steps = [f"trainer.max_steps={args.steps}"] if args.steps else []
    return build_config(SegmentConfig, args.config, [
        *LEAN, *args.overrides, *steps, *ARMS[part][arm], f"seed={seed}", f"output_dir={args.work / 'runs'}",
        f"tracking.uri={args.tracking_uri}", f"tracking.experiment={EXPERIMENT}",
        f"tracking.run_name=claims-{part}-{arm}-seed{seed}"])


def setting_hash(cfg: SegmentConfig) -> str:
    """What makes two runs the same measurement: the resolved config, less where it is logged."""
    text = json.dumps(cfg.model_dump(mode="json", exclude={"tracking", "output_dir"}), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stored_run(client: MlflowClient, setting: str):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], f"tags.claims_setting = '{setting}' and "
                                                          "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def run_arm(client: MlflowClient, args, part: str, arm: str, seed: int, commit: str):
    """The arm's finished run from the store, else a new one (tagged with its setting and commit)."""
    cfg = arm_config(args, part, arm, seed)
    setting = setting_hash(cfg)
    found = stored_run(client, setting)
    if found is not None:
        print(f"part {part} {arm} seed {seed}: stored run {found.info.run_id}", flush=True)
        return found
    start = time.perf_counter()
    run_id = train(cfg).run_id
    for key, value in {"claims_setting": setting, "claims_commit": commit, "claims_part": part,
                       "claims_arm": arm}.items():
        client.set_tag(run_id, key, value)
    print(f"part {part} {arm} seed {seed}: run {run_id} ({time.perf_counter() - start:.0f} s)", flush=True)
    return client.get_run(run_id)


def run_scores(run, part: str) -> dict[tuple[str, str, str, str], float]:
    """(column, modality, class, metric) -> value from a run's ``test.<variant>.<modality>.<class>.<metric>``
    metrics; class names as the run's ``classes`` tag spells them, ``mean`` the mean over classes."""
    names = {metric_key(c): c for c in json.loads(run.data.tags["classes"])}
    out = {}
    for key, value in run.data.metrics.items():
        parts = key.split(".")
        if len(parts) < 5 or parts[0] != "test" or parts[-1] not in METRICS:
            continue
        variant, modality, cls = parts[1], parts[2], ".".join(parts[3:-1])
        out[(COLUMNS[(part, variant)], modality, names.get(cls, cls), parts[-1])] = value
    return out


def mean_sd(values: list[float], digits: int) -> str:
    v = np.asarray(values, float)
    sd = f"{np.std(v, ddof=1):.{digits}f}" if len(v) > 1 else "n/a"
    return f"{np.mean(v):.{digits}f} ± {sd}"


def tables(scores: dict[tuple, list[float]]) -> list[str]:
    """One table per metric: a row per modality x class (the classes, then their mean), a column
    per arm."""
    columns = [c for c in COLUMNS.values() if any(k[0] == c for k in scores)]
    rows = sorted({(m, c) for _, m, c, _ in scores}, key=lambda k: (k[0], k[1] == "mean", k[1]))
    lines = []
    for metric, (title, digits) in METRICS.items():
        lines += [f"### {title}", "", "| modality | class | " + " | ".join(columns) + " |",
                  "|---|---|" + "---|" * len(columns)]
        for modality, cls in rows:
            cells = [mean_sd(scores[key], digits) if (key := (col, modality, cls, metric)) in scores else ""
                     for col in columns]
            name = "**mean**" if cls == "mean" else cls
            lines.append(f"| {modality.upper()} | {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def readings(scores: dict[tuple, list[float]]) -> list[str]:
    """Per claim and modality: the difference of mean Dice (mean over classes), and whether it
    lies within the larger of the two seed sds."""
    out = []
    claims = [("MulModSeg", VARIANT_NAMES["none_matched"], "text conditioning against matched capacity"),
              ("MulModSeg", "MulModSeg, mixed batches", "alternating CT / MR steps against mixed batches"),
              ("MulModSeg", "MulModSeg, one modality", "unpaired CT + MR training against a model per modality")]
    for ours, ref, claim in claims:
        for modality in sorted({k[1] for k in scores}):
            a, b = scores.get((ours, modality, "mean", "dice")), scores.get((ref, modality, "mean", "dice"))
            if not a or not b:
                continue
            diff = float(np.mean(a) - np.mean(b))
            spread = max(np.std(a, ddof=1) if len(a) > 1 else np.nan, np.std(b, ddof=1) if len(b) > 1 else np.nan)
            note = " (within the seed spread)" if np.isfinite(spread) and abs(diff) <= spread else ""
            out.append(f"- {claim}, {modality.upper()}: {ours} {'-' if diff < 0 else '+'}{abs(diff):.3f} mean Dice "
                       f"against {ref}{note}.")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs/segment/phantoms.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="trainer.max_steps (default: the config's)")
    parser.add_argument("--parts", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--work", type=Path, default=REPO / "runs/segment_claims", help="runs' local artifacts and "
                                                                                       "the default MLflow store")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite:///<work>/mlflow.db)")
    parser.add_argument("--out", type=Path, default=REPO / "docs/results/segmentation_claims.md")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every arm")
    raw = list(sys.argv[1:] if argv is None else argv)
    # key=value anywhere on the line: after --seeds or --parts argparse would take it for one of theirs
    overrides = [a for a in raw if "=" in a and not a.startswith("-")]
    args = parser.parse_args([a for a in raw if a not in overrides])
    args.overrides = overrides
    args.work.mkdir(parents=True, exist_ok=True)
    args.tracking_uri = args.tracking_uri or f"sqlite:///{args.work.resolve() / 'mlflow.db'}"
    client = MlflowClient(args.tracking_uri)
    commit = commit_label()
    runs = {(part, arm, seed): run_arm(client, args, part, arm, seed, commit)
            for seed in args.seeds for part in args.parts for arm in ARMS[part]}

    scores: dict[tuple, list[float]] = {}
    for (part, _, _), run in runs.items():
        for key, value in run_scores(run, part).items():
            scores.setdefault(key, []).append(value)
    params = {variant: int(run.data.metrics[f"{variant}.n_trainable_params"])
              for run in runs.values() for variant in json.loads(run.data.params["variants"])}
    steps = {part: f"{int(run.data.metrics['text.n_optimiser_steps']):,}" for (part, _, _), run in runs.items()}
    base = arm_config(args, args.parts[0], next(iter(ARMS[args.parts[0]])), args.seeds[0])
    commits = sorted({run.data.tags.get("claims_commit", "unknown") for run in runs.values()})
    minutes = sum((run.info.end_time - run.info.start_time) / 60000 for run in runs.values())
    threads = base.trainer.threads or os.cpu_count()
    config = args.config.resolve().relative_to(REPO) if args.config.resolve().is_relative_to(REPO) else args.config
    page = [
        "# Segmentation: MulModSeg's claims over seeds",
        "",
        f"`{config}` with `trainer.max_steps={base.trainer.max_steps}` (batches of one modality per model), seeds "
        f"{', '.join(map(str, args.seeds))}, one MLflow run per part, arm and seed:",
        "",
        *(f"- {part}: " + PART_TEXT[part].format(
            matched=VARIANT_NAMES["none_matched"], steps=steps[part],
            params=" vs ".join(f"{n:,} trainable parameters {'MulModSeg' if v == 'text' else 'plain'}"
                               for v, n in params.items())) + "."
          for part in args.parts),
        "",
        "Held-out test split; Dice and HD95 in mm per class and modality (metric policy: [segmentation "
        "guide](../guide/segmentation.md#metrics)); **mean** = each run's mean over classes.",
        "",
        *tables(scores),
        "Mean ± sample sd (ddof = 1) over seeds (initialisation and patch draws); the split is the cohort's own.",
        "",
        "## Reading",
        "",
        *(readings(scores) or ["- Every reading compares with part a's MulModSeg: add part a to read them."]),
        "",
        "## How it was measured",
        "",
        f"- Command: `python benchmarks/segment_claims.py {shlex.join(raw)}`".rstrip() + f" ({minutes:.1f} min of "
        "runs, their own wall clock).",
        f"- Machine: {os.cpu_count()} CPU cores ({cpu_identity()['cpu_model']}), no GPU, {threads} torch thread(s) "
        "per run.",
        f"- Commit: {' / '.join(commits)}.",
        f"- MLflow store: `{args.tracking_uri}`, experiment `{EXPERIMENT}`; runs:",
        "",
        "| part | arm | seed | MLflow run |",
        "|---|---|---|---|",
        *(f"| {part} | {arm} | {seed} | `{run.info.run_id}` |" for (part, arm, seed), run in sorted(runs.items())),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(page) + "\n")
    print("\n".join(page))
    return 0


if __name__ == "__main__":
    sys.exit(main())
