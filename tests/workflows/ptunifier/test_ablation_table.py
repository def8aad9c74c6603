"""The ablation table of the PTUnifier results page comes from ``benchmarks/ptunifier_ablation.py``:
the whole benchmark rerun here, two seeds of the prompt-pool variant on the tiny cohort, so the
table cannot drift from the code that makes it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import PTU_TINY, load_benchmark

bench = load_benchmark("ptunifier_ablation")


@pytest.mark.slow
def test_the_ablation_table_is_made_from_tracked_runs_over_seeds(tiny_cohort, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "ablation.json"
    assert bench.main(["--ptunifier-config", str(PTU_TINY), "--root", str(tiny_cohort), "--variants", "pool",
                       "--seeds", "0", "1", "--pretrain-steps", "2", "--pretrain-epochs", "1",
                       "--finetune-steps", "2", "--max-test", "8", "--work", str(tmp_path / "work"),
                       "--tracking-uri", uri, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0

    result = json.loads(out.read_text())
    assert result["seeds"] == [0, 1]
    per_seed = result["per_seed"]["pool"]
    assert list(per_seed) == [col for col, *_ in bench.DOWNSTREAM]
    for col, values in per_seed.items():
        assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values), (col, values)
        assert result["table"]["pool"][col] == pytest.approx(np.mean(values))

    lines = out.with_suffix(".md").read_text().splitlines()
    assert lines[0].startswith("| model, 2 seeds |")
    row = next(x for x in lines if x.startswith("| PTUnifier, prompt pool |")).split("|")
    col = bench.DOWNSTREAM[2][0]  # image cls 100% (AUROC)
    cell = row[lines[0].split("|").index(f" {col} ")].strip()
    assert cell.startswith(f"{np.mean(per_seed[col]):.3f} ± ")

    collected, seeds = bench.collect([uri])  # the table rebuilt from the fine-tuning runs' names and metrics
    assert seeds == [0, 1] and collected["pool"] == {c: pytest.approx(v) for c, v in per_seed.items()}

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("medmm-ptunifier-ablation")
    runs = {r.data.tags["mlflow.runName"]: r.info.status for r in client.search_runs([exp.experiment_id])}
    assert runs["ablation-pool-seed0"] == runs["ablation-pool-seed1"] == "FINISHED"
