"""Figures and highlighted text for report generation: generated vs reference reports with
the labeler's findings marked, and the metric comparison of model and baselines."""

from __future__ import annotations

import html

from matplotlib.patches import Patch

from medmm.io.labeler import UNCERTAIN_POSITIVE, find_mentions, split_sentences
from medmm.tracking.figures import grouped_bars_figure, pyplot

# agreed: in both reports; extra: only in the generated one; missed: only in the reference
COLOURS = {"agreed": "#b7e4c7", "extra": "#f4a6a6", "missed": "#ffd58a", "negated": "#dddddd"}
LEGEND = (("agreed", "finding in both reports"), ("extra", "generated only"), ("missed", "missed (reference only)"),
          ("negated", "negated mention"))


def finding_spans(text: str) -> list[tuple[str, int, int, str, bool]]:
    """(sentence, start, end, finding, positive) for every finding mention of ``text``;
    ``positive`` is False for a negated or discounted-uncertain mention."""
    sentences = split_sentences(text)
    return [(sentences[m.sentence], m.start, m.end, m.finding,
             not m.negated and (not m.uncertain or m.finding in UNCERTAIN_POSITIVE)) for m in find_mentions(text)]


def _kind(finding: str, positive: bool, other_positive: set[str], generated: bool) -> str:
    if not positive:
        return "negated"
    return "agreed" if finding in other_positive else ("extra" if generated else "missed")


def marked_sentences(text: str, other_positive: set[str], generated: bool) -> list[tuple[str, list[tuple]]]:
    """``text`` sentence by sentence (as the labeler splits it), each with its marks
    ``(start, end, finding, kind)``: kind ``agreed`` when the other report has the finding
    too, ``extra`` (generated only) / ``missed`` (reference only), ``negated``; marks do not
    overlap."""
    out = []
    spans = finding_spans(text)
    for sentence in split_sentences(text):
        marks, cursor = [], 0
        for start, end, finding, positive in sorted((s, e, f, p) for sent, s, e, f, p in spans if sent == sentence):
            if start >= cursor:
                marks.append((start, end, finding, _kind(finding, positive, other_positive, generated)))
                cursor = end
        out.append((sentence, marks))
    return out


def highlight_html(text: str, other_positive: set[str], generated: bool) -> str:
    """HTML of ``text`` sentence by sentence with finding mentions marked: green when the
    other report has the finding too, red (generated only) / amber (missed), grey if negated."""
    out = []
    for sentence, marks in marked_sentences(text, other_positive, generated):
        pieces, cursor = [], 0
        for start, end, finding, kind in marks:
            pieces.append(html.escape(sentence[cursor:start]))
            pieces.append(f'<mark style="background:{COLOURS[kind]}" title="{finding} ({kind})">'
                          f"{html.escape(sentence[start:end])}</mark>")
            cursor = end
        pieces.append(html.escape(sentence[cursor:]))
        out.append("".join(pieces))
    return " ".join(out)


def _wrap(text: str, width: int) -> list[tuple[int, int]]:
    """Greedy word wrap that keeps character offsets: (start, end) of each line."""
    lines, start = [], 0
    while start < len(text):
        if len(text) - start <= width:
            lines.append((start, len(text)))
            break
        cut = text.rfind(" ", start, start + width + 1)
        cut = cut if cut > start else start + width
        lines.append((start, cut))
        start = cut + 1 if text[cut : cut + 1] == " " else cut
    return lines


