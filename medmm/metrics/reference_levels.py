"""Chance and oracle levels of the retrieval and zero-shot metrics on a synthetic cohort.

Setting: N test studies with full labels ``L`` [N, F]; study i's query-modality item and
candidate-modality item come from the same study. The query modality shows the findings
in ``q_obs``, the candidate modality those in ``c_obs``. The *ideal observer* sees only
``r_q(i) = L_i[q_obs]`` for the query and ``r_c(j) = L_j[c_obs]`` for each candidate, and
knows the empirical distribution of label vectors over the N studies (``n(l)`` studies
have label vector l; ``n(u)`` / ``n(v)`` studies show query / candidate pattern u / v).

Exact pair (R@k). Posterior that candidate j is query i's partner, given everything seen:
``P(j = partner) = n(u, v_j) / (n(u) n(v_j))``, i.e. proportional to ``P(r_q | r_c(j))``
(candidates sharing a pattern are exchangeable; inconsistent ones get 0). Note: it is the
likelihood of the *query's* observation given the candidate's, not ``P(r_c(j) | r_q)``:
the latter ignores how many candidates share pattern v_j and is not Bayes-optimal (see
the tests for a cohort where it only reaches chance). Ranking by the posterior maximises
expected R@k for every k.

Label match (Hit@k, P@k). ``P(L_i == L_j | r_q(i), r_c(j)) = sum_l n(l)^2 / (n(u) n(v_j))``
over label vectors l that show u and v_j (query and candidate independent draws from the
empirical distribution; this is also exact for the finite test set, because which study
is the query does not change which labels the candidates carry). Ranking by it maximises
expected P@k. It does not maximise Hit@k: taking all top slots from the most promising
pattern concentrates the bets, and its Hit@k can even fall *below chance*. So the oracle
Hit@k (``hit="optimal"``, default) is the best expected Hit@k of any ranking: with x_v
candidates taken from pattern v,
``Hit = sum_v sum_{l in u, v} P(l | u) [1 - C(n(v) - n(l), x_v) / C(n(v), x_v)]``, a sum
of concave functions of x_v, so greedy slot-by-slot allocation is optimal for every k at
once (and the allocations are nested, i.e. one ranking achieves them all).
``hit="ranked"`` instead reports Hit@k of the P@k-optimal ranking (below).

Expected metric under uniformly random tie-breaking. For query i, let ``a`` = number of
candidates scoring strictly above the tie group holding its relevant candidates (the
partner, or all ``m_i = n(L_i)`` label matches: they share pattern v_i, hence one group),
``g`` the size of that tie group and ``r = clip(k - a, 0, g)`` the slots it gets in the
top k. Then ``E[#relevant in top k] = m r / g`` and
``P(hit) = 1 - C(g - m, r) / C(g, r)`` (hypergeometric); R@k is the case m = 1:
``r / g = min(1, (k - a) / (t + 1))`` with t = g - 1 others tied with the partner.
Chance is the same with a constant score (a = 0, g = N):
``R@k = k/N``, ``P@k = mean_i m_i / N``, ``Hit@k = mean_i 1 - C(N - m_i, k) / C(N, k)``.
P@k divides by k (as :func:`medmm.metrics.retrieval.retrieval_metrics`).

Zero-shot AUROC: chance 0.5; oracle 1.0 for a finding the modality shows, 0.5 otherwise
(None where the test split holds one class only, as in ``per_finding_auroc``).

Everything is computed per observed-pattern group: cost O(U V log V) for U query and V
candidate patterns, never a Python loop over N^2 pairs.

A synthetic cohort says what its ideal observer knows in a :class:`ReferenceModel`
(``reference_model.json``: the finding vocabulary, the findings each modality shows, the
retrieval directions and zero-shot modalities it defines levels for);
:func:`levels_from_model` turns it and any set of test labels into the levels of every
direction (the layout of the cohort's ``reference_levels.json``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medmm.metrics.retrieval import as_numpy, row_ids
from medmm.metrics.zeroshot import binary_auroc

__all__ = [
    "REFERENCE_LEVELS_FILE",
    "REFERENCE_MODEL_FILE",
    "ReferenceModel",
    "expected_topk",
    "levels_from_model",
    "oracle_scores",
    "reference_levels",
    "zero_shot_reference_levels",
]

REFERENCE_MODEL_FILE = "reference_model.json"  # a cohort's ReferenceModel, at its root
REFERENCE_LEVELS_FILE = "reference_levels.json"  # levels_from_model of its test split, at its root


@dataclass(frozen=True)
class _Cohort:
    """Label-vector and observed-pattern counts of a test cohort."""

    n: int
    study_label: np.ndarray  # [N] full label-vector id of each study
    label_count: np.ndarray  # [Lu] n(l)
    label_q: np.ndarray  # [Lu] query pattern u of label vector l
    label_c: np.ndarray  # [Lu] candidate pattern v of label vector l
    q_count: np.ndarray  # [U] n(u)
    c_count: np.ndarray  # [V] n(v)

    @classmethod
    def build(cls, labels: Any, q_obs: Any, c_obs: Any) -> _Cohort:
        lab = as_numpy(labels)
        if lab.ndim != 2 or lab.shape[0] < 1:
            raise ValueError(f"labels must be [N, F] with N >= 1, got {lab.shape}")
        masks = [as_numpy(m).astype(bool).reshape(-1) for m in (q_obs, c_obs)]
        if any(m.shape != (lab.shape[1],) for m in masks):
            raise ValueError(f"q_obs and c_obs must be boolean masks over the F={lab.shape[1]} findings")
        (study_label,) = row_ids(lab)
        first = np.unique(study_label, return_index=True)[1]  # one study per label vector
        (q_pat,) = row_ids(lab[:, masks[0]])
        (c_pat,) = row_ids(lab[:, masks[1]])
        return cls(
            n=len(lab),
            study_label=study_label,
            label_count=np.bincount(study_label),
            label_q=q_pat[first],
            label_c=c_pat[first],
            q_count=np.bincount(q_pat),
            c_count=np.bincount(c_pat),
        )

    def pattern_scores(self, kind: Literal["pair", "label", "chance"]) -> np.ndarray:
        """[U, V] score of a candidate with pattern v for a query with pattern u.

        pair: n(u, v) / (n(u) n(v)); label: sum_l n(l)^2 / (n(u) n(v)); chance: 0.
        """
        shape = (len(self.q_count), len(self.c_count))
        if kind == "chance":
            return np.zeros(shape)
        if kind not in ("pair", "label"):
            raise ValueError(f"unknown score kind {kind!r}")
        per_label = self.label_count if kind == "pair" else self.label_count.astype(np.float64) ** 2
        table = np.zeros(shape)
        np.add.at(table, (self.label_q, self.label_c), per_label)
        return table / np.outer(self.q_count, self.c_count)


def _tie_stats(scores: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores`` [U, V] with column weights ``weight`` [V] (candidates per
    pattern): ``above[u, v]`` = candidates scoring strictly above v, ``group[u, v]`` =
    candidates tying with v (v's own included)."""
    above = np.empty(scores.shape)
    group = np.empty(scores.shape)
    for u, row in enumerate(scores):
        vals, inv = np.unique(row, return_inverse=True)  # ascending distinct scores
        w = np.bincount(inv.reshape(-1), weights=weight, minlength=len(vals))
        above[u] = (np.cumsum(w[::-1])[::-1] - w)[inv]
        group[u] = w[inv]
    return above, group


