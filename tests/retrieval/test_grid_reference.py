"""The re-rankers' grid searches and test scores against frozen reference outputs.

``data/grid_search_reference.json`` holds, for the embeddings of :mod:`grid_cases`, what a
direct evaluation gives: every grid point's validation P@5 from ``retrieval_metrics`` on the
full score matrix, the chosen settings and their score, and the test metrics of the chosen
re-rankers. The short-listed grid search must reproduce all of it, whatever the short-list
size (size 3 sends most rows to full ranking; 64 settles most by the bound)."""

import json
from pathlib import Path

import numpy as np
import pytest

from medmm.metrics.retrieval import retrieval_metrics
from medmm.retrieval.gallery_prior import fit_prior_correction, prior_correction_grid
from medmm.retrieval.memory_retrieval import (
    PairedMemory,
    fit_memory_translation,
    memory_translation_grid,
)
from tests.retrieval.grid_cases import CASES, fingerprint, grid_case

REFERENCE = json.loads((Path(__file__).parent / "data" / "grid_search_reference.json").read_text())


def _case(index):
    ref = REFERENCE["cases"][index]
    case = grid_case(ref["n_test"], ref["seed"])
    assert fingerprint(case) == ref["fingerprint"], "grid_cases no longer draws the frozen embeddings"
    return ref, case, PairedMemory(case["memory"]["queries"], case["memory"]["candidates"])


def test_reference_covers_every_case():
    assert [{k: r[k] for k in ("n_test", "seed", "logit_scale")} for r in REFERENCE["cases"]] == list(CASES)


@pytest.mark.parametrize("index", range(len(CASES)))
@pytest.mark.parametrize("shortlist", [3, 64])
def test_grids_equal_the_reference(index, shortlist):
    ref, case, memory = _case(index)
    val, scale = case["val"], ref["logit_scale"]
    prior = prior_correction_grid(val["queries"], val["candidates"], val["labels"], scale, 5, REFERENCE["bandwidths"],
                                  REFERENCE["prior_weights"], shortlist)
    np.testing.assert_allclose(prior, ref["prior"]["grid"], rtol=0, atol=1e-12)
    translated = memory_translation_grid(val["queries"], val["candidates"], val["labels"], memory, scale, 5,
                                         REFERENCE["memory_ks"], REFERENCE["memory_weights"], shortlist)
    np.testing.assert_allclose(translated, ref["memory"]["grid"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_chosen_settings_and_test_metrics_equal_the_reference(index):
    ref, case, memory = _case(index)
    val, test, scale = case["val"], case["test"], ref["logit_scale"]

    def label_match(scores):
        return retrieval_metrics(scores, test["labels"], test["labels"], ks=(), label_ks=(1, 5))

    prior, prior_val = fit_prior_correction(val["queries"], val["candidates"], val["labels"], scale)
    assert (prior.bandwidth, prior.weight) == (ref["prior"]["bandwidth"], ref["prior"]["weight"])
    assert prior_val == pytest.approx(ref["prior"]["val_P@5"], abs=1e-12)
    assert label_match(prior.scores(test["queries"], test["candidates"], scale)) == pytest.approx(
        ref["prior"]["test"], abs=1e-12)
    translation, memory_val = fit_memory_translation(val["queries"], val["candidates"], val["labels"], memory, scale)
    assert (translation.k, translation.weight) == (ref["memory"]["k"], ref["memory"]["weight"])
    assert memory_val == pytest.approx(ref["memory"]["val_P@5"], abs=1e-12)
    assert label_match(translation.scores(test["queries"], test["candidates"], memory, scale)) == pytest.approx(
        ref["memory"]["test"], abs=1e-12)
    plain = retrieval_metrics(test["queries"] @ test["candidates"].T, test["labels"], test["labels"])
    assert plain == pytest.approx(ref["plain_test"], abs=1e-12)
