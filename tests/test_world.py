import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import formats  # noqa: E402
import logfiles  # noqa: E402
import calibration  # noqa: E402
import world  # noqa: E402
from common import UserError  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SMALL = ["--tracks", "300", "--users", "30", "--seed", "5"]


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    world.main(["generate", "--out", str(out)] + SMALL)
    return out


def read_world(out):
    cat, rep = formats.load_catalog(out / "catalog.csv")
    truth = json.loads((out / "truth.json").read_text())
    return cat, rep, truth


# ---------------------------------------------------------------------------------------------- pure functions

def test_skip_probability_and_solve_b0():
    p = world.skip_probability(np.array([0.0, 1.0]), np.array([0.0, 2.0]), 0.0, 1.0, 0.5)
    assert p[0] == 0.5 and p[1] == pytest.approx(1 / (1 + math.exp(-2.0)))
    b0 = world.solve_b0(np.zeros(4), np.zeros(4), 1.0, 1.0, 0.2)
    assert b0 == pytest.approx(math.log(0.2 / 0.8), abs=1e-9)
    mis, prop = np.array([0.0, 1.0, 3.0]), np.array([1.0, -1.0, 0.5])
    b0 = world.solve_b0(mis, prop, 1.5, 1.0, 0.35)
    assert world.skip_probability(mis, prop, b0, 1.5, 1.0).mean() == pytest.approx(0.35, abs=1e-9)


def test_misfit_and_shrink():
    x, c = np.array([[1.0, 1.0], [0.0, 2.0]]), np.array([[0.0, 1.0], [0.0, 0.0]])
    assert world.misfit(x, c, np.array([True, False]), 1.0).tolist() == [0.5, 3.0]
    assert calibration.shrink(0.0, 50, 1.0, k=50) == 0.5 and calibration.shrink(2.0, 150, 6.0, k=50) == 3.0


def test_model_space_round_trip():
    raw = np.array([[0.654, 0.63, 10, -4.644, 0.0259, 0.153, 0.0, 0.111, 0.43, 89.991]])
    z = calibration.to_model_space(raw)
    assert z.shape == (1, 9) and z[0, 0] == pytest.approx(math.log(0.654 / 0.346))
    assert z[0, 5] == pytest.approx(math.log(1e-3 / (1 - 1e-3)))  # instrumentalness 0 clipped at EPS
    assert calibration.from_model_space(z, np.array([10])).tolist() == raw.tolist()


def test_nearest_neighbours():
    x = np.array([[0.0], [1.0], [3.0], [10.0], [0.0]])
    nb = world.nearest_neighbours(x, [np.array([0, 1, 2, 3]), np.array([4])], 2)
    assert nb.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1], [4, 4]]
    nb = world.nearest_neighbours(x, [np.array([0, 1, 2])], 3)  # only 2 others: repeated cyclically
    assert nb[:3].tolist() == [[1, 2, 1], [0, 2, 0], [1, 0, 1]]


# ---------------------------------------------------------------------------------------------- generated world

def test_generate_is_deterministic(small_world, tmp_path):
    first = {p.name: p.read_bytes() for p in small_world.iterdir()}
    assert set(first) == {"catalog.csv", "userid_trackid_timestamp.tsv", "id_information.csv", "id_metadata.csv",
                          "truth.json", "world_config.json"}
    out = tmp_path / "w"
    shutil.copytree(small_world, tmp_path / "keep")
    shutil.rmtree(small_world)
    try:
        world.main(["generate", "--out", str(small_world)] + SMALL)
        assert {p.name: p.read_bytes() for p in small_world.iterdir()} == first
    finally:
        shutil.rmtree(small_world, ignore_errors=True)
        shutil.copytree(tmp_path / "keep", small_world)
    world.main(["generate", "--out", str(out)] + SMALL[:-1] + ["6"])
    assert (out / "catalog.csv").read_bytes() != first["catalog.csv"]


