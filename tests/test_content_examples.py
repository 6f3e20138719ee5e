"""benchmarks/content_examples.py: next-track examples drawn from the audio features (a lever tried, not kept)."""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import baselines as B  # noqa: E402
from content_examples import content_examples, kernel_probs, nearest_in_genre  # noqa: E402
from tests.conftest import tiny_catalog  # noqa: E402


def test_kernel_probs_worked_example_and_the_baselines_ranking():
    x, plays = np.array([[0.0], [1.0], [2.0]]), np.array([0.0, 9.0, 99.0])
    p = kernel_probs(x, plays, 0, np.array([1, 2]), tau=4.0)
    w = np.array([10 * np.exp(-1 / 4), 100 * np.exp(-1)])          # (1 + plays) exp(-d^2 / tau)
    np.testing.assert_allclose(p, w / w.sum())
    np.testing.assert_allclose(p, [0.1748, 0.8252], atol=1e-4)
    # the same order as content x popularity's scores, which are these log-probabilities plus a constant
    s = B.content_popularity_scores(x, 0, plays, np.ones(3, bool), 4.0)[[1, 2]]
    np.testing.assert_allclose(np.log(p) - np.log(p).max(), s - s.max())


def test_nearest_in_genre_orders_by_distance_then_row():
    x = np.array([[0.0], [2.0], [-1.0], [1.0], [1.0]])
    assert nearest_in_genre(x, 0, np.array([1, 2, 3, 4]), 3).tolist() == [2, 3, 4]


def test_examples_answer_within_the_genre_and_never_the_context():
    cat = tiny_catalog(n=12)
    cat.genres = [["rock"] if i % 3 else ["jazz"] for i in range(12)]   # jazz: 0, 3, 6, 9
    cat.features = np.random.default_rng(0).normal(size=(12, 10))
    row_codes = {i: (i // 4, i % 4, 0) for i in range(12)}
    x, plays = cat.features, np.arange(12.0)
    for mode in ("kernel", "sounds"):
        lines = content_examples(cat, row_codes, x, plays, 24, mode, tau=4.0, k=2, seed=0)
        assert len(lines) == 24
        for i, line in enumerate(lines):
            ex = json.loads(line)
            ctx, ans = i % 12, cat.track_id.index(ex["track_id"])     # every track in turn
            assert ex["task"] == "content" and ans != ctx and cat.genres[ans] == cat.genres[ctx]
            assert ex["answer"] == "".join(f"<{a}_{c}>" for a, c in zip("abc", row_codes[ans]))
            assert f"({cat.genres[ctx][0]}) " + "".join(f"<{a}_{c}>" for a, c in zip("abc", row_codes[ctx])) \
                in ex["prompt"]
            if mode == "sounds":   # one of the 2 nearest of the genre
                cand = np.array([r for r in range(12) if r != ctx and cat.genres[r] == cat.genres[ctx]])
                assert ans in nearest_in_genre(x, ctx, cand, 2)
        assert content_examples(cat, row_codes, x, plays, 24, mode, tau=4.0, k=2, seed=0) == lines   # seeded
