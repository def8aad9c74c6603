"""The figures logged to MLflow, drawn from fixed inputs: what each shows is checked against
an independent computation (hand counts, a product-limit Kaplan-Meier, the Mann-Whitney
AUROC, a threshold-sweep ROC), and each is written to a PNG that is a real image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from medmm.metrics.survival import RiskGroups, kaplan_meier_figure
from medmm.metrics.zeroshot import binary_auroc
from medmm.tracking.figures import (
    confusion_matrices_figure,
    metric_curves_figure,
    pyplot,
    retrieval_examples_figure,
    roc_curves_figure,
    segmentation_overlays_figure,
    split_series,
)
from medmm.tracking.pipeline_run import log_metrics, start_run
from medmm.workflows.report.figures import COLOURS, examples_figure, highlight_html

MIN_SIDE = 200  # pixels: every logged figure is at least this wide and high


def assert_real_image(png: bytes | str, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """``png`` (bytes or a path) opens as an image of at least ``min_side`` pixels a side
    that is not one flat colour; returns its size."""
    with Image.open(io.BytesIO(png) if isinstance(png, bytes) else png) as im:
        im.load()
        assert im.format == "PNG"
        assert min(im.size) >= min_side, im.size
        pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8, "a flat image"
    return im.size


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def _hand_roc(y: np.ndarray, s: np.ndarray) -> set[tuple[float, float]]:
    """Every (FPR, TPR) of the threshold sweep over the distinct scores, and (0, 0)."""
    points = {(0.0, 0.0)}
    for t in np.unique(s):
        pred = s >= t
        points.add((round(float((pred & (y == 0)).sum() / (y == 0).sum()), 9),
                    round(float((pred & (y == 1)).sum() / (y == 1).sum()), 9)))
    return points


def test_roc_curves_follow_the_threshold_sweep_and_state_the_mann_whitney_auroc():
    rng = np.random.default_rng(0)
    labels = np.stack([rng.integers(0, 2, 40), rng.integers(0, 2, 40), np.zeros(40, int)], axis=1)
    scores = labels * 0.8 + rng.normal(size=labels.shape)
    scores[:, 1] = np.round(scores[:, 1], 1)  # ties
    fig = roc_curves_figure(labels, scores, ["a", "b", "never"], "zero-shot")
    axes = fig.axes
    for j in range(2):
        _, curve = axes[j].get_lines()
        plotted = {(round(float(x), 9), round(float(y), 9)) for x, y in curve.get_xydata()}
        assert plotted <= _hand_roc(labels[:, j], scores[:, j]) and {(0.0, 0.0), (1.0, 1.0)} <= plotted
        assert f"AUROC {binary_auroc(scores[:, j], labels[:, j]):.3f}" in axes[j].get_title()
    assert "undefined" in axes[2].get_title() and len(axes[2].get_lines()) == 1  # the chance diagonal only
    assert_real_image(png_bytes(fig))


def test_confusion_matrices_count_what_a_hand_count_gives():
    truth = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [1, 0], [0, 0]])
    pred = np.array([[1, 1], [0, 1], [0, 0], [1, 1], [1, 0], [0, 1]])
    fig = confusion_matrices_figure(truth, pred, ["cardiomegaly", "edema"])
    for j, ax in enumerate(fig.axes[:2]):
        t, p = truth[:, j], pred[:, j]
        hand = [((t == a) & (p == b)).sum() for a in (0, 1) for b in (0, 1)]  # rows true, columns predicted
        assert [int(x.get_text()) for x in ax.texts] == hand
    assert [x.get_text() for x in fig.axes[0].get_xticklabels()] == ["absent", "present"]
    assert_real_image(png_bytes(fig))
    yes_no = confusion_matrices_figure([1, 0, 1], [1, 1, 1], ["closed questions"], ("no", "yes"))
    assert [int(x.get_text()) for x in yes_no.axes[0].texts] == [0, 1, 0, 2]
    pyplot().close(yes_no)


def test_metric_curves_read_every_multi_step_metric_back_from_mlflow(tmp_path):
    client, run_id, _ = start_run(f"sqlite:///{tmp_path / 'mlflow.db'}", "curves", None, "test")
    for step, loss in enumerate([2.0, 1.5, 1.2, 1.1, 1.0]):
        log_metrics(client, run_id, {"train/loss_step": loss, "custom": 10.0 - step}, step=step)
    for step, loss in ((2, 1.6), (4, 1.3)):
        log_metrics(client, run_id, {"val/loss": loss}, step=step)
    log_metrics(client, run_id, {"test.auroc": 0.7, "time.total_s": 3.0, "val/once": 1.0}, step=4)
    fig = metric_curves_figure(client, run_id)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "custom"]  # losses first; single values (test., time., one step) are no curve
    lines = {line.get_label(): line.get_xydata().tolist() for line in fig.axes[0].get_lines()}
    assert lines == {"train (step)": [[0, 2.0], [1, 1.5], [2, 1.2], [3, 1.1], [4, 1.0]],
                     "val": [[2, 1.6], [4, 1.3]]}
    assert fig.axes[1].get_lines()[0].get_ydata().tolist() == [10.0, 9.0, 8.0, 7.0, 6.0]
    assert_real_image(png_bytes(fig))
    grouped = metric_curves_figure(client, run_id, group=lambda key: ("all", key))
    assert len(grouped.axes) == 1 and len(grouped.axes[0].get_lines()) == 3
    pyplot().close(grouped)
    quiet, quiet_id, _ = start_run(f"sqlite:///{tmp_path / 'mlflow.db'}", "curves", None, "test")
    log_metrics(quiet, quiet_id, {"test.auroc": 0.7})
    assert metric_curves_figure(quiet, quiet_id) is None


def test_split_series_pairs_train_and_val_of_one_metric():
    assert split_series("train/loss_epoch") == ("loss", "train (epoch)")
    assert split_series("val/itc") == ("itc", "val")
    assert split_series("text.train_loss.ct") == ("text.train_loss.ct", "text.train_loss.ct")


def test_retrieval_gallery_shows_the_query_its_own_report_and_the_top_retrieved():
    rng = np.random.default_rng(1)
    images = rng.random((3, 1, 32, 32))
    texts = [f"report {i}: " + "words " * 30 for i in range(5)]
    labels = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0, 0]])
    sim = np.array([[0.1, 0.9, 0.5, 0.3, 0.0],   # own report (0) ranked 4th
                    [0.2, 0.8, 0.1, 0.0, 0.3],   # own report (1) ranked 1st
                    [0.0, 0.1, 0.2, 0.7, 0.6]])  # own report (2) ranked 3rd
    fig = retrieval_examples_figure(images, labels[:3], sim, texts, labels, n_queries=3, top=2)
    axes = np.array(fig.axes).reshape(3, 4)
    assert axes[0, 0].get_title() == "query: test study #0, X-ray"
    assert [axes[r, 1].get_title() for r in range(3)] == [f"its own report: retrieved at rank {k} of 5"
                                                           for k in (4, 1, 3)]
    assert axes[0, 1].texts[0].get_text().startswith("report 0:")
    assert axes[0, 2].get_title() == "#1 score 0.90: labels differ" and axes[0, 2].texts[0].get_text()[:8] == "report 1"
    assert axes[0, 3].get_title() == "#2 score 0.50: label match"
    assert axes[1, 2].get_title() == "#1 score 0.80: label match (its own report)"
    np.testing.assert_array_equal(axes[2, 0].get_images()[0].get_array(), images[2, 0])
    assert_real_image(png_bytes(fig))


def test_segmentation_overlays_show_the_most_labelled_slice_of_image_label_and_predictions():
    rng = np.random.default_rng(2)
    image = rng.random((12, 10, 8))
    label = np.zeros((12, 10, 8), np.uint8)
    label[3:7, 2:6, 5] = 1
    label[4:6, 3:5, 2] = 2
    pred = np.roll(label, 1, axis=0)
    fig = segmentation_overlays_figure([{"caption": "CT test case 1 of 2", "image": image, "label": label,
                                         "predictions": {"MulModSeg": pred, "plain head": label}}],
                                       ["background", "liver", "spleen"])
    axes = fig.axes
    assert axes[0].get_title() == "CT test case 1 of 2, slice 5"
    assert [ax.get_title() for ax in axes[1:4]] == ["reference", "MulModSeg", "plain head"]
    np.testing.assert_array_equal(axes[0].get_images()[0].get_array(), image[:, :, 5].T)
    np.testing.assert_array_equal(axes[1].get_images()[1].get_array(), label[:, :, 5].T)
    np.testing.assert_array_equal(axes[2].get_images()[1].get_array(), pred[:, :, 5].T)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["liver", "spleen"]
    assert_real_image(png_bytes(fig))


def _marks(ax) -> dict[str, str]:
    """Marked text segments of an axes -> their background colour."""
    return {t.get_text(): to_hex(t.get_bbox_patch().get_facecolor()) for t in ax.texts if t.get_bbox_patch()}


def test_report_examples_mark_each_finding_mention_in_the_text():
    examples = [{"generated": "Cardiomegaly. No pleural effusion. Small left pneumothorax.",
                 "reference": "Cardiomegaly. Small pleural effusion.", "decoding": "model_greedy",
                 "generated_findings": ["cardiomegaly", "pneumothorax"],
                 "reference_findings": ["cardiomegaly", "pleural_effusion"]},
                {"generated": "", "reference": "Normal chest.", "generated_findings": [], "reference_findings": []}]
    fig = examples_figure(examples)
    generated, reference = fig.axes[0], fig.axes[1]
    assert generated.get_title(loc="left") == "test study #0: generated (model_greedy)"
    assert _marks(generated) == {"Cardiomegaly": COLOURS["agreed"], "effusion": COLOURS["negated"],
                                 "pneumothorax": COLOURS["extra"], "cardiomegaly": COLOURS["agreed"]}
    assert _marks(reference) == {"Cardiomegaly": COLOURS["agreed"], "effusion": COLOURS["missed"],
                                 "cardiomegaly": COLOURS["agreed"], "pleural_effusion": COLOURS["missed"]}
    assert "findings: none" in [t.get_text() for t in fig.axes[2].texts]
    assert_real_image(png_bytes(fig))
    # the notebook's HTML marks the same spans
    html = highlight_html(examples[0]["generated"], {"cardiomegaly", "pleural_effusion"}, generated=True)
    assert html.count("<mark") == 3 and 'title="pneumothorax (extra)"' in html


def test_report_examples_wrap_long_text_within_their_panel():
    long = "Moderate cardiomegaly is present with a large right pleural effusion. " * 12
    fig = examples_figure([{"generated": long, "reference": long, "generated_findings": ["cardiomegaly"],
                            "reference_findings": ["cardiomegaly"]}])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:2]:
        right = ax.get_window_extent(renderer).x1
        assert all(t.get_window_extent(renderer).x1 <= right + 2 for t in ax.texts)
        assert any(t.get_text().endswith("...") for t in ax.texts)  # cut after the last line shown
    pyplot().close(fig)


def _product_limit(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier by hand: at each distinct event time, S *= 1 - deaths / at risk."""
    times = np.unique(time)
    surv, s = [], 1.0
    for t in times:
        s *= 1 - ((time == t) & event).sum() / (time >= t).sum()
        surv.append(s)
    return times, np.array(surv)


@pytest.mark.parametrize("n_groups", [2, 3])
def test_kaplan_meier_curves_per_risk_group_match_the_product_limit(n_groups):
    rng = np.random.default_rng(3)
    time = rng.integers(1, 30, 45).astype(float)
    event = rng.random(45) < 0.7
    group = np.arange(45) % n_groups
    fig = kaplan_meier_figure(time, event, RiskGroups(group, np.zeros(n_groups - 1), 1.0, 0.3), "model")
    lines = fig.axes[0].get_lines()
    assert len(lines) == n_groups
    for g, line in enumerate(lines):
        t, s = _product_limit(time[group == g], event[group == g])
        np.testing.assert_allclose(line.get_xdata(), t)
        np.testing.assert_allclose(line.get_ydata(), s)
        assert f"(n={int((group == g).sum())})" in line.get_label()
    assert_real_image(png_bytes(fig))


def test_a_flat_image_is_refused(tmp_path):
    path = tmp_path / "flat.png"
    Image.new("RGB", (400, 300), "white").save(path)
    with pytest.raises(AssertionError, match="flat"):
        assert_real_image(str(path))