def test_catalog_format_fidelity(small_world):
    cat, rep, truth = read_world(small_world)
    assert len(cat) == 300 and rep["dropped"] == 0 and rep["duplicate_rows_merged"] == 3  # 1% of 300
    assert rep["rows_read"] == 303 and sum(len(g) == 2 for g in cat.genres) == 3
    header = (small_world / "catalog.csv").read_text().splitlines()[0]
    assert header == "," + ",".join(formats.CATALOG_COLUMNS)
    assert all(len(t) == 22 and t.isalnum() for t in cat.track_id) and len(set(cat.track_id)) == 300
    assert len(set(cat.primary_genre())) == 20 and cat.primary_genre()[0] == "country"
    f = {name: cat.feature(name) for name in formats.FEATURES}
    assert all(((f[u] >= 0) & (f[u] <= 1)).all() for u in formats.UNIT_FEATURES)
    assert set(np.unique(f["key"])) <= set(range(-1, 12)) and set(cat.mode.tolist()) <= {0, 1}
    assert ((cat.popularity >= 0) & (cat.popularity <= 100)).all() and (cat.duration_ms >= 30_000).all()
    assert len(set(cat.keys())) == 300  # titles are unique per artist, so name joins are exact
    first = [a.split(";")[0] for a in cat.artists]
    counts = np.unique(first, return_counts=True)[1]
    assert counts.max() <= 12 and np.median(counts) >= 3
    assert truth["tracks"]["track_id"] == cat.track_id


def test_every_play_joins_by_id_and_by_name(small_world):
    cat, _, truth = read_world(small_world)
    tsv = small_world / "userid_trackid_timestamp.tsv"
    lines = tsv.read_text().splitlines()
    assert lines[0] == "user_id\ttrack_id\ttimestamp" and len(lines[1].split("\t")[1]) == 16
    by_id, st = [], {}
    for user, plays in logfiles.iter_user_plays(tsv, cat, id_information=small_world / "id_information.csv",
                                                id_metadata=small_world / "id_metadata.csv", stats=st):
        by_id.append((user, plays))
    assert st["match_rate"] == 1.0 and st["bad_rows"] == 0 and st["events_read"] == truth["realised"]["events"]
    assert [u for u, _ in by_id] == [str(i) for i in range(30)]
    assert [len(p) for _, p in by_id] == [u["plays"] for u in truth["users"]]
    by_name = list(logfiles.iter_user_plays(tsv, cat, id_information=small_world / "id_information.csv"))
    assert by_name == by_id
    ts = [int(x) for x in np.array([t for _, p in by_id for t, _ in p])]
    assert min(ts) >= world.START and all(a[0] < b[0] for _, p in by_id for a, b in zip(p, p[1:]))
    # newest first within a user in the file, as Music4All-Onion
    first_user = [line for line in lines[1:] if line.startswith("0\t")]
    assert first_user == sorted(first_user, key=lambda s: s.split("\t")[2], reverse=True)


def test_planted_shares_and_skip_signal(small_world):
    cat, _, truth = read_world(small_world)
    tsv = small_world / "userid_trackid_timestamp.tsv"
    gaps, rows = [], []
    for _, plays in logfiles.iter_user_plays(tsv, cat, id_information=small_world / "id_information.csv"):
        for (t, r), (t2, _) in zip(plays, plays[1:]):
            if t2 - t < 3600:  # the last play of a session has no observable dwell
                gaps.append(t2 - t), rows.append(r)
    gaps, rows = np.array(gaps), np.array(rows)
    assert 0.30 <= (gaps < 30).mean() <= 0.40 and 0.50 <= (gaps > 90).mean() <= 0.62
    assert 0.30 <= truth["realised"]["skip_share"] <= 0.40 and 0.50 <= truth["realised"]["long_share"] <= 0.60
    s = np.array(truth["tracks"]["skip_propensity"])[rows]
    assert (gaps[s > 0.5] < 30).mean() > (gaps[s < -0.5] < 30).mean() + 0.1  # s_t drives skips
    plays = logfiles.iter_user_plays(tsv, cat, id_information=small_world / "id_information.csv")
    sessions = 30 + sum(1 for _, p in plays
                        for a, b in zip(p, p[1:]) if b[0] - a[0] >= 3600)
    assert 4 <= sum(u["plays"] for u in truth["users"]) / sessions <= 20


