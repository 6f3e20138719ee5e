"""fastlog.py (the numpy engine) against data.py's loop (the reference): the same plays, stats, errors and files.

Generated worlds are roughened the way real logs are (plays sharing a second, tracks outside the catalogue, bad
rows of every kind, CRLF and blank lines, non-ASCII and undecodable bytes, newest-first, oldest-first and unsorted
listeners, ISO 'T' timestamps) and read in small blocks, so listeners and sessions cross block boundaries; then
`data.py sft` and `data.py prefs` run with --engine loop and --engine numpy and every file is compared byte for byte
(config.json records the engine; report.json's two timing fields differ). The real Music4All-Onion events in
../shared/data are compared too (skipped when absent).
"""
import bz2
import filecmp
import json
import os
import random
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import data
import fastlog
import fastread
import formats
import logfiles
import rvq
import sessions
import signals
import world
from common import UserError
from tests.conftest import write_onion_last_two

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONION_EVENTS = os.path.join(ROOT, "..", "shared", "data", "music4all_onion_events")


# ---------------------------------------------------------------------------------------------- pieces

def test_label_codes_match_dwell_rule():
    rules = [sessions.DwellRule(), sessions.DwellRule(long_fraction=0.8, skip_fraction=0.5),
             sessions.DwellRule(long_listen=60, skip=20, long_fraction=0.5)]
    dwell = [None, 1.0, 12.0, 29.0, 30.0, 30.5, 31.0, 45.0, 59.0, 60.0, 89.0, 90.0, 91.0, 100.0, 150.0, 400.0]
    durations = [0.0, 20.0, 25.0, 60.0, 95.0, 240.0]
    for rule in rules:
        for resolution in (1, 2, 60):
            d = np.array([np.nan if x is None else x for x in dwell for _ in durations])
            dur = np.array([y for _ in dwell for y in durations])
            label, reason = fastlog.label_codes(rule, d, dur, resolution)
            want = [rule.label(x, y, resolution) for x in dwell for y in durations]
            got = [(sessions.LABELS[a], fastlog.REASONS[b]) for a, b in zip(label, reason)]
            assert got == want


def test_vectorised_draws_match_reservoir():
    """Several samples sharing one rng, fed in interleaved batches, keep what sessions.Reservoir keeps and leave the
    rng where the loop leaves it."""
    rng_loop, rng_fast = np.random.default_rng(7), np.random.default_rng(7)
    caps = (5, 0, 40, 1)
    loop = [sessions.Reservoir(c, rng_loop) for c in caps]
    fast = [fastlog.Sample(c) for c in caps]
    stream = random.Random(3)
    item = 0
    for batch in range(30):
        adds = [[] for _ in caps]
        for pos in range(stream.randrange(0, 60)):
            k = stream.randrange(len(caps))
            loop[k].add(("item", item))
            adds[k].append((pos, item))
            item += 1
        fastlog.feed(rng_fast, [(s, np.array([p for p, _ in a], dtype=np.int64),
                                 lambda idx, a=a: [("item", a[i][1]) for i in idx.tolist()])
                                for s, a in zip(fast, adds)])
    assert [r.sample() for r in loop] == [s.sample() for s in fast]
    assert [r.seen for r in loop] == [s.seen for s in fast]
    assert rng_loop.integers(10 ** 9) == rng_fast.integers(10 ** 9)


