"""benchmarks/teacher_targets.py: content x co-listening's scores as a distribution of the next track."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import baselines as B  # noqa: E402
from teacher_targets import teacher_distribution  # noqa: E402


def test_teacher_distribution_by_hand():
    # the docstring's example: s_1 = 2 log 10 - 1/4, s_2 = log 100 - 1, so p_1 : p_2 = e^0.75 : 1
    x, plays, co = np.array([[0.0], [1.0], [2.0]]), np.array([0.0, 9.0, 99.0]), np.array([0.0, 9.0, 0.0])
    rows, p = teacher_distribution(x, plays, co, np.ones(3, bool), 0, tau=4.0, lam=1.0, k=2)
    assert rows.tolist() == [1, 2] and np.allclose(p, [np.exp(0.75) / (1 + np.exp(0.75)), 1 / (1 + np.exp(0.75))])
    # the context is never a candidate, other genres neither, and k stops at what is left
    rows, p = teacher_distribution(x, plays, co, np.array([True, False, True]), 0, tau=4.0, lam=1.0, k=5)
    assert rows.tolist() == [2] and p.tolist() == [1.0]


def test_teacher_ranks_as_the_baseline():
    """Its order is content x co-listening's within the genre (the same score, exponentiated)."""
    g = np.random.default_rng(0)
    x, plays, co = g.normal(size=(30, 3)), g.integers(0, 50, 30).astype(float), g.integers(0, 4, 30).astype(float)
    in_genre = g.random(30) < 0.6
    in_genre[4] = True
    rows, p = teacher_distribution(x, plays, co, in_genre, 4, tau=2.0, lam=0.5, k=30)
    s = B.content_colisten_scores(x, 4, plays, co, in_genre, 2.0, 0.5)
    want = [j for j in np.argsort(-s, kind="stable") if j != 4 and in_genre[j]]
    assert rows.tolist() == want and np.all(np.diff(p) <= 0) and np.isclose(p.sum(), 1.0)
