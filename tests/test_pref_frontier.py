"""benchmarks/pref_frontier.py's scores: one number per (context, track), from next-play odds and the rate."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from pref_frontier import frontier_scores, head_tail_scores, next_play_logp  # noqa: E402


def test_next_play_logp_adds_a_popularity_prior_to_the_co_listening_counts():
    # P = (c_j + prior * pop_j / sum pop) / (sum c + prior): counts {1: 3}, popularity [1, 1, 2], prior 1
    np.testing.assert_allclose(np.exp(next_play_logp({1: 3.0}, np.array([1, 1, 2]), prior=1.0)),
                               [0.25 / 4, 3.25 / 4, 0.5 / 4])
    # no co-listening: popularity alone; a track never played keeps a finite log-probability
    lp = next_play_logp({}, np.array([0, 1, 3]), prior=2.0)
    np.testing.assert_allclose(np.exp(lp[1:]), [0.25, 0.75], atol=1e-9)
    assert np.isfinite(lp[0]) and lp[0] < -20


def test_frontier_scores_weigh_the_rate_by_k():
    next_logp, rate = np.log([0.5, 0.25, 0.25]), np.array([0.2, 0.8, 0.4])
    assert np.argmax(frontier_scores(next_logp, np.log(rate), 0.0)) == 0      # next play alone
    np.testing.assert_allclose(frontier_scores(next_logp, np.log(rate), 1.0), np.log([0.1, 0.2, 0.1]))
    assert list(np.argsort(-frontier_scores(next_logp, np.log(rate), float("inf")))) == [1, 2, 0]   # rate alone
    # k = inf: equal rates are ordered by the next-play log-prob, never above a higher rate
    s = frontier_scores(np.log([0.7, 0.1, 0.2]), np.log([0.5, 0.5, 0.9]), float("inf"))
    assert list(np.argsort(-s)) == [2, 0, 1]


def test_head_tail_keeps_the_head_and_ranks_the_rest_by_the_rate():
    head, rate = np.array([3.0, 2.0, 1.0, 0.0]), np.log([0.1, 0.2, 0.9, 0.5])
    assert list(np.argsort(-head_tail_scores(head, rate, 1))) == [0, 2, 3, 1]
    assert list(np.argsort(-head_tail_scores(head, rate, 2))) == [0, 1, 2, 3]
    assert list(np.argsort(-head_tail_scores(head, rate, 0))) == [2, 3, 1, 0]   # no head: the rate alone
    assert list(np.argsort(-head_tail_scores(head, rate, 4))) == [0, 1, 2, 3]   # all head: head_score's order