def test_slice_samples_keep_what_the_reservoir_keeps(monkeypatch):
    """SliceSample (the SFT samples as arrays) keeps the items sessions.Reservoir keeps, with the same draws, also
    when its rows array fills with replaced items again and again (a tiny one here) and when uncapped."""
    monkeypatch.setattr(fastlog, "SLICE_ROWS", 4)
    rng_loop, rng_fast = np.random.default_rng(11), np.random.default_rng(11)
    caps = (3, 0, 25)
    loop = [sessions.Reservoir(c, rng_loop) for c in caps]
    fast = [fastlog.SliceSample(c, user=object) for c in caps]
    stream = random.Random(5)
    for batch in range(40):
        adds = [[] for _ in caps]
        for pos in range(stream.randrange(0, 50)):
            k = stream.randrange(len(caps))
            rows = [stream.randrange(1000) for _ in range(stream.randrange(0, 6))]
            user = f"u{batch}-{pos}"
            loop[k].add((user, rows))
            adds[k].append((pos, user, rows))

        def make(idx, a):
            picked = [a[i] for i in idx.tolist()]
            return (np.array([r for _, _, rows in picked for r in rows], dtype=np.int64),
                    np.array([len(rows) for _, _, rows in picked], dtype=np.int64),
                    {"user": np.array([u for _, u, _ in picked], dtype=object)})
        fastlog.feed(rng_fast, [(s, np.array([p for p, _, _ in a], dtype=np.int64), lambda idx, a=a: make(idx, a))
                                for s, a in zip(fast, adds)])
    for r, s in zip(loop, fast):
        rows, offsets, extra = s.arrays()
        got = [(u, rows[a:b].tolist()) for u, a, b in zip(extra["user"].tolist(), offsets[:-1], offsets[1:])]
        assert got == r.sample() and s.seen == r.seen and rows.dtype == np.int32
    assert rng_loop.integers(10 ** 9) == rng_fast.integers(10 ** 9)


def test_next_index_and_next_other():
    mask = np.array([0, 1, 1, 0, 1, 0, 1], dtype=bool)
    row = np.array([9, 4, 4, 9, 4, 9, 5])
    assert fastlog.next_index(mask).tolist() == [1, 1, 2, 4, 4, 6, 6, 7]
    assert fastlog.next_other(mask, row)[[1, 2, 4, 6]].tolist() == [6, 6, 6, 7]   # past the repeats of track 4


# ---------------------------------------------------------------------------------------------- rough logs

def roughen(src, dst, seed, layout="onion"):
    """The world's log with what real logs hold (see the module docstring), written in `layout`:
    onion (tab, seconds), music4all (tab, 'user song timestamp' in whole minutes) or onion_csv (comma, 5 columns).
    Listeners stay grouped, so the loop reads it without stopping."""
    rnd = random.Random(seed)
    with open(src, encoding="utf-8") as f:
        next(f)
        rows = [line.rstrip("\n").split("\t") for line in f]
    users = {}
    for u, t, ts in rows:
        users.setdefault(u, []).append([u, t, ts])
    header = {"onion": "user_id\ttrack_id\ttimestamp", "music4all": "user\tsong\ttimestamp",
              "onion_csv": "old_user_id,old_item_id,timestamp,user_id,item_id"}[layout]
    sep = "," if layout == "onion_csv" else "\t"
    out = [b"\n", header.encode() + b"\r\n"] if seed % 2 else [header.encode() + b"\n"]   # a blank first line
    for k, (u, plays) in enumerate(users.items()):
        name = f"us\u00e9r-{u}" if k % 7 == 3 else u
        for i in range(1, len(plays)):
            if rnd.random() < 0.08:                   # plays sharing a second (a batch submission)
                plays[i][2] = plays[i - 1][2]
            if rnd.random() < 0.03:                   # a track outside the catalogue, or an id nobody knows
                plays[i][1] = rnd.choice(["notInTheTables1", "x" * 40, "zz"])
        if k % 5 == 1:
            plays.reverse()                           # an oldest-first listener
        if k % 11 == 4 and len(plays) > 6:
            plays[2], plays[5] = plays[5], plays[2]   # out of order
        lines = []
        for _, t, ts in plays:
            if layout == "music4all":
                ts = ts[:16]
            elif rnd.random() < 0.01:
                ts = ts.replace(" ", "T")            # another ISO form: datetime.fromisoformat reads it
            cells = [name, t, ts] + (["7", "8"] if layout == "onion_csv" else [])
            end = "\r\n" if rnd.random() < 0.02 else "\n"
            lines.append((sep.join(cells) + end).encode())
        for _ in range(rnd.choice([0, 0, 1, 2])):     # bad rows inside the listener's rows
            bad = rnd.choice([f"{name}{sep}{plays[0][1]}{sep}2020-02-30 10:00:00",   # no such day
                              f"{name}{sep}{plays[0][1]}{sep}yesterday",
                              f"{name}{sep}{plays[0][1]}",                           # a field short
                              "   ", "",                                            # blank lines: no bad row
                              f"{name}{sep}\xff\xfe{sep}2020-01-01 00:00:00"])      # undecodable (below)
            if layout == "onion_csv" and bad.count(sep) == 2:
                bad += ",7,8"
            raw = bad.encode("utf-8").replace("\xff\xfe".encode("utf-8"), b"\xff\xfe") + b"\n"
            lines.insert(rnd.randrange(len(lines) + 1), raw)
        out.extend(lines)
    if out[-1].endswith(b"\n") and seed % 3 == 0:
        out[-1] = out[-1].rstrip(b"\r\n")             # no newline at the end of the file
    with open(dst, "wb") as f:
        f.writelines(out)
    return dst


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """Two small worlds (seeds 0 and 1) with Semantic IDs, and rough logs of each."""
    out = {}
    for seed in (0, 1):
        d = tmp_path_factory.mktemp(f"world{seed}")
        world.main(["generate", "--out", str(d / "world"), "--tracks", "300", "--users", "60", "--seed", str(seed)])
        rvq.main(["train", "--catalog", str(d / "world" / "catalog.csv"), "--out", str(d / "rvq"),
                  "--codebook-size", "8", "--seed", str(seed)])
        logs = {"clean": str(d / "world" / "userid_trackid_timestamp.tsv")}
        for layout in ("onion", "music4all", "onion_csv"):
            logs[layout] = roughen(logs["clean"], str(d / f"rough_{layout}.tsv"), seed, layout)
        out[seed] = (d, logs)
    return out


def catalog_of(d):
    cat, _ = formats.load_catalog(str(d / "world" / "catalog.csv"))
    return cat, {"id_information": str(d / "world" / "id_information.csv"),
                 "id_metadata": str(d / "world" / "id_metadata.csv")}


@pytest.mark.parametrize("layout", ["clean", "onion", "music4all", "onion_csv"])
@pytest.mark.parametrize("chunk", [300, 4096, fastread.CHUNK_BYTES])
def test_same_listeners_plays_and_stats(worlds, layout, chunk):
    """Block by block the numpy reader yields logfiles.iter_user_plays' listeners, plays and stats (keys in the same
    order: they go to meta.json), whatever the block size: a 300-byte block holds about 7 lines."""
    for seed, (d, logs) in worlds.items():
        cat, ids = catalog_of(d)
        loop_stats, fast_stats = {}, {}
        loop = list(logfiles.iter_user_plays(logs[layout], cat, stats=loop_stats, **ids))
        batches = list(fastread.user_batches(logs[layout], cat, stats=fast_stats, chunk_bytes=chunk, **ids))
        assert [u for b in batches for u in b.users()] == loop
        assert json.dumps(fast_stats) == json.dumps(loop_stats)
        if layout != "clean":
            assert loop_stats["bad_rows"] > 0 and loop_stats["matched"] < loop_stats["events_read"]
        if layout == "music4all":
            assert loop_stats["resolution_s"] == 60
        if chunk == 300:   # memory: a batch holds about a block's events and one listener, never the file
            biggest = max(len(p) for _, p in loop)
            assert len(batches) > 50 and max(len(b) for b in batches) <= 2 * biggest + 20


def test_a_listener_seen_again_stops_both_engines_the_same_way(worlds, tmp_path):
    d, logs = worlds[0]
    cat, ids = catalog_of(d)
    lines = open(logs["clean"], encoding="utf-8").read().splitlines(keepends=True)
    first = lines[1].split("\t")[0]
    k = next(i for i, l in enumerate(lines) if i > 1 and not l.startswith(first + "\t"))
    path = tmp_path / "ungrouped.tsv"
    path.write_text("".join(lines[:k + 3] + [lines[1]] + lines[k + 3:]), encoding="utf-8")
    messages = []
    for read in (lambda: list(logfiles.iter_user_plays(str(path), cat, **ids)),
                 lambda: list(fastread.user_batches(str(path), cat, chunk_bytes=100, **ids))):
        with pytest.raises(UserError) as e:
            read()
        messages.append(str(e.value))
    assert messages[0] == messages[1] and f"user {first} appears again" in messages[0]


