"""Reading a listening log as numpy arrays, whole listeners at a time: fastlog.py's input.

  read     the file in blocks of CHUNK_BYTES. numpy finds the newlines and the separators and cuts each field out
           of the bytes: timestamps are parsed from their digits, track ids are looked up by a hash of their bytes
           (then compared byte for byte) in a table that joins each distinct id once, with formats.norm_key's join.
           A line the fast parser cannot vouch for (non-ASCII, wrong column count, an unusual timestamp) is handled
           one by one with logfiles.py's own rules, so bad rows are counted and reported the same way.
  batch    every public log keeps a listener's rows together (logfiles.py stops on one that does not), so a block
           holds whole listeners but its last, whose rows wait for the next block. Memory holds a block and one
           listener, never the file, and listeners come out in file order, which the sampling needs.
  sort     each listener's plays oldest first exactly as logfiles.iter_user_plays orders them (a newest-first
           listener is reversed first, so plays sharing a second keep their play order).

user_batches(...) yields what logfiles.iter_user_plays yields, a Batch of listeners at a time. The Onion
(`userid_trackid_timestamp.tsv`), Music4All `listening_history` and Onion-CSV layouts are read here (logfiles.
NUMPY_FORMATS); Last.fm-1K joins by (artist, title) text and stays on logfiles.py's loop. Nothing here imports torch.
"""
import contextlib
import itertools
import os
import queue
import threading

import numpy as np

import formats
import logfiles
from common import fail

CHUNK_BYTES: int = 1 << 20   # bytes read at a time (~25,000 Onion events): memory holds a few blocks' arrays
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


def time_bytes(ts, tail=b""):
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
