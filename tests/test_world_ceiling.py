"""benchmarks/world_ceiling.py: the planted model of a synthetic world, rebuilt from truth.json and the catalogue."""
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import formats  # noqa: E402
import logfiles  # noqa: E402
import world  # noqa: E402
from world_ceiling import PlantedWorld, long_listen_probs, planted_next_probs  # noqa: E402


def test_planted_next_probs_worked_example():
    # pop_w [2, 1, 1], prev 0 with neighbours [1, 2], one artist, favourite-genre draw [0, 1, 1], no explore move
    p = planted_next_probs(0, np.zeros(3, int), np.array([[1, 2], [0, 2], [0, 1]]), np.array([2.0, 1.0, 1.0]),
                           np.array([0.0, 1.0, 1.0]), (1, 1, 1, 1, 0))
    np.testing.assert_allclose(p, [0.125, 0.4375, 0.4375])
    # an artist's only track: the "artist" move replays it (world.walk does; data.py then drops the transition)
    p = planted_next_probs(0, np.arange(3), np.array([[1, 1], [0, 0], [0, 0]]), np.ones(3), np.ones(3),
                           (0, 1, 0, 0, 0))
    np.testing.assert_allclose(p, [1.0, 0.0, 0.0])


def test_long_listen_probs_worked_example():
    got = long_listen_probs(np.array([0.2, 0.2, 0.2, 0.0]), np.array([200.0, 100.0, 90.0, 0.0]), 0.1)
    np.testing.assert_allclose(got, [0.72, 0.72 * (1 - 90.5 / 100) / 0.15, 0.0, 0.0])


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    world.main(["generate", "--out", str(out), "--tracks", "300", "--users", "30", "--seed", "5"])
    return out


def test_planted_world_matches_the_simulated_logs(small_world):
    cat, _ = formats.load_catalog(small_world / "catalog.csv")
    planted = PlantedWorld(str(small_world), cat)
    rng = np.random.default_rng(0)
    for prev, user in zip(rng.integers(0, len(cat), 5), rng.integers(0, 30, 5)):
        p = planted.next_scores(int(prev), str(user)) / planted.p_long[user]
        assert np.isclose(p.sum(), 1.0) and (p >= 0).all()
    # not told the listener: each listener's score, averaged by their plays (computed once per query, not per listener)
    w = planted.plays / planted.plays.sum()
    explicit = sum(w[u] * planted.next_scores(7, str(u)) for u in range(30))
    np.testing.assert_allclose(planted.next_scores(7), explicit, rtol=1e-10)
    np.testing.assert_allclose(planted.pair_scores(), np.log(w @ planted.p_long) - np.log(w @ planted.p_skip))
    # b0 was solved so that the mean skip probability over the realised plays is --skip-share (0.35): the
    # rebuilt misfit, centres, genre penalty and propensities give it back (propensities are rounded in truth.json)
    users, rows, nxt_in_nbr, n_trans = [], [], 0, 0
    for user, plays in logfiles.iter_user_plays(small_world / "userid_trackid_timestamp.tsv", cat,
                                                id_information=small_world / "id_information.csv"):
        u = planted.user_index[user]
        users += [u] * len(plays)
        rows += [r for _, r in plays]
        for (t, r), (t2, r2) in zip(plays, plays[1:]):
            if t2 - t < 3600:   # within a session
                n_trans += 1
                nxt_in_nbr += r2 in set(planted.nbr[r].tolist())
    assert abs(planted.p_skip[users, rows].mean() - 0.35) < 0.005
    # the rebuilt neighbour lists are the walk's: a "similar" move (0.55) lands in them, other moves rarely
    assert 0.55 <= nxt_in_nbr / n_trans <= 0.75


def test_refuses_a_catalogue_that_is_not_the_worlds(small_world, tmp_path):
    from common import UserError
    cat, _ = formats.load_catalog(small_world / "catalog.csv")
    cat.track_id = cat.track_id[::-1]
    with pytest.raises(UserError, match="not the catalogue's rows"):
        PlantedWorld(str(small_world), cat)
