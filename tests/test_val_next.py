"""benchmarks/val_next.py's model-free row: what the Semantic IDs' prefixes alone say about the next track."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from val_next import prefix_popularity_scores  # noqa: E402


def test_prefix_popularity_ranks_two_shared_codes_then_one_then_popularity():
    codes = np.array([[1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 2, 3], [-1, -1, -1]])
    popularity = np.array([10, 0, 5, 20, 3])
    s = prefix_popularity_scores(codes, popularity, ctx=0)
    # 2 for the context's first code, +4 for its first two, + popularity / (max popularity + 1)
    np.testing.assert_allclose(s, [6 + 10 / 21, 6, 2 + 5 / 21, 20 / 21, 3 / 21])
    # a track sharing two codes outranks a more popular one sharing only the first, which outranks any other
    assert list(np.argsort(-s)) == [0, 1, 2, 3, 4]