def expected_topk(above: Any, group: Any, relevant: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Expected #relevant in the top k and P(>= 1 relevant in the top k) under random
    tie-breaking, when all ``relevant`` (m) items lie in one tie group of size ``group`` (g)
    with ``above`` (a) items strictly better: with r = clip(k - a, 0, g),
    ``(m r / g, 1 - C(g - m, r) / C(g, r))``."""
    a, g, m = (np.asarray(x, dtype=np.float64) for x in (above, group, relevant))
    r = np.clip(k - a, 0.0, g)
    # C(g - m, r) / C(g, r) = prod_{j < r} (g - m - j) / (g - j): no relevant among r draws
    miss = np.ones(np.broadcast(a, g, m).shape)
    for j in range(int(r.max(initial=0))):
        miss = miss * np.where(j < r, (g - m - j) / np.maximum(g - j, 1.0), 1.0)
    return m * r / g, 1.0 - np.maximum(miss, 0.0)


def _optimal_hit(cohort: _Cohort, ks: Sequence[int]) -> dict[int, float]:
    """Best expected Hit@k over all rankings: per query pattern u, allocate the top slots to
    candidate patterns greedily by marginal gain in ``sum_l w_l (1 - miss_l)`` (module doc)."""
    kmax = max(ks)
    hit_at = np.zeros(kmax + 1)  # hit_at[k]: summed over query patterns
    for u in range(len(cohort.q_count)):
        mine = np.flatnonzero(cohort.label_q == u)  # label vectors l showing u
        m = cohort.label_count[mine].astype(np.float64)
        w = m / cohort.n  # fraction of all queries that carry l
        groups, gi = np.unique(cohort.label_c[mine], return_inverse=True)
        size = cohort.c_count[groups].astype(np.float64)
        taken = np.zeros(len(groups))
        miss = np.ones(len(mine))  # P(no match of l among the slots taken so far)
        for k in range(1, kmax + 1):
            x, n_v = taken[gi], size[gi]
            factor = np.clip((n_v - m - x) / np.maximum(n_v - x, 1.0), 0.0, 1.0)
            gain = np.bincount(gi, weights=w * miss * (1.0 - factor), minlength=len(groups))
            gain[taken >= size] = -1.0
            best = int(np.argmax(gain))
            if gain[best] > 0:  # otherwise the slot goes to a candidate that cannot match
                taken[best] += 1
                miss[gi == best] *= factor[gi == best]
            hit_at[k] += w @ (1.0 - miss)
    return {k: float(hit_at[k]) for k in ks}


def _levels(cohort: _Cohort, pair_scores: np.ndarray, label_scores: np.ndarray,
            ks: Sequence[int], label_ks: Sequence[int], optimal_hit: bool = False) -> dict[str, float]:
    """Expected metrics (keys as ``retrieval_metrics``) for rankings by the given [U, V]
    scores, ties broken at random; Hit@k from :func:`_optimal_hit` if ``optimal_hit``."""
    u, v, m = cohort.label_q, cohort.label_c, cohort.label_count
    weight = m / cohort.n  # fraction of queries carrying each label vector
    out: dict[str, float] = {}
    above, group = _tie_stats(pair_scores, cohort.c_count)
    for k in ks:
        found, _ = expected_topk(above[u, v], group[u, v], 1, k)
        out[f"R@{k}"] = float(weight @ found)
    if not label_ks:
        return out
    above, group = _tie_stats(label_scores, cohort.c_count)
    best_hit = _optimal_hit(cohort, label_ks) if optimal_hit else {}
    for k in label_ks:
        found, hit = expected_topk(above[u, v], group[u, v], m, k)
        out[f"Hit@{k}"] = best_hit.get(k, float(weight @ hit))
        out[f"P@{k}"] = float(weight @ found) / k
    return out


def reference_levels(
    labels: Any,
    q_obs: Any,
    c_obs: Any,
    ks: Sequence[int] = (1, 5, 10),
    label_ks: Sequence[int] = (1, 5),
    hit: Literal["optimal", "ranked"] = "optimal",
) -> dict[str, dict[str, float]]:
    """Chance and ideal-observer levels of ``retrieval_metrics`` (module docstring).

    ``labels`` [N, F] full labels of the N test studies (query i's partner is candidate i);
    ``q_obs`` / ``c_obs`` bool [F]: findings the query / candidate modality shows.
    ``hit``: oracle Hit@k as the best over rankings ("optimal", an upper bound) or that of
    the P@k-optimal ranking ("ranked"; may be below chance).
    Returns ``{"chance": {"R@k", "Hit@k", "P@k"}, "oracle": {same keys},
    "contrastive_optimum": {same keys}}``. The last is what a perfectly trained contrastive
    model reaches: InfoNCE's optimal similarity is the pointwise mutual information of
    query and candidate, i.e. the pair likelihood, which ranks every candidate consistent
    with a low-information query (a normal ECG) alike, whatever its prior; the oracle's
    label-match ranking adds that prior. It equals the oracle when the query shows every
    finding.
    """
    if any(int(k) < 1 for k in (*ks, *label_ks)):
        raise ValueError("every k must be >= 1")
    if hit not in ("optimal", "ranked"):
        raise ValueError(f"hit must be 'optimal' or 'ranked', got {hit!r}")
    cohort = _Cohort.build(labels, q_obs, c_obs)
    flat = cohort.pattern_scores("chance")
    oracle = _levels(cohort, cohort.pattern_scores("pair"), cohort.pattern_scores("label"), ks, label_ks,
                     optimal_hit=hit == "optimal")
    pair = cohort.pattern_scores("pair")
    return {"chance": _levels(cohort, flat, flat, ks, label_ks), "oracle": oracle,
            "contrastive_optimum": _levels(cohort, pair, pair, ks, label_ks)}


def oracle_scores(labels: Any, q_obs: Any, c_obs: Any, kind: Literal["pair", "label"] = "pair") -> np.ndarray:
    """The ideal observer's [N, N] score matrix: ``P(candidate j is query i's partner)``
    (kind="pair") or ``P(L_i == L_j | r_q(i), r_c(j))`` (kind="label")."""
    cohort = _Cohort.build(labels, q_obs, c_obs)
    if kind not in ("pair", "label"):
        raise ValueError(f"kind must be 'pair' or 'label', got {kind!r}")
    q_pat = cohort.label_q[cohort.study_label]
    c_pat = cohort.label_c[cohort.study_label]
    return cohort.pattern_scores(kind)[q_pat[:, None], c_pat[None, :]]


def zero_shot_reference_levels(labels: Any, obs: Any, names: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Chance / oracle per-finding AUROC of zero-shot scores in a modality showing ``obs``.

    chance 0.5. The oracle is the ideal observer's AUROC: it scores each study by
    ``P(finding | the observed findings' pattern)`` under the empirical joint of ``labels``,
    so an observed finding gets 1.0 and an unobserved one what its correlation with the
    observed ones allows (e.g. edema from an ECG that shows cardiomegaly), 0.5 if none.
    None where the split has one class. Keys as ``per_finding_auroc``: the finding names
    plus ``"macro"`` (mean of defined).
    """
    lab = as_numpy(labels)
    seen = as_numpy(obs).astype(bool).reshape(-1)
    if lab.ndim != 2 or lab.shape[1] != len(names) or seen.shape != (len(names),):
        raise ValueError(f"labels [N, F] and obs [F] must match the {len(names)} names")
    _, pattern = np.unique(lab[:, seen], axis=0, return_inverse=True)
    pattern = pattern.reshape(-1)
    counts = np.bincount(pattern)
    out: dict[str, dict[str, float | None]] = {"chance": {}, "oracle": {}}
    for f, name in enumerate(names):
        y = lab[:, f]
        if len(np.unique(y)) < 2:
            out["chance"][name] = out["oracle"][name] = None
            continue
        posterior = np.bincount(pattern, weights=y)[pattern] / counts[pattern]
        out["chance"][name] = 0.5
        out["oracle"][name] = binary_auroc(posterior, y)
    for level in out.values():
        ok = [x for x in level.values() if x is not None]
        level["macro"] = float(np.mean(ok)) if ok else None
    return out


@dataclass(frozen=True)
class ReferenceModel:
    """What the ideal observer of a synthetic cohort knows.

    ``findings``: the label columns, in order; ``observable[m]``: the findings modality m
    shows (a subset of ``findings``); ``directions``: the (query, candidate) retrieval
    directions and ``zero_shot``: the modalities whose zero-shot AUROC the cohort defines
    levels for. Raises ValueError for a finding or modality it does not know.
    """

    findings: tuple[str, ...]
    observable: Mapping[str, tuple[str, ...]]
    directions: tuple[tuple[str, str], ...]
    zero_shot: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "findings", tuple(self.findings))
        object.__setattr__(self, "observable", {m: tuple(f) for m, f in self.observable.items()})
        object.__setattr__(self, "directions", tuple((str(q), str(c)) for q, c in self.directions))
        object.__setattr__(self, "zero_shot", tuple(self.zero_shot))
        if len(set(self.findings)) != len(self.findings):
            raise ValueError(f"reference model: repeated finding in {self.findings}")
        for modality, shown in self.observable.items():
            unknown = sorted(set(shown) - set(self.findings))
            if unknown:
                raise ValueError(f"reference model: {modality} shows unknown finding(s) {unknown}")
        used = {m for direction in self.directions for m in direction} | set(self.zero_shot)
        missing = sorted(used - set(self.observable))
        if missing:
            raise ValueError(f"reference model: no observable findings given for modality(ies) {missing}")

    def mask(self, modality: str) -> np.ndarray:
        """bool [F]: which of ``findings`` the modality shows."""
        shown = set(self.observable[modality])
        return np.array([f in shown for f in self.findings], dtype=bool)

    def to_dict(self) -> dict[str, Any]:
        return {"findings": list(self.findings), "observable": {m: list(f) for m, f in self.observable.items()},
                "directions": [list(d) for d in self.directions], "zero_shot": list(self.zero_shot)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceModel:
        try:
            return cls(findings=data["findings"], observable=data["observable"],
                       directions=[tuple(d) for d in data["directions"]], zero_shot=data["zero_shot"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a reference model ({type(exc).__name__}: {exc})") from exc

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceModel:
        return cls.from_dict(json.loads(Path(path).read_text()))


def levels_from_model(labels: Any, model: ReferenceModel, ks: Sequence[int] = (1, 5, 10),
                      label_ks: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """Chance and oracle of each of the model's retrieval directions (:func:`reference_levels`)
    and zero-shot modalities (:func:`zero_shot_reference_levels`) for these test labels
    [N, F], F in the order of ``model.findings``::

        {"n_test_studies": N, "observable": {modality: [finding, ...]},
         "retrieval": {"xray->report": {"chance": {...}, "oracle": {...}, "contrastive_optimum": {...}}},
         "zero_shot": {"xray": {"chance": {finding: auroc, "macro": ...}, "oracle": {...}}}}
    """
    lab = as_numpy(labels).astype(np.int64)
    if lab.ndim != 2 or lab.shape[1] != len(model.findings):
        raise ValueError(f"labels must be [N, {len(model.findings)}] (the model's findings), got {lab.shape}")
    retrieval = {f"{q}->{c}": reference_levels(lab, model.mask(q), model.mask(c), ks=ks, label_ks=label_ks)
                 for q, c in model.directions}
    zero_shot = {m: zero_shot_reference_levels(lab, model.mask(m), model.findings) for m in model.zero_shot}
    return {"n_test_studies": int(len(lab)), "observable": {m: list(f) for m, f in model.observable.items()},
            "retrieval": retrieval, "zero_shot": zero_shot}