class _MarkedText:
    """Monospace text in an axes, wrapped to its width, with character spans drawn on a
    coloured background (the marks of :func:`marked_sentences`)."""

    def __init__(self, ax, fontsize: float):
        self.ax, self.fontsize = ax, fontsize
        renderer = ax.figure.canvas.get_renderer()
        probe = ax.text(0, 0, "M" * 40, fontsize=fontsize, family="monospace", transform=ax.transAxes)
        box, axes_box = probe.get_window_extent(renderer), ax.get_window_extent(renderer)
        probe.remove()
        self.char_w = box.width / 40 / axes_box.width
        self.line_h = 1.5 * box.height / axes_box.height
        self.width = max(20, int(0.98 / self.char_w))

    def draw(self, text: str, spans: list[tuple[int, int, str]], y: float, max_lines: int) -> float:
        """Draw from the top ``y`` (axes fraction) down; returns the y under the last line."""
        lines = _wrap(text, self.width)
        if len(lines) > max_lines:  # cut, with room for the ellipsis on the last line
            lines = lines[:max_lines]
            start, end = lines[-1]
            text = text[: min(end, start + self.width - 4)] + " ..."
            lines[-1] = (start, len(text))
        for start, end in lines:
            cuts = sorted({start, end, *(min(max(p, start), end) for s, e, _ in spans for p in (s, e))})
            for a, b in zip(cuts, cuts[1:]):
                kind = next((k for s, e, k in spans if s <= a and b <= e), None)
                box = {"facecolor": COLOURS[kind], "edgecolor": "none", "pad": 0.6} if kind else None
                self.ax.text(self.char_w * (a - start), y, text[a:b], fontsize=self.fontsize, family="monospace",
                             va="top", ha="left", transform=self.ax.transAxes, bbox=box)
            y -= self.line_h
        return y


def _joined(sentences: list[tuple[str, list[tuple]]]) -> tuple[str, list[tuple[int, int, str]]]:
    """The sentences joined by a space, and their marks as spans of the joined text."""
    text, spans = "", []
    for sentence, marks in sentences:
        offset = len(text) + (1 if text else 0)
        text = f"{text} {sentence}" if text else sentence
        spans += [(offset + s, offset + e, kind) for s, e, _, kind in marks]
    return text, spans


def examples_figure(examples: list[dict], split: str = "test"):
    """One row per example: generated report | reference report, each finding mention
    marked in the text (green: in both reports; red: generated only; amber: missed;
    grey: negated) and the positive findings of each listed under it, coloured alike.
    Rows are captioned by position in ``split``, never by study."""
    plt = pyplot()
    n = max(1, len(examples))
    height = 2.7 * n + 0.5
    fig, axes = plt.subplots(n, 2, figsize=(13, height), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.55 / height, wspace=0.04, hspace=0.3)
    for row, ex in enumerate(examples):
        gen, ref = set(ex["generated_findings"]), set(ex["reference_findings"])
        decoding = f" ({ex['decoding']})" if ex.get("decoding") else ""
        for col, (title, text, mine, other, generated) in enumerate(
                ((f"generated{decoding}", ex["generated"], gen, ref, True),
                 ("reference", ex["reference"], ref, gen, False))):
            ax = axes[row, col]
            ax.axis("off")
            ax.set_title(f"{split} study #{row}: {title}", fontsize=9, loc="left")
            writer = _MarkedText(ax, 7.5)
            y = writer.draw(*_joined(marked_sentences(text, other, generated)), 1.0, max_lines=8)
            findings = sorted(mine)
            listed = "findings: " + (", ".join(findings) if findings else "none")
            spans, cursor = [], len("findings: ")
            for finding in findings:
                spans.append((cursor, cursor + len(finding), _kind(finding, True, other, generated)))
                cursor += len(finding) + 2
            writer.draw(listed, spans, min(y, 0.2) - 0.02, max_lines=2)
    fig.legend(handles=[Patch(color=COLOURS[k], label=label) for k, label in LEGEND], loc="upper center",
               ncol=len(LEGEND), fontsize=8, frameon=False)
    return fig


def metrics_figure(table: dict[str, dict[str, float]], metrics: tuple[str, ...]):
    """Grouped bars: one group per metric, one bar per system (model decodings, baselines)."""
    return grouped_bars_figure(table, metrics, "report generation on the held-out split")
