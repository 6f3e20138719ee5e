"""Listening sessions, dwell times and their labels, the time split, and the SFT pass over a log.

A listener's plays split into sessions at a silence of SESSION_GAP; a play's dwell is the time to the next play,
capped by the track's length; DwellRule labels it a long listen (chosen), a skip (rejected), or neither. The log is
split by time: train < t_val <= val < t_test <= test. mine_logs is the readable loop of `data.py sft`'s pass;
fastlog.mine_logs does the same on arrays.
"""
import os
from dataclasses import dataclass

import numpy as np

from common import fail, read_json, write_json
from logfiles import format_ts, iter_user_plays

SESSION_GAP: int = 30 * 60     # seconds of silence that start a new session
LONG_LISTEN: float = 90.0      # dwell > 90 s: a long listen (chosen), as the seed
SKIP: float = 30.0             # dwell < 30 s: a skip (rejected), as the seed
HISTORY: int = 20             # session plays kept per next-track query (TIGER feeds about 20 items)
MAX_SESSIONS: int = 200_000   # sessions per window kept for sequential baselines (uniform sample; memory bound)
SFT_SAMPLES = ("train", "val", "test", "train sessions", "val sessions")   # mine_logs' samples, one stream each
VAL_FRACTION: float = 0.1      # share of (matched) events in the validation window, before the test window
TEST_FRACTION: float = 0.2     # share of events in the final, held-out test window


def sessions_of(plays, catalog, gap=SESSION_GAP, resolution=1):
    """Split one user's plays (oldest first) into sessions with dwell times.

    plays: [(ts, row)], row -1 for tracks outside the catalogue (they still end the previous play).
    Returns a list of sessions, each a list of (ts, row, dwell): dwell = seconds to the next play of the same
    session, capped at the track's duration when it is known (duration_ms > 0). dwell is None, unknown, for
    a session's last play, whose length is unknown (the seed counted session breaks as long listens), and for a
    play whose next play comes less than `resolution` seconds later, i.e. has the same timestamp: the log cannot
    time it, and in scrobble logs such runs are batch submissions (an offline player syncing), not skips.

    Worked example, tracks of 240 s, gap 1800: [(0, 0), (0, 1), (200, 2), (5000, 3)] ->
    [[(0, 0, None), (0, 1, 200.0), (200, 2, None)], [(5000, 3, None)]]: track 0 shares its second with track
    1, so its dwell is unknown, not 0 s; track 2 is its session's last play.
    """
    out, cur = [], []
    for i, (ts, row) in enumerate(plays):
        nxt = plays[i + 1][0] if i + 1 < len(plays) else None
        ends_session = nxt is None or nxt - ts > gap
        dwell = None
        if not ends_session and nxt - ts >= resolution:
            dwell = float(nxt - ts)
            if row >= 0 and catalog.duration_ms[row] > 0:   # 0: unknown length, nothing to cap at
                dwell = min(dwell, catalog.duration_ms[row] / 1000.0)
        cur.append((ts, row, dwell))
        if ends_session:
            out.append(cur)
            cur = []
    return out


LABELS = ("chosen", "rejected", "between", "unlabelled")


@dataclass(frozen=True)
class DwellRule:
    """When a dwell time makes a play chosen (a long listen), rejected (a skip), or neither.

    The seed's rule, the default, is absolute: chosen above long_listen (90 s), rejected below skip (30 s). Then
    a full play of a 25 s track is a skip and a track under 90 s can never be chosen. Relative thresholds (off
    unless set) fix that: long_fraction makes a play chosen also when more than that share of the track was
    heard (more than 80% or 90 s), skip_fraction makes it rejected only when also less than that share was heard
    (less than 30 s and less than 50%). Both need the track's duration; without it the absolute rule decides.
    """
    long_listen: float = LONG_LISTEN
    skip: float = SKIP
    long_fraction: float | None = None   # None: off
    skip_fraction: float | None = None   # None: off

    def label(self, dwell, duration_s=0.0, resolution=1):
        """(label, reason) of one play: label in LABELS, reason a key of explain().

        resolution: the log's clock step in seconds. Both timestamps are truncated to it, so a dwell read as d
        lies in [d - (resolution - 1), d + (resolution - 1)] whole seconds, and the play gets a label only when
        that whole interval lies on one side of a threshold; at 1 s the interval is d itself.
        Worked examples, the default rule: dwell 100 -> ('chosen', 'long listen'); 12 -> ('rejected', 'skip');
        45 -> ('between', 'between'); None -> ('unlabelled', 'unknown dwell'). At 60 s resolution a reading of
        60 s means 1-119 s: ('unlabelled', 'resolution'); 180 s means 121-239 s: ('chosen', 'long listen').
        With long_fraction 0.8 and skip_fraction 0.5: a 60 s track heard 55 s -> ('chosen', 'most of the
        track'); a 20 s track heard 12 s (60%) -> ('between', 'short track'), heard to its end -> chosen.
        """
        if dwell is None:
            return "unlabelled", "unknown dwell"
        slack = resolution - 1
        lo, hi = max(dwell - slack, 0.0), dwell + slack
        if duration_s > 0:
            hi = min(hi, duration_s)   # never more than the whole track
        chosen_above, skip_below = self.long_listen, self.skip
        if duration_s > 0 and self.long_fraction is not None:
            chosen_above = min(chosen_above, self.long_fraction * duration_s)
        if duration_s > 0 and self.skip_fraction is not None:
            skip_below = min(skip_below, self.skip_fraction * duration_s)
        if lo > chosen_above:
            return "chosen", "long listen" if lo > self.long_listen else "most of the track"
        if hi < skip_below:
            return "rejected", "skip"
        if lo >= skip_below and hi <= chosen_above:
            return "between", "short track" if hi < self.skip else "between"
        return "unlabelled", "resolution"   # the interval straddles a threshold

    def explain(self, reason, resolution=1):
        """The sentence a report shows for a reason of label() (and for mine_pairs' two unknown dwells)."""
        skip = f"less than {self.skip:g} s"
        if self.skip_fraction is not None:
            skip += f" and less than {self.skip_fraction:.0%} of the track"
        return {
            "long listen": f"chosen: more than {self.long_listen:g} s heard",
            "most of the track": f"chosen: more than {self.long_fraction or 0:.0%} of the track heard, but not "
                                 f"{self.long_listen:g} s",
            "skip": f"rejected: {skip} heard",
            "between": "between: neither chosen nor rejected",
            "short track": f"between: less than {self.skip:g} s heard, but at least "
                           f"{self.skip_fraction or 0:.0%} of a short track",
            "resolution": f"unlabelled: at the log's {resolution} s timestamp resolution the dwell could lie on "
                          "either side of a threshold",
            "session end": "unlabelled: the last play of its session (no next play bounds it)",
            "same timestamp": f"unlabelled: the next play has the same timestamp (closer than the log's "
                              f"{resolution} s resolution can time; in a scrobble log, a batch submission)",
        }[reason]

    def reasons(self):
        """The reasons this rule can give, in report order (the fraction ones only when set)."""
        return (("long listen",) + (("most of the track",) if self.long_fraction is not None else ())
                + ("skip", "between") + (("short track",) if self.skip_fraction is not None else ())
                + ("resolution", "session end", "same timestamp"))


def split_times(log, catalog, id_information=None, id_metadata=None, val_fraction=VAL_FRACTION,
                test_fraction=TEST_FRACTION):
    """(t_val, t_test): time cut-offs leaving the requested shares of matched events in the later windows.

    One streaming pass with an hourly histogram, so memory does not grow with the log.
    """
    hours = {}
    for _, plays in iter_user_plays(log, catalog, id_information=id_information, id_metadata=id_metadata):
        for ts, row in plays:
            if row >= 0:
                hours[ts // 3600] = hours.get(ts // 3600, 0) + 1
    return split_from_hours(log, hours, val_fraction, test_fraction)


def split_from_hours(log, hours, val_fraction=VAL_FRACTION, test_fraction=TEST_FRACTION):
    """(t_val, t_test) from {hour (unix seconds // 3600): matched events}: the end of split_times."""
    if not hours:
        fail(log, "no listening event joins the catalogue: nothing to split")
    keys = sorted(hours)
    cum = np.cumsum([hours[k] for k in keys]) / sum(hours.values())
    t_test = int(keys[int(np.searchsorted(cum, 1 - test_fraction))] * 3600)
    t_val = int(keys[int(np.searchsorted(cum, 1 - test_fraction - val_fraction))] * 3600)
    return t_val, t_test


SPLIT_FILE = "split.json"   # rvq.py train --logs records its time split here, for data.py sft to reuse


def file_identity(path):
    """{"path", "size", "mtime_ns"} of a file, None for None: the same only for the same file, unmodified
    (rewriting a file changes its modification time even when its size stays)."""
    if path is None:
        return None
    st = os.stat(path)
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def split_inputs(log, catalog_path, id_information=None, id_metadata=None, val_fraction=VAL_FRACTION,
                 test_fraction=TEST_FRACTION):
    """All that decides split_times' cut-offs: the files it reads (by file_identity) and the two fractions."""
    return {"log": file_identity(log), "catalog": file_identity(catalog_path),
            "id_information": file_identity(id_information), "id_metadata": file_identity(id_metadata),
            "val_fraction": float(val_fraction), "test_fraction": float(test_fraction)}


def write_split(folder, inputs, t_val, t_test):
    """folder/split.json: a split and the inputs it came from (split_inputs, taken before the log was read)."""
    write_json(os.path.join(folder, SPLIT_FILE), {"t_val": t_val, "t_test": t_test, "t_val_utc": format_ts(t_val),
                                                  "t_test_utc": format_ts(t_test), "inputs": inputs})


def recorded_split(folder, inputs):
    """((t_val, t_test), why) from folder/split.json when it was computed from exactly these inputs, else
    (None, why not): the split is a pass over the whole log, and the stage before may have made it already."""
    path = os.path.join(folder, SPLIT_FILE)
    if not os.path.exists(path):
        return None, f"{path}: absent, rvq.py train ran without --logs"
    rec = read_json(path, "time split")
    recorded = rec.get("inputs") if isinstance(rec, dict) else None
    differ = [k for k in inputs if not isinstance(recorded, dict) or recorded.get(k) != inputs[k]]
    if differ:
        return None, f"{path}: made from another {', '.join(differ)}"
    if not all(isinstance(rec.get(k), int) for k in ("t_val", "t_test")):
        return None, f"{path}: no t_val / t_test"
    return (rec["t_val"], rec["t_test"]), f"{path}: made from the same log, catalogue, id tables and fractions"


def window(ts, t_val, t_test):
    return "train" if ts < t_val else ("val" if ts < t_test else "test")


def streams(seed, stage, names):
    """One random stream per sample, {name: np.random.default_rng([seed, stage, k])}.

    Each window's sample draws from a stream of its own, so the held-out test queries (or pairs) are the same
    whatever the caps of the other windows: more training examples change what is trained on, never what is
    tested on. stage tells the passes apart (2: `data.py sft`'s mining, 3: `data.py prefs`' pairs; 1 is the
    attribute test requests' stream in data.py).
    """
    return {name: np.random.default_rng([seed, stage, k]) for k, name in enumerate(names)}


class Reservoir:
    """A uniform sample of at most `cap` items of a stream (Vitter's algorithm R), kept in stream order.

    cap 0 keeps everything. Memory is O(cap), whatever the length of the stream.
    """

    def __init__(self, cap, rng):
        self.cap, self.rng, self.items, self.seen = cap, rng, [], 0

    def add(self, x):
        self.seen += 1
        if not self.cap or len(self.items) < self.cap:
            self.items.append((self.seen, x))
        else:
            j = int(self.rng.integers(self.seen))
            if j < self.cap:
                self.items[j] = (self.seen, x)

    def sample(self):
        return [x for _, x in sorted(self.items, key=lambda t: t[0])]


def mine_logs(log, catalog, row_codes, t_val, t_test, caps, seed, id_information=None, id_metadata=None,
              long_listen=LONG_LISTEN, gap=SESSION_GAP, stats=None, history=HISTORY, max_sessions=MAX_SESSIONS):
    """One streaming pass for the SFT stage: next-track transitions per window and training-window statistics.

    Returns (transitions {window: [(user, history_rows, next_row)]}, counts {window: all transitions seen},
    popularity (N,), cooc {(i, j): count}, sequences {"train"|"val": [[row, ...], ...]}).
    A transition is a play followed, in the same session, by a long listen of another catalogued track;
    history_rows are the session's last `history` catalogued plays up to and including that play (oldest
    first), so its last element is the context track. Each window keeps a uniform sample of at most
    caps[window] transitions, drawn with a random stream of its own (streams(seed, 2, ...)): the test window's
    queries do not move with the training cap. Co-listening counts pairs within 3 plays of each other in a
    training-window session (symmetric). sequences: each session's catalogued plays inside one window (a session
    crossing a window boundary is cut there), for sequential baselines such as SASRec; at most max_sessions per
    window.
    """
    rngs = streams(seed, 2, SFT_SAMPLES)
    transitions = {w: Reservoir(caps[w], rngs[w]) for w in ("train", "val", "test")}
    sequences = {w: Reservoir(max_sessions, rngs[f"{w} sessions"]) for w in ("train", "val")}
    popularity = np.zeros(len(catalog), dtype=np.int64)
    cooc = {}
    stats = {} if stats is None else stats
    rule = DwellRule(long_listen=long_listen)
    for user, plays in iter_user_plays(log, catalog, id_information=id_information, id_metadata=id_metadata,
                                       stats=stats):
        resolution = stats["resolution_s"]   # known before the first user arrives
        for sess in sessions_of(plays, catalog, gap, resolution):
            seq = {"train": [], "val": []}
            seen = []  # catalogued plays of this session so far, for the histories
            for i, (ts, row, dwell) in enumerate(sess):
                if row < 0 or row not in row_codes:
                    continue
                seen.append(row)
                w = window(ts, t_val, t_test)
                if w in seq:
                    seq[w].append(row)
                if w == "train":
                    popularity[row] += 1
                    for ts2, row2, _ in sess[i + 1:i + 4]:
                        if row2 >= 0 and row2 != row and window(ts2, t_val, t_test) == "train":
                            cooc[(row, row2)] = cooc.get((row, row2), 0) + 1
                            cooc[(row2, row)] = cooc.get((row2, row), 0) + 1
                if i + 1 < len(sess):
                    ts2, row2, dwell2 = sess[i + 1]
                    if row2 >= 0 and row2 != row and row2 in row_codes and window(ts2, t_val, t_test) == w \
                            and rule.label(dwell2, resolution=resolution)[0] == "chosen":
                        transitions[w].add((user, tuple(seen[-history:]), row2))
            for w, rows in seq.items():
                if len(rows) >= 2:  # a sequence model learns nothing from a single play
                    sequences[w].add(rows)
    return ({w: r.sample() for w, r in transitions.items()}, {w: r.seen for w, r in transitions.items()},
            popularity, cooc, {w: r.sample() for w, r in sequences.items()})


def flat_sequences(seqs):
    """[[row, ...], ...] -> (items int32, offsets int64 of length S + 1): session s is items[off[s]:off[s+1]]."""
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(q) for q in seqs])
    items = np.fromiter((r for q in seqs for r in q), dtype=np.int32, count=int(offsets[-1]))
    return items, offsets
