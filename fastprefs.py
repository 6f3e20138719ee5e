"""`data.py prefs`' pass on numpy arrays: preferences.mine_prefs made fast, the same files byte for byte.

The pairs' "first chosen / first rejected play after the context" are reverse cumulative minima (the next index
with a label, fastlog.next_index), with one jump past repeats of the context track; the pairs stream into
preferences.PARTITIONS temporary files, each deduplicated on its own, and the capped splits keep the same reservoir
samples as the loop's (fastlog.feed). Nothing here imports torch.
"""
import contextlib
import json
import os
import shutil
import tempfile
import time

import numpy as np

import formats
import preferences
import sessions
import tasks
from common import UserError, atomic_open
from fastlog import (REASONS, Sample, Sessions, feed, label_codes, next_index, next_other, no_cycle_collection,
                     progress, window_codes)
from fastread import CHUNK_BYTES, time_bytes, user_batches


# ============================================================================================== preference pairs

def _pair_dtype(n_hist, rejected_per_context):
    """One mined pair on disk: the dedupe key, its window, who, when, what; earlier plays and further skips."""
    fields = [("key", "<i8"), ("user", "<i8"), ("ts", "<i8"), ("ctx", "<i4"), ("chosen", "<i4"),
              ("rejected", "<i4"), ("window", "i1")]
    if n_hist > 1:
        fields.append(("earlier", "<i4", (n_hist - 1,)))   # the plays the prompt shows before the context, -1 pads
    if rejected_per_context > 1:
        fields.append(("more", "<i4", (rejected_per_context - 1,)))   # -1 pads
    return np.dtype(fields)


class _PairText:
    """The JSON lines build_prefs writes for pairs, as UTF-8 bytes: each line joined from pieces that belong to
    one track or one listener (built once, the same bytes as json.dumps(pair, ensure_ascii=False); the tests
    compare the files). A line is
        {"prompt": "<before><context's text>", "chosen": "<ID>", "rejected": "<ID>", "context_track": "<id>",
         "chosen_track": "<id>", "rejected_track": "<id>", "user": "<user>", "time": "<time>"<more>}
    on one line, cut after each variable part: head, context, chosen, rejected, context again, chosen again,
    rejected again, listener, then the time and the end.
    """

    def __init__(self, catalog, row_codes, n_hist, context_text=tasks.CONTEXT_TEXT):
        self.catalog, self.row_codes, self.n_hist, self.context_text = catalog, row_codes, n_hist, context_text
        n = len(catalog)
        self.have = np.zeros(n, dtype=bool)
        self.ids = {}   # row -> its ID text, for the earlier plays and further skips
        # per track: text + chosen key, ID + rejected key, ID + context_track key, track id + chosen_track key, ...
        self.parts = [np.empty(n, dtype=object) for _ in range(6)]
        self.users = np.empty(0, dtype=object)   # per listener: json + time key
        self.n_users = 0

    def add_users(self, names):
        if self.n_users + len(names) > len(self.users):
            grown = np.empty(max(2 * len(self.users), self.n_users + len(names)), dtype=object)
            grown[:self.n_users] = self.users[:self.n_users]
            self.users = grown
        self.users[self.n_users:self.n_users + len(names)] = [
            (json.dumps(u, ensure_ascii=False) + ', "time": "').encode() for u in names]
        self.n_users += len(names)

    def _rows(self, rows):
        rows = np.unique(rows)
        for r in rows[~self.have[rows]].tolist():
            cat, ident = self.catalog, formats.id_text(self.row_codes[r])
            text = tasks.next_track_prompt(cat, [r], self.row_codes, n_history=1, context_text=self.context_text)
            track = json.dumps(cat.track_id[r], ensure_ascii=False)
            self.ids[r] = ident
            for k, piece in enumerate((json.dumps(text, ensure_ascii=False)[1:] + ', "chosen": "',
                                       ident + '", "rejected": "', ident + '", "context_track": ',
                                       track + ', "chosen_track": ', track + ', "rejected_track": ',
                                       track + ', "user": ')):
                self.parts[k][r] = piece.encode()
            self.have[r] = True

    def pieces(self, recs):
        """(m, 9 or 10) object array of the lines' pieces."""
        ctx, ch, rj = recs["ctx"], recs["chosen"], recs["rejected"]
        more = "more" in recs.dtype.names
        self._rows(np.concatenate([ctx, ch, rj]))
        out = np.empty((len(recs), 10 if more else 9), dtype=object)
        out[:, 0] = b'{"prompt": "'
        if self.n_hist > 1:   # "Played before: <ID> <ID>. " in front of the context's text
            earlier = recs["earlier"]
            self._rows(earlier[earlier >= 0])
            out[:, 0] = [b'{"prompt": "' + ("Played before: " + " ".join(self.ids[r] for r in e if r >= 0)
                                            + ". ").encode() if max(e) >= 0 else b'{"prompt": "'
                         for e in earlier.tolist()]
        for k, rows in enumerate((ctx, ch, rj, ctx, ch, rj)):
            out[:, 1 + k] = self.parts[k][rows]
        out[:, 7] = self.users[recs["user"]]
        if more:
            self._rows(recs["more"][recs["more"] >= 0])
            out[:, 8] = time_bytes(recs["ts"], b'"')
            out[:, 9] = [(', "more_rejected": [' + ", ".join(f'"{self.ids[r]}"' for r in m if r >= 0)
                          + "]}\n").encode() for m in recs["more"].tolist()]
        else:
            out[:, 8] = time_bytes(recs["ts"], b'"}\n')
        return out

    def text(self, recs):
        """The lines of recs, as one bytes."""
        return b"".join(self.pieces(recs).ravel().tolist())

    def lines(self, recs):
        """The lines of recs, one bytes each."""
        return [b"".join(p) for p in self.pieces(recs).tolist()]


