"""Log mining on columnar numpy arrays: the passes over a listening log, the same output bytes, 5-20x faster.

The loops of logfiles.py, sessions.py and preferences.py read a log one line at a time and hold one listener's plays
in Python lists: the readable reference, at about 50,000 events a second for `data.py prefs` (80 minutes a pass
over the 253 million Music4All-Onion events).
This module and its two neighbours do the same work on arrays, many listeners at a time: the time split and the SFT
mining of `data.py sft` (split_times, mine_logs), the co-listening counts of `rvq.py train --logs` (co_listening)
and, in fastprefs.py, the preference pairs of `data.py prefs` (mine_prefs), at 1-1.6 million events a second per
pass (BENCHMARKS.md). The `--engine` option of those commands picks one or the other; both stay because the loop is
the specification (short, readable, what the tutorial explains) and this is the same specification made fast
(tests/test_fastlog.py checks that the files they write are byte-identical).

  read     fastread.py: the file in blocks as numpy arrays, whole listeners at a time, each listener's plays
           oldest first (what logfiles.iter_user_plays yields, a Batch of listeners at a time).
  mine     sessions (a gap > SESSION_GAP), dwell times (the next play's time, capped by the track's length,
           unknown within the clock's resolution) and labels as array operations; the preference pairs' "first
           chosen / first rejected play after the context" as reverse cumulative minima (the next index with a
           label), with one jump past repeats of the context track.
  sample   sessions.Reservoir draws rng.integers(seen) for each item past its cap; drawn as one array in the same
           order, numpy's Generator gives the same numbers (checked in the tests), so the same items are kept.
           The SFT samples keep them as arrays (SliceSample) and make Python objects once, of the final sample.

Memory: a few CHUNK_BYTES blocks in flight (three threads: read and decompress, parse, mine) and what the outputs
hold, as in the loop: the samples up to their caps, the co-listening counts (24 bytes per distinct pair), one of
preferences.PARTITIONS partitions of pairs while deduplicating; nothing grows with the file but what the loop also
keeps.

The Onion (`userid_trackid_timestamp.tsv`), Music4All `listening_history` and Onion-CSV layouts are read this way;
Last.fm-1K joins by (artist, title) text and stays on logfiles.py's loop (its full file is 19 million lines, about 6
minutes a pass there at 50,000 events a second). Nothing here imports torch.
"""
import contextlib
import gc

import numpy as np
from tqdm import tqdm

import sessions
from fastread import CHUNK_BYTES, user_batches


# ============================================================================================== sessions, labels

class Sessions:
    """sessions.sessions_of over a Batch: session boundaries and dwell times as arrays.

    ends (P,) bool: the play ends its session; sid (P,): session number in the batch; first, stop (S,): session s
    is plays [first[s], stop[s]); dwell (P,) float64: seconds, NaN where sessions.py has None (a session's last play,
    or one whose next play comes within `resolution` seconds).
    """

    def __init__(self, batch, duration_ms, gap=sessions.SESSION_GAP, resolution=1):
        ts, row, n = batch.ts, batch.row, len(batch)
        step = np.zeros(n, dtype=np.int64)
        step[:-1] = ts[1:] - ts[:-1]
        last_of_user = np.zeros(n, dtype=bool)
        last_of_user[batch.start[1:] - 1] = True
        self.ends = last_of_user | (step > gap)
        self.stop = np.flatnonzero(self.ends) + 1
        self.first = np.concatenate([[0], self.stop[:-1]]).astype(np.int64)
        self.sid = np.repeat(np.arange(len(self.stop)), self.stop - self.first)
        known = ~self.ends & (step >= resolution)
        dwell = np.where(known, step, 0).astype(np.float64)
        dur = np.where(row >= 0, duration_ms[np.maximum(row, 0)], 0)
        capped = known & (dur > 0)
        dwell[capped] = np.minimum(dwell[capped], dur[capped] / 1000.0)   # 0: unknown length, never a cap
        dwell[~known] = np.nan
        self.dwell = dwell

    def __len__(self):
        return len(self.stop)


REASONS = ("long listen", "most of the track", "skip", "between", "short track", "resolution", "unknown dwell")


