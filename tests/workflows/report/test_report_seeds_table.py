"""The seeds table of the report-generation results page comes from ``benchmarks/report_seeds.py``:
rerun here on the tiny config, so the table cannot drift from the code that makes it."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, TINY_REPORT_CONFIG, load_benchmark, tiny_overrides

bench = load_benchmark("report_seeds")


@pytest.mark.slow
def test_the_seeds_table_is_made_from_tracked_runs(tracked_runs, tmp_path):
    overrides = tiny_overrides(tracked_runs.cohort, tmp_path, f"pretrained.source={tracked_runs.source}",
                               f"pretrained.tracking_uri={tracked_runs.uri}", "trainer.max_epochs=1")
    runs = [bench.one_seed(TINY_REPORT_CONFIG, seed, overrides) for seed in (0, 1)]
    assert [r["seed"] for r in runs] == [0, 1] and runs[0]["run_id"] != runs[1]["run_id"]
    assert {r["tracking_uri"] for r in runs} == {f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for r in runs:
        assert set(r["systems"]) == {"model_greedy", "model_beam2", "nearest_neighbour", "most_frequent"}
        for system, values in r["systems"].items():
            assert set(values) >= set(bench.METRICS), system
            # CIDEr-D runs 0..10; every other figure is a fraction
            assert all(0.0 <= v <= (10.0 if m == "cider" else 1.0) for m, v in values.items()), (system, values)
    table = bench.table(runs).splitlines()
    assert table[0].startswith("| system, 2 seeds | bleu1 |")
    line = next(x for x in table if x.startswith("| model_greedy |"))
    mean = (runs[0]["systems"]["model_greedy"]["rouge_l"] + runs[1]["systems"]["model_greedy"]["rouge_l"]) / 2
    cell = line.split("|")[2 + bench.METRICS.index("rouge_l")].strip().strip("*")
    assert cell.startswith(f"{mean:.3f} ± ")
    assert all(r["run_id"] in table[-1] for r in runs)


@pytest.mark.slow
def test_the_summarisation_table_is_made_from_tracked_runs(ptunifier_pretrained, tiny_cohort, tmp_path):
    overrides = tiny_overrides(tiny_cohort, tmp_path, f"pretrained.source=models:/{ptunifier_pretrained['registered']}"
                               "@champion", f"pretrained.tracking_uri={ptunifier_pretrained['uri']}",
                               "trainer.max_epochs=1", "pretrained.freeze=true", "generation.max_new_tokens=16")
    runs = [bench.one_seed(REPO / "configs/report/summarise_tiny.yaml", seed, overrides) for seed in (0, 1)]
    assert [r["task"] for r in runs] == ["summarise", "summarise"] and runs[0]["run_id"] != runs[1]["run_id"]
    for r in runs:
        assert set(r["systems"]) == {"model_greedy", "model_beam2", "lead", "extractive", "nearest_impression"}
        for system, values in r["systems"].items():
            assert all(0.0 <= values[m] <= 1.0 for m in ("rouge1", "rouge2", "rouge_l")), (system, values)
            assert values["mean_words"] >= 0.0
    table = bench.table(runs).splitlines()
    assert table[0] == "| system, 2 seeds | rouge1 | rouge2 | rouge_l | mean_words |"
    line = next(x for x in table if x.startswith("| lead |"))
    mean = (runs[0]["systems"]["lead"]["rouge_l"] + runs[1]["systems"]["lead"]["rouge_l"]) / 2
    assert line.split("|")[4].strip().strip("*").startswith(f"{mean:.3f}")
    # a length is shown, never marked best
    assert not any("**" in x.split("|")[5] for x in table[2:7])
    assert "(mean words not ranked)" in table[-2] and all(r["run_id"] in table[-1] for r in runs)