def _bump(counts, key, n):
    """counts[key] += n, as preferences.mine_pairs' count() does n times (no key for n = 0)."""
    if n:
        counts[key] = counts.get(key, 0) + int(n)


def _more_rejected(i, stop, ctx, ch, rj, rejected_ok, row, k):
    """preferences.mine_pairs' further skips: per pair, up to k distinct skipped tracks after the context (before stop),
    other than its context, chosen and rejected, in play order; (m, k) rows, -1 pads."""
    out = np.full((len(i), k), -1, dtype=np.int64)
    nxt = next_index(rejected_ok)
    filled = np.zeros(len(i), dtype=np.int64)
    ptr = nxt[i + 1]
    active = np.flatnonzero(ptr < stop)
    while len(active):
        j = ptr[active]
        r = row[j]
        take = (r != ctx[active]) & (r != ch[active]) & (r != rj[active]) & (out[active] != r[:, None]).all(axis=1)
        t = active[take]
        out[t, filled[t]] = r[take]
        filled[t] += 1
        ptr[active] = nxt[j + 1]
        active = active[(ptr[active] < stop[active]) & (filled[active] < k)]
    return out


def mine_prefs(log, catalog, row_codes, rule, args, t_val, t_test, n_hist, context_text, id_information,
               id_metadata, stats, counts, chunk_bytes=CHUNK_BYTES):
    """data.py prefs' mining and writing on arrays (preferences.mine_prefs is the reference): mines the pairs, dedupes
    them and keeps the capped samples exactly as the loop does, writes OUT/{train,val,test}.jsonl.

    Returns what preferences.mine_prefs returns: dict of plays, long, skip (N,) training-window labels per track,
    sessions, unknown_duration, seen {window: pairs before caps}, mined (seconds of the mining).
    """
    n = len(catalog)
    if n ** 3 >= 2 ** 63:
        raise UserError(f"a catalogue of {n:,} tracks is too large for the numpy engine's int64 pair keys: "
                        "use --engine loop")
    if n_hist < 1:
        raise UserError("the numpy engine needs a prompt history of at least 1 play: use --engine loop")
    k_more = args.rejected_per_context - 1
    coded_row = np.zeros(n + 1, dtype=bool)
    coded_row[list(row_codes)] = True
    durations = catalog.duration_ms / 1000.0   # seconds, 0 = unknown
    plays, long, skips = (np.zeros(n, dtype=np.int64) for _ in range(3))
    n_sessions = unknown_duration = 0
    label_counts = np.zeros(4, dtype=np.int64)
    reason_counts = np.zeros(len(REASONS) + 1, dtype=np.int64)   # unknown dwell split: session end, same timestamp
    dropped_first = {}   # "dropped: ..." -> stream position of its first occurrence (the dict's key order)
    text = _PairText(catalog, row_codes, n_hist, context_text)
    dtype = _pair_dtype(n_hist, args.rejected_per_context)
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".partitions.", dir=args.out)
    before = 0
    try:
        parts = [open(os.path.join(tmp_dir, f"{b}.bin"), "wb") for b in range(preferences.PARTITIONS)]
        with progress("mining pairs") as bar, no_cycle_collection():
            for b in user_batches(log, catalog, id_information=id_information, id_metadata=id_metadata, stats=stats,
                                  resolution=args.resolution or None, chunk_bytes=chunk_bytes):
                resolution = stats["resolution_s"]
                s = Sessions(b, catalog.duration_ms, args.session_gap, resolution)
                n_sessions += len(s)
                text.add_users(b.names)
                row, ts, p = b.row, b.ts, len(b)
                known_row = row >= 0
                dur = np.where(known_row, durations[np.maximum(row, 0)], 0.0)
                unknown_duration += int((known_row & (dur == 0)).sum())
                label, reason = label_codes(rule, s.dwell, dur, resolution)
                labelled = known_row & ~np.isnan(s.dwell) & (ts < t_val)   # per-track labels, training window
                plays += np.bincount(row[labelled], minlength=n)
                long += np.bincount(row[labelled & (label == 0)], minlength=n)
                skips += np.bincount(row[labelled & (label == 1)], minlength=n)
                label_counts += np.bincount(label, minlength=4)
                reason = np.where((reason == 6) & ~s.ends, 7, reason)   # unknown dwell: session end / same timestamp
                reason_counts += np.bincount(reason, minlength=len(REASONS) + 1)
                # contexts and their candidates: the rest of the session (or window_plays), in the context's window
                coded = coded_row[row]
                w = window_codes(ts, t_val, t_test)
                i = np.flatnonzero(coded)
                stop = s.stop[s.sid[i]]
                if args.window_plays:
                    stop = np.minimum(i + 1 + args.window_plays, stop)
                seg = np.concatenate([[True], (s.sid[1:] != s.sid[:-1]) | (w[1:] != w[:-1])])
                seg_stop = np.append(np.flatnonzero(seg)[1:], p)[np.cumsum(seg) - 1]
                cut = seg_stop[i] < stop
                _bump(counts, "candidates cut at a window boundary", cut.sum())
                stop = np.minimum(stop, seg_stop[i])
                # the first chosen and the first rejected candidate that is a catalogued track other than the context
                row_x = np.append(row, -2)
                ctx = row[i]
                found = []
                for ok in (coded & (label == 0), coded & (label == 1)):
                    c = next_index(ok)[i + 1]
                    again = (c < stop) & (row_x[c] == ctx)
                    c[again] = next_other(ok, row)[c[again]]
                    found.append(c)
                c, r = found
                has = (c < stop) & (r < stop)
                same = has & (row_x[c] == row_x[r])
                for key, m in (("dropped: no chosen and rejected play after the context", ~has),
                               ("dropped: chosen and rejected are the same track", same)):
                    if m.any():
                        dropped_first.setdefault(key, before + int(i[np.argmax(m)]))
                        counts[key] = counts.get(key, 0) + int(m.sum())
                pair = np.flatnonzero(has & ~same)
                ip, c, r = i[pair], c[pair], r[pair]
                recs = np.zeros(len(ip), dtype=dtype)
                recs["ctx"], recs["chosen"], recs["rejected"] = row[ip], row[c], row[r]
                recs["key"] = (row[ip] * n + row[c]) * n + row[r]
                recs["user"], recs["ts"], recs["window"] = b.first_user + b.uid[ip], ts[ip], w[ip]
                if n_hist > 1:
                    ranks = np.concatenate([[0], np.cumsum(coded)])
                    coded_rows = row[coded]
                    first = ranks[s.first[s.sid[ip]]]
                    for k in range(1, n_hist):
                        q = ranks[ip + 1] - 1 - k
                        recs["earlier"][:, n_hist - 1 - k] = np.where(q >= first, coded_rows[np.maximum(q, 0)], -1)
                if k_more:
                    recs["more"] = _more_rejected(ip, stop[pair], row[ip], row[c], row[r], coded & (label == 1),
                                                  row, k_more)
                part = recs["key"] % preferences.PARTITIONS
                order = np.argsort(part, kind="stable")
                bounds = np.searchsorted(part[order], np.arange(preferences.PARTITIONS + 1))
                for q in np.flatnonzero(np.diff(bounds)).tolist():
                    recs[order[bounds[q]:bounds[q + 1]]].tofile(parts[q])
                before += p
                bar.update(p)
        for f in parts:
            f.close()
        # the dropped reasons enter the dict in the order they first happened, as in the loop
        for key in sorted(dropped_first, key=dropped_first.get):
            counts[key] = counts.pop(key)
        for k, name in enumerate(sessions.LABELS):
            _bump(counts, name, label_counts[k])
        names = REASONS[:6] + ("session end", "same timestamp")
        for k, name in enumerate(names):
            _bump(counts, "reason: " + name, reason_counts[k])
        mined = time.time() - t0
        with no_cycle_collection():
            seen = _write_pairs(tmp_dir, args, dtype, text, counts)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return {"plays": plays, "long": long, "skip": skips, "sessions": n_sessions,
            "unknown_duration": unknown_duration, "seen": seen, "mined": mined}


LINES: int = 1 << 14   # JSON lines joined at a time (~5 MB)


def _write_pairs(tmp_dir, args, dtype, text, counts):
    """build_prefs' second half: the first of each (context, chosen, rejected) per partition, in stream order;
    uncapped windows written as they come, capped ones sampled with the loop's draws. Returns pairs seen."""
    caps = {"train": args.max_train, "val": args.max_val, "test": args.max_test}
    rngs = sessions.streams(args.seed, 3, caps)   # the loop's streams, one per window
    keep = {w: Sample(caps[w]) for w in caps}
    seen = dict.fromkeys(caps, 0)
    duplicates = 0
    with contextlib.ExitStack() as stack:
        outs = {w: stack.enter_context(atomic_open(os.path.join(args.out, f"{w}.jsonl"), "wb")) for w in caps}
        for b in range(preferences.PARTITIONS):
            recs = np.fromfile(os.path.join(tmp_dir, f"{b}.bin"), dtype=dtype)
            _, first = np.unique(recs["key"], return_index=True)
            duplicates += len(recs) - len(first)
            recs = recs[np.sort(first)]
            for k, w in enumerate(caps):
                sel = np.flatnonzero(recs["window"] == k)
                if caps[w]:
                    feed(rngs[w], [(keep[w], sel, lambda idx, sel=sel: text.lines(recs[sel[idx]]))])
                else:
                    seen[w] += len(sel)
                    for x in range(0, len(sel), LINES):
                        outs[w].write(text.text(recs[sel[x:x + LINES]]))
        if duplicates:
            counts["dropped: duplicate pair"] = counts.get("dropped: duplicate pair", 0) + duplicates
        for w in caps:
            if caps[w]:
                seen[w] = keep[w].seen
                outs[w].write(b"".join(keep[w].sample()))
    return seen