def label_codes(rule, dwell, duration_s, resolution=1):
    """sessions.DwellRule.label over arrays: (label, reason) int8 indices into sessions.LABELS and REASONS.

    dwell NaN is sessions.py's None ('unlabelled', 'unknown dwell'); duration_s 0 is an unknown length.
    """
    slack = resolution - 1
    has = duration_s > 0
    lo = np.maximum(dwell - slack, 0.0)
    hi = np.where(has, np.minimum(dwell + slack, duration_s), dwell + slack)
    chosen_above = np.full(len(dwell), float(rule.long_listen))
    skip_below = np.full(len(dwell), float(rule.skip))
    if rule.long_fraction is not None:
        chosen_above = np.where(has, np.minimum(chosen_above, rule.long_fraction * duration_s), chosen_above)
    if rule.skip_fraction is not None:
        skip_below = np.where(has, np.minimum(skip_below, rule.skip_fraction * duration_s), skip_below)
    chosen = lo > chosen_above
    rejected = ~chosen & (hi < skip_below)
    between = ~chosen & ~rejected & (lo >= skip_below) & (hi <= chosen_above)
    label = np.select([chosen, rejected, between], [0, 1, 2], 3).astype(np.int8)
    reason = np.select([chosen & (lo > rule.long_listen), chosen, rejected, between & (hi < rule.skip), between],
                       [0, 1, 2, 4, 3], 5).astype(np.int8)
    unknown = np.isnan(dwell)
    label[unknown], reason[unknown] = 3, 6
    return label, reason


def window_codes(ts, t_val, t_test):
    """sessions.window as 0 train, 1 val, 2 test."""
    return (ts >= t_val).astype(np.int8) + (ts >= t_test)


def next_index(mask):
    """(P + 1,) the first index >= i where mask is True (P where none): a reverse cumulative minimum."""
    n = len(mask)
    idx = np.where(mask, np.arange(n), n)
    return np.append(np.minimum.accumulate(idx[::-1])[::-1], n)


def next_other(mask, row):
    """(P + 1,) for a position where mask holds: the first later one holding mask with another row (P if none)."""
    n = len(mask)
    pos = np.flatnonzero(mask)
    out = np.full(n + 1, n, dtype=np.int64)
    if len(pos):
        r = row[pos]
        run_start = np.flatnonzero(np.concatenate([[True], r[1:] != r[:-1]]))
        run = np.cumsum(np.concatenate([[True], r[1:] != r[:-1]])) - 1
        next_start = np.append(pos[run_start[1:]], n)
        out[pos] = next_start[run]
    return out


# ============================================================================================== reservoir samples

class Sample:
    """sessions.Reservoir fed a batch of items at a time: the same items kept, the same draws of the same rng.

    Reservoir.add draws rng.integers(seen) for each item past the cap; feed() (below) makes those draws for
    several samples at once, in the order the loop would make them, as one array (numpy's Generator gives the
    same numbers either way), and builds only the items that end up kept.
    """

    def __init__(self, cap):
        self.cap, self.seen, self.items = cap, 0, []   # items: [(seen, item)], as Reservoir.items

    def put(self, slots, seen, items):
        """Keep items (a list) in slots (increasing) with their stream positions seen (as Reservoir.items)."""
        items = list(zip(seen.tolist(), items))
        grow = slots >= len(self.items)   # slots filled for the first time come last, in order
        for sl, item in zip(slots[~grow].tolist(), items):
            self.items[sl] = item
        self.items.extend(items[int((~grow).sum()):])

    def sample(self):
        return [x for _, x in sorted(self.items, key=lambda t: t[0])]


def _ranges(start, length):
    """(sum(length),) the indices of the ranges [start[k], start[k] + length[k]) one after another."""
    ends = np.cumsum(length)
    return np.repeat(start - (ends - length), length) + np.arange(int(ends[-1]) if len(ends) else 0)


SLICE_ROWS: int = 1 << 16   # the smallest rows array of a SliceSample (256 KiB)


