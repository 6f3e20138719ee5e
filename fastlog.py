"""Log mining on columnar numpy arrays: the passes over a listening log, the same output bytes, 5-20x faster.

The loops of logfiles.py, sessions.py and preferences.py read a log one line at a time and hold one listener's plays
in Python lists: the readable reference, at about 50,000 events a second for `data.py prefs` (80 minutes a pass
over the 253 million Music4All-Onion events).
This module does the same work on arrays, many listeners at a time: the time split and the SFT mining of `data.py
sft` (split_times, mine_logs), the preference pairs of `data.py prefs` (mine_prefs) and the co-listening counts of
`rvq.py train --logs` (co_listening), at 1-1.6 million events a second per pass (BENCHMARKS.md). The `--engine`
option of those commands picks one or the other; both stay because the loop is the specification (short,
readable, what the tutorial explains) and this is the same specification made fast (tests/test_fastlog.py checks
that the files they write are byte-identical).

  read     the file in blocks of CHUNK_BYTES. numpy finds the newlines and the separators and cuts each field out
           of the bytes: timestamps are parsed from their digits, track ids are looked up by a hash of their bytes
           (then compared byte for byte) in a table that joins each distinct id once, with formats.norm_key's join.
           A line the fast parser cannot vouch for (non-ASCII, wrong column count, an unusual timestamp) is handled
           one by one with logfiles.py's own rules, so bad rows are counted and reported the same way.
  batch    every public log keeps a listener's rows together (logfiles.py stops on one that does not), so a block
           holds whole listeners but its last, whose rows wait for the next block. Memory holds a block and one
           listener, never the file, and listeners come out in file order, which the sampling below needs.
  sort     each listener's plays oldest first exactly as logfiles.iter_user_plays orders them (a newest-first listener
           is reversed first, so plays sharing a second keep their play order).
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

The Onion (`userid_trackid_timestamp.tsv`), Music4All `listening_history` and Onion-CSV layouts are read here;
Last.fm-1K joins by (artist, title) text and stays on logfiles.py's loop (its full file is 19 million lines, about 6
minutes a pass there at 50,000 events a second). Nothing here imports torch.
"""
import contextlib
import gc
import itertools
import json
import os
import queue
import shutil
import tempfile
import threading
import time

import numpy as np
from tqdm import tqdm

import formats
import logfiles
import preferences
import tasks
import sessions
from common import UserError, atomic_open, fail

CHUNK_BYTES: int = 1 << 20   # bytes read at a time (~25,000 Onion events): memory holds a few blocks' arrays
_BOM = b"\xef\xbb\xbf"
_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)  # low k bytes
_HASH = np.random.default_rng(20260).integers(1, 2 ** 63, 64, dtype=np.uint64) | np.uint64(1)  # odd multipliers


# ============================================================================================== reading

def _unaligned(block):
    """u64[i] = the 8 bytes from byte i of block, little-endian (zero past its end): an overlapping view."""
    padded = np.frombuffer(block + bytes(8), dtype=np.uint8)
    return np.ndarray((len(block) + 1,), dtype="<u8", buffer=padded, strides=(1,))


def _words(u64, start, length, n_words):
    """(n, n_words) uint64: each field's bytes, 8 per word, zero past its length (u64: unaligned view, 1-byte step)."""
    out = np.empty((len(start), n_words), dtype=np.uint64)
    for k in range(n_words):
        out[:, k] = u64[np.minimum(start + 8 * k, len(u64) - 1)] & _MASKS[np.clip(length - 8 * k, 0, 8)]
    return out


def _hash(words, length):
    """A 64-bit hash of each field (the same for a field whatever the number of zero words after it)."""
    h = length.astype(np.uint64) * _HASH[0]
    for k in range(words.shape[1]):
        h += words[:, k] * _HASH[(k + 1) % len(_HASH)]
    return h


def _pad_words(w, n_words):
    return w if w.shape[1] >= n_words else np.hstack([w, np.zeros((len(w), n_words - w.shape[1]), np.uint64)])


def _days_from_civil(y, m, d):
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm), int64 arrays, years >= 1."""
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


_DIM = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _swar(text):
    """The 8 bytes of `text` as a little-endian uint64, and a mask of its non-digit bytes."""
    return (np.uint64(int.from_bytes(text.encode(), "little")),
            np.uint64(sum(0xFF << (8 * i) for i, c in enumerate(text) if c != "0")))


_YMD, _DHM, _HMS = _swar("0000-00-"), _swar("00 00:00"), _swar("00:00:00")   # bytes 0-7, 8-15, 11-18 of a time
_F0, _06, _10 = (np.uint64(int(c * 8, 16)) for c in ("F0", "06", "10"))


def _digits(w, pattern):
    """w XOR the pattern: digit bytes become their value, matching separators 0. ok: every byte is so."""
    x = w ^ pattern[0]
    return x, ((x & _F0) == 0) & (((x + _06) & _10) == 0) & ((x & pattern[1]) == 0)


def _byte(x, k):
    return ((x >> np.uint64(8 * k)) & np.uint64(0xFF)).astype(np.int64)


def _parse_times(u64, start, length):
    """Unix seconds of 'YYYY-MM-DD HH:MM:SS' and 'YYYY-MM-DD HH:MM' fields; plain False where the field is
    anything else (another ISO form, an impossible date): logfiles.parse_ts reads those one by one.

    u64[i] is the 8 bytes from byte i (an unaligned view): three loads per field, the digits checked and
    paired ("20" -> 20) eight bytes at a time.
    """
    ts = np.zeros(len(start), dtype=np.int64)
    plain = np.zeros(len(start), dtype=bool)
    for width in (19, 16):
        sel = np.flatnonzero(length == width)
        if not len(sel):
            continue
        s = start[sel]
        x0, ok = _digits(u64[s], _YMD)
        x1, ok1 = _digits(u64[s + 8], _DHM)
        ok &= ok1
        pairs0, pairs1 = x0 * np.uint64(10) + (x0 >> np.uint64(8)), x1 * np.uint64(10) + (x1 >> np.uint64(8))
        y, mo = _byte(pairs0, 0) * 100 + _byte(pairs0, 2), _byte(pairs0, 5)
        d, hh, mi = _byte(pairs1, 0), _byte(pairs1, 3), _byte(pairs1, 6)
        ss = 0
        if width == 19:
            x2, ok2 = _digits(u64[s + 11], _HMS)
            ok &= ok2
            ss = _byte(x2 * np.uint64(10) + (x2 >> np.uint64(8)), 6)
        leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
        ok &= (y >= 1) & (mo >= 1) & (mo <= 12) & (d >= 1) & (hh <= 23) & (mi <= 59) & (ss <= 59)
        ok &= d <= _DIM[np.where(ok, mo, 0)] + ((mo == 2) & leap)
        days = _days_from_civil(np.where(ok, y, 1970), np.where(ok, mo, 1), np.where(ok, d, 1))
        ts[sel] = days * 86400 + hh * 3600 + mi * 60 + ss
        plain[sel] = ok
    return ts, plain


def _civil_from_days(z):
    """(year, month, day) of days since 1970-01-01 (H. Hinnant's algorithm), int64 arrays."""
    z = z + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = np.where(mp < 10, mp + 3, mp - 9)
    return yoe + era * 400 + (m <= 2), m, d


def _time_bytes(ts, tail=b""):
    """logfiles.format_ts(t).encode() + tail for each value, as a list of bytes."""
    if not len(ts) or ts.min() < -30610224000 or ts.max() >= 253402300800:   # outside years 1000-9999
        return [logfiles.format_ts(t).encode() + tail for t in ts.tolist()]
    days, sec = np.divmod(ts, 86400)
    y, m, d = _civil_from_days(days)
    hh, rest = np.divmod(sec, 3600)
    mi, ss = np.divmod(rest, 60)
    out = np.empty((len(ts), 19 + len(tail)), dtype=np.uint8)
    out[:] = np.frombuffer(b"0000-00-00 00:00:00" + tail, dtype=np.uint8)
    for col, value, digits in ((0, y, 4), (5, m, 2), (8, d, 2), (11, hh, 2), (14, mi, 2), (17, ss, 2)):
        for k in range(digits):
            out[:, col + digits - 1 - k] = 48 + value // 10 ** k % 10
    return out.view(f"S{out.shape[1]}").ravel().tolist()


THREADS: bool = os.environ.get("FASTLOG_THREADS", "1") != "0"   # read, parse, mine in 3 threads (0: one thread)


def _ahead(items, depth=2):
    """Iterate the generator `items` in a thread of its own, up to `depth` items ahead of the caller.

    File reads, bz2 decompression and numpy's loops over large arrays release the GIL, so the stages of the
    reader run on both cores. The thread's exceptions reach the caller; closing the iterator stops the thread.
    """
    if not THREADS:
        yield from items
        return
    q, stop = queue.Queue(depth), threading.Event()

    def work():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            q.put((True, _END))
        except BaseException as e:   # noqa: B036 - handed to the caller, raised there
            q.put((False, e))
        finally:
            items.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():   # let a blocked put() see the stop
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)