def test_truth_contents(small_world):
    cat, _, truth = read_world(small_world)
    genres = set(cat.primary_genre())
    assert len(truth["users"]) == 30
    assert all(1 <= len(u["favourite_genres"]) <= 3 and set(u["favourite_genres"]) <= genres for u in truth["users"])
    assert all(len(u["centre"]) == 9 for u in truth["users"])
    w = np.array(truth["propensity"]["w"])
    assert w.shape == (9,) and np.linalg.norm(w) == pytest.approx(1.0)
    x = (calibration.to_model_space(cat.features) - truth["feature_space"]["mean"]) / truth["feature_space"]["std"]
    s = np.array(truth["tracks"]["skip_propensity"])
    lin = (x @ w - truth["propensity"]["lin_mean"]) / truth["propensity"]["lin_std"]
    assert np.corrcoef(lin, s)[0, 1] == pytest.approx(truth["propensity"]["a"], abs=0.1)
    m = truth["skip_model"]
    assert (m["b1"], m["b2"], m["target_skip_share"]) == (world.SKIP_MISFIT, world.SKIP_PROPENSITY, world.SKIP_SHARE)
    config = json.loads((small_world / "world_config.json").read_text())
    assert config["tracks"] == 300 and config["summary"]["events"] == truth["realised"]["events"]


def test_bad_options(tmp_path):
    with pytest.raises(UserError, match="--genres must be between 1 and 20"):
        world.main(["generate", "--out", str(tmp_path), "--genres", "21"])
    with pytest.raises(UserError, match="skip-share"):
        world.main(["generate", "--out", str(tmp_path), "--skip-share", "1.5"])
    with pytest.raises(SystemExit):
        world.main(["generate", "--out", str(tmp_path), "--no-such-option", "1"])
    assert not (tmp_path / "catalog.csv").exists()


def test_committed_calibration_matches_union_file():
    union = SHARED / "spotify_tracks" / "union_8325.csv"
    if not union.exists():
        pytest.skip(f"{union} not available")
    committed = json.loads((REPO / "world_calibration.json").read_text())
    fresh = json.loads(json.dumps(calibration.calibrate(formats.load_catalog(union)[0])))
    assert {k: v for k, v in committed.items() if k != "command"} == fresh
    assert list(fresh["genres"])[:6] == ["country", "rock", "dubstep", "deep-house", "metal", "hip-hop"]
    assert fresh["genres"]["country"]["rows"] == 1000 and len(fresh["genres"]) == 20
    corr = np.array(fresh["correlation"])
    assert np.allclose(np.diag(corr), 1.0) and np.linalg.eigvalsh(corr).min() > 0


def test_listen_over_real_catalogue(tmp_path):
    real = SHARED / "spotify_tracks" / "by_genre_6000.csv"
    if not real.exists():
        pytest.skip(f"{real} not available")
    world.main(["listen", "--catalog", str(real), "--out", str(tmp_path), "--users", "10", "--seed", "1"])
    assert not (tmp_path / "catalog.csv").exists()
    cat, _ = formats.load_catalog(real)
    st = {}
    n = sum(len(p) for _, p in logfiles.iter_user_plays(tmp_path / "userid_trackid_timestamp.tsv", cat,
                                                        id_information=tmp_path / "id_information.csv",
                                                        id_metadata=tmp_path / "id_metadata.csv", stats=st))
    assert st["match_rate"] == 1.0 and st["users"] == 10 and n == st["events_read"] > 100
