"""Figures logged as MLflow artifacts (``figures/<name>.png``): loss and metric curves read
back from a run, ROC curves, confusion matrices, the retrieval gallery, segmentation
overlays, grouped metric bars.

A figure never shows an identifier or a path: examples are captioned by their position in
a split ("test study #2"). Figures that show a cohort's own images or report text are
drawn only where :func:`show_cohort_examples` allows."""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medmm.metrics.reference_levels import REFERENCE_MODEL_FILE

EXAMPLES_FIGURE_HELP = ("log examples that show the cohort's images and report text (a figure, and the report "
                        "examples' text); unset: only for the synthetic demo cohort, whose folder carries "
                        f"{REFERENCE_MODEL_FILE}")
# metric-key prefixes that hold one value per run (evaluations, counts, timings), never a curve
SINGLE_VALUE_PREFIXES = ("test.", "data.", "time.", "index.", "best_")
_SPLIT_KEY = re.compile(r"^(train|val|valid|validation)[/.](.+?)(_step|_epoch)?$")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend. Imported where a figure is drawn:
    the configs import this module (EXAMPLES_FIGURE_HELP), and a command's ``--help`` and
    config errors stay fast without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def show_cohort_examples(setting: bool | None, cohort_root: str | Path) -> bool:
    """Whether a run logs examples carrying the cohort's own images and report text: the
    user's ``setting``, else only for the synthetic demo cohort (the generator writes its
    ideal observer, ``reference_model.json``, at its root). A real cohort's reports are
    patient data, so they are off unless turned on."""
    if setting is not None:
        return setting
    return (Path(cohort_root) / REFERENCE_MODEL_FILE).is_file()


def _grid(n: int, cols: int, width: float, height: float):
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat[:n]


# -- curves from a run's metric history --------------------------------------------------

def split_series(key: str) -> tuple[str, str]:
    """(panel, series) of a metric key: ``train/loss_step`` -> ("loss", "train (step)"),
    ``val/loss`` -> ("loss", "val"); any other key is a panel of its own."""
    m = _SPLIT_KEY.match(key)
    if m is None:
        return key, key
    split, name, suffix = m.groups()
    return name, f"{split} ({suffix[1:]})" if suffix else split


