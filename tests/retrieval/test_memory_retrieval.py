"""Memory-translated retrieval: the kernel regression against a loop-by-loop hand
computation, a cohort where it recovers what noisy queries miss, and a memory whose
pairing carries nothing, which the validation fit must decline."""

import numpy as np
import pytest

from medmm.metrics.retrieval import retrieval_metrics
from medmm.retrieval.memory_retrieval import MemoryTranslation, PairedMemory, fit_memory_translation


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cohort(n, seed, dim=16, classes=6):
    """Query and candidate embeddings of ``n`` studies in ``classes`` findings sets. The
    candidate sits near its class axis B_g; the query carries its class mostly on an axis
    C_g the candidates do not use and only weakly (0.3) on B_g, as a contrastive X-ray
    embedding is aligned with its report only in part, plus noise. Query-to-query
    similarity is then far more reliable than query-to-candidate."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, classes, n)
    b_axes, c_axes = np.eye(dim)[:classes], np.eye(dim)[classes: 2 * classes]
    labels = np.eye(classes, dtype=int)[group]
    query = _unit(0.3 * b_axes[group] + c_axes[group] + 0.25 * rng.normal(size=(n, dim)))
    cand = _unit(b_axes[group] + 0.1 * rng.normal(size=(n, dim)))
    return labels, query, cand


def test_translate_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    memory = PairedMemory(_unit(rng.normal(size=(30, 8))), _unit(rng.normal(size=(30, 5))))
    queries = _unit(rng.normal(size=(4, 8)))
    got = memory.translate(queries, k=7, logit_scale=12.0)
    for q, row in zip(queries, got):
        sims = [float(q @ m) for m in memory.queries]
        top = sorted(range(30), key=lambda j: -sims[j])[:7]
        w = np.array([np.exp(12.0 * sims[j]) for j in top])
        mean = sum(wi * memory.candidates[j] for wi, j in zip(w / w.sum(), top))
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-10)
    # Reusing precomputed neighbours for a smaller k gives the same answer.
    near = memory.neighbours(queries, 20)
    np.testing.assert_allclose(memory.translate(queries, 7, 12.0, neighbours=near), got, atol=1e-12)


def test_memory_recovers_label_matches_that_noisy_queries_miss():
    labels, query, cand = _cohort(300, seed=1)
    mem_labels, mem_query, mem_cand = _cohort(2000, seed=2)
    memory = PairedMemory(mem_query, mem_cand)
    plain = retrieval_metrics(query @ cand.T, labels, labels, ks=(5,), label_ks=(5,))["P@5"]
    translated = retrieval_metrics(MemoryTranslation(k=50, weight=4.0).scores(query, cand, memory, 10.0),
                                   labels, labels, ks=(5,), label_ks=(5,))["P@5"]
    assert translated > plain + 0.1
    choice, value = fit_memory_translation(query, cand, labels, memory, logit_scale=10.0)
    assert choice.weight > 0 and value > plain + 0.1


def test_a_memory_without_pairing_is_declined():
    labels, query, cand = _cohort(300, seed=3)
    _, mem_query, mem_cand = _cohort(2000, seed=4)
    shuffled = PairedMemory(mem_query, np.random.default_rng(5).permutation(mem_cand))
    choice, _ = fit_memory_translation(query, cand, labels, shuffled, logit_scale=10.0)
    assert choice.weight == 0.0
    np.testing.assert_allclose(choice.scores(query, cand, shuffled, 10.0), 10.0 * query @ cand.T)


def test_memory_rows_must_pair_up():
    with pytest.raises(ValueError, match="same number"):
        PairedMemory(np.zeros((3, 4)), np.zeros((2, 4)))