class SliceSample:
    """A Sample whose kept items stay arrays until the end: each item is a slice of int32 catalogue rows (a
    listening history, a session's plays) plus a few values of its own (the listener, the next track).

    At the default caps of 200,000 most items that enter the reservoir are replaced later (a slot is written
    about 1 + ln(seen / cap) times), and making each a Python tuple or list as it entered cost several seconds
    a pass (and the garbage collector's walks over them); here an item is a few array writes, and arrays()
    hands out the kept ones once, in stream order. The rows of all items sit in one array; replaced items leave
    holes, squeezed out whenever it fills, so it holds at most about twice the kept rows.
    """

    def __init__(self, cap, **extra):
        self.cap, self.seen = cap, 0
        self.n = 0                                  # slots in use
        self.pos = np.zeros(0, dtype=np.int64)      # per slot: the item's stream position (Reservoir's seen)
        self.start = np.zeros(0, dtype=np.int64)    # per slot: its rows are rows[start:start + length]
        self.length = np.zeros(0, dtype=np.int64)
        self.extra = {name: np.zeros(0, dtype=dtype) for name, dtype in extra.items()}   # per slot
        self.rows = np.zeros(0, dtype=np.int32)
        self.used = 0                               # rows[:used] written, holes included

    def put(self, slots, seen, item):
        """item = (rows (m,) of all the items one after another, lengths (k,), {name: (k,) values})."""
        rows, length, extra = item
        if not len(slots):
            return
        need = int(slots[-1]) + 1
        if need > len(self.pos):   # room for more slots: doubling, up to the cap
            size = max(need, 2 * len(self.pos), 1024)
            size = min(size, self.cap) if self.cap else size
            for name in ("pos", "start", "length"):
                setattr(self, name, _resized(getattr(self, name), size))
            self.extra = {k: _resized(v, size) for k, v in self.extra.items()}
        self.n = max(self.n, need)
        self.length[slots] = 0   # the items these slots held are gone
        if self.used + len(rows) > len(self.rows):
            self._squeeze(len(rows))
        self.rows[self.used:self.used + len(rows)] = rows
        self.start[slots] = self.used + np.cumsum(length) - length
        self.length[slots] = length
        self.used += len(rows)
        self.pos[slots] = seen
        for k, v in extra.items():
            self.extra[k][slots] = v

    def _squeeze(self, more):
        """Move the kept items' rows to the front of an array with room for as many again and `more`."""
        n = self.n
        keep = _ranges(self.start[:n], self.length[:n])
        rows = np.zeros(max(2 * (len(keep) + more), SLICE_ROWS), dtype=np.int32)
        rows[:len(keep)] = self.rows[keep]
        self.start[:n] = np.cumsum(self.length[:n]) - self.length[:n]
        self.rows, self.used = rows, len(keep)

    def arrays(self):
        """The kept items in stream order: (rows int32, offsets int64 (k + 1,), {name: (k,) values}); item i's
        rows are rows[offsets[i]:offsets[i + 1]]."""
        order = np.argsort(self.pos[:self.n], kind="stable")
        length = self.length[order]
        offsets = np.zeros(len(order) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(length)
        return (self.rows[_ranges(self.start[order], length)], offsets,
                {k: v[:self.n][order] for k, v in self.extra.items()})


def _resized(a, size):
    out = np.zeros(size, dtype=a.dtype)
    out[:len(a)] = a
    return out


def feed(rng, adds):
    """adds: [(sample, order (k,) int64 increasing, make)] for one batch, make(indices) -> the items at those
    indices, in the form the sample's put() takes (a list for Sample).

    order places each add among all samples' adds of the batch (the loop's call order); make builds the
    items of the adds that are kept.
    """
    drawing = []   # (order, which add, seen) of adds that draw, across samples
    for a, (s, order, make) in enumerate(adds):
        seen = s.seen + 1 + np.arange(len(order))
        d = np.flatnonzero(seen > s.cap) if s.cap else np.empty(0, dtype=np.int64)
        drawing.append((order[d], np.full(len(d), a), d, seen[d]))
    o, which, idx, high = (np.concatenate(x) for x in zip(*drawing)) if drawing else ([],) * 4
    by_order = np.argsort(o, kind="stable")
    j = rng.integers(high[by_order]) if len(by_order) else np.empty(0, dtype=np.int64)
    draws = np.empty(len(j), dtype=np.int64)
    draws[by_order] = j
    for a, (s, order, make) in enumerate(adds):
        k = len(order)
        seen = s.seen + 1 + np.arange(k)
        s.seen += k
        if not s.cap:
            s.put(seen - 1, seen, make(np.arange(k)))
            continue
        slot = np.where(seen <= s.cap, seen - 1, s.cap)   # s.cap: not kept
        mine = which == a
        slot[idx[mine]] = np.where(draws[mine] < s.cap, draws[mine], s.cap)
        kept = np.flatnonzero(slot < s.cap)
        # the last add written to each slot is the one that stays
        u, last = np.unique(slot[kept][::-1], return_index=True)
        winners = kept[::-1][last]
        s.put(u, seen[winners], make(winners))


class KeyCounts:
    """int64 key -> (count, first position), merged batch by batch: what a dict of counts filled in stream order
    holds (its keys in insertion order = by first position). Kept as sorted arrays; memory: the distinct keys, as
    the dict's."""

    BUFFER: int = 1 << 21   # keys gathered before they are merged (a merge costs a pass over the distinct keys)

    def __init__(self):
        self.keys = self.counts = self.first = np.empty(0, dtype=np.int64)
        self.buffer, self.buffered = [], 0

    def add(self, keys, first_pos):
        """keys (k,) >= 0 in stream order, first_pos (k,) increasing: their positions in the whole stream."""
        self.buffer.append((keys, first_pos))
        self.buffered += len(keys)
        if self.buffered >= self.BUFFER:
            self._merge()

    def _merge(self):
        keys, first_pos = (np.concatenate(x) for x in zip(*self.buffer)) if self.buffer else ([], [])
        self.buffer, self.buffered = [], 0
        if not len(keys):
            return
        bits = max(1, (len(keys) - 1).bit_length())
        if int(keys.max()) < 1 << (62 - bits):   # one plain sort of key * 2^bits + index: the first of each key
            s = np.sort((keys << bits) | np.arange(len(keys)))
            keys, idx = s >> bits, s & ((1 << bits) - 1)
            start = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
            u, first, c = keys[start], first_pos[idx[start]], np.diff(np.append(start, len(keys)))
        else:
            u, i, c = np.unique(keys, return_index=True, return_counts=True)
            first = first_pos[i]
        at = np.searchsorted(self.keys, u)
        old = at < len(self.keys)
        old[old] = self.keys[at[old]] == u[old]
        self.counts[at[old]] += c[old]   # keys seen before keep their first position
        new = ~old
        if new.any():
            self.keys, self.counts, self.first = (np.insert(a, at[new], v[new]) for a, v in
                                                  ((self.keys, u), (self.counts, c), (self.first, first)))

    def in_first_order(self):
        """(keys, counts, first positions) ordered by first position."""
        self._merge()
        order = np.argsort(self.first, kind="stable")
        return self.keys[order], self.counts[order], self.first[order]


@contextlib.contextmanager
def no_cycle_collection():
    """Pause Python's cyclic garbage collector: the samples hold up to millions of tuples and lists, none of them
    in a reference cycle, and the collector walking them again and again cost as much as the mining."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def progress(desc):
    return tqdm(desc=desc, unit=" events", unit_scale=True, disable=None)


def split_times(log, catalog, id_information=None, id_metadata=None, val_fraction=sessions.VAL_FRACTION,
                test_fraction=sessions.TEST_FRACTION, chunk_bytes=CHUNK_BYTES):
    """sessions.split_times: the time cut-offs from an hourly histogram of matched events."""
    hours = {}
    with progress("splitting by time") as bar:
        for b in user_batches(log, catalog, id_information=id_information, id_metadata=id_metadata,
                              chunk_bytes=chunk_bytes):
            h = b.ts[b.row >= 0] // 3600
            if len(h):
                lo = int(h.min())
                if h.max() - lo < 4 * len(h):   # the usual batch: a few weeks of hours
                    c = np.bincount(h - lo)
                    u = np.flatnonzero(c)
                    u, c = u + lo, c[u]
                else:
                    u, c = np.unique(h, return_counts=True)
                for k, v in zip(u.tolist(), c.tolist()):
                    hours[k] = hours.get(k, 0) + v
            bar.update(len(b))
    return sessions.split_from_hours(log, hours, val_fraction, test_fraction)


def mine_logs(log, catalog, row_codes, t_val, t_test, caps, seed, id_information=None, id_metadata=None,
              long_listen=sessions.LONG_LISTEN, gap=sessions.SESSION_GAP, stats=None, history=sessions.HISTORY,
              max_sessions=sessions.MAX_SESSIONS, chunk_bytes=CHUNK_BYTES):
    """sessions.mine_logs on arrays. Returns the same, but the co-listening counts as (i, j, count) int64 arrays in
    the dict's order instead of the dict, and each window's sequences as sessions.flat_sequences' (items, offsets)
    instead of lists (build_sft writes them so)."""
    samples = sessions.SFT_SAMPLES   # in the order of `adds` below
    rngs = sessions.streams(seed, 2, samples)   # the loop's streams, one per sample
    transitions = {w: SliceSample(caps[w], user=object, next=np.int64) for w in ("train", "val", "test")}
    sequences = {w: SliceSample(max_sessions) for w in ("train", "val")}
    n = len(catalog)
    coded_row = np.zeros(n + 1, dtype=bool)   # [-1]: a play outside the catalogue
    coded_row[list(row_codes)] = True
    popularity = np.zeros(n, dtype=np.int64)
    cooc = KeyCounts()
    stats = {} if stats is None else stats
    rule = sessions.DwellRule(long_listen=long_listen)
    before = 0   # plays of the earlier batches: positions in the whole stream
    with progress("mining transitions") as bar, no_cycle_collection():
        for b in user_batches(log, catalog, id_information=id_information, id_metadata=id_metadata, stats=stats,
                              chunk_bytes=chunk_bytes):
            resolution = stats["resolution_s"]
            s = Sessions(b, catalog.duration_ms, gap, resolution)
            row, p = b.row, len(b)
            coded = coded_row[row]
            w = window_codes(b.ts, t_val, t_test)
            train = coded & (w == 0)
            popularity += np.bincount(row[train], minlength=n)
            # co-listening: a catalogued training play and each of the 3 plays after it in its session
            src = np.flatnonzero(train)
            j = src[:, None] + np.arange(1, 4)                                    # (m, 3)
            jj = np.minimum(j, p - 1)
            ok = (j < s.stop[s.sid[src]][:, None]) & (row[jj] >= 0) & (row[jj] != row[src][:, None]) & (w[jj] == 0)
            pos = (before + np.broadcast_to(src[:, None], ok.shape)[ok]) * 3 + np.nonzero(ok)[1]
            _pairs_once(cooc, np.broadcast_to(row[src][:, None], ok.shape)[ok], row[jj][ok], pos, n)
            # transitions: a catalogued play, then a long listen of another catalogued track in its window
            label, _ = label_codes(rule, s.dwell, np.zeros(p), resolution)
            i = np.flatnonzero(coded[:-1] & ~s.ends[:-1] & coded[1:] & (row[1:] != row[:-1]) & (w[1:] == w[:-1])
                               & (label[1:] == 0))
            ranks = np.concatenate([[0], np.cumsum(coded)])   # catalogued plays before each play
            session_rank = ranks[s.first[s.sid]]
            coded_rows, names = row[coded], np.array(b.names, dtype=object)
            adds = []
            for k, name in enumerate(("train", "val", "test")):
                iw = i[w[i] == k]

                def make(sel, iw=iw):   # the history: the session's last `history` catalogued plays to the context
                    hi = ranks[iw[sel] + 1]
                    lo = np.maximum(hi - history, session_rank[iw[sel]])
                    return (coded_rows[_ranges(lo, hi - lo)], hi - lo,
                            {"user": names[b.uid[iw[sel]]], "next": row[iw[sel] + 1]})
                adds.append((transitions[name], 3 * iw, make))
            # session sequences: each session's catalogued plays per window (train, val), 2 or more
            sel = np.flatnonzero(coded & (w < 2))
            g = s.sid[sel] * 2 + w[sel]
            gs = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
            ge = np.append(gs[1:], len(sel))
            rows_sel = row[sel]
            for k, name in enumerate(("train", "val")):
                m = np.flatnonzero((ge - gs >= 2) & (w[sel[gs]] == k))

                def make(idx, m=m):
                    return rows_sel[_ranges(gs[m[idx]], ge[m[idx]] - gs[m[idx]])], ge[m[idx]] - gs[m[idx]], {}
                adds.append((sequences[name], 3 * (s.stop[s.sid[sel[gs[m]]]] - 1) + 1 + k, make))
            for add, name in zip(adds, samples):   # each sample draws from its own stream
                feed(rngs[name], [add])
            before += p
            bar.update(p)
        chosen = {w: _transitions(r) for w, r in transitions.items()}   # the Python objects, once
    return (chosen, {w: r.seen for w, r in transitions.items()}, popularity, _both_ways(cooc, n),
            {w: r.arrays()[:2] for w, r in sequences.items()})


def _transitions(sample):
    """sessions.mine_logs' transitions [(user, history rows tuple, next row)] of a SliceSample, in stream order."""
    rows, offsets, extra = sample.arrays()
    rows, offsets = rows.tolist(), offsets.tolist()
    return [(user, tuple(rows[a:b]), nxt) for user, a, b, nxt in
            zip(extra["user"].tolist(), offsets[:-1], offsets[1:], extra["next"].tolist())]


def _pairs_once(counts, a, b, pos, n):
    """Count the co-occurrences a[k] -> b[k] (stream positions pos, increasing) in counts: the loop adds 1 to
    (a, b) then to (b, a), so one count serves both, kept under (min, max) with the position of the pair's first
    sighting and, in its lowest bit, which way round that was."""
    counts.add(np.minimum(a, b) * n + np.maximum(a, b), pos * 2 + (a > b))


def _both_ways(counts, n):
    """(i, j, count) int64 arrays as the loop's dict {(i, j): count} lists them: each pair's first sighting
    (row, later row), then the reverse, in the order of the first sightings."""
    keys, c, first = counts.in_first_order()
    lo, hi, flip = keys // n, keys % n, (first & 1).astype(bool)
    i, j = np.where(flip, hi, lo), np.where(flip, lo, hi)
    return np.stack([i, j], axis=1).ravel(), np.stack([j, i], axis=1).ravel(), np.repeat(c, 2)


def co_listening(log, catalog, t_val, window=3, id_information=None, id_metadata=None, chunk_bytes=CHUNK_BYTES):
    """signals.co_listening on arrays: the same (i, j, count) arrays in the same order. Two matched plays of one
    session at most `window` matched training-window plays apart co-occur."""
    n = len(catalog)
    counts = KeyCounts()
    before = 0
    with progress("co-listening") as bar:
        for b in user_batches(log, catalog, id_information=id_information, id_metadata=id_metadata,
                              chunk_bytes=chunk_bytes):
            s = Sessions(b, catalog.duration_ms)   # the loop's sessions_of(plays, catalog): its default gap
            q = np.flatnonzero((b.row >= 0) & (b.ts < t_val))
            r, sid, m = b.row[q], s.sid[q], len(q)
            j = np.arange(m)[:, None] + np.arange(1, window + 1)                # (m, window)
            jj = np.minimum(j, max(m - 1, 0))
            ok = (j < m) & (sid[jj] == sid[:, None]) & (r[jj] != r[:, None])
            pos = (before + np.broadcast_to(q[:, None], ok.shape)[ok]) * window + np.nonzero(ok)[1]
            _pairs_once(counts, np.broadcast_to(r[:, None], ok.shape)[ok], r[jj][ok], pos, n)
            before += len(b)
            bar.update(len(b))
    return _both_ways(counts, n)


def listen_labels(log, catalog, t_val, rule=None, id_information=None, id_metadata=None, chunk_bytes=CHUNK_BYTES):
    """signals.listen_labels on arrays: training-window long listens and skips per track, (long, skip) (N,) int64."""
    rule = rule or sessions.DwellRule()
    n = len(catalog)
    durations = catalog.duration_ms / 1000.0   # seconds, 0 = unknown
    long, skip = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    stats = {}
    with progress("long listens and skips") as bar:
        for b in user_batches(log, catalog, id_information=id_information, id_metadata=id_metadata, stats=stats,
                              chunk_bytes=chunk_bytes):
            resolution = stats["resolution_s"]
            s = Sessions(b, catalog.duration_ms, resolution=resolution)
            known = b.row >= 0
            label, _ = label_codes(rule, s.dwell, np.where(known, durations[np.maximum(b.row, 0)], 0.0), resolution)
            labelled = known & ~np.isnan(s.dwell) & (b.ts < t_val)
            long += np.bincount(b.row[labelled & (label == 0)], minlength=n)
            skip += np.bincount(b.row[labelled & (label == 1)], minlength=n)
            bar.update(len(b))
    return long, skip
