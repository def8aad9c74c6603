"""Figures logged as MLflow artifacts."""

from __future__ import annotations

import textwrap

import numpy as np


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