_END = object()


class Batch:
    """Whole listeners, in file order, each listener's plays oldest first (logfiles.iter_user_plays's order).

    names: the listeners' ids (str); first_user: how many listeners came before (a global listener number);
    start (U + 1,): listener u's plays are [start[u], start[u + 1]); uid, ts, row (P,): listener number in the
    batch, unix seconds, catalogue row (-1: not in the catalogue).
    """

    def __init__(self, names, first_user, start, ts, row):
        self.names, self.first_user, self.start, self.ts, self.row = names, first_user, start, ts, row
        self.uid = np.repeat(np.arange(len(names), dtype=np.int64), np.diff(start))

    def __len__(self):
        return len(self.ts)

    def users(self):
        """(user, [(ts, row), ...]) per listener: what logfiles.iter_user_plays yields (for tests)."""
        ts, row = self.ts.tolist(), self.row.tolist()
        return [(name, list(zip(ts[a:b], row[a:b])))
                for name, a, b in zip(self.names, self.start[:-1].tolist(), self.start[1:].tolist())]


class _Tracks:
    """Distinct track ids seen so far -> (catalogue row, known to the id tables), each joined once.

    Looked up by a hash of the id's bytes in a sorted table; every hit is then compared byte for byte, and an id
    whose hash another id already holds is joined through a plain dict (exact, slow, and never seen in practice).
    """

    def __init__(self, catalog, info, meta):
        self.by_id, self.by_key, self.info, self.meta = catalog.index(), catalog.key_index(), info, meta
        self.hash = np.empty(0, dtype=np.uint64)
        self.words = np.empty((0, 1), dtype=np.uint64)
        self.length = np.empty(0, dtype=np.int64)
        self.row = np.empty(0, dtype=np.int64)
        self.known = np.empty(0, dtype=bool)
        self.exact = {}

    def join(self, track):
        """logfiles.iter_user_plays's resolve() for a Music4All id: (row or -1, whether the id tables know it)."""
        row = self.by_id.get(self.meta.get(track), -1)
        if row < 0 and track in self.info:
            row = self.by_key.get(formats.norm_key(self.info[track][0], self.info[track][1]), -1)
        return row, track in self.meta or track in self.info

    def _exact(self, block, s, e):
        key = block[s:e]
        if key not in self.exact:
            self.exact[key] = self.join(key.decode("utf-8"))
        return self.exact[key]

    def lookup(self, words, length, block, start):
        """(row, known) of each field: words/length its bytes (_words), block[start:start + length] the bytes."""
        n_words = max(words.shape[1], self.words.shape[1])
        words, self.words = _pad_words(words, n_words), _pad_words(self.words, n_words)
        h = _hash(words, length)
        pos = np.minimum(np.searchsorted(self.hash, h), max(len(self.hash) - 1, 0))
        found = (self.hash[pos] == h) if len(self.hash) else np.zeros(len(h), dtype=bool)
        new = np.flatnonzero(~found)
        if len(new):   # first sighting of these ids: join each distinct one, add it to the table
            uh, first = np.unique(h[new], return_index=True)
            rep = new[first]
            joined = [self.join(block[s:s + n].decode("utf-8"))
                      for s, n in zip(start[rep].tolist(), length[rep].tolist())]
            hash_ = np.concatenate([self.hash, uh])
            order = np.argsort(hash_, kind="stable")
            self.hash = hash_[order]
            self.words = np.concatenate([self.words, words[rep]])[order]
            self.length = np.concatenate([self.length, length[rep]])[order]
            self.row = np.concatenate([self.row, np.array([r for r, _ in joined], dtype=np.int64)])[order]
            self.known = np.concatenate([self.known, np.array([k for _, k in joined], dtype=bool)])[order]
            pos = np.searchsorted(self.hash, h)
        same = (self.length[pos] == length) & (self.words[pos] == words).all(axis=1)
        row, known = self.row[pos], self.known[pos]
        for i in np.flatnonzero(~same).tolist():   # another id with the same hash: the exact dict
            row[i], known[i] = self._exact(block, int(start[i]), int(start[i] + length[i]))
        return row, known


