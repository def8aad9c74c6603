"""Figures logged as MLflow artifacts."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from medmm.metrics.reference_levels import REFERENCE_MODEL_FILE

EXAMPLES_FIGURE_HELP = ("log examples that show the cohort's images and report text (a figure, and the report "
                        "examples' text); unset: only for the synthetic demo cohort, whose folder carries "
                        f"{REFERENCE_MODEL_FILE}")


def show_cohort_examples(setting: bool | None, cohort_root: str | Path) -> bool:
    """Whether a run logs examples carrying the cohort's own images and report text: the
    user's ``setting``, else only for the synthetic demo cohort (the generator writes its
    ideal observer, ``reference_model.json``, at its root). A real cohort's reports are
    patient data, so they are off unless turned on."""
    if setting is not None:
        return setting
    return (Path(cohort_root) / REFERENCE_MODEL_FILE).is_file()


def retrieval_examples_figure(images: np.ndarray, query_labels: np.ndarray, sim: np.ndarray, texts: list[str],
                              cand_labels: np.ndarray, n_queries: int = 4, top: int = 3):
    """Query X-rays (rows) beside their top-``top`` retrieved reports; a report whose
    findings equal the query's is marked as a label match."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_queries = min(n_queries, len(images))
    fig, axes = plt.subplots(n_queries, top + 1, figsize=(4 * (top + 1), 3.2 * n_queries))
    axes = np.atleast_2d(axes)
    for row in range(n_queries):
        axes[row, 0].imshow(images[row].squeeze(), cmap="gray")
        axes[row, 0].set_title(f"query X-ray #{row}", fontsize=9)
        axes[row, 0].axis("off")
        for j, cand in enumerate(np.argsort(-sim[row])[:top]):
            ax = axes[row, j + 1]
            ax.axis("off")
            match = "label match" if np.array_equal(cand_labels[cand], query_labels[row]) else "labels differ"
            paired = " (its own report)" if cand == row else ""
            body = "\n".join(textwrap.wrap(texts[cand][:360], 44))
            ax.set_title(f"#{j + 1} score {sim[row, cand]:.2f}: {match}{paired}", fontsize=8)
            ax.text(0.0, 1.0, body, va="top", ha="left", fontsize=7, family="monospace", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def grouped_bars_figure(table: dict[str, dict[str, float]], metrics, title: str, ylabel: str = "score"):
    """Grouped bars: one group per metric, one bar per system (model, variant, baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(metrics)
    systems = list(table)
    x = np.arange(len(metrics))
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(metrics)), 3.6))
    for i, system in enumerate(systems):
        ax.bar(x + i * width, [table[system].get(m, np.nan) for m in metrics], width, label=system)
    ax.set_xticks(x + width * (len(systems) - 1) / 2, metrics, rotation=30 if len(metrics) > 6 else 0,
                  ha="right" if len(metrics) > 6 else "center")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig
