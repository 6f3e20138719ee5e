"""Ranking metrics (RecBole's definitions) and bootstrap intervals: pure functions of ranked lists and scores.

One query = a ranked list of item ids (best first) and the set of relevant ids. Ranks are 1-based; discounts use
log2, never the natural log. Lists are deduplicated first: a repeated relevant item would otherwise count twice
and push NDCG above 1. tests/test_evaluate.py checks each against values computed by hand.
"""
import math

import numpy as np

KS: tuple = (1, 5, 10, 20)     # cut-offs of every ranking metric
N_BOOT: int = 1000             # bootstrap resamples for 95% intervals


def dedupe(ranked):
    """Order-preserving unique items."""
    seen, out = set(), []
    for x in ranked:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def hit_at_k(ranked, relevant, k):
    """HR@K = 1 if any relevant item is in the top K."""
    return float(any(x in relevant for x in dedupe(ranked)[:k]))


def ndcg_at_k(ranked, relevant, k):
    """NDCG@K = DCG@K / IDCG@K; DCG = sum_{j<=K} rel_j / log2(j + 1); IDCG over min(|R|, K) hits.

    One relevant item at rank r scores 1 / log2(r + 1): r = 2 -> 0.6309.
    """
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(j + 2) for j, x in enumerate(dedupe(ranked)[:k]) if x in relevant)
    idcg = sum(1.0 / math.log2(j + 2) for j in range(min(len(relevant), k)))
    return dcg / idcg


def mrr_at_k(ranked, relevant, k):
    """1 / rank of the first relevant item within the top K, else 0."""
    for j, x in enumerate(dedupe(ranked)[:k]):
        if x in relevant:
            return 1.0 / (j + 1)
    return 0.0


def precision_at_k(ranked, relevant, k):
    """Relevant items among the top K, over K (a list shorter than K counts its gaps as misses)."""
    return sum(x in relevant for x in dedupe(ranked)[:k]) / k


METRICS = {"hit": hit_at_k, "ndcg": ndcg_at_k, "mrr": mrr_at_k, "precision": precision_at_k}


def per_query(ranked_lists, relevant_sets, ks=KS):
    """{'hit@10': (Q,) array, ...} for every metric and cut-off."""
    return {f"{name}@{k}": np.array([fn(r, rel, k) for r, rel in zip(ranked_lists, relevant_sets)])
            for name, fn in METRICS.items() for k in ks}


def top_k_pessimistic(scores, relevant, k, exclude=()):
    """Top-K item indices of a score vector (N,), ties broken against the relevant items.

    Among equal scores non-relevant items rank first, so a baseline that gives most
    items the same score (popularity 0) gets no lucky hits.
    """
    scores = np.asarray(scores, dtype=np.float64).copy()
    scores[list(exclude)] = -np.inf
    is_rel = np.zeros(len(scores), dtype=bool)
    is_rel[list(relevant)] = True
    order = np.lexsort((is_rel, -scores))  # primary key: score, descending; then non-relevant first
    return [int(i) for i in order[:k] if np.isfinite(scores[i])]


def hit_at_k_pessimistic(scores, relevant, k, exclude=()):
    """hit_at_k(top_k_pessimistic(scores, relevant, k, exclude), relevant, k) without sorting: 1.0 or 0.0; scores
    (N,), or (P, N) for P rankings of the same items at once -> (P,) array.

    The first listed relevant item is the one with the highest score s* among those it can list (finite, not
    excluded: top_k_pessimistic drops the others); ahead of it come exactly the non-excluded items scoring >= s*
    other than those (ties go against the relevant; a +inf item takes its place but is never listed). So it is a
    hit iff fewer than k items are ahead. O(N) against the sort's O(N log N): evaluate.py chooses the content
    baselines' width and power by HR@k over every validation play and 42 settings (baselines.best_on_validation,
    select_tau_lambda), and there the sorts took about half of the choice's time (benchmarks/bench_choice.py).
    Example: scores [3, 5, 5, 1], relevant {2}, k 1: item 1 ties it and goes first, so 0.0; with k 2, 1.0.
    """
    s = np.asarray(scores, dtype=np.float64)
    rows = np.atleast_2d(s)                                                   # (P, N)
    excluded, rel = np.zeros(rows.shape[1], dtype=bool), np.zeros(rows.shape[1], dtype=bool)
    excluded[list(exclude)] = True
    rel[list(relevant)] = True
    listed = rel & ~excluded & np.isfinite(rows)                              # the relevant items it could list
    best = np.where(listed, rows, -np.inf).max(1, keepdims=True)             # s*, -inf where none
    # a relevant +inf item still takes a place ahead, though it is never listed
    ahead = np.count_nonzero((rows >= best) & ~(excluded | listed), axis=1)
    hit = (listed.any(1) & (ahead < k)).astype(np.float64)
    return float(hit[0]) if s.ndim == 1 else hit


def bootstrap_ci(values, n_boot=N_BOOT, seed=0, alpha=0.05):
    """Mean and percentile-bootstrap (1 - alpha) interval over queries: (mean, lo, hi)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(1)
    return float(values.mean()), float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def bootstrap_ratio_ci(numerators, denominators, n_boot=N_BOOT, seed=0, alpha=0.05):
    """A pooled rate sum(num) / sum(den) over units (prompts), with a percentile-bootstrap interval: (mean, lo, hi).

    The units are resampled, each bringing its numerator and denominator along, so a prompt with more outputs
    weighs more, as in the pooled rate. With equal denominators it is bootstrap_ci of the per-unit shares (the same
    draws). Example: num (2, 0), den (4, 1): the rate 2/5 = 0.4; a resample draws (a, a) 4/8 = 0.5, (b, b) 0/2 = 0,
    or one of each 0.4, so the 95% interval is [0, 0.5].
    """
    num, den = np.asarray(numerators, np.float64), np.asarray(denominators, np.float64)
    if len(num) == 0 or den.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(num), size=(n_boot, len(num)))
    rates = num[idx].sum(1) / np.maximum(den[idx].sum(1), 1e-12)   # a resample of units that all have den 0: rate 0
    return float(num.sum() / den.sum()), float(np.quantile(rates, alpha / 2)), float(np.quantile(rates, 1 - alpha / 2))


def paired_bootstrap(a, b, n_boot=N_BOOT, seed=0):
    """Mean of a - b over the same queries, with its interval (queries resampled jointly)."""
    return bootstrap_ci(np.asarray(a, np.float64) - np.asarray(b, np.float64), n_boot, seed)


def same_query_values(pq_a, sys_a, pq_b, sys_b, task, metric=None):
    """Per-query values of system sys_a in run A and sys_b in run B on one task, for pairing: (va, vb), or None where
    either run lacks them. pq_a, pq_b: evaluate.py's results["per_query"] ({"keys": {task: key}, task: {system:
    {metric: [...]}}}, or {system: [...]} for a task without metrics). Raises ValueError where the two were asked
    other queries (their keys differ): a paired difference is only defined on the same queries."""
    va, vb = pq_a.get(task, {}).get(sys_a), pq_b.get(task, {}).get(sys_b)
    if metric is not None:
        va, vb = va and va.get(metric), vb and vb.get(metric)
    if va is None or vb is None:
        return None
    ka, kb = pq_a["keys"].get(task), pq_b["keys"].get(task)
    if ka != kb or len(va) != len(vb):
        raise ValueError(f"{task}: the two runs were evaluated on other queries (key {ka} against {kb})")
    return va, vb
