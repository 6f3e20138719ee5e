"""benchmarks/fusion.py: the model's log-probs times a baseline's, by hand."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import baselines as B  # noqa: E402
import fusion  # noqa: E402


def test_fused_scores_worked_example():
    logp, prior, one_genre = np.array([-1.0, -3.0]), np.array([0.0, 4.0]), np.array([True, True])
    assert np.argmax(fusion.fused_scores(logp, prior, one_genre, 0.0, False)) == 0        # -1 > -3
    np.testing.assert_array_equal(fusion.fused_scores(logp, prior, one_genre, 1.0, False), [-1.0, 1.0])
    # the genre first: an out-of-genre track never overtakes an in-genre one, whatever the fused score
    s = fusion.fused_scores(np.array([-1.0, -3.0, -9.0]), np.array([0.0, 4.0, 0.0]), np.array([False, False, True]),
                            1.0, True)
    assert np.argsort(-s).tolist() == [2, 1, 0]


def test_colisten_prior_is_the_baseline_before_its_genre_step():
    rng = np.random.default_rng(0)
    x, pop, co = rng.normal(size=(9, 3)), rng.integers(0, 30, 9).astype(float), rng.integers(0, 4, 9).astype(float)
    in_genre = rng.random(9) < 0.5
    r = fusion.colisten_prior(x, 2, pop, co, 4.0, 0.5)
    np.testing.assert_allclose(B.genre_first(r, in_genre), B.content_colisten_scores(x, 2, pop, co, in_genre, 4.0, 0.5))
    # a large enough weight on the baseline ranks as the baseline does, the genre first
    logp = -rng.random(9) * 5
    assert (np.argsort(-fusion.fused_scores(logp, r, in_genre, 1e6, True), kind="stable")
            == np.argsort(-B.content_colisten_scores(x, 2, pop, co, in_genre, 4.0, 0.5), kind="stable")).all()
