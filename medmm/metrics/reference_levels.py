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

Sampling band. The oracle levels are *expected* values: no ranking built from what the
modalities show has a higher expectation, but on one test split a ranking's realised value
spreads around its expectation, and how far depends on how its tie-breaking is shared
across queries. Breaking ties independently per query gives a sum of independent per-query
terms (Bernoulli for R@k and Hit@k, hypergeometric for P@k), a narrow spread. A dual
encoder instead ranks the candidates of one findings pattern in nearly the same order for
every query, so every query with that pattern bets on the same few candidates: one bet per
pattern, whose outcome varies far more (on the demo's 778 test studies, report -> ECG P@5
has expectation 0.486 and the highest of 200 shared tie-breakings is 0.65). ``oracle_upper``
is the higher of two upper edges: the highest of :data:`ORACLE_BAND_DRAWS` random shared
candidate orders (seeded, so the levels file is reproducible; the expected quantile of that
maximum is 1 - 1 / 201, about the 99.5th percentile) and the same quantile of independent
tie-breaking by normal approximation. A model above ``oracle`` but within the band is at the
oracle within sampling error; above ``oracle_upper`` it uses a signal the ideal observer
does not have (a leak, or a finding a modality shows that the reference model omits).

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
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from medmm.metrics.retrieval import as_numpy, row_ids
from medmm.metrics.zeroshot import binary_auroc

