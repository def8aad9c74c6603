"""FAISS study index: exact search equals numpy, HNSW / IVF recall against exact, the
stored hashes refuse a stale index, and the table / JSON outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medmm.io.errors import MedmmInputError
from medmm.retrieval.index import IndexParams, StaleIndexError, StudyIndex, build_faiss_index, format_hits, index_kind


def unit(rng, n, d=32, centres=20):
    c = rng.normal(size=(centres, d))
    x = c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_index_equals_numpy_inner_product():
    rng = np.random.default_rng(0)
    x, q = unit(rng, 500), unit(rng, 7)
    index = build_faiss_index(x, IndexParams(exact_max=1000))
    assert index_kind(index) == "exact"
    scores, ids = index.search(q, 5)
    ref = np.argsort(-(q @ x.T), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, ref, 1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_past_exact_max_recall_the_exact_neighbours(kind):
    rng = np.random.default_rng(1)
    x, q = unit(rng, 4000), unit(rng, 50)
    index = build_faiss_index(x, IndexParams(exact_max=1000, approximate=kind))
    assert index_kind(index) == kind
    _, ids = index.search(q, 10)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall >= 0.9, recall


def _studies(n):
    return pd.DataFrame({"study_id": [f"S{i}" for i in range(n)], "split": ["train"] * n,
                         "report_text": [f"report number {i}." for i in range(n)]})


def test_saved_index_reloads_and_refuses_other_weights_or_cohort(tmp_path):
    rng = np.random.default_rng(2)
    emb = {"report": unit(rng, 40), "xray": unit(rng, 40)}
    meta = {"checkpoint_sha256": "a" * 64, "manifest_sha256": "b" * 64}
    StudyIndex.build(tmp_path / "idx", emb, _studies(40), IndexParams(exact_max=100), meta)
    index = StudyIndex.load(tmp_path / "idx", checkpoint_sha256="a" * 64, manifest_sha256="b" * 64)
    hits = index.search(emb["xray"][3], "report", 4)[0]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert hits[0]["study_id"] == f"S{int(np.argmax(emb['report'] @ emb['xray'][3]))}"
    assert hits[0]["score"] == pytest.approx(float(np.max(emb["report"] @ emb["xray"][3])), rel=1e-5)
    json.dumps(hits)  # JSON-ready
    table = format_hits(hits)
    assert "S" in table and "report number" in table and "rank" in table.splitlines()[0]
    with pytest.raises(StaleIndexError, match="checkpoint"):
        StudyIndex.load(tmp_path / "idx", checkpoint_sha256="c" * 64, manifest_sha256="b" * 64)
    with pytest.raises(StaleIndexError, match="manifest"):
        StudyIndex.load(tmp_path / "idx", checkpoint_sha256="a" * 64, manifest_sha256="d" * 64)
    with pytest.raises(MedmmInputError, match="build"):
        StudyIndex.load(tmp_path / "nothing", checkpoint_sha256="a" * 64, manifest_sha256="b" * 64)
    (tmp_path / "idx" / "report.faiss").write_bytes(b"not an index")
    with pytest.raises(MedmmInputError, match="report.faiss"):
        StudyIndex.load(tmp_path / "idx", checkpoint_sha256="a" * 64, manifest_sha256="b" * 64)


@pytest.mark.parametrize("params", [IndexParams(exact_max=1000),
                                    IndexParams(exact_max=0, approximate="ivf", ivf_nlist=40, ivf_nprobe=1)])
def test_search_returns_the_raw_faiss_hits_with_their_table_rows(tmp_path, params):
    """Single query and batch: every hit is the raw FAISS call's id and score, in its order,
    with that row's table fields; ids FAISS leaves at -1 (a one-cell IVF probe with k past
    the cell's size) are dropped but keep their rank slot."""
    rng = np.random.default_rng(5)
    emb, queries = {"report": unit(rng, 300)}, unit(rng, 25)
    studies = _studies(300)
    studies.loc[int(np.argmax(emb["report"] @ queries[0])), "report_text"] = None  # reads "None", like str()
    index = StudyIndex.build(tmp_path / "idx", emb, studies, params, {})
    k = 30
    raw_scores, raw_ids = index.indexes["report"].search(queries, k)
    if params.approximate == "ivf":
        assert (raw_ids < 0).any()
    for got in (index.search(queries, "report", k), [index.search(q, "report", k)[0] for q in queries]):
        for hits, row_scores, row_ids in zip(got, raw_scores, raw_ids):
            kept = [(rank, s, i) for rank, (s, i) in enumerate(zip(row_scores, row_ids), start=1) if i >= 0]
            assert [h["rank"] for h in hits] == [rank for rank, _, _ in kept]
            assert [h["score"] for h in hits] == [float(s) for _, s, _ in kept]
            rows = [studies.iloc[int(i)] for _, _, i in kept]
            assert [h["study_id"] for h in hits] == [str(r["study_id"]) for r in rows]
            assert [h["split"] for h in hits] == [str(r["split"]) for r in rows]
            assert [h["report"] for h in hits] == [str(r["report_text"]) for r in rows]