def metric_curves_figure(client, run_id: str, group: Callable[[str], tuple[str, str]] = split_series,
                         max_panels: int = 12):
    """Every metric of the run logged at two steps or more, read back from MLflow's metric
    history and drawn against the step: one panel per ``group(key)[0]``, one line per
    ``group(key)[1]``; losses first. None when the run logged no curve."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for key in sorted(client.get_run(run_id).data.metrics):
        if key.startswith(SINGLE_VALUE_PREFIXES) or key == "epoch":
            continue
        history = client.get_metric_history(run_id, key)
        if len({m.step for m in history}) < 2:
            continue
        panel, series = group(key)
        curves.setdefault(panel, {})[series] = sorted((m.step, m.value) for m in history)
    if not curves:
        return None
    panels = sorted(curves, key=lambda p: ("loss" not in p, p))[:max_panels]
    fig, axes = _grid(len(panels), 3, 4.2, 3.0)
    for ax, panel in zip(axes, panels):
        for series, points in sorted(curves[panel].items()):
            steps, values = zip(*points)
            ax.plot(steps, values, marker="." if len(points) < 30 else None, label=series)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(curves[panel]) > 1 or next(iter(curves[panel])) != panel:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# -- classification ----------------------------------------------------------------------

def roc_curves_figure(labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str], title: str = ""):
    """One ROC panel per class (``labels`` 0/1 and ``scores`` [N, C]; sklearn's roc_curve),
    its AUROC in the title; a class with one label value in the split is marked undefined."""
    from sklearn.metrics import roc_auc_score, roc_curve  # drawn at the end of a run; not on --help

    labels, scores = np.asarray(labels), np.asarray(scores, float)
    fig, axes = _grid(len(class_names), 3, 3.0, 3.0)
    for j, (ax, name) in enumerate(zip(axes, class_names)):
        ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls="--")
        y = labels[:, j].astype(int)
        if y.min() == y.max():
            ax.set_title(f"{name}\nAUROC undefined (all {'positive' if y[0] else 'negative'})", fontsize=8)
        else:
            fpr, tpr, _ = roc_curve(y, scores[:, j])
            ax.plot(fpr, tpr, lw=1.5)
            ax.set_title(f"{name} (n+={int(y.sum())}/{len(y)})\nAUROC {roc_auc_score(y, scores[:, j]):.3f}",
                         fontsize=8)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.01)
        ax.set_xlabel("false positive rate", fontsize=7)
        ax.set_ylabel("true positive rate", fontsize=7)
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def confusion_matrices_figure(truth: np.ndarray, predicted: np.ndarray, class_names: Sequence[str],
                              display_labels: Sequence[str] = ("absent", "present"), title: str = ""):
    """One 2 x 2 confusion matrix per column of ``truth`` / ``predicted`` (0/1, [N, C]),
    sklearn's confusion_matrix drawn by ConfusionMatrixDisplay."""
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # drawn at the end of a run; not on --help

    truth = np.asarray(truth).reshape(len(truth), -1).astype(int)
    predicted = np.asarray(predicted).reshape(len(predicted), -1).astype(int)
    fig, axes = _grid(len(class_names), 3, 2.9, 2.7)
    for j, (ax, name) in enumerate(zip(axes, class_names)):
        matrix = confusion_matrix(truth[:, j], predicted[:, j], labels=[0, 1])
        ConfusionMatrixDisplay(matrix, display_labels=list(display_labels)).plot(ax=ax, colorbar=False,
                                                                                cmap="Blues", values_format="d")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_size(8), ax.yaxis.label.set_size(8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# -- examples of the cohort (only where show_cohort_examples allows) ---------------------

def retrieval_examples_figure(images: np.ndarray, query_labels: np.ndarray, sim: np.ndarray, texts: list[str],
                              cand_labels: np.ndarray, n_queries: int = 4, top: int = 3,
                              own: Sequence[int] | None = None, split: str = "test"):
    """The retrieval gallery: per query (a row), its X-ray, its own report with the rank
    retrieval gave it, then its top-``top`` retrieved reports; a report whose findings equal
    the query's is marked as a label match. ``own[i]``: the candidate that is query ``i``'s
    own report (default: candidate ``i``, queries and candidates being one split's studies
    in one order). Captions name positions in ``split``, never a study."""
    n_queries = min(n_queries, len(images))
    own = np.arange(n_queries) if own is None else np.asarray(own)
    fig, axes = pyplot().subplots(n_queries, top + 2, figsize=(4 * (top + 2), 3.2 * n_queries), squeeze=False)

    def report(ax, text: str, title: str):
        ax.axis("off")
        ax.set_title(title, fontsize=8)
        ax.text(0.0, 1.0, "\n".join(textwrap.wrap(text[:360], 44)), va="top", ha="left", fontsize=7,
                family="monospace", transform=ax.transAxes)

    for row in range(n_queries):
        axes[row, 0].imshow(images[row].squeeze(), cmap="gray")
        axes[row, 0].set_title(f"query: {split} study #{row}, X-ray", fontsize=9)
        axes[row, 0].axis("off")
        mine = int(own[row])
        rank = 1 + int((sim[row] > sim[row, mine]).sum())
        report(axes[row, 1], texts[mine], f"its own report: retrieved at rank {rank} of {sim.shape[1]}")
        for j, cand in enumerate(np.argsort(-sim[row])[:top]):
            match = "label match" if np.array_equal(cand_labels[cand], query_labels[row]) else "labels differ"
            paired = " (its own report)" if cand == mine else ""
            report(axes[row, j + 2], texts[cand], f"#{j + 1} score {sim[row, cand]:.2f}: {match}{paired}")
    fig.tight_layout()
    return fig


def class_colour(c: int) -> tuple[float, float, float]:
    """Colour of label value ``c`` >= 1 in overlays (tab10, cycling); 0 (background) is not drawn."""
    return pyplot().get_cmap("tab10").colors[(c - 1) % 10]


def _overlay(ax, image: np.ndarray, labels: np.ndarray | None, n_classes: int) -> None:
    from matplotlib.colors import ListedColormap

    ax.imshow(image.T, cmap="gray", origin="lower")
    if labels is not None:
        colours = [(0, 0, 0, 0)] + [(*class_colour(c), 0.55) for c in range(1, n_classes)]
        ax.imshow(labels.T, cmap=ListedColormap(colours), vmin=-0.5, vmax=n_classes - 0.5, origin="lower",
                  interpolation="nearest")
    ax.axis("off")


def segmentation_overlays_figure(examples: list[dict], class_names: Sequence[str]):
    """Per example (a row): the image slice, the reference label map on it, and each
    prediction on it. An example is ``{"caption", "image" [i, j, k], "label" [i, j, k],
    "predictions": {name: [i, j, k]}}``; the axial slice (last axis) shown is the one with
    the most labelled voxels."""
    from matplotlib.patches import Patch

    n_pred = max(len(e["predictions"]) for e in examples)
    plt = pyplot()
    fig, axes = plt.subplots(len(examples), 2 + n_pred, figsize=(3.0 * (2 + n_pred), 3.1 * len(examples) + 0.5),
                             squeeze=False)
    n_classes = len(class_names)
    for row, ex in enumerate(examples):
        label = np.asarray(ex["label"])
        k = int(np.argmax((label > 0).sum(axis=(0, 1)))) if (label > 0).any() else label.shape[2] // 2
        image = np.asarray(ex["image"])[:, :, k]
        panels = [("image", None), ("reference", label[:, :, k])]
        panels += [(name, np.asarray(pred)[:, :, k]) for name, pred in ex["predictions"].items()]
        for col, (name, labels) in enumerate(panels):
            _overlay(axes[row, col], image, labels, n_classes)
            axes[row, col].set_title(f"{ex['caption']}, slice {k}" if col == 0 else name, fontsize=8)
        for col in range(len(panels), 2 + n_pred):
            axes[row, col].axis("off")
    handles = [Patch(color=class_colour(c), label=class_names[c])
               for c in range(1, n_classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def grouped_bars_figure(table: dict[str, dict[str, float]], metrics, title: str, ylabel: str = "score"):
    """Grouped bars: one group per metric, one bar per system (model, variant, baseline)."""
    metrics = list(metrics)
    systems = list(table)
    x = np.arange(len(metrics))
    width = 0.8 / max(1, len(systems))
    fig, ax = pyplot().subplots(figsize=(max(6, 1.3 * len(metrics)), 3.6))
    for i, system in enumerate(systems):
        ax.bar(x + i * width, [table[system].get(m, np.nan) for m in metrics], width, label=system)
    ax.set_xticks(x + width * (len(systems) - 1) / 2, metrics, rotation=30 if len(metrics) > 6 else 0,
                  ha="right" if len(metrics) > 6 else "center")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig
