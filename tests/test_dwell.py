"""What a dwell time can say (issue 12): same-timestamp plays, the log's timestamp resolution, track durations.

Hand-written logs with known answers, the `data.py prefs` report on a tiny hand-made run, and the real Last.fm-1K
and Music4All-Onion lines in ../shared/data (skipped when absent).
"""
import json
import os

import numpy as np
import pytest

import data
import formats
import logfiles
import preferences
import sessions
from common import UserError
from tests.conftest import write_onion_last_two

BASE = 1577836800   # 2020-01-01 00:00:00 UTC, a whole minute


def catalog(durations_s):
    """Tracks t0, t1, ... named 'Artist i - Song i', with these lengths in seconds (0: unknown)."""
    n = len(durations_s)
    return formats.Catalog(
        track_id=[f"t{i}" for i in range(n)], track_name=[f"Song {i}" for i in range(n)],
        artists=[f"Artist {i}" for i in range(n)], album_name=[""] * n, genres=[["rock"]] * n,
        features=np.full((n, 10), 0.5), popularity=np.zeros(n, dtype=np.int64),
        duration_ms=np.array([int(d * 1000) for d in durations_s], dtype=np.int64),
        explicit=np.zeros(n, dtype=bool), mode=np.ones(n, dtype=np.int64))


# one session of one user: (seconds after BASE, track); track lengths below
DURATIONS = [200, 200, 200, 0, 60, 20]   # t3: unknown length; t4: 60 s; t5: a 20 s track
PLAYS = [(0, 0),      # 100 s                                     -> chosen
         (100, 1),    # the next play has the same timestamp      -> unknown, never a skip
         (100, 2),    # 12 s                                      -> rejected
         (112, 5),    # 12 s of a 20 s track (60%)                -> rejected; between by share (not < 50%)
         (124, 4),    # 55 s of a 60 s track                      -> between; chosen by share (> 80%)
         (179, 3),    # 300 s of a track of unknown length        -> chosen (not capped at 0 s)
         (479, 0)]    # the session's last play                   -> unknown


# ---------------------------------------------------------------------------------------------- 1. same timestamp

def test_a_play_sharing_its_timestamp_with_the_next_has_unknown_dwell():
    cat = catalog([240] * 4)
    sess = sessions.sessions_of([(0, 0), (0, 1), (200, 2), (5000, 3)], cat, gap=1800)
    assert sess == [[(0, 0, None), (0, 1, 200.0), (200, 2, None)], [(5000, 3, None)]]   # the docstring's example
    # one session still: an unknown dwell inside a session does not end it
    counts = {}
    plays = [(0, 0), (10, 1), (10, 2), (200, 3), (400, 0)]   # 1 shares its second with 2: not a 0 s skip
    pairs = preferences.mine_pairs(sessions.sessions_of(plays, cat), {i: (i,) for i in range(4)}, counts=counts)
    assert pairs == []                                        # 0 was the only skip, and it is a context here
    assert counts["rejected"] == 1 and counts["reason: same timestamp"] == 1 and counts["unlabelled"] == 2


def test_plays_of_one_second_round_trip_in_play_order(tmp_path):
    cat = catalog([200] * 3)
    path = tmp_path / "ev.tsv"
    logfiles.write_onion_events(iter([("u", "m0", BASE + 7), ("u", "m1", BASE + 7), ("u", "m2", BASE + 9)]), str(path))
    assert path.read_text().splitlines()[1:] == ["u\tm2\t2020-01-01 00:00:09", "u\tm1\t2020-01-01 00:00:07",
                                                 "u\tm0\t2020-01-01 00:00:07"]           # newest first
    info = {f"m{i}": (f"Artist {i}", f"Song {i}", "") for i in range(3)}
    assert list(logfiles.iter_user_plays(str(path), cat, id_information=info)) == \
        [("u", [(BASE + 7, 0), (BASE + 7, 1), (BASE + 9, 2)])]


# ---------------------------------------------------------------------------------------------- 2. resolution

def test_timestamp_resolution_of_a_file():
    assert logfiles.timestamp_resolution([1550665680, 1550665860]) == 60
    assert logfiles.timestamp_resolution([1550665680, 1550665710]) == 1
    assert logfiles.timestamp_resolution([]) == 1


