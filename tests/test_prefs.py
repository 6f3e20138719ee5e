"""Sessions, dwell times and preference pairs on hand-written logs with known answers; the real Last.fm lines."""
import os

import numpy as np
import pytest

import formats
import logfiles
import preferences
import tasks
import sessions
from common import UserError
from tests.conftest import tiny_catalog


#          ts      row   dwell
PLAYS = [(0, 0),        # 100 s          -> chosen
         (100, 1),      # 10 s           -> rejected
         (110, 2),      # 290 s, capped at the 200 s track length -> chosen
         (400, 3),      # next play 9,600 s later: a new session -> unknown, no label
         (10000, 4),    # 300 s, capped at its 60 s length -> between 30 and 90 s
         (10300, 0)]    # the user's last play -> unknown


def test_sessions_and_dwell_exact():
    cat = tiny_catalog(short=4)
    sess = sessions.sessions_of(PLAYS, cat, gap=1800)
    assert sess == [[(0, 0, 100.0), (100, 1, 10.0), (110, 2, 200.0), (400, 3, None)],
                    [(10000, 4, 60.0), (10300, 0, None)]]


def test_unmatched_play_still_ends_the_previous_one():
    cat = tiny_catalog()
    sess = sessions.sessions_of([(0, 0), (20, -1), (300, 1)], cat)
    assert sess == [[(0, 0, 20.0), (20, -1, 280.0), (300, 1, None)]]   # track 0 was skipped after 20 s


def test_mine_pairs_known_answer():
    cat = tiny_catalog(short=4)
    counts = {}
    pairs = preferences.mine_pairs(sessions.sessions_of(PLAYS, cat, gap=1800), {i: (i, 0, 0) for i in range(5)},
                                   counts=counts)
    assert pairs == [(0, 2, 1, 0)]          # context 0: chosen 2 (long), rejected 1 (skip), both after it
    assert counts["chosen"] == 2 and counts["rejected"] == 1 and counts["between"] == 1
    assert counts["unlabelled"] == 2        # session ends are never counted as long listens
    # a window of one play after the context finds no rejected play for context 0 -> no pair
    assert preferences.mine_pairs(sessions.sessions_of(PLAYS, cat, gap=1800), {i: (i, 0, 0) for i in range(5)},
                                  window_plays=1) == []
    # tracks without an ID (not in the table) never become context or answer
    assert preferences.mine_pairs(sessions.sessions_of(PLAYS, cat, gap=1800), {0: (0, 0, 0), 2: (2, 0, 0)}) == []


def test_context_is_never_an_answer():
    cat = tiny_catalog()
    # track 0 skipped (10 s) then replayed for long: its replay is never its own chosen answer
    plays = [(0, 0), (10, 0), (200, 1), (400, 2), (420, 3), (600, 4)]
    pairs = preferences.mine_pairs(sessions.sessions_of(plays, cat), {i: (i,) for i in range(5)})
    assert pairs == [(0, 1, 2, 0), (0, 1, 2, 10), (1, 3, 2, 200)]   # the repeat is removed by build_prefs


def test_newest_first_file_gives_the_same_plays(tmp_path):
    cat = tiny_catalog(short=4)
    path = tmp_path / "userid_trackid_timestamp.tsv"
    base = 1577836800
    rows = [("u1", f"m{r}", base + ts) for ts, r in PLAYS] + [("u2", "m1", base + 5)]
    logfiles.write_onion_events(iter(rows), str(path))
    lines = path.read_text().splitlines()
    assert lines[0] == "user_id\ttrack_id\ttimestamp" and lines[1].startswith("u1\tm0\t")    # newest first
    info = {f"m{i}": (f"Artist {i}", f"Song {i}", "") for i in range(5)}
    users = list(logfiles.iter_user_plays(str(path), cat, id_information=info))
    assert users[0] == ("u1", [(base + ts, r) for ts, r in PLAYS])
    assert users[1] == ("u2", [(base + 5, 1)])