__all__ = [
    "ORACLE_BAND_QUANTILE",
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
ORACLE_BAND_DRAWS = 200  # shared tie-breakings simulated for the oracle's sampling band
ORACLE_BAND_QUANTILE = 1 - 1 / (ORACLE_BAND_DRAWS + 1)  # its upper edge: the highest draw's expected quantile


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


def _allocation_plan(cohort: _Cohort, u: int, kmax: int) -> np.ndarray:
    """The candidate pattern that the best-Hit@k ranking takes at each of the first ``kmax``
    slots for query pattern ``u``: greedy by marginal gain in ``sum_l n(l) (1 - miss_l)``
    (module doc); -1 where no pattern can still gain (the slot goes to a candidate that
    cannot match)."""
    mine = np.flatnonzero(cohort.label_q == u)  # label vectors l showing u
    m = cohort.label_count[mine].astype(np.float64)
    groups, gi = np.unique(cohort.label_c[mine], return_inverse=True)
    size = cohort.c_count[groups].astype(np.float64)
    taken = np.zeros(len(groups))
    miss = np.ones(len(mine))  # P(no match of l among the slots taken so far)
    plan = np.full(kmax, -1)
    for slot in range(kmax):
        x, n_v = taken[gi], size[gi]
        factor = np.clip((n_v - m - x) / np.maximum(n_v - x, 1.0), 0.0, 1.0)
        gain = np.bincount(gi, weights=m * miss * (1.0 - factor), minlength=len(groups))
        gain[taken >= size] = -1.0
        best = int(np.argmax(gain))
        if gain[best] > 0:
            taken[best] += 1
            miss[gi == best] *= factor[gi == best]
            plan[slot] = groups[best]
    return plan


def _optimal_hit_probability(cohort: _Cohort, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per label vector l, P(a match in the top k) under the best-Hit@k ranking
    (:func:`_allocation_plan`), ties within a pattern broken at random."""
    found = {k: np.zeros(len(cohort.label_count)) for k in ks}
    for u in range(len(cohort.q_count)):
        plan = _allocation_plan(cohort, u, max(ks))
        mine = np.flatnonzero(cohort.label_q == u)
        v = cohort.label_c[mine]
        for k in ks:
            taken = (plan[:k, None] == v[None, :]).sum(0)  # slots given to each l's pattern
            found[k][mine] = expected_topk(0, cohort.c_count[v], cohort.label_count[mine], taken)[1]
    return found


def _independent_sd(cohort: _Cohort, pair_scores: np.ndarray, label_scores: np.ndarray, ks: Sequence[int],
                    label_ks: Sequence[int], hit_found: Mapping[int, np.ndarray]) -> dict[str, float]:
    """Standard deviation of the realised metrics when every query breaks the ties of its
    own ranking independently: a sum over queries of independent Bernoulli (R@k, Hit@k) or
    hypergeometric (P@k) terms."""
    u, v, m = cohort.label_q, cohort.label_c, cohort.label_count.astype(np.float64)
    out: dict[str, float] = {}
    above, group = _tie_stats(pair_scores, cohort.c_count)
    for k in ks:
        p = np.clip(k - above[u, v], 0.0, group[u, v]) / group[u, v]
        out[f"R@{k}"] = float(np.sqrt(m @ (p * (1 - p)))) / cohort.n
    above, group = _tie_stats(label_scores, cohort.c_count)
    for k in label_ks:
        g = group[u, v]
        r = np.clip(k - above[u, v], 0.0, g)
        share = m / g
        count_var = r * share * (1 - share) * (g - r) / np.maximum(g - 1, 1.0)
        out[f"P@{k}"] = float(np.sqrt(m @ count_var)) / (k * cohort.n)
        out[f"Hit@{k}"] = float(np.sqrt(m @ (hit_found[k] * (1 - hit_found[k])))) / cohort.n
    return out


def _shared_order_top(scores: np.ndarray, members: list[np.ndarray], rank: np.ndarray, k: int) -> np.ndarray:
    """The top ``k`` candidates by pattern ``scores`` [V], ties broken by ``rank``
    (``members[v]``, the candidates of pattern v, come sorted by it)."""
    top: list[np.ndarray] = []
    need = k
    for level in np.unique(scores)[::-1]:
        heads = np.concatenate([members[p][:need] for p in np.flatnonzero(scores == level)])
        top.append(heads[np.argsort(rank[heads], kind="stable")][:need])
        need -= len(top[-1])
        if need <= 0:
            break
    return np.concatenate(top)


def _shared_order_draws(cohort: _Cohort, pair_scores: np.ndarray, label_scores: np.ndarray, ks: Sequence[int],
                        label_ks: Sequence[int], plans: Mapping[int, np.ndarray] | None, draws: int,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """``draws`` realisations of the oracle's metrics on this test split when its ties are
    broken by one random order of the candidates shared by every query: R@k ranked by
    ``pair_scores``, P@k by ``label_scores``, Hit@k by ``plans`` (:func:`_allocation_plan`
    per query pattern) or, if None, by ``label_scores``."""
    rng = np.random.default_rng(seed)
    lid = cohort.study_label
    q_of, c_of = cohort.label_q[lid], cohort.label_c[lid]  # each study's query / candidate pattern
    queries_like = cohort.label_count[lid].astype(np.float64)  # queries whose labels equal each study's
    out = {name: np.zeros(draws) for name in
           [f"R@{k}" for k in ks] + [f"{m}@{k}" for k in label_ks for m in ("Hit", "P")]}
    for d in range(draws):
        rank = rng.permutation(cohort.n)
        by_rank = np.argsort(rank)
        ordered = by_rank[np.argsort(c_of[by_rank], kind="stable")]  # by pattern, then by rank
        members = np.split(ordered, np.cumsum(cohort.c_count)[:-1])
        for u in range(len(cohort.q_count)):
            if ks:  # candidate j retrieved for query pattern u is a hit of query j if j shows u
                top = _shared_order_top(pair_scores[u], members, rank, max(ks))
                for k in ks:
                    out[f"R@{k}"][d] += np.count_nonzero(q_of[top[:k]] == u)
            if not label_ks:
                continue
            top = _shared_order_top(label_scores[u], members, rank, max(label_ks))
            matching = np.where(q_of[top] == u, queries_like[top], 0.0)  # queries that candidate matches
            if plans is None:
                picks = top
            else:
                taken = dict.fromkeys(plans[u].tolist(), 0)
                picks = np.full(len(plans[u]), -1)
                for slot, p in enumerate(plans[u]):
                    if p >= 0:
                        picks[slot] = members[p][taken[p]]
                        taken[p] += 1
            for k in label_ks:
                out[f"P@{k}"][d] += matching[:k].sum() / k
                chosen = picks[:k][picks[:k] >= 0]
                out[f"Hit@{k}"][d] += cohort.label_count[np.unique(lid[chosen[q_of[chosen] == u]])].sum()
    return {name: values / cohort.n for name, values in out.items()}


def _levels(cohort: _Cohort, pair_scores: np.ndarray, label_scores: np.ndarray,
            ks: Sequence[int], label_ks: Sequence[int], optimal_hit: bool = False) -> dict[str, float]:
    """Expected metrics (keys as ``retrieval_metrics``) for rankings by the given [U, V]
    scores, ties broken at random; Hit@k that of :func:`_allocation_plan` if ``optimal_hit``."""
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
    best_hit = _optimal_hit_probability(cohort, label_ks) if optimal_hit else {}
    for k in label_ks:
        found, hit = expected_topk(above[u, v], group[u, v], m, k)
        out[f"Hit@{k}"] = float(weight @ best_hit.get(k, hit))
        out[f"P@{k}"] = float(weight @ found) / k
    return out


def reference_levels(
    labels: Any,
    q_obs: Any,
    c_obs: Any,
    ks: Sequence[int] = (1, 5, 10),
    label_ks: Sequence[int] = (1, 5),
    hit: Literal["optimal", "ranked"] = "optimal",
    band_draws: int = ORACLE_BAND_DRAWS,
) -> dict[str, dict[str, float]]:
    """Chance and ideal-observer levels of ``retrieval_metrics`` (module docstring).

    ``labels`` [N, F] full labels of the N test studies (query i's partner is candidate i);
    ``q_obs`` / ``c_obs`` bool [F]: findings the query / candidate modality shows.
    ``hit``: oracle Hit@k as the best over rankings ("optimal", an upper bound) or that of
    the P@k-optimal ranking ("ranked"; may be below chance).
    Returns ``{"chance": {"R@k", "Hit@k", "P@k"}, "oracle": {same keys},
    "oracle_upper": {same keys}, "contrastive_optimum": {same keys}}``. ``oracle_upper`` is
    the oracle's sampling band on this test split (module doc, ``band_draws`` draws of the
    shared tie-breaking; 0 gives the independent one alone). The last is what a perfectly trained contrastive
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
    flat, pair, label = (cohort.pattern_scores(kind) for kind in ("chance", "pair", "label"))
    oracle = _levels(cohort, pair, label, ks, label_ks, optimal_hit=hit == "optimal")
    return {"chance": _levels(cohort, flat, flat, ks, label_ks), "oracle": oracle,
            "oracle_upper": _oracle_upper(cohort, oracle, ks, label_ks, hit == "optimal", band_draws),
            "contrastive_optimum": _levels(cohort, pair, pair, ks, label_ks)}


def _oracle_upper(cohort: _Cohort, oracle: Mapping[str, float], ks: Sequence[int], label_ks: Sequence[int],
                  optimal_hit: bool, draws: int) -> dict[str, float]:
    """The upper edge of the oracle's sampling band (module doc): the higher of the highest
    of ``draws`` shared tie-breakings and the :data:`ORACLE_BAND_QUANTILE` quantile of
    independent ones (normal approximation), at most 1."""
    pair, label = cohort.pattern_scores("pair"), cohort.pattern_scores("label")
    if optimal_hit and label_ks:
        plans = {u: _allocation_plan(cohort, u, max(label_ks)) for u in range(len(cohort.q_count))}
        hit_found = _optimal_hit_probability(cohort, label_ks)
    else:
        above, group = _tie_stats(label, cohort.c_count)
        where = (cohort.label_q, cohort.label_c)
        plans = None
        hit_found = {k: expected_topk(above[where], group[where], cohort.label_count, k)[1] for k in label_ks}
    sd = _independent_sd(cohort, pair, label, ks, label_ks, hit_found)
    shared = _shared_order_draws(cohort, pair, label, ks, label_ks, plans, draws) if draws else {}
    z = NormalDist().inv_cdf(ORACLE_BAND_QUANTILE)
    upper = {}
    for name, expected in oracle.items():
        bound = expected + z * sd[name]
        if name in shared:
            bound = max(bound, float(shared[name].max()))
        upper[name] = min(bound, 1.0)
    return upper


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
