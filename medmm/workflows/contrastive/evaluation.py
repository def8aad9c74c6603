"""Held-out evaluation of a contrastive model: retrieval in every direction between the
modalities (exact pair R@k, label-match Hit@k / P@k) and zero-shot AUROC per finding
from text prompts, each beside its chance and oracle level where the cohort defines them
(a synthetic cohort's ``reference_model.json`` / ``reference_levels.json``; a real
cohort has none, and its rows show no chance or oracle)."""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medmm.data.prompts import ZERO_SHOT_PROMPTS
from medmm.io.findings import FINDINGS
from medmm.losses.symile import clip_scores, symile_scores
from medmm.metrics.candidates import candidate_accuracy
from medmm.metrics.reference_levels import (
    REFERENCE_LEVELS_FILE,
    REFERENCE_MODEL_FILE,
    ReferenceModel,
    levels_from_model,
)
from medmm.metrics.retrieval import retrieval_metrics
from medmm.metrics.zeroshot import binary_auroc, per_finding_auroc, zero_shot_scores
from medmm.retrieval.gallery_prior import fit_prior_correction
from medmm.retrieval.memory_retrieval import PairedMemory, fit_memory_translation
from medmm.workflows.pretrained import embed_loader, embed_texts


@dataclass
class EvalResult:
    metrics: dict[str, float]  # flat, MLflow-safe names, e.g. "xray_to_report.P@5"
    rows: list[dict] = field(default_factory=list)  # metric, value, chance, oracle, gap_closed
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None
    indices: np.ndarray | None = None
    zero_shot_scores: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> [N, findings]


# Retrieval directions evaluated (query -> candidate), in the order of the result rows.
RETRIEVAL_DIRECTIONS = (("xray", "report"), ("ecg", "report"), ("report", "xray"), ("report", "ecg"),
                        ("xray", "ecg"), ("ecg", "xray"))
ZERO_SHOT_MODALITIES = ("xray", "ecg")


def cohort_reference_levels(cohort_root: Path, test_labels: np.ndarray) -> dict:
    """Chance / oracle levels of the evaluated test studies, from the cohort's own files.

    ``reference_levels.json`` when it describes as many test studies as were read;
    otherwise the levels recomputed for these studies from ``reference_model.json`` (what
    the cohort's ideal observer knows). ``{}`` (no levels) for a cohort with neither file,
    a real cohort, and, with a one-line warning on stderr, for a cohort whose levels file
    describes other studies and that has no reference model to recompute them.
    """
    levels_path, model_path = cohort_root / REFERENCE_LEVELS_FILE, cohort_root / REFERENCE_MODEL_FILE
    levels = json.loads(levels_path.read_text()) if levels_path.exists() else None
    if levels is not None and levels.get("n_test_studies") == len(test_labels):
        return levels
    if model_path.exists():
        model = ReferenceModel.load(model_path)
        if model.findings != FINDINGS:
            raise ValueError(f"{model_path}: findings {list(model.findings)} are not the labels' {list(FINDINGS)}")
        return levels_from_model(test_labels, model)
    if levels is not None:
        print(f"WARNING: {levels_path} describes {levels.get('n_test_studies')} test studies, not the "
              f"{len(test_labels)} read, and there is no {REFERENCE_MODEL_FILE} to recompute them: "
              "no chance / oracle levels", file=sys.stderr)
    return {}






