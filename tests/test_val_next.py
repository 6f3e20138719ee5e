"""benchmarks/val_next.py's model-free row: what the Semantic IDs' prefixes alone say about the next track."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import tasks  # noqa: E402
from tests.conftest import tiny_catalog  # noqa: E402
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
    a = {"queries": 4, "hits": {**base, "SFT_genre": {"hit": [1, 1, 1, 0], "ndcg": [1, 1, 1, 0],
                                                      "hallucinated": [0, 0, 1]}}}
    b = {"queries": 4, "hits": {**base, "SFT": {"hit": [1, 0, 0, 0], "ndcg": [0.5, 0, 0, 0],
                                                "hallucinated": [1, 1, 1]}}}
    json.dump(a, open(tmp_path / "a.json", "w"))
    json.dump(b, open(tmp_path / "b.json", "w"))
    d = paired_from_files(f"{tmp_path}/a.json:SFT_genre", f"{tmp_path}/b.json:SFT")
    assert d["hit@10"][0] == pytest.approx(0.5) and d["ndcg@10"][0] == pytest.approx((0.5 + 1 + 1) / 4)
    assert d["hallucinated@1"][0] == pytest.approx(-2 / 3)   # per prompt, paired: (0 - 1 + 0 - 1 + 1 - 1) / 3
    assert "precision@10" not in d                           # a metric only one side has is not paired
    a["hits"]["SFT_genre"]["precision"], b["hits"]["SFT"]["precision"] = [1, 0.5], [0.5, 0.5]
    a["attribute_queries"] = b["attribute_queries"] = 2
    json.dump(a, open(tmp_path / "a.json", "w"))
    json.dump(b, open(tmp_path / "b.json", "w"))
    d = paired_from_files(f"{tmp_path}/a.json:SFT_genre", f"{tmp_path}/b.json:SFT")
    assert d["precision@10"][0] == pytest.approx(0.25)      # the same 2 requests (train phrasings when unrecorded)
    for other in ({"attribute_queries": 3}, {"attribute_phrasings": "heldout"}):   # other requests: left out
        json.dump({**b, **other}, open(tmp_path / "b.json", "w"))
        skipped = []
        d = paired_from_files(f"{tmp_path}/a.json:SFT_genre", f"{tmp_path}/b.json:SFT", skipped=skipped)
        assert "precision@10" not in d and "hit@10" in d and skipped[0].startswith("attribute P@10 not paired")
    b["hits"]["SFT"]["hallucinated"] = [1, 1]   # other prompts decoded: left out, not a shape error
    json.dump(b, open(tmp_path / "b.json", "w"))
    skipped = []
    d = paired_from_files(f"{tmp_path}/a.json:SFT_genre", f"{tmp_path}/b.json:SFT", skipped=skipped)
    assert "hallucinated@1" not in d and skipped == ["hallucinated@1 not paired: 3 vs 2 prompts decoded"]
    b["hits"]["item kNN"]["hit"] = [0, 1, 0, 0]   # other queries: refused
    json.dump(b, open(tmp_path / "b.json", "w"))
    with pytest.raises(UserError, match="same validation queries"):
        paired_from_files(f"{tmp_path}/a.json:SFT_genre", f"{tmp_path}/b.json:SFT")
    with pytest.raises(UserError, match="no row 'DPO'"):
        paired_from_files(f"{tmp_path}/a.json:DPO", f"{tmp_path}/b.json:SFT")


def test_pair_preference_rows_only_on_the_same_pairs(tmp_path):
    import json

    import pytest

    from common import UserError
    from val_next import RATE, paired_from_files
    base = {"genre popularity": {"hit": [1, 0], "ndcg": [1, 0]}, "item kNN": {"hit": [0, 1], "ndcg": [0, 1]},
            RATE: {"preference": [1, 1, 0, 0.5]}}
    a = {"queries": 2, "hits": {**base, "DPO_q": {"hit": [1, 0], "ndcg": [1, 0], "preference": [1, 1, 1, 0]}}}
    b = {"queries": 2, "hits": {**base, "DPO": {"hit": [0, 0], "ndcg": [0, 0], "preference": [1, 0, 0.5, 0]}}}
    json.dump(a, open(tmp_path / "a.json", "w"))
    json.dump(b, open(tmp_path / "b.json", "w"))
    d = paired_from_files(f"{tmp_path}/a.json:DPO_q", f"{tmp_path}/b.json:DPO")
    assert d["preference accuracy"][0] == pytest.approx((0 + 1 + 0.5 + 0) / 4)   # per pair, paired
    assert d["hit@10"][0] == pytest.approx(0.5)
    b["hits"][RATE]["preference"] = [1, 1, 0, 0]   # other pairs: refused
    json.dump(b, open(tmp_path / "b.json", "w"))
    with pytest.raises(UserError, match="same preference pairs"):
        paired_from_files(f"{tmp_path}/a.json:DPO_q", f"{tmp_path}/b.json:DPO")


def test_attribute_queries_are_distinct_requests_with_every_matching_track_relevant():
    from val_next import attribute_queries
    cat = tiny_catalog(n=20)
    cat.genres = [["rock"] if i % 2 else ["jazz"] for i in range(20)]
    row_codes = {i: (i, 0, 0) for i in range(20)}
    qs = attribute_queries(cat, row_codes, 5, seed=0)
    assert 1 <= len(qs) <= 5 and len({q[0] for q in qs}) == len(qs)
    # every track is slow (tempo 0.5) and within 5 BPM of 0: a request's genre alone decides, or none: all tracks
    evens, odds = set(range(0, 20, 2)), set(range(1, 20, 2))
    for prompt, rel in qs:
        assert any(prompt.lower().startswith(t.split("{")[0].lower()) for t in tasks.TRAIN_REQUEST_TEMPLATES)
        assert rel == (evens if "jazz" in prompt else odds if "rock" in prompt else evens | odds)
    assert attribute_queries(cat, row_codes, 5, seed=0) == qs   # seeded


def test_heldout_phrasings_are_in_neither_training_nor_test_and_pair_with_the_training_ones():
    """--attribute-phrasings heldout: phrasings no training or test example starts with; the same seed draws the same
    requests (their relevant tracks) in either phrasing, so the two pair query by query."""
    from val_next import PHRASINGS, attribute_queries

    def starts(templates):
        return {t.split("{")[0].lower() for t in templates}
    held = starts(tasks.VAL_REQUEST_TEMPLATES)
    assert not held & (starts(tasks.TRAIN_REQUEST_TEMPLATES) | starts(tasks.TEST_REQUEST_TEMPLATES))
    assert PHRASINGS["heldout"] == tasks.VAL_REQUEST_TEMPLATES
    cat = tiny_catalog(n=20)
    cat.genres = [["rock"] if i % 2 else ["jazz"] for i in range(20)]
    row_codes = {i: (i, 0, 0) for i in range(20)}
    train = attribute_queries(cat, row_codes, 5, seed=0)
    heldout = attribute_queries(cat, row_codes, 5, seed=0, templates=tasks.VAL_REQUEST_TEMPLATES)
    assert [q[1] for q in heldout] == [q[1] for q in train]
    assert all(any(p.lower().startswith(s) for s in held) for p, _ in heldout)


def test_swap_context_changes_the_last_id_only_within_the_genre():
    from val_next import swap_context, top_overlap
    codes = {0: (1, 2, 3), 1: (1, 5, 0), 2: (4, 4, 4), 3: (1, 2, 9)}
    genre = {0: "rock", 1: "rock", 2: "jazz", 3: "rock"}
    rows = {"rock": [0, 1, 3], "jazz": [2]}
    prompts = ["Played before: <a_1><b_2><c_3>. Something like (rock) <a_1><b_2><c_3>",
               "More like (jazz) <a_4><b_4><c_4>, please"]
    out, swapped = swap_context(prompts, [0, 2], codes, rows, genre.get, seed=0)
    assert swapped[0] in (1, 3) and swapped[1] == 2          # another rock track; jazz has no other track
    new = "".join(f"<{x}_{c}>" for x, c in zip("abc", codes[swapped[0]]))
    assert out[0] == "Played before: <a_1><b_2><c_3>. Something like (rock) " + new   # only the context's ID
    assert out[1] == prompts[1]
    assert swap_context(prompts, [0, 2], codes, rows, genre.get, seed=0) == (out, swapped)   # seeded
    assert top_overlap([1, 2, 3, 4], [4, 3, 9, 8], k=4) == 0.5


def test_count_buckets_split_at_their_edges():
    from val_next import count_bucket
    assert count_bucket([0, 4, 5, 9, 10, 19, 20, 500], (5, 10, 20)) == ["0-4", "0-4", "5-9", "5-9", "10-19", "10-19",
                                                                        "20+", "20+"]
    assert count_bucket([0, 1, 2, 3], (1, 3)) == ["0-0", "1-2", "1-2", "3+"]
    assert count_bucket([0, 19, 20]) == ["0-19", "0-19", "20+"]      # --by-plays' split


def test_paired_by_group_pairs_within_each_group():
    from val_next import paired_by_group
    out = paired_by_group([1, 0, 1, 1], [0, 0, 1, 0], ["x", "y", "x", "y"], seed=0)
    assert list(out) == ["x", "y"]
    # x: queries 0 and 2, a = (1, 1), b = (0, 1): differences (1, 0); y: queries 1 and 3, differences (0, 1)
    for g in ("x", "y"):
        n, ma, mb, (d, lo, hi) = out[g]
        assert n == 2 and d == 0.5 and (lo, hi) == (0.0, 1.0)   # two values 0 and 1: the bootstrap spans both
    assert out["x"][1:3] == (1.0, 0.5) and out["y"][1:3] == (0.5, 0.0)
