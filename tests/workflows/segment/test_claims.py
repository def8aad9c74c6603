"""``benchmarks/segment_claims.py`` on the tiny config: one tracked run per part, arm and seed,
a page of mean ± sd over seeds that equals the runs' own metrics, and a second call that
reads the stored runs instead of training again."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_benchmark
from tests.workflows.segment.conftest import TINY_SEG_CONFIG

bench = load_benchmark("segment_claims")


@pytest.mark.slow
def test_the_claims_page_is_made_from_tracked_runs(tiny_volume_cohort, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--config", str(TINY_SEG_CONFIG), "--seeds", "0", "1", "--steps", "2", "--parts", "a",
            "--work", str(tmp_path), "--tracking-uri", uri, "--out", str(tmp_path / "claims.md"),
            f"data.root={tiny_volume_cohort}"]
    assert bench.main(argv) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(bench.EXPERIMENT).experiment_id])
    assert len(runs) == 2 and {r.data.params["seed"] for r in runs} == {"0", "1"}
    dice = [r.data.metrics["test.none_matched.mr.mean.dice"] for r in runs]
    page = (tmp_path / "claims.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| MR | **mean** |"))
    assert row.split("|")[4].strip() == f"{np.mean(dice):.3f} ± {np.std(dice, ddof=1):.3f}"
    assert all(r.info.run_id in page for r in runs)
    # the same call again: the stored runs are read, none is trained
    capsys.readouterr()
    assert bench.main(argv) == 0
    assert "stored run" in capsys.readouterr().out
    assert len(client.search_runs([runs[0].info.experiment_id])) == 2
    assert (tmp_path / "claims.md").read_text().split("## How it was measured")[0] == page.split(
        "## How it was measured")[0]
