"""benchmarks/pair_runs.py's paired rows from per-query values, by hand (the whole script runs in test_pipeline)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import pair_runs  # noqa: E402

from common import UserError  # noqa: E402


def side(hits, prefs, key="k"):
    reverse = hits[::-1]
    return {"keys": {"next_track": key, "preferences": "p"},
            "next_track": {"SFT": {"hit@10": hits, "ndcg@10": hits},
                           "genre popularity": {"hit@10": reverse, "ndcg@10": reverse}},
            "preferences": {"SFT": prefs}}


def test_same_share_and_constant_difference():
    a = side([1.0, 0.0, 1.0, 1.0], [1.0, 1.0])
    rows = pair_runs.paired_rows(("SFT", a), ("genre popularity", a), n_boot=50)
    # A hits 3 of 4, B (the reverse) 3 of 4: equal means, alike on queries 1 and 2 of 4 only ([1,0,1,1] vs [1,1,0,1])
    task, metric, ma, mb, same, (d, lo, hi) = rows[0]
    assert (task, metric, ma, mb, same, d) == ("next_track", "hit@10", 0.75, 0.75, 0.5, 0.0)
    b = side([0.0, 0.0, 0.0, 0.0], [0.0, 1.0])
    rows = pair_runs.paired_rows(("SFT", a), ("SFT", b), n_boot=50)
    assert rows[0][4] == 0.25 and rows[0][5][0] == 0.75      # alike on the one query both miss
    assert rows[-1][:5] == ("preferences", None, 1.0, 0.5, 0.5)
    with pytest.raises(UserError, match="next_track: the two runs were evaluated on other queries"):
        pair_runs.paired_rows(("SFT", a), ("SFT", side([0.0] * 4, [0.0, 0.0], key="other")))
