"""The seeds table of the pretraining results page comes from ``benchmarks/pretrain_seeds.py``:
rerun here on the tiny config, so the table cannot drift from the code that makes it."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_CONFIG, load_benchmark

bench = load_benchmark("pretrain_seeds")


@pytest.mark.slow
def test_the_seeds_table_is_made_from_tracked_runs(tiny_cohort, tmp_path):
    runs = [bench.one_seed(tiny_cohort, TINY_CONFIG, tmp_path, seed, ["trainer.max_epochs=1"]) for seed in (0, 1)]
    assert [r["seed"] for r in runs] == [0, 1] and runs[0]["run_id"] != runs[1]["run_id"]
    plain = {r["seed"]: r["directions"]["xray_to_report"]["plain"] for r in runs}
    assert all(0.0 <= v <= 1.0 for v in plain.values())
    row = runs[0]["directions"]["xray_to_report"]
    assert row["chance"] <= row["oracle"] <= row["band"] <= 1.0
    table = bench.table(runs).splitlines()
    assert table[0].startswith("| P@5, 2 seeds |")
    mean = (plain[0] + plain[1]) / 2
    line = next(x for x in table if x.startswith("| xray -> report |"))
    assert line.split("|")[2].strip().startswith(f"{mean:.3f} ± ")