def test_split_and_windows():
    assert sessions.window(5, 10, 20) == "train" and sessions.window(10, 10, 20) == "val"
    assert sessions.window(20, 10, 20) == "test"


def test_mining_runs_on_real_lastfm_lines(shared_data):
    """Real Last.fm-1K lines (newest first) through the real-format path: sessions, dwell, pairs."""
    path = os.path.join(shared_data, "lastfm1k", "userid-timestamp-artid-artname-traid-traname.head5000.tsv")
    seen, artists, titles = set(), [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            cells = line.rstrip("\n").split("\t")
            key = formats.norm_key(cells[3], cells[5])
            if key not in seen:
                seen.add(key)
                artists.append(cells[3])
                titles.append(cells[5])
    n = len(artists)
    cat = formats.Catalog(track_id=[f"lf{i}" for i in range(n)], track_name=titles, artists=artists,
                          album_name=[""] * n, genres=[["unknown"]] * n, features=np.full((n, 10), 0.5),
                          popularity=np.zeros(n, dtype=np.int64), duration_ms=np.full(n, 240_000, dtype=np.int64),
                          explicit=np.zeros(n, dtype=bool), mode=np.ones(n, dtype=np.int64))
    stats, counts, pairs, n_sessions = {}, {}, [], 0
    for user, plays in logfiles.iter_user_plays(path, cat, stats=stats):
        assert [p[0] for p in plays] == sorted(p[0] for p in plays)          # oldest first after reading
        sess = sessions.sessions_of(plays, cat)
        n_sessions += len(sess)
        pairs += preferences.mine_pairs(sess, {i: (i,) for i in range(n)}, counts=counts)
    assert stats["events_read"] == 5000 and stats["match_rate"] > 0.95 and stats["users"] == 2
    assert n_sessions > 10 and counts["chosen"] > 100 and counts["rejected"] > 10
    assert len(pairs) > 10 and all(c != ch != rj for c, ch, rj, _ in pairs)


def test_no_pair_crosses_a_window_boundary():
    cat = tiny_catalog()
    # context 0 in the training window (t < 1000); its only chosen (2) and rejected (1) plays are later: the
    # rejected one at t = 1000 is already in the validation window, so no training pair may use it
    plays = [(900, 0), (950, 3), (1000, 1), (1010, 2), (1400, 4)]
    sess = sessions.sessions_of(plays, cat, gap=1800)
    assert preferences.mine_pairs(sess, {i: (i,) for i in range(5)}) == [(0, 2, 1, 900), (3, 2, 1, 950)]
    counts = {}
    pairs = preferences.mine_pairs(sess, {i: (i,) for i in range(5)}, windows=(1000, 1400), counts=counts)
    assert pairs == []                               # 0 and 3 lose their skip; 1 (val) has no later skip
    assert counts["candidates cut at a window boundary"] == 4     # contexts 0, 3 (train), 1, 2 (val)
    # inside one window nothing changes
    assert preferences.mine_pairs(sess, {i: (i,) for i in range(5)}, windows=(5000, 6000)) == \
        preferences.mine_pairs(sess, {i: (i,) for i in range(5)})


def test_an_attribute_request_always_names_an_attribute():
    """A track with no attribute of its own and no genre drawn must not yield "Suggest a music  song"."""
    cat = tiny_catalog(n=20)
    cat.features[:, formats.FEATURES.index("tempo")] = 110.0     # neither fast nor slow; every other feature 0.5
    masks = tasks.attribute_masks(cat)
    assert not any(masks[k].any() for k in tasks.ATTRIBUTES)  # no track has any attribute but its genre
    rng = np.random.default_rng(0)
    reqs = tasks.request_examples(cat, {i: (i,) for i in range(20)}, masks, 400, tasks.TEST_REQUEST_TEMPLATES, rng)
    assert len(reqs) == 400 and all(attrs for attrs, _, _ in reqs)
    assert not any("  " in prompt or "music song" in prompt for _, prompt, _ in reqs)


def test_pairs_and_prompts_carry_the_session_history():
    cat = tiny_catalog()
    codes = {i: (i, 0, 0) for i in range(5)}
    sess = sessions.sessions_of([(0, 3), (50, 0), (150, 1), (160, 2), (500, 4)], cat, gap=1800)
    pairs = preferences.mine_pairs(sess, codes, history=2)
    assert pairs[0] == (3, 0, 1, 0, (3,)) and pairs[1] == (0, 2, 1, 50, (3, 0))
    assert tasks.next_track_prompt(cat, (0,), codes) == \
        "I want to listen to (rock) <a_0><b_0><c_0> or something similar"
    assert tasks.next_track_prompt(cat, (0,), codes, context_text="id") == \
        "I want to listen to <a_0><b_0><c_0> or something similar"
    assert tasks.next_track_prompt(cat, (0,), codes, context_text="name") == \
        "I want to listen to Artist 0 - Song 0 (rock) <a_0><b_0><c_0> or something similar"
    # "words": the genre and every attribute phrase that holds; features 0.5 and tempo 0.5 BPM: slow, nothing else
    assert tasks.next_track_prompt(cat, (0,), codes, context_text="words") == \
        "I want to listen to (rock, slow) <a_0><b_0><c_0> or something similar"
    cat.features[1, [formats.FEATURES.index("energy"), formats.FEATURES.index("tempo")]] = 0.9, 140.0
    assert tasks.next_track_prompt(cat, (1,), codes, context_text="words") == \
        "I want to listen to (rock, high-energy, fast, for a workout) <a_1><b_0><c_0> or something similar"
    assert tasks.track_words(cat, 1) == "rock high-energy fast for a workout"
    assert tasks.next_track_prompt(cat, (3, 0), codes, n_history=2) == \
        "Played before: <a_3><b_0><c_0>. I want to listen to (rock) <a_0><b_0><c_0> or something similar"
    assert tasks.next_track_prompt(cat, (3, 0), codes, n_history=2, context_text="name") == \
        "Played before: <a_3><b_0><c_0>. I want to listen to Artist 0 - Song 0 (rock) <a_0><b_0><c_0> or something similar"
    assert tasks.next_track_prompt(cat, (4, 3, 0), codes, n_history=1) == tasks.next_track_prompt(cat, (0,), codes)
    with pytest.raises(UserError, match="context text 'title'"):
        tasks.next_track_prompt(cat, (0,), codes, context_text="title")


def test_more_rejected_for_sdpo():
    """The docstring's example: ctx, a (skip), b (long), c (skip), a (skip), d (skip) with K = 3."""
    cat = tiny_catalog(n=6)
    plays = [(0, 0), (100, 1), (110, 2), (310, 3), (320, 1), (330, 4), (340, 5)]   # the last: unknown dwell
    ids = {i: (i,) for i in range(6)}
    sess = sessions.sessions_of(plays, cat)
    three = preferences.mine_pairs(sess, ids, rejected_per_context=3)
    assert three[0] == (0, 2, 1, 0, (3, 4))
    assert preferences.mine_pairs(sess, ids, rejected_per_context=2)[0] == (0, 2, 1, 0, (3,))
    # K = 1: the plain pairs, unchanged; with history the further rejected come after hist
    assert preferences.mine_pairs(sess, ids)[0] == (0, 2, 1, 0)
    assert preferences.mine_pairs(sess, ids, history=1, rejected_per_context=3)[0] == (0, 2, 1, 0, (0,), (3, 4))
    # context a (row 1): c is its rejected, its own replay is no answer, d the one further skip; contexts after b
    # have no long listen left, so no pair
    assert three[1:] == [(1, 2, 3, 100, (4,))]