def test_minute_timestamps_are_detected_and_never_say_skip(tmp_path):
    cat = catalog([300] * 4)
    info = {f"m{i}": (f"Artist {i}", f"Song {i}", "") for i in range(4)}
    # Music4All listening_history: minute timestamps; readings 0 (same minute), 60, 120, 180 s, then the end
    path = tmp_path / "listening_history.csv"
    path.write_text("user\tsong\ttimestamp\n" + "".join(
        f"u1\tm{r}\t2019-02-20 12:{m:02d}\n" for m, r in ((0, 0), (0, 1), (1, 2), (3, 3), (6, 0))))
    stats = {}
    (user, plays), = logfiles.iter_user_plays(str(path), cat, id_information=info, stats=stats)
    assert stats["resolution_s"] == 60 and "whole minute" in stats["resolution_source"]
    sess = sessions.sessions_of(plays, cat, resolution=60)
    assert [d for _, _, d in sess[0]] == [None, 60.0, 120.0, 180.0, None]
    rule = sessions.DwellRule()
    assert [rule.label(d, 300, 60) for _, _, d in sess[0]] == [
        ("unlabelled", "unknown dwell"),   # same minute: 0-59 s, or a batch of scrobbles
        ("unlabelled", "resolution"),      # read 60 s: 1-119 s heard, on both sides of 30 s and 90 s
        ("unlabelled", "resolution"),      # read 120 s: 61-179 s, on both sides of 90 s
        ("chosen", "long listen"),         # read 180 s: 121-239 s, surely more than 90 s
        ("unlabelled", "unknown dwell")]
    # a skip threshold the minute clock can resolve: 60 s read -> at most 119 s heard
    assert sessions.DwellRule(long_listen=120, skip=120).label(60.0, 300, 60) == ("rejected", "skip")
    # at 1 s resolution the seed's rule is unchanged
    assert [rule.label(d) for d in (90.0, 91.0, 29.0, 30.0)] == [
        ("between", "between"), ("chosen", "long listen"), ("rejected", "skip"), ("between", "between")]


def test_users_are_held_back_until_the_resolution_is_known(tmp_path, monkeypatch):
    monkeypatch.setattr(logfiles, "RESOLUTION_SAMPLE", 3)
    cat = catalog([200] * 3)
    rows = [("a", "m0", BASE), ("a", "m1", BASE + 60), ("b", "m2", BASE + 120), ("c", "m0", BASE + 5)]
    path = tmp_path / "ev.tsv"
    logfiles.write_onion_events(iter(rows), str(path))
    info = {f"m{i}": (f"Artist {i}", f"Song {i}", "") for i in range(3)}
    stats, seen = {}, []
    for user, plays in logfiles.iter_user_plays(str(path), cat, id_information=info, stats=stats):
        seen.append((user, stats["resolution_s"]))     # known before the first user arrives
    assert seen == [("a", 60), ("b", 60), ("c", 60)]    # decided on a and b (3 events), all whole minutes
    given = {}
    assert [u for u, _ in logfiles.iter_user_plays(str(path), cat, id_information=info, stats=given, resolution=1)] \
        == ["a", "b", "c"] and given["resolution_s"] == 1 and given["resolution_source"] == "given"


# ---------------------------------------------------------------------------------------------- 3. durations

def test_an_empty_duration_is_unknown_not_zero(tmp_path):
    path = tmp_path / "dataset.csv"
    formats.write_catalog(catalog([200, 200]), str(path))
    lines = path.read_text().splitlines()
    col = lines[0].split(",").index("duration_ms")
    cells = lines[1].split(",")
    cells[col] = ""                                      # t0's length is missing
    path.write_text("\n".join([lines[0], ",".join(cells), lines[2]]) + "\n")
    cat, report = formats.load_catalog(str(path))
    sess = sessions.sessions_of([(0, 0), (300, 1), (600, 0)], cat)
    assert sess == [[(0, 0, 300.0), (300, 1, 200.0), (600, 0, None)]]   # t0 not capped at 0 s; t1 capped
    assert list(cat.duration_ms) == [0, 200_000] and report["unknown_duration"] == 1 and report["kept"] == 2


def test_thresholds_relative_to_duration():
    rel = sessions.DwellRule(long_fraction=0.8, skip_fraction=0.5)
    default = sessions.DwellRule()
    assert default.label(20.0, 20) == ("rejected", "skip")              # a full play of a 20 s track
    assert rel.label(20.0, 20) == ("chosen", "most of the track")
    assert sessions.DwellRule(skip_fraction=0.5).label(20.0, 20) == ("between", "short track")
    assert rel.label(12.0, 20) == ("between", "short track")            # < 30 s, but 60% of the track
    assert rel.label(8.0, 20) == ("rejected", "skip")                   # < 30 s and < 50%
    assert default.label(55.0, 60) == ("between", "between")            # a 60 s track can never be chosen
    assert rel.label(55.0, 60) == ("chosen", "most of the track")       # > 80%
    assert rel.label(100.0, 600) == ("chosen", "long listen")           # > 90 s, though 17% of the track
    assert rel.label(20.0, 0) == ("rejected", "skip")                   # unknown length: the absolute rule
    cat = catalog(DURATIONS)
    counts = {}
    preferences.mine_pairs(sessions.sessions_of(PLAYS, cat), {i: (i,) for i in range(6)}, rel, counts=counts,
                           durations=cat.duration_ms / 1000.0)
    assert {k: counts[k] for k in sessions.LABELS} == {"chosen": 3, "rejected": 1, "between": 1, "unlabelled": 2}
    assert counts["reason: most of the track"] == 1 and counts["reason: short track"] == 1


