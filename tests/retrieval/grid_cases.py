"""Fixed embeddings for the grid-search equivalence test: validation / test / memory splits
in the demo's proportions (val : test : train = 1 : 2 : 7), float32 like the model's
outputs, labels drawn from a few findings patterns of unequal size (so many candidates
are equally relevant), and exact duplicate studies (so scores tie and the tie-break by
candidate index decides the top k)."""

from __future__ import annotations

import hashlib

import numpy as np

CASES = ({"n_test": 60, "seed": 0, "logit_scale": 14.0},
         {"n_test": 160, "seed": 1, "logit_scale": 30.0},
         {"n_test": 400, "seed": 2, "logit_scale": 60.0})
DIM, FINDINGS = 16, 5


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _split(n: int, rng: np.random.Generator, patterns: np.ndarray, query_centres: np.ndarray,
           cand_centres: np.ndarray) -> dict[str, np.ndarray]:
    frequency = np.linspace(3.0, 0.5, len(patterns))
    group = rng.choice(len(patterns), size=n, p=frequency / frequency.sum())
    queries = _unit(query_centres[group] + 0.6 * rng.normal(size=(n, DIM)))
    candidates = _unit(cand_centres[group] + 0.4 * rng.normal(size=(n, DIM)))
    # every tenth study repeats an earlier one of its pattern: identical embeddings, tied scores
    for i in range(10, n, 10):
        same = np.flatnonzero(group[:i] == group[i])
        if len(same):
            queries[i], candidates[i] = queries[same[0]], candidates[same[0]]
    return {"queries": queries, "candidates": candidates, "labels": patterns[group]}


def grid_case(n_test: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """``{"val" | "test" | "memory": {"queries", "candidates", "labels"}}``."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 2, size=(7, FINDINGS))
    query_centres = rng.normal(size=(len(patterns), DIM))
    cand_centres = rng.normal(size=(len(patterns), DIM))
    sizes = {"val": n_test // 2, "test": n_test, "memory": 7 * n_test // 2}
    return {name: _split(n, rng, patterns, query_centres, cand_centres) for name, n in sizes.items()}


def fingerprint(case: dict[str, dict[str, np.ndarray]]) -> str:
    """sha256 of every array of a case, so the fixture notices if the generator changes."""
    digest = hashlib.sha256()
    for split in sorted(case):
        for name in sorted(case[split]):
            digest.update(np.ascontiguousarray(case[split][name]).tobytes())
    return digest.hexdigest()