def prompt_embeddings(model, tokenizer, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative prompt embeddings, [F, P, d] each, in FINDINGS order."""
    pos = np.stack([embed_texts(model, tokenizer, ZERO_SHOT_PROMPTS[f]["pos"], max_tokens) for f in FINDINGS])
    neg = np.stack([embed_texts(model, tokenizer, ZERO_SHOT_PROMPTS[f]["neg"], max_tokens) for f in FINDINGS])
    return pos, neg


def _row(name: str, value: float | None, chance: float | None, oracle: float | None,
         contrastive_optimum: float | None = None, oracle_upper: float | None = None) -> dict:
    """One result row; ``oracle_upper`` is the oracle's sampling band on the test split
    (:mod:`medmm.metrics.reference_levels`): a value above it uses a signal the ideal
    observer does not have."""
    gap = None
    if value is not None and chance is not None and oracle is not None and oracle - chance > 1e-9:
        gap = (value - chance) / (oracle - chance)
    return {"metric": name, "value": value, "chance": chance, "oracle": oracle, "oracle_upper": oracle_upper,
            "contrastive_optimum": contrastive_optimum, "gap_closed": gap}


def _retrieval_row(label: str, name: str, value: float, levels: dict, with_optimum: bool = False) -> dict:
    """A retrieval row of metric ``name`` beside the direction's ``levels``."""
    return _row(label, value, levels["chance"].get(name), levels["oracle"].get(name),
                levels.get("contrastive_optimum", {}).get(name) if with_optimum else None,
                levels.get("oracle_upper", {}).get(name))


def candidate_rows(emb: dict[str, np.ndarray], scoring: str, k: int = 10) -> tuple[dict[str, float], list[dict]]:
    """Symile-MIMIC's task: which of k candidate X-rays belongs with a query made of two
    or more other modalities (e.g. ECG + labs); chance 1 / k. Symile scores a candidate
    with the product of the query representations, CLIP with the sum of dot products."""
    metrics, rows = {}, []
    others = [m for m in ("ecg", "labs", "report") if m in emb]
    if "xray" not in emb or len(emb["xray"]) < k:
        return metrics, rows
    score = symile_scores if scoring == "symile" else clip_scores
    for r in range(2, len(others) + 1):
        for query in itertools.combinations(others, r):
            s = score([torch.from_numpy(emb[m]) for m in query], torch.from_numpy(emb["xray"])).numpy()
            name = f"xray_from_{'-'.join(query)}.acc{k}"  # MLflow names: no '+'
            metrics[name] = candidate_accuracy(s, k)
            rows.append(_row(f"X-ray among {k} from {'+'.join(query)}", metrics[name], 1.0 / k, 1.0))
    return metrics, rows


def query_zero_shot_rows(emb: dict[str, np.ndarray], labels: np.ndarray, val_xray: np.ndarray,
                         val_labels: np.ndarray, scoring: str) -> tuple[dict[str, float], list[dict]]:
    """Zero-shot AUROC of each X-ray finding from a query of two or more other modalities
    (e.g. ECG + labs), with no classifier and no text: the query is scored, as in
    :func:`candidate_rows`, against the mean validation X-ray embedding with and without the
    finding, and the difference ranks the test studies. What a Symile model learns from an
    interaction of the query modalities (a finding neither carries alone) shows here; a
    finding without both classes in validation or test is skipped."""
    metrics, rows = {}, []
    others = [m for m in ("ecg", "labs", "report") if m in emb]
    score = symile_scores if scoring == "symile" else clip_scores
    for r in range(2, len(others) + 1):
        for query in itertools.combinations(others, r):
            found = {}
            for j, finding in enumerate(FINDINGS):
                has = val_labels[:, j].astype(bool)
                if has.all() or not has.any() or len(np.unique(labels[:, j])) < 2:
                    continue
                prototypes = torch.from_numpy(np.stack([val_xray[~has].mean(0), val_xray[has].mean(0)]))
                s = score([torch.from_numpy(emb[m]) for m in query], prototypes).numpy()
                found[finding] = binary_auroc(s[:, 1] - s[:, 0], labels[:, j])
                metrics[f"xray_from_{'-'.join(query)}.zeroshot_{finding}"] = found[finding]
            if found:
                mean = float(np.mean(list(found.values())))
                metrics[f"xray_from_{'-'.join(query)}.zeroshot_mean"] = mean
                rows.append(_row(f"zero-shot X-ray AUROC from {'+'.join(query)}, mean of {len(found)}", mean,
                                 0.5, None))
    return metrics, rows


def evaluate_contrastive(model, loader, tokenizer, reference: dict, *, max_tokens: int,
                         ks=(1, 5, 10), label_ks=(1, 5), scoring: str = "clip", val_loader=None,
                         memory_loader=None) -> EvalResult:
    """Evaluate on one split. ``reference`` is the cohort's chance / oracle levels
    (:func:`cohort_reference_levels`: ``retrieval[q->c][chance|oracle][metric]`` and
    ``zero_shot[modality][chance|oracle][finding]``); a direction or modality it lacks
    (all of them, for ``{}``) is evaluated with no chance / oracle beside it. With
    ``val_loader``, label-match retrieval is also reported prior-corrected
    (:mod:`medmm.retrieval.gallery_prior`) and, with ``memory_loader`` (the training
    split, unaugmented), memory-translated
    (:mod:`medmm.retrieval.memory_retrieval`); each one's settings are chosen on validation,
    and a *val-chosen* row reports, per direction, the method (plain, prior-corrected or
    memory-translated; ``val_chosen_method`` 0 / 1 / 2) with the best validation score."""
    modalities = tuple(m for m in ("xray", "ecg", "report", "labs") if m in model.modalities)
    emb, labels, indices = embed_loader(model, loader, modalities)
    val = embed_loader(model, val_loader, modalities)[:2] if val_loader is not None else None
    memory = embed_loader(model, memory_loader, modalities)[0] if val is not None and memory_loader is not None else None
    logit_scale = float(model.logit_scale().detach().exp()) if hasattr(model, "logit_scale") else 1.0
    metrics: dict[str, float] = {}
    rows: list[dict] = []
    no_levels = {"chance": {}, "oracle": {}}
    for q, c in RETRIEVAL_DIRECTIONS:
        if q not in emb or c not in emb:
            continue
        levels = reference.get("retrieval", {}).get(f"{q}->{c}", no_levels)
        values = retrieval_metrics(emb[q] @ emb[c].T, labels, labels, ks=ks, label_ks=label_ks)
        values.pop("P@1", None)  # identical to Hit@1
        for name, value in values.items():
            metrics[f"{q}_to_{c}.{name}"] = value
            rows.append(_retrieval_row(f"{q}->{c} {name}", name, value, levels, with_optimum=True))
        if val is None:
            continue
        val_emb, val_labels = val
        k = max(label_ks)
        metric = f"P@{k}"

        def label_match(scores: np.ndarray) -> dict[str, float]:  # test Hit@k / P@k of one scoring
            return {name: value for name, value in retrieval_metrics(scores, labels, labels, ks=(),
                                                                     label_ks=label_ks).items() if name != "P@1"}

        # (key, row label, validation score at the chosen settings, test figures, settings);
        # plain similarity's test rows are above
        plain_val = retrieval_metrics(val_emb[q] @ val_emb[c].T, val_labels, val_labels, ks=(), label_ks=(k,))[metric]
        methods = [("plain", "plain", plain_val, {n: v for n, v in values.items() if not n.startswith("R@")}, {})]
        prior, prior_val = fit_prior_correction(val_emb[q], val_emb[c], val_labels, logit_scale, metric=metric)
        methods.append(("prior_corrected", "prior-corrected", prior_val,
                        label_match(prior.scores(emb[q], emb[c], logit_scale)),
                        {"prior_weight": prior.weight, "prior_bandwidth": prior.bandwidth}))
        if memory is not None:
            paired = PairedMemory(memory[q], memory[c])
            translation, memory_val = fit_memory_translation(val_emb[q], val_emb[c], val_labels, paired, logit_scale,
                                                             metric=metric)
            methods.append(("memory_translated", "memory-translated", memory_val,
                            label_match(translation.scores(emb[q], emb[c], paired, logit_scale)),
                            {"memory_k": translation.k, "memory_weight": translation.weight}))
        for key, label, val_score, test_values, settings in methods:
            metrics[f"{q}_to_{c}.{key}.val_{metric}"] = val_score
            metrics.update({f"{q}_to_{c}.{name}": value for name, value in settings.items()})
            if key == "plain":
                continue
            for name, value in test_values.items():
                metrics[f"{q}_to_{c}.{key}.{name}"] = value
                rows.append(_retrieval_row(f"{q}->{c} {name} {label}", name, value, levels))
        # One figure per direction without looking at test: the method best on validation
        # (the first, i.e. the simplest, on a tie).
        chosen = max(range(len(methods)), key=lambda i: methods[i][2])
        _, label, _, test_values, _ = methods[chosen]
        metrics[f"{q}_to_{c}.val_chosen_method"] = chosen
        for name, value in test_values.items():
            metrics[f"{q}_to_{c}.val_chosen.{name}"] = value
            rows.append(_retrieval_row(f"{q}->{c} {name} val-chosen: {label}", name, value, levels))
    extra_metrics, extra_rows = candidate_rows(emb, scoring)
    metrics.update(extra_metrics)
    rows.extend(extra_rows)
    if val is not None and "xray" in val[0]:
        extra_metrics, extra_rows = query_zero_shot_rows(emb, labels, val[0]["xray"], val[1], scoring)
        metrics.update(extra_metrics)
        rows.extend(extra_rows)
    scores_of: dict[str, np.ndarray] = {}
    # text-prompt zero-shot needs the report encoder (an X-ray + ECG + labs model has none)
    pos, neg = prompt_embeddings(model, tokenizer, max_tokens) if "report" in modalities else (None, None)
    for modality in ZERO_SHOT_MODALITIES if "report" in modalities else ():
        if modality not in emb:
            continue
        scores_of[modality] = zero_shot_scores(emb[modality], pos, neg)
        auroc = per_finding_auroc(scores_of[modality], labels, FINDINGS)
        ref = reference.get("zero_shot", {}).get(modality, no_levels)
        observable = reference.get("observable", {}).get(modality, [])
        planted = [f for f in FINDINGS if f in observable and auroc[f] is not None]
        for f in FINDINGS:
            if auroc[f] is not None:
                metrics[f"zeroshot_{modality}.{f}"] = auroc[f]
                rows.append(_row(f"zero-shot {modality} AUROC {f}", auroc[f], ref["chance"].get(f),
                                 ref["oracle"].get(f)))
        if planted:
            mean = float(np.mean([auroc[f] for f in planted]))
            metrics[f"zeroshot_{modality}.planted_mean"] = mean
            rows.append(_row(f"zero-shot {modality} AUROC mean of planted", mean, 0.5, 1.0))
    return EvalResult(metrics, rows, emb, labels, indices, scores_of)


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of the metrics beside chance and oracle ("-" where undefined)."""
    def fmt(x):
        return "   -  " if x is None else f"{x:6.3f}"

    lines = [f"{'metric':44s} {'value':>6s} {'chance':>6s} {'oracle':>6s} {'band':>6s} {'InfoNCE-opt':>11s} "
             f"{'gap closed':>10s}",
             f"{'':44s} {'':6s} {'':6s} {'':6s} {'(<=)':>6s} {'(see docs)':>11s}"]
    beyond = False
    for r in rows:
        gap = "      -" if r["gap_closed"] is None else f"{100 * r['gap_closed']:8.1f} %"
        flag = ""
        if r.get("oracle_upper") is not None and r["value"] is not None and r["value"] > r["oracle_upper"] + 1e-9:
            flag, beyond = "  !", True
        lines.append(f"{r['metric']:44s} {fmt(r['value'])} {fmt(r['chance'])} {fmt(r['oracle'])} "
                     f"{fmt(r.get('oracle_upper'))} {fmt(r.get('contrastive_optimum')):>11s} {gap}{flag}")
    if any(r.get("oracle_upper") is not None for r in rows):
        lines.append("oracle: the expected value of the best ranking from what each modality shows; band: the "
                     "upper edge of its spread on this test split (a value between the two is at the oracle "
                     "within sampling error)")
    if beyond:
        lines.append("! above the band: the model uses a signal the cohort's reference model does not describe")
    return "\n".join(lines)
