"""Figures and highlighted text for report generation: generated vs reference reports with
the labeler's findings marked, and the metric comparison of model and baselines."""

from __future__ import annotations

import html
import textwrap

from medmm.io.labeler import UNCERTAIN_POSITIVE, find_mentions, split_sentences
from medmm.tracking.figures import grouped_bars_figure

# agreed: in both reports; extra: only in the generated one; missed: only in the reference
COLOURS = {"agreed": "#b7e4c7", "extra": "#f4a6a6", "missed": "#ffd58a", "negated": "#dddddd"}


def finding_spans(text: str) -> list[tuple[str, int, int, str, bool]]:
    """(sentence, start, end, finding, positive) for every finding mention of ``text``;
    ``positive`` is False for a negated or discounted-uncertain mention."""
    sentences = split_sentences(text)
    return [(sentences[m.sentence], m.start, m.end, m.finding,
             not m.negated and (not m.uncertain or m.finding in UNCERTAIN_POSITIVE)) for m in find_mentions(text)]


def highlight_html(text: str, other_positive: set[str], generated: bool) -> str:
    """HTML of ``text`` sentence by sentence with finding mentions marked: green when the
    other report has the finding too, red (generated only) / amber (missed), grey if negated."""
    spans = finding_spans(text)
    out = []
    for sentence in split_sentences(text):
        marks = sorted((s, e, f, pos) for sent, s, e, f, pos in spans if sent == sentence)
        pieces, cursor = [], 0
        for start, end, finding, positive in marks:
            if start < cursor:
                continue
            kind = "negated" if not positive else ("agreed" if finding in other_positive
                                                   else ("extra" if generated else "missed"))
            pieces.append(html.escape(sentence[cursor:start]))
            pieces.append(f'<mark style="background:{COLOURS[kind]}" title="{finding} ({kind})">'
                          f"{html.escape(sentence[start:end])}</mark>")
            cursor = end
        pieces.append(html.escape(sentence[cursor:]))
        out.append("".join(pieces))
    return " ".join(out)


def examples_figure(examples: list[dict]):
    """One row per example: generated report | reference report, with the positive
    findings of each listed and coloured (agreed / generated only / missed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(examples))
    fig, axes = plt.subplots(n, 2, figsize=(13, 2.6 * n), squeeze=False)
    for row, ex in enumerate(examples):
        gen, ref = set(ex["generated_findings"]), set(ex["reference_findings"])
        for col, (title, text, mine, other, generated) in enumerate(
                (("generated", ex["generated"], gen, ref, True), ("reference", ex["reference"], ref, gen, False))):
            ax = axes[row, col]
            ax.axis("off")
            ax.text(0, 1, "\n".join(textwrap.wrap(text, 95)[:7]), va="top", ha="left", fontsize=7.5,
                    family="monospace", transform=ax.transAxes)
            x = 0.0
            ax.text(x, 0.02, f"{title} findings: ", fontsize=8, transform=ax.transAxes, va="bottom")
            x = 0.2
            for finding in sorted(mine) or ["none"]:
                kind = "agreed" if finding in other else ("extra" if generated else "missed")
                colour = COLOURS[kind] if finding != "none" else "#ffffff"
                ax.text(x, 0.02, finding, fontsize=8, transform=ax.transAxes, va="bottom",
                        bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.5})
                x += 0.025 + 0.0125 * len(finding)
            if row == 0:
                ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def metrics_figure(table: dict[str, dict[str, float]], metrics: tuple[str, ...]):
    """Grouped bars: one group per metric, one bar per system (model decodings, baselines)."""
    return grouped_bars_figure(table, metrics, "report generation on the held-out split")