class _Reader:
    """logfiles.iter_user_plays for the Onion, Music4All and Onion-CSV layouts, a Batch at a time.

    The same stats (events, matches, bad rows with the same examples, users, known ids, the timestamp resolution
    and how it was decided), the same errors at the same lines.
    """

    def __init__(self, path, catalog, id_information=None, id_metadata=None, stats=None, resolution=None,
                 chunk_bytes=CHUNK_BYTES):
        self.path, self.catalog, self.chunk_bytes = path, catalog, int(chunk_bytes)
        self.stats = {} if stats is None else stats
        if isinstance(id_information, str) or hasattr(id_information, "__fspath__"):
            id_information = formats.load_id_information(id_information)
        if isinstance(id_metadata, str) or hasattr(id_metadata, "__fspath__"):
            id_metadata = formats.load_id_metadata(id_metadata)
        self.info, self.meta = id_information or {}, id_metadata or {}
        self.resolution = resolution
        self.bad = formats.BadRows()
        self.n_events = self.matched = self.known = self.users = 0

    # ------------------------------------------------------------------ one block of lines

    def _parse(self, block, first_lineno, u64):
        """The good rows of a block of whole lines (bytes), as columns; bad rows go to self.bad in line order.

        A line is read here when it has the header's number of fields; a line with another number is counted as
        logfiles.py counts it (a blank line is skipped), non-ASCII lines are checked to be UTF-8 one by one.
        u64: the block's bytes as overlapping uint64 (_unaligned).
        """
        a = np.frombuffer(block, dtype=np.uint8)
        nl = np.flatnonzero(a == 10)
        ends = nl if not block or block[-1] == 10 else np.append(nl, len(block))   # a last line without newline
        starts = np.concatenate([[0], nl + 1])[:len(ends)]
        line_end = ends.copy()
        while True:   # text.rstrip("\r\n"): the newline is already off
            m = np.flatnonzero((line_end > starts) & (a[np.maximum(line_end - 1, 0)] == 13))
            if not len(m):
                break
            line_end[m] -= 1
        bad = []   # (line index in the block, reason, column, value)
        ok = np.ones(len(starts), dtype=bool)
        high = np.flatnonzero(a >= 128)
        for k in np.unique(np.searchsorted(starts, high, side="right") - 1).tolist():   # non-ASCII lines
            try:
                block[starts[k]:ends[k] + 1].decode("utf-8")
            except UnicodeDecodeError:
                ok[k] = False
                bad.append((k, "undecodable bytes", None, None))
        seps = np.flatnonzero(a == self.sep_byte)
        per_line = self.width - 1
        grid = seps.reshape(-1, per_line) if len(seps) == len(starts) * per_line else None
        if grid is not None and (grid[:, 0] >= starts).all() and (grid[:, -1] < line_end).all():
            first_sep = np.arange(len(starts)) * per_line     # every line has its fields (the usual block)
            count = np.full(len(starts), per_line)
        else:
            first_sep = np.searchsorted(seps, starts)            # index of each line's first separator
            count = np.searchsorted(seps, line_end) - first_sep  # separators in the line
        for k in np.flatnonzero(ok & (count != self.width - 1)).tolist():
            ok[k] = False
            cells = block[starts[k]:line_end[k]].decode("utf-8").split(self.sep)
            if len(cells) > 1 or cells[0].strip():   # a blank line is no bad row
                bad.append((k, "wrong column count", None, f"{len(cells)} fields, expected {self.width}"))
        good = np.flatnonzero(ok)
        first_sep = first_sep[good]

        def field(j):   # (start, end) of field j of the good lines
            s = starts[good] if j == 0 else seps[first_sep + j - 1] + 1
            e = line_end[good] if j == self.width - 1 else seps[first_sep + j]
            return s, e

        ts_s, ts_e = field(self.its)
        ts, plain = _parse_times(u64, ts_s, ts_e - ts_s)
        keep = np.ones(len(good), dtype=bool)
        for i in np.flatnonzero(~plain).tolist():   # any other text: datetime.fromisoformat decides, as in logfiles.py
            text = block[ts_s[i]:ts_e[i]].decode("utf-8")
            try:
                ts[i] = logfiles.parse_ts(text)
            except ValueError:
                keep[i] = False
                bad.append((int(good[i]), "unparseable timestamp", "timestamp", text))
        for k, reason, column, value in sorted(bad, key=lambda b: b[0]):
            self.bad.add(reason, first_lineno + k, column, value)
        us, ue = field(self.iu)
        t_s, t_e = field(self.it)
        return {"lineno": first_lineno + good[keep], "ts": ts[keep], "us": us[keep], "ul": (ue - us)[keep],
                "ts_s": t_s[keep], "tl": (t_e - t_s)[keep]}

    # ------------------------------------------------------------------ listeners

    def _fail_again(self, name, lineno):
        fail(self.path, f"user {name} appears again after other users' rows; the file must be grouped by user: "
                        f"{logfiles.sort_command(self.path, self.sep, True)}", line=int(lineno))

    def _blocks(self):
        """(bytes of whole lines, the first one's line number), CHUNK_BYTES at a time, then b"" at the end."""
        rest, lineno = b"", self.header_line + 1
        while True:
            chunk = self.f.read(self.chunk_bytes)
            block = rest + chunk
            if chunk:
                cut = block.rfind(b"\n") + 1
                block, rest = block[:cut], block[cut:]
            if block:
                yield block, lineno
                lineno += block.count(b"\n") + (not block.endswith(b"\n"))
            if not chunk:
                return

    def _columns(self, blocks):
        """Per block: its good rows' columns, the listener ids' bytes as words, the tracks' catalogue rows."""
        tracks = _Tracks(self.catalog, self.info, self.meta)
        for block, lineno in blocks:
            u64 = _unaligned(block)
            cols = self._parse(block, lineno, u64)
            n = len(cols["ts"])
            wu = max(1, -(-int(cols["ul"].max()) // 8)) if n else 1   # words a field takes
            wt = max(1, -(-int(cols["tl"].max()) // 8)) if n else 1
            cols["uw"] = _words(u64, cols["us"], cols["ul"], wu)
            cols["row"], known = tracks.lookup(_words(u64, cols["ts_s"], cols["tl"], wt), cols["tl"], block,
                                               cols["ts_s"])
            cols["block"] = block
            self.n_events += n
            self.matched += int((cols["row"] >= 0).sum())
            self.known += int(known.sum())
            yield cols

    def _batches(self, columns):
        """Batches of whole listeners, in file order (plays oldest first), from the blocks' columns."""
        with contextlib.closing(columns):
            yield from self._listeners(columns)

    def _listeners(self, columns):
        done, n_users = set(), 0
        carry = None   # the last listener so far: its rows wait for the next block
        for cols in itertools.chain(columns, [None]):
            if cols is None:   # the end of the file: the last listener is whole
                if carry is not None:
                    yield _sorted_batch([carry["name"]], n_users, np.array([0, len(carry["ts"])]), carry["ts"],
                                        carry["row"])
                    self.users = n_users + 1
                return
            uw, ul, ts, row, lines = cols["uw"], cols["ul"], cols["ts"], cols["row"], cols["lineno"]
            before = 0
            if carry is not None:
                before = len(carry["ts"])
                wu = max(uw.shape[1], carry["uw"].shape[1])
                uw = np.concatenate([_pad_words(carry["uw"], wu), _pad_words(uw, wu)])
                ul, ts, row, lines = (np.concatenate([carry[k], x]) for k, x in
                                      (("ul", ul), ("ts", ts), ("row", row), ("lineno", lines)))
            if not len(ts):
                continue
            new_run = np.ones(len(ts), dtype=bool)
            new_run[1:] = (ul[1:] != ul[:-1]) | (uw[1:] != uw[:-1]).any(axis=1)
            run_start = np.flatnonzero(new_run)
            names = []
            for s in run_start.tolist():
                if s < before:   # the carried listener goes on
                    names.append(carry["name"])
                    continue
                k = s - before
                name = cols["block"][cols["us"][k]:cols["us"][k] + cols["ul"][k]].decode("utf-8")
                if name in done:
                    self._fail_again(name, lines[s])
                done.add(name)
                names.append(name)
            cut = int(run_start[-1])   # the last listener may go on in the next block
            carry = {"uw": uw[cut:], "ul": ul[cut:], "ts": ts[cut:], "row": row[cut:], "lineno": lines[cut:],
                     "name": names[-1]}
            if cut:
                start = np.append(run_start[:-1], cut).astype(np.int64)
                yield _sorted_batch(names[:-1], n_users, start, ts[:cut], row[:cut])
                n_users += len(names) - 1
                self.users = n_users

    def update_stats(self):
        self.stats.update(events_read=self.n_events, matched=self.matched, unmatched=self.n_events - self.matched,
                          bad_rows=self.bad.total(), bad_examples=self.bad.examples, users=self.users,
                          match_rate=self.matched / max(self.n_events, 1))
        self.stats["known_ids"] = self.known

    def __iter__(self):
        path, stats = self.path, self.stats
        with formats.open_binary(path) as f:
            self.f = f
            self.header_line, text = logfiles.first_line(path, f)
            text = text.rstrip("\r\n")
            fmt = logfiles.detect_format(path, text)
            if fmt not in logfiles.NUMPY_FORMATS:
                fail(path, f"the numpy engine reads the {', '.join(logfiles.NUMPY_FORMATS)} layouts, not {fmt}: "
                           "use --engine loop")
            sep, names = logfiles.LOG_HEADERS[fmt]
            header = text.split(sep)
            if not all(c in header for c in names):
                fail(path, f"missing column(s) {', '.join(c for c in names if c not in header)} for the {fmt} "
                           f"format; the header has: {', '.join(header)}", line=self.header_line)
            self.iu, self.it, self.its = (header.index(c) for c in names)
            self.width, self.sep, self.sep_byte = len(header), sep, ord(sep)
            if not self.info and not self.meta:
                fail(path, "Music4All track ids need id_information (and optionally id_metadata) to join the "
                           "catalogue")
            stats["format"] = fmt
            decided = self.resolution is not None
            if decided:
                stats.update(resolution_s=int(self.resolution), resolution_source="given")
            held = []
            # three threads: read (and decompress), parse, and the caller's mining; each hands on a block ahead
            batches = self._batches(_ahead(self._columns(_ahead(self._blocks()))))
            try:
                for batch in batches:
                    if decided:
                        self.update_stats()
                        yield batch
                        continue
                    held.append(batch)
                    if sum(len(b) for b in held) >= logfiles.RESOLUTION_SAMPLE:
                        self.update_stats()
                        self._decide(held)
                        decided = True
                        yield from held
                        held = []
                self.update_stats()
                if held:   # a file shorter than RESOLUTION_SAMPLE events
                    self._decide(held)
                    yield from held
                self.update_stats()
            finally:
                batches.close()   # stops the threads before the file closes
        if self.n_events == 0:
            detail = f"; first problem: {self.bad.examples[0]}" if self.bad.examples else ""
            fail(path, f"no listening event could be parsed as {fmt} ({self.bad.total()} bad lines){detail}")

    def _decide(self, held):
        """logfiles.iter_user_plays's decide_resolution(): the first listeners up to RESOLUTION_SAMPLE events."""
        counts = np.concatenate([np.diff(b.start) for b in held])
        # the listener reaching it (or past all)
        last = int(np.searchsorted(np.cumsum(counts), logfiles.RESOLUTION_SAMPLE))
        ts = np.concatenate([b.ts for b in held])[:int(counts[:last + 1].sum())]
        r = logfiles.timestamp_resolution(ts.tolist()) if len(ts) else logfiles.timestamp_resolution([])
        why = "every one is a whole minute" if r == 60 else f"{int((ts % 60 != 0).sum()):,} are not whole minutes"
        self.stats.update(resolution_s=r, resolution_source=f"detected from the first {len(ts):,} timestamps: {why}")


def _sorted_batch(names, first_user, start, ts, row):
    """Each listener's plays oldest first: reversed when its first play is newer than its last (a newest-first
    file; plays of one second then keep their play order), then a stable sort by time, as logfiles.py does."""
    n = len(ts)
    uid = np.repeat(np.arange(len(names)), np.diff(start))
    lo, hi = start[:-1], start[1:] - 1
    rev = ts[lo] > ts[hi]
    if rev.any():
        idx = np.arange(n)
        r = rev[uid]
        idx[r] = (lo + hi)[uid[r]] - idx[r]
        ts, row = ts[idx], row[idx]
    if n > 1 and ((ts[1:] < ts[:-1]) & (uid[1:] == uid[:-1])).any():
        order = np.lexsort((ts, uid))   # stable
        ts, row = ts[order], row[order]
    return Batch(names, first_user, start, ts, row)


def user_batches(path, catalog, *, id_information=None, id_metadata=None, stats=None, resolution=None,
                 chunk_bytes=CHUNK_BYTES):
    """logfiles.iter_user_plays a Batch of whole listeners at a time (the same listeners, plays and stats)."""
    return iter(_Reader(path, catalog, id_information, id_metadata, stats, resolution, chunk_bytes))


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
def _no_cycle_collection():
    """Pause Python's cyclic garbage collector: the samples hold up to millions of tuples and lists, none of them
    in a reference cycle, and the collector walking them again and again cost as much as the mining."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _progress(desc):
    return tqdm(desc=desc, unit=" events", unit_scale=True, disable=None)


def split_times(log, catalog, id_information=None, id_metadata=None, val_fraction=sessions.VAL_FRACTION,
                test_fraction=sessions.TEST_FRACTION, chunk_bytes=CHUNK_BYTES):
    """sessions.split_times: the time cut-offs from an hourly histogram of matched events."""
    hours = {}
    with _progress("splitting by time") as bar:
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


def mine_logs(log, catalog, row_codes, t_val, t_test, caps, rng, id_information=None, id_metadata=None,
              long_listen=sessions.LONG_LISTEN, gap=sessions.SESSION_GAP, stats=None, history=sessions.HISTORY,
              max_sessions=sessions.MAX_SESSIONS, chunk_bytes=CHUNK_BYTES):
    """sessions.mine_logs on arrays. Returns the same, but the co-listening counts as (i, j, count) int64 arrays in
    the dict's order instead of the dict, and each window's sequences as sessions.flat_sequences' (items, offsets)
    instead of lists (build_sft writes them so)."""
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
    with _progress("mining transitions") as bar, _no_cycle_collection():
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
            feed(rng, adds)
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
    with _progress("co-listening") as bar:
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
            out[:, 8] = _time_bytes(recs["ts"], b'"')
            out[:, 9] = [(', "more_rejected": [' + ", ".join(f'"{self.ids[r]}"' for r in m if r >= 0)
                          + "]}\n").encode() for m in recs["more"].tolist()]
        else:
            out[:, 8] = _time_bytes(recs["ts"], b'"}\n')
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
        with _progress("mining pairs") as bar, _no_cycle_collection():
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
        with _no_cycle_collection():
            seen = _write_pairs(tmp_dir, args, dtype, text, counts)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return {"plays": plays, "long": long, "skip": skips, "sessions": n_sessions,
            "unknown_duration": unknown_duration, "seen": seen, "mined": mined}


LINES: int = 1 << 14   # JSON lines joined at a time (~5 MB)


def _write_pairs(tmp_dir, args, dtype, text, counts):
    """build_prefs' second half: the first of each (context, chosen, rejected) per partition, in stream order;
    uncapped windows written as they come, capped ones sampled with the loop's draws. Returns pairs seen."""
    rng = np.random.default_rng(args.seed)
    caps = {"train": args.max_train, "val": args.max_val, "test": args.max_test}
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
            adds = []
            for k, w in enumerate(caps):
                sel = np.flatnonzero(recs["window"] == k)
                if caps[w]:
                    adds.append((keep[w], sel, lambda idx, sel=sel: text.lines(recs[sel[idx]])))
                else:
                    seen[w] += len(sel)
                    for x in range(0, len(sel), LINES):
                        outs[w].write(text.text(recs[sel[x:x + LINES]]))
            feed(rng, adds)
        if duplicates:
            counts["dropped: duplicate pair"] = counts.get("dropped: duplicate pair", 0) + duplicates
        for w in caps:
            if caps[w]:
                seen[w] = keep[w].seen
                outs[w].write(b"".join(keep[w].sample()))
    return seen