def test_track_ids_sharing_a_hash_still_join_exactly(worlds, monkeypatch):
    d, logs = worlds[1]
    cat, ids = catalog_of(d)
    want = list(logfiles.iter_user_plays(logs["onion"], cat, **ids))
    monkeypatch.setattr(fastread, "_hash", lambda words, length: np.zeros(len(length), dtype=np.uint64))
    assert [u for b in fastread.user_batches(logs["onion"], cat, chunk_bytes=5000, **ids) for u in b.users()] == want


def test_bz2_logs_early_stops_and_errors_in_the_reader_threads(worlds, tmp_path):
    """A .bz2 log reads the same; a caller that stops early leaves no thread behind; an error in a reader thread
    (a truncated .bz2) reaches the caller as data.py's loop raises it."""
    d, logs = worlds[0]
    cat, ids = catalog_of(d)
    packed = bz2.compress(open(logs["onion"], "rb").read())
    path = tmp_path / "log.tsv.bz2"
    path.write_bytes(packed)
    want = list(logfiles.iter_user_plays(str(path), cat, **ids))
    assert [u for b in fastread.user_batches(str(path), cat, chunk_bytes=3000, **ids) for u in b.users()] == want
    before = threading.active_count()
    batches = fastread.user_batches(str(path), cat, chunk_bytes=3000, **ids)
    next(batches)
    batches.close()
    assert threading.active_count() == before
    cut = tmp_path / "cut.tsv.bz2"
    cut.write_bytes(packed[:len(packed) // 2])
    errors = []
    for read in (lambda: list(logfiles.iter_user_plays(str(cut), cat, **ids)),
                 lambda: list(fastread.user_batches(str(cut), cat, chunk_bytes=3000, **ids))):
        with pytest.raises(Exception) as e:
            read()
        errors.append((type(e.value), str(e.value)))
    assert errors[0] == errors[1] and threading.active_count() == before


def test_engine_choice(worlds, tmp_path):
    d, logs = worlds[0]
    lastfm = tmp_path / "lastfm.tsv"
    lastfm.write_text("user_000001\t2009-05-04T23:08:57Z\t\tArtist\t\tSong\n", encoding="utf-8")
    assert logfiles.log_engine("auto", logs["onion_csv"]) == "numpy"
    assert logfiles.log_engine("auto", str(lastfm)) == "loop"
    assert logfiles.log_engine("loop", logs["onion"]) == "loop"
    with pytest.raises(UserError, match="use --engine loop"):
        logfiles.log_engine("numpy", str(lastfm))


# ---------------------------------------------------------------------------------------------- whole stages

def same_files(a, b, skip=("config.json",)):
    """Every file of folder a equals b's, byte for byte (report.json: but its two timing fields)."""
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    for name in names:
        if name in skip:
            continue
        if name == "report.json":
            ra, rb = (json.load(open(os.path.join(x, name))) for x in (a, b))
            for r in (ra, rb):
                r.pop("seconds"), r.pop("events_per_second")
            assert json.dumps(ra) == json.dumps(rb), name
        else:
            assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False), name
    return names


def run_both(command, out, *options):
    for engine in ("loop", "numpy"):
        data.main([command, *options, "--out", str(out / engine), "--engine", engine])
    return same_files(out / "loop", out / "numpy")


SFT_OPTIONS = [[], ["--next-examples", "40", "--test-next", "15", "--max-sessions", "12", "--prompt-history", "3",
                    "--seed", "5"]]
PREFS_OPTIONS = [[], ["--max-train", "30", "--max-val", "4", "--max-test", "9", "--seed", "2"],
                 ["--long-fraction", "0.8", "--skip-fraction", "0.5", "--rejected-per-context", "3",
                  "--window-plays", "4", "--max-train", "50"],
                 ["--resolution", "60", "--session-gap", "600", "--rejected-per-context", "2"]]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("layout", ["onion", "music4all", "onion_csv"])
def test_sft_and_prefs_files_are_byte_identical(worlds, tmp_path, seed, layout, monkeypatch):
    """`data.py sft` then `data.py prefs`, capped and uncapped, with each option that changes the mining, on
    the rough logs: the two engines write the same bytes. Small blocks: sessions cross block boundaries."""
    monkeypatch.setattr(fastread, "CHUNK_BYTES", 2000)
    d, logs = worlds[seed]
    w = d / "world"
    for i, sft_options in enumerate(SFT_OPTIONS if layout == "onion" else SFT_OPTIONS[:1]):
        sft = tmp_path / f"sft{i}"
        names = run_both("sft", sft, "--catalog", str(w / "catalog.csv"), "--rvq", str(d / "rvq"),
                         "--logs", logs[layout], "--id-information", str(w / "id_information.csv"),
                         "--id-metadata", str(w / "id_metadata.csv"), "--attribute-examples", "20",
                         "--grounding-examples", "10", "--test-attributes", "5", *sft_options)
        assert "listening_stats.npz" in names
        stats = np.load(sft / "numpy" / "listening_stats.npz")
        assert len(stats["cooc_i"]) > 0 and len(stats["train_seq_items"]) > 0
        for j, options in enumerate(PREFS_OPTIONS if i == 0 else PREFS_OPTIONS[:2]):
            out = tmp_path / f"prefs{i}_{j}"
            run_both("prefs", out, "--sft-data", str(sft / "loop"), *options)
            report = json.load(open(out / "numpy" / "report.json"))
            assert report["bad_rows"] > 0 and report["dropped"]
            if layout != "music4all" and "--resolution" not in options:
                assert sum(report["pairs"].values()) > 0 and report["dropped"].get("duplicate pair", 0) > 0


def split_world(seed, worlds, tmp_path):
    """The world's onion log copied into tmp_path (its file times are the test's own), `rvq.py train --logs` on
    it into tmp_path/rvq (which records the time split), and `data.py sft`'s arguments for it but --out."""
    d, logs = worlds[seed]
    w = d / "world"
    log = tmp_path / "log.tsv"
    log.write_bytes(open(logs["onion"], "rb").read())
    ids = ["--id-information", str(w / "id_information.csv"), "--id-metadata", str(w / "id_metadata.csv")]
    train = ["train", "--catalog", str(w / "catalog.csv"), "--out", str(tmp_path / "rvq"), "--codebook-size", "8",
             "--seed", str(seed), "--logs", str(log), *ids]
    rvq.main(train)
    sft = ["sft", "--catalog", str(w / "catalog.csv"), "--rvq", str(tmp_path / "rvq"), "--logs", str(log), *ids,
           "--attribute-examples", "20", "--grounding-examples", "10", "--test-attributes", "5", "--seed", "3"]
    return log, train, sft


def test_sft_reusing_the_split_of_rvq_writes_the_bytes_of_two_passes(worlds, tmp_path, capsys):
    """`data.py sft` on the log, catalogue, id tables and fractions that `rvq.py train --logs` read reuses its
    split.json: one pass over the log, with either engine, without importing torch; the files are those of the
    two passes (split.json removed: the split computed again). Its summary line, and `data.py prefs`'s, end with
    how many of the rough log's rows were skipped and the first."""
    _, _, sft = split_world(0, worlds, tmp_path)
    for engine in ("loop", "numpy"):
        data.main(sft + ["--out", str(tmp_path / engine), "--engine", engine])
        printed = capsys.readouterr().out
        assert "time split: reused" in printed and "log passes: 1," in printed
        log = json.load(open(tmp_path / engine / "meta.json"))["log"]   # the rough log's unusable rows, said
        said = f"; {log['bad_rows']:,} log rows skipped (first: {log['bad_examples'][0]})"
        assert log["bad_rows"] > 1 and printed.rstrip().endswith(said)
        data.main(["prefs", "--sft-data", str(tmp_path / engine), "--out", str(tmp_path / f"p_{engine}"),
                   "--engine", engine])
        report = json.load(open(tmp_path / f"p_{engine}" / "report.json"))
        assert (report["bad_rows"], report["bad_examples"]) == (log["bad_rows"], log["bad_examples"])
        assert capsys.readouterr().out.rstrip().endswith(said)   # the same rows, said again by data.py prefs
    code = "import sys, data; data.main(sys.argv[1:]); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code, *sft, "--out", str(tmp_path / "child")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "time split: reused" in r.stdout and r.stdout.splitlines()[-1] == "False", r.stderr
    os.remove(tmp_path / "rvq" / sessions.SPLIT_FILE)
    data.main(sft + ["--out", str(tmp_path / "two")])
    printed = capsys.readouterr().out
    assert "split.json: absent" in printed and "log passes: 2," in printed
    for one in ("loop", "numpy", "child"):
        same_files(tmp_path / one, tmp_path / "two")


def test_test_requests_and_training_examples_do_not_move_each_other(worlds, tmp_path):
    """The attribute test requests have a random stream of their own: other --attribute-examples leave them as
    they were (ablation rows rank the same requests), and more --test-attributes leave every training and
    validation example as it was, the first test requests among the more."""
    _, _, sft = split_world(0, worlds, tmp_path)

    def run(name, *options):
        data.main(sft + ["--out", str(tmp_path / name), *options])
        return {f: open(tmp_path / name / f).read().splitlines()
                for f in ("train.jsonl", "val.jsonl", "test_attributes.jsonl")}

    base, more_train, more_test = run("base"), run("more_train", "--attribute-examples", "40"), \
        run("more_test", "--test-attributes", "9")
    assert more_train["test_attributes.jsonl"] == base["test_attributes.jsonl"]
    assert more_train["train.jsonl"] != base["train.jsonl"]
    assert more_test["train.jsonl"] == base["train.jsonl"] and more_test["val.jsonl"] == base["val.jsonl"]
    assert len(base["test_attributes.jsonl"]) == 5 and len(more_test["test_attributes.jsonl"]) == 9
    assert more_test["test_attributes.jsonl"][:5] == base["test_attributes.jsonl"]


@pytest.mark.parametrize("engine", ["loop", "numpy"])
def test_held_out_samples_stay_put_when_the_training_caps_change(worlds, tmp_path, engine):
    """Each window's sample draws from a random stream of its own (sessions.streams): fewer --next-examples (the
    training window's cap, and the validation window's with it) leave the next-track test queries as they were,
    and fewer --max-train pairs leave the test pairs, with either engine; so ablation rows and a longer or
    shorter training set are tested on the same queries."""
    _, _, sft = split_world(0, worlds, tmp_path)
    sft = sft + ["--test-next", "8", "--engine", engine]

    def lines(folder, name):
        return open(tmp_path / folder / name).read().splitlines()

    data.main(sft + ["--out", str(tmp_path / "all")])
    data.main(sft + ["--out", str(tmp_path / "fewer"), "--next-examples", "30"])
    assert lines("fewer", "test_next.jsonl") == lines("all", "test_next.jsonl")
    assert len(lines("all", "test_next.jsonl")) == 8
    assert lines("fewer", "val.jsonl") != lines("all", "val.jsonl")   # the caps did bite
    for name, cap in (("all", "0"), ("fewer", "20")):
        data.main(["prefs", "--sft-data", str(tmp_path / "all"), "--out", str(tmp_path / f"prefs_{name}"),
                   "--max-train", cap, "--max-test", "10", "--engine", engine])
    assert lines("prefs_fewer", "test.jsonl") == lines("prefs_all", "test.jsonl")
    assert len(lines("prefs_all", "test.jsonl")) == 10 and len(lines("prefs_fewer", "train.jsonl")) == 20


def test_sft_computes_the_split_when_rvq_read_other_inputs(worlds, tmp_path, capsys):
    """Other fractions, the same bytes in another file, or the log rewritten: data.py sft makes its own split
    pass (and writes what two passes write); rvq.py train without --logs leaves no split.json behind."""
    log, train, sft = split_world(1, worlds, tmp_path)
    data.main(sft + ["--out", str(tmp_path / "two"), "--val-fraction", "0.05"])
    assert "made from another val_fraction): two passes" in capsys.readouterr().out
    copy = tmp_path / "copy.tsv"
    shutil.copy2(log, copy)   # the same bytes and modification time, another path
    data.main([str(copy) if a == str(log) else a for a in sft] + ["--out", str(tmp_path / "copy")])
    assert "made from another log): two passes" in capsys.readouterr().out
    st = os.stat(log)
    os.utime(log, ns=(st.st_atime_ns, st.st_mtime_ns + 1))   # rewritten in place
    data.main(sft + ["--out", str(tmp_path / "touched")])
    assert "made from another log): two passes" in capsys.readouterr().out
    rvq.main(train)
    data.main(sft + ["--out", str(tmp_path / "one")])
    assert "time split: reused" in capsys.readouterr().out
    same_files(tmp_path / "one", tmp_path / "touched")
    rvq.main(train[:train.index("--logs")])
    assert not (tmp_path / "rvq" / sessions.SPLIT_FILE).exists()


@pytest.mark.parametrize("layout", ["onion", "music4all"])
def test_co_listening_and_rvq_ids_are_the_same(worlds, tmp_path, layout, monkeypatch):
    """rvq.py's pass over the log (the time split, then co-listening within a window of plays) gives the same
    counts in the same order, so `rvq.py train --signals audio,genre,collab` writes the same files."""
    monkeypatch.setattr(fastread, "CHUNK_BYTES", 3000)
    d, logs = worlds[1]
    cat, ids = catalog_of(d)
    t_val, _ = sessions.split_times(logs[layout], cat, **ids)
    for window in (1, 3, 8):
        want = signals.co_listening(logs[layout], cat, t_val, window, **ids)
        got = fastlog.co_listening(logs[layout], cat, t_val, window, **ids)
        assert len(want[0]) > 0 and all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(want, got))
    w = d / "world"
    for engine in ("loop", "numpy"):
        rvq.main(["train", "--catalog", str(w / "catalog.csv"), "--out", str(tmp_path / engine), "--codebook-size",
                  "8", "--signals", "audio,genre,collab", "--logs", logs[layout], "--id-information",
                  str(w / "id_information.csv"), "--id-metadata", str(w / "id_metadata.csv"), "--engine", engine])
    assert "rvq.safetensors" in same_files(tmp_path / "loop", tmp_path / "numpy", skip=("rvq_config.json",))