# ---------------------------------------------------------------------------------------------- the prefs report

def write_run(tmp_path, log_text=None):
    """A hand-made `data.py sft` folder over the 6 tracks of DURATIONS and the session PLAYS (one user)."""
    cat = catalog(DURATIONS)
    formats.write_catalog(cat, str(tmp_path / "catalog.csv"))
    (tmp_path / "semantic_ids.tsv").write_text("track_id\tcode_0\n" + "".join(f"t{i}\t{i}\n" for i in range(6)))
    formats.write_id_information([(f"m{i}", f"Artist {i}", f"Song {i}", "") for i in range(6)],
                                 str(tmp_path / "id_information.csv"))
    if log_text is None:
        logfiles.write_onion_events(iter([("u1", f"m{r}", BASE + t) for t, r in PLAYS]), str(tmp_path / "log.tsv"))
    else:
        (tmp_path / "log.tsv").write_text(log_text)
    sft = tmp_path / "sft_data"
    sft.mkdir()
    (sft / "meta.json").write_text(json.dumps({
        "catalog": str(tmp_path / "catalog.csv"), "semantic_ids": str(tmp_path / "semantic_ids.tsv"),
        "logs": str(tmp_path / "log.tsv"), "id_information": str(tmp_path / "id_information.csv"),
        "id_metadata": None, "t_val": BASE + 10 ** 6, "t_test": BASE + 2 * 10 ** 6, "prompt_history": 1,
        "levels": 1, "codebook_size": 8, "id_table_sha256": "-"}))
    return sft


def prefs_report(tmp_path, sft, *options):
    out = tmp_path / ("prefs" + "".join(options).replace("-", "_").replace(".", "_"))
    data.main(["prefs", "--sft-data", str(sft), "--out", str(out), *options])
    pairs = [json.loads(l) for l in open(out / "train.jsonl")]
    return json.load(open(out / "report.json")), pairs


def test_prefs_report_says_what_decided_each_label(tmp_path):
    sft = write_run(tmp_path)
    report, pairs = prefs_report(tmp_path, sft)
    assert report["timestamp_resolution_s"] == 1 and report["timestamp_resolution"].startswith("detected")
    assert report["labelled"] == {"chosen": 2, "rejected": 2, "between": 1, "unlabelled": 2}
    assert report["labelled_by_rule"] == {
        "chosen: more than 90 s heard": 2, "rejected: less than 30 s heard": 2,
        "between: neither chosen nor rejected": 1,
        "unlabelled: at the log's 1 s timestamp resolution the dwell could lie on either side of a threshold": 0,
        "unlabelled: the last play of its session (no next play bounds it)": 1,
        "unlabelled: the next play has the same timestamp (closer than the log's 1 s resolution can time; in a "
        "scrobble log, a batch submission)": 1}
    assert report["plays_of_tracks_without_duration"] == 1
    assert pairs and not any(p["rejected_track"] in ("t1", "t3") for p in pairs)   # never the same-second or
    assert {p["chosen_track"] for p in pairs} == {"t3"}                             # the length-unknown play
    rel, _ = prefs_report(tmp_path, sft, "--long-fraction", "0.8", "--skip-fraction", "0.5")
    assert rel["labelled"] == {"chosen": 3, "rejected": 1, "between": 1, "unlabelled": 2}
    assert rel["labelled_by_rule"]["chosen: more than 80% of the track heard, but not 90 s"] == 1
    assert rel["labelled_by_rule"]["rejected: less than 30 s and less than 50% of the track heard"] == 1
    assert rel["labelled_by_rule"]["between: less than 30 s heard, but at least 50% of a short track"] == 1


