"""benchmarks/listener_prefs.py: a listener's profile from their training pairs, each pair left out of its own."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from listener_prefs import fit_pairs, listener_profiles, pair_features  # noqa: E402


def test_profile_counts_chosen_and_rejected_tracks_by_genre():
    # one listener, pairs (c=0, r=1) and (c=2, r=1), genres [0, 1, 0]: two long listens in genre 0, two skips in 1
    x = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 2.0]])
    prof = listener_profiles(np.array([0, 0]), np.array([0, 2]), np.array([1, 1]), np.array([0, 1, 0]), x, 1)
    np.testing.assert_array_equal(prof["long"], [[2, 0]])
    np.testing.assert_array_equal(prof["skip"], [[0, 2]])
    np.testing.assert_array_equal(prof["centre_sum"], [[4.0, 2.0]])           # x[0] + x[2]
    assert prof["n_long"].tolist() == [2] and prof["n_skip"].tolist() == [2]


def logit(p):
    return np.log(p / (1 - p))


def test_pair_features_by_hand():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 2.0]])
    genre = np.array([0, 1, 0])
    prof = listener_profiles(np.array([0, 0]), np.array([0, 2]), np.array([1, 1]), genre, x, 1)
    long, skip = np.array([3, 0, 1]), np.array([1, 2, 0])
    # track 0 with its own pair (0, 1) left out: the profile is the other pair (2, 1); the rate's counts lose the
    # pair's long listen of track 0: (2 + 1) / (2 + 1 + 2)
    f = pair_features(prof, np.array([0]), np.array([0]), genre, x, long, skip, np.array([0]), np.array([1]),
                      prior=2.0)
    p_u = (1 + 1) / (2 + 2)                                  # the listener's share heard, Laplace: 0.5
    heard = (1 + 2 * p_u) / (1 + 0 + 2)                      # 2/3
    np.testing.assert_allclose(f, [[logit(0.6), logit(heard), 1 / 2, ((x[0] - x[2]) ** 2).mean()]])
    # track 1 scored with nothing left out: genre 1 holds the two skips; the centre is the mean of x[0] and x[2]
    f = pair_features(prof, np.array([0]), np.array([1]), genre, x, long, skip, prior=2.0)
    p_u = (2 + 1) / (4 + 2)
    heard = (0 + 2 * p_u) / (0 + 2 + 2)
    np.testing.assert_allclose(f, [[logit(1 / 4), logit(heard), 2 / 4, ((x[1] - [2.0, 1.0]) ** 2).mean()]])


def test_leave_one_out_is_the_profile_and_the_counts_without_the_pair():
    rng = np.random.default_rng(0)
    n, P = 12, 40
    x, genre = rng.standard_normal((n, 3)), rng.integers(0, 3, n)
    users, ch, rj = rng.integers(0, 4, P), rng.integers(0, n, P), rng.integers(0, n, P)
    long = np.bincount(ch, minlength=n) + rng.integers(0, 3, n)     # every pair's plays among the rate's counts
    skip = np.bincount(rj, minlength=n) + rng.integers(0, 3, n)
    full = listener_profiles(users, ch, rj, genre, x, 4)
    loo_c = pair_features(full, users, ch, genre, x, long, skip, ch, rj)
    loo_r = pair_features(full, users, rj, genre, x, long, skip, ch, rj)
    for i in range(P):
        keep = np.arange(P) != i
        prof = listener_profiles(users[keep], ch[keep], rj[keep], genre, x, 4)
        lo, sk = long - np.bincount([ch[i]], minlength=n), skip - np.bincount([rj[i]], minlength=n)
        for got, t in ((loo_c, ch), (loo_r, rj)):
            np.testing.assert_allclose(got[i:i + 1], pair_features(prof, users[i:i + 1], t[i:i + 1], genre, x, lo, sk),
                                       atol=1e-12)


def test_a_listener_with_no_long_listen_left_has_the_catalogue_mean_as_centre():
    x = np.array([[2.0, -2.0], [1.0, 1.0]])
    prof = listener_profiles(np.array([0]), np.array([0]), np.array([1]), np.array([0, 0]), x, 1)
    f = pair_features(prof, np.array([0]), np.array([0]), np.array([0, 0]), x, np.array([1, 0]), np.array([0, 1]),
                      np.array([0]), np.array([1]))
    assert f[0, 3] == pytest.approx(4.0)                    # mean of (2 - 0)^2 and (-2 - 0)^2
    assert f[0, 0] == pytest.approx(0.0)                    # no play of track 0 left: the rate's prior, 1/2
    assert np.isfinite(f).all()


def test_fit_pairs_learns_which_feature_decides():
    rng = np.random.default_rng(1)
    d = rng.standard_normal((400, 2))
    d[:, 0] = np.abs(d[:, 0]) + 0.1                          # the chosen track always has more of feature 0
    w = fit_pairs(d)
    assert w[0] > 0 and abs(w[1]) < w[0] / 5
    assert (d @ w > 0).all()
    np.testing.assert_allclose(fit_pairs(-d), -w, rtol=1e-6)  # the same pairs read the other way round
