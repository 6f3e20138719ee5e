"""benchmarks/quality_ids.py's code logistic regression: a preference learnt per code carries to unseen tracks."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from quality_ids import code_logistic_accuracy, code_onehots  # noqa: E402


def test_code_onehots_put_each_level_in_its_own_block():
    codes = np.array([[0, 2], [1, 0], [2, 1]])
    assert code_onehots(codes, [2, 0], 3).tolist() == [[0, 0, 1, 0, 1, 0], [1, 0, 0, 0, 0, 1]]


def test_a_preferred_code_ranks_tracks_never_seen_in_training():
    # tracks 0-3 carry second code 1 (long listens), tracks 4-7 code 0 (skips); the first codes say nothing;
    # track 8 has track 2's codes
    codes = np.array([[t % 2, 1 if t < 4 else 0] for t in range(8)] + [[0, 1]])
    train = (np.array([0, 1, 0, 1]), np.array([4, 5, 5, 4]))          # only tracks 0, 1, 4, 5 in training
    test = (np.array([2, 3, 6, 2]), np.array([6, 7, 2, 8]))            # 2, 3, 6, 7, 8 never seen
    acc = code_logistic_accuracy(codes, 2, train, test)
    # the kept code over the skipped one: right; the other way round: wrong; the same codes: a tie, 1/2
    assert acc.tolist() == [1.0, 1.0, 0.0, 0.5]