def test_prefs_report_on_minute_timestamps(tmp_path):
    sft = write_run(tmp_path, "user\tsong\ttimestamp\n" + "".join(
        f"u1\tm{r}\t2019-02-20 12:{m:02d}\n" for m, r in ((0, 0), (0, 1), (1, 2), (3, 3), (4, 0), (7, 1))))
    report, pairs = prefs_report(tmp_path, sft)
    assert report["timestamp_resolution_s"] == 60 and "whole minute" in report["timestamp_resolution"]
    why = report["labelled_by_rule"]
    assert report["labelled"]["rejected"] == 0 and pairs == []     # no reading of a minute clock says < 30 s
    assert why["unlabelled: the next play has the same timestamp (closer than the log's 60 s resolution can "
               "time; in a scrobble log, a batch submission)"] == 1
    assert why["unlabelled: at the log's 60 s timestamp resolution the dwell could lie on either side of a "
               "threshold"] == 3                                   # readings of 60, 120 and 60 s
    assert why["chosen: more than 90 s heard"] == 1                # a reading of 180 s: 121-200 s of t0
    given, _ = prefs_report(tmp_path, sft, "--resolution", "1")
    assert given["timestamp_resolution_s"] == 1 and given["timestamp_resolution"] == "given"
    assert given["labelled"]["rejected"] == 0                      # read as seconds: 60, 120, 180 -> no skip


@pytest.mark.parametrize("options, message", [
    (["--long-fraction", "1.5"], "--long-fraction 1.5: a share of the track"),
    (["--skip-fraction", "0"], "--skip-fraction 0: a share of the track"),
    (["--skip", "100"], "--skip 100 is above --long-listen 90"),
    (["--long-fraction", "0.4", "--skip-fraction", "0.5"], "--skip-fraction 0.5 is above --long-fraction 0.4"),
    (["--resolution", "-1"], "--resolution -1"),
])
def test_bad_label_options_are_one_line_errors(tmp_path, options, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("-", r"\-")):
        data.main(["prefs", "--sft-data", str(tmp_path / "absent"), "--out", str(tmp_path / "p"), *options])


# ---------------------------------------------------------------------------------------------- the real samples

def same_second_skips(path, cat, **kw):
    """(plays followed in their session by one at the same second, how many of them got a rejected label,
    how many mine_pairs counted as "same timestamp", the log's stats). Both real logs keep seconds, so the
    default resolution of sessions_of (1 s) is theirs."""
    stats, same, rejected, counts = {}, 0, 0, {}
    codes = {i: (i,) for i in range(len(cat))}
    for _, plays in logfiles.iter_user_plays(path, cat, stats=stats, **kw):
        sess = sessions.sessions_of(plays, cat)
        preferences.mine_pairs(sess, codes, counts=counts)
        for s in sess:
            for (ts, _, dwell), (nxt, _, _) in zip(s, s[1:]):
                if nxt == ts:
                    same += 1
                    rejected += dwell is not None and dwell < sessions.SKIP
    return same, rejected, counts.get("reason: same timestamp", 0), stats


def named_catalog(names, ids=None):
    n = len(names)
    return formats.Catalog(track_id=ids or [f"lf{i}" for i in range(n)], track_name=[t for _, t in names],
                           artists=[a for a, _ in names], album_name=[""] * n, genres=[["unknown"]] * n,
                           features=np.full((n, 10), 0.5), popularity=np.zeros(n, dtype=np.int64),
                           duration_ms=np.full(n, 240_000, dtype=np.int64), explicit=np.zeros(n, dtype=bool),
                           mode=np.ones(n, dtype=np.int64))


def test_real_lastfm_batch_scrobbles_are_not_skips(shared_data):
    path = os.path.join(shared_data, "lastfm1k", "userid-timestamp-artid-artname-traid-traname.head5000.tsv")
    names, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            cells = line.rstrip("\n").split("\t")
            if formats.norm_key(cells[3], cells[5]) not in seen:
                seen.add(formats.norm_key(cells[3], cells[5]))
                names.append((cells[3], cells[5]))
    same, rejected, counted, stats = same_second_skips(path, named_catalog(names))
    assert (same, rejected) == (166, 0)                       # the seed's dwell (0 s) made all 166 of them skips
    assert counted == 166 and stats["resolution_s"] == 1


def test_real_onion_events_same_second_plays_are_not_skips(shared_data, tmp_path):
    """Each user's validation and test events are their last two plays: one 2-play history per user."""
    folder = os.path.join(shared_data, "music4all_onion_events")
    path = tmp_path / "onion_val_test.csv"
    ids = write_onion_last_two(folder, path)
    same, rejected, counted, stats = same_second_skips(str(path), named_catalog([("", "")] * len(ids), ids),
                                                       id_metadata={i: i for i in ids})
    assert stats["events_read"] == 16770 and stats["users"] == 8385
    assert (same, rejected) == (5, 0)                         # the seed's dwell (0 s) made all 5 of them skips
    assert counted == 5 and stats["resolution_s"] == 1