# ---------------------------------------------------------------------------------------------- the real sample

@pytest.fixture(scope="module")
def onion_sample():
    if not os.path.isdir(ONION_EVENTS):
        pytest.skip("../shared/data/music4all_onion_events is absent")
    return ONION_EVENTS


def test_real_onion_events_read_the_same(onion_sample, tmp_path):
    """The real Music4All-Onion events (Onion-CSV layout): each file, and both files as one log (each listener's
    last two plays), read the same by both engines."""
    both = tmp_path / "onion_val_test.csv"
    ids = write_onion_last_two(onion_sample, both)
    cat = formats.Catalog(track_id=ids, track_name=[f"Song {i}" for i in range(len(ids))],
                          artists=["A"] * len(ids), album_name=[""] * len(ids), genres=[["rock"]] * len(ids),
                          features=np.full((len(ids), 10), 0.5), popularity=np.zeros(len(ids), dtype=np.int64),
                          duration_ms=np.full(len(ids), 200_000, dtype=np.int64), explicit=np.zeros(len(ids), bool),
                          mode=np.ones(len(ids), dtype=np.int64))
    meta = {i: i for i in ids[::2]}   # half of the tracks join
    for path in [os.path.join(onion_sample, f"listening_history_{s}.csv") for s in ("val", "test")] + [str(both)]:
        loop_stats, fast_stats = {}, {}
        loop = list(logfiles.iter_user_plays(path, cat, id_metadata=meta, stats=loop_stats))
        fast = [u for b in fastread.user_batches(path, cat, id_metadata=meta, stats=fast_stats, chunk_bytes=65536)
                for u in b.users()]
        assert fast == loop and json.dumps(fast_stats) == json.dumps(loop_stats)
    assert fast_stats["events_read"] == 16770 and fast_stats["users"] == 8385
    # the stages' passes: the time split, the SFT mining (transitions, sessions, co-listening) and the pairs
    row_codes = {r: (r % 7, r // 7 % 5, r) for r in range(len(ids))}
    kw = {"id_metadata": meta}
    split = sessions.split_times(str(both), cat, **kw)
    assert fastlog.split_times(str(both), cat, **kw) == split
    caps = {"train": 100, "val": 10, "test": 10}
    got = [miner(str(both), cat, row_codes, *split, caps, 0, **kw)
           for miner in (sessions.mine_logs, fastlog.mine_logs)]
    cooc = got[0][3]
    got[0] = got[0][:3] + ((list(cooc), list(cooc.values())),) + got[0][4:]
    got[1] = got[1][:3] + ((list(zip(got[1][3][0].tolist(), got[1][3][1].tolist())), got[1][3][2].tolist()),) \
        + got[1][4:]
    # the sessions: lists in the loop, sessions.flat_sequences' arrays from fastlog
    assert {w: [x.tolist() for x in sessions.flat_sequences(q)] for w, q in got[0][4].items()} == \
        {w: [x.tolist() for x in a] for w, a in got[1][4].items()}
    assert repr(got[0][:4]) == repr(got[1][:4])
    sft = tmp_path / "sft_data"
    sft.mkdir()
    formats.write_catalog(cat, str(tmp_path / "catalog.csv"))
    (tmp_path / "semantic_ids.tsv").write_text(
        "track_id\tcode_0\tcode_1\tcode_2\n" + "".join(f"{t}\t{r % 7}\t{r // 7 % 5}\t{r}\n" for r, t in enumerate(ids)))
    with open(tmp_path / "id_metadata.csv", "w", encoding="utf-8") as f:
        f.write("\t".join(formats.ID_METADATA_COLUMNS) + "\n")
        f.writelines(f"{i}\t{i}" + "\t" * (len(formats.ID_METADATA_COLUMNS) - 2) + "\n" for i in meta)
    (sft / "meta.json").write_text(json.dumps({
        "catalog": str(tmp_path / "catalog.csv"), "semantic_ids": str(tmp_path / "semantic_ids.tsv"),
        "logs": str(both), "id_information": None, "id_metadata": str(tmp_path / "id_metadata.csv"),
        "t_val": split[0], "t_test": split[1], "prompt_history": 1, "levels": 3, "codebook_size": 8,
        "id_table_sha256": "-"}))
    for options in ([], ["--max-train", "3", "--session-gap", "100000"]):
        out = tmp_path / ("prefs" + "".join(options))
        run_both("prefs", out, "--sft-data", str(sft), *options)


@pytest.mark.parametrize("layout", ["clean", "onion"])
def test_listen_labels_are_the_long_listen_rate_baselines(worlds, tmp_path, layout):
    """rvq.py's quality block counts each track's training-window long listens and skips exactly as `data.py
    prefs` counts them for the long-listen-rate baseline (prefs/track_labels.npz), with either engine; and
    `rvq.py train --signals audio,genre,collab,quality` writes the same files with both."""
    d, logs = worlds[0]
    w = d / "world"
    cat, ids = catalog_of(d)
    data.main(["sft", "--catalog", str(w / "catalog.csv"), "--rvq", str(d / "rvq"), "--logs", logs[layout],
               "--id-information", ids["id_information"], "--id-metadata", ids["id_metadata"],
               "--attribute-examples", "20", "--grounding-examples", "10", "--test-attributes", "5",
               "--out", str(tmp_path / "sft")])
    data.main(["prefs", "--sft-data", str(tmp_path / "sft"), "--out", str(tmp_path / "prefs")])
    want = np.load(tmp_path / "prefs" / "track_labels.npz")
    t_val = json.load(open(tmp_path / "sft" / "meta.json"))["t_val"]
    for count in (signals.listen_labels, fastlog.listen_labels):
        long, skip = count(logs[layout], cat, t_val, **ids)
        assert long.sum() > 0 and skip.sum() > 0
        assert np.array_equal(long, want["long"]) and np.array_equal(skip, want["skip"])
    for engine in ("loop", "numpy"):
        rvq.main(["train", "--catalog", str(w / "catalog.csv"), "--out", str(tmp_path / engine), "--codebook-size",
                  "8", "--signals", "audio,genre,collab,quality", "--logs", logs[layout], "--id-information",
                  ids["id_information"], "--id-metadata", ids["id_metadata"], "--engine", engine])
    assert "rvq.safetensors" in same_files(tmp_path / "loop", tmp_path / "numpy", skip=("rvq_config.json",))
