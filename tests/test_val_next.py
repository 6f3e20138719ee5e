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


def test_pair_rows_of_two_files_on_the_same_queries(tmp_path):
    import json

    import pytest

    from common import UserError
    from val_next import paired_from_files
    base = {"genre popularity": {"hit": [1, 0, 0, 1], "ndcg": [1, 0, 0, 0.5]},
            "item kNN": {"hit": [1, 1, 0, 0], "ndcg": [0.5, 1, 0, 0]}}
    a = {"queries": 4, "hits": {**base, "SFT_genre": {"hit": [1, 1, 1, 0], "ndcg": [1, 1, 1, 0]}}}
    b = {"queries": 4, "hits": {**base, "SFT": {"hit": [1, 0, 0, 0], "ndcg": [0.5, 0, 0, 0]}}}
    json.dump(a, open(tmp_path / "a.json", "w"))
    json.dump(b, open(tmp_path / "b.json", "w"))
    d = paired_from_files(f"{tmp_path}/a.json:SFT_genre", f"{tmp_path}/b.json:SFT")
    assert d["hit@10"][0] == pytest.approx(0.5) and d["ndcg@10"][0] == pytest.approx((0.5 + 1 + 1) / 4)
    b["hits"]["item kNN"]["hit"] = [0, 1, 0, 0]   # other queries: refused
    json.dump(b, open(tmp_path / "b.json", "w"))
    with pytest.raises(UserError, match="same validation queries"):
        paired_from_files(f"{tmp_path}/a.json:SFT_genre", f"{tmp_path}/b.json:SFT")
    with pytest.raises(UserError, match="no row 'DPO'"):
        paired_from_files(f"{tmp_path}/a.json:DPO", f"{tmp_path}/b.json:SFT")
