"""Listening logs: the public layouts, read one listener at a time, and the Onion layout written.

iter_user_plays streams (user, plays oldest first) joined to the catalogue, so a 2 GB Music4All-Onion log never
sits in memory; bad rows are counted and reported, not fatal. This loop is the readable reference; fastlog.py does
the same passes on numpy arrays (`--engine`, log_engine).

Formats (see ../shared/data/SOURCES.md):
  Music4All-Onion events           `userid_trackid_timestamp.tsv[.bz2]`: user_id, track_id, timestamp (newest first)
  Music4All `listening_history`    tab-separated despite `.csv`: user, song, timestamp
  Onion derived CSV                old_user_id, old_item_id, timestamp, user_id, item_id (comma-separated)
  Last.fm-1K                       no header, tab-separated: user, ISO time, artist mbid, artist, track mbid, track
"""
import bz2
import time
from datetime import datetime, timezone

from common import atomic_path, fail
from formats import SEP_NAMES, BadRows, decoded_lines, load_id_information, load_id_metadata, norm_key, open_binary

LOG_FORMATS = ("onion", "music4all", "onion_csv", "lastfm")


# ---------------------------------------------------------------------------------------------- listening logs

def format_ts(ts):
    """unix seconds -> '2019-02-20 12:28:30' (UTC), the Music4All-Onion timestamp."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def skipped_note(stats):
    """'' or '; 1 log row skipped (first: line 51, ...)': what a stage's summary line adds for unusable log rows.

    stats: the dict a log pass fills (bad_rows, bad_examples). A skipped row is a play no example, pair or count
    sees, so the line that reports the log says so, not only its meta.json.
    """
    n = stats.get("bad_rows", 0)
    if not n:
        return ""
    first = (stats.get("bad_examples") or [None])[0]
    return f"; {n:,} log row{'s' if n > 1 else ''} skipped" + (f" (first: {first})" if first else "")


def parse_ts(text):
    """'2019-02-20 12:28:30', '2019-02-20 12:28' or '2009-05-04T23:08:57Z' -> unix seconds; naive times are UTC."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def write_onion_events(rows_iter, path):
    """rows_iter: (user, track_id, ts unix seconds), grouped by user -> `userid_trackid_timestamp.tsv[.bz2]`.

    Within a user the rows are written newest first, as in Music4All-Onion; rows of one second, given in play
    order, are written in reverse too, so iter_user_plays reads them back in play order.
    """
    def flush(f, group):
        group.reverse()
        group.sort(key=lambda r: -r[2])   # stable: ties keep the reversed order
        f.writelines(f"{u}\t{t}\t{format_ts(ts)}\n" for u, t, ts in group)

    with atomic_path(path) as tmp:
        opener = bz2.open if str(path).endswith(".bz2") else open
        with opener(tmp, "wt", encoding="utf-8", newline="") as f:
            f.write("user_id\ttrack_id\ttimestamp\n")
            group = []
            for row in rows_iter:
                if group and row[0] != group[-1][0]:
                    flush(f, group)
                    group = []
                group.append(row)
            flush(f, group)


LOG_HEADERS = {"onion": ("\t", ("user_id", "track_id", "timestamp")),
               "music4all": ("\t", ("user", "song", "timestamp")),
               "onion_csv": (",", ("old_user_id", "old_item_id", "timestamp"))}


def detect_format(path, first):
    for fmt, (sep, cols) in LOG_HEADERS.items():
        if all(c in first.split(sep) for c in cols):
            return fmt
    for fmt, (sep, cols) in LOG_HEADERS.items():
        for other in SEP_NAMES:
            if other != sep and all(c in first.split(other) for c in cols):
                fail(path, f"looks {SEP_NAMES[other]}-separated; a {fmt} log is {SEP_NAMES[sep]}-separated",
                     line=1)
    cells = first.split("\t")
    if len(cells) == 6:
        try:
            parse_ts(cells[1])
            return "lastfm"
        except ValueError:
            pass
    fail(path, "unknown listening-log format: expected a Music4All-Onion header 'user_id<TAB>track_id<TAB>timestamp', "
               "Music4All 'user<TAB>song<TAB>timestamp', Onion CSV 'old_user_id,old_item_id,timestamp,...' "
               f"or Last.fm-1K rows (6 tab-separated fields); the first line is {first[:80]!r}", line=1)


def sort_command(path, sep, header):
    cat = f"bzcat {path}" if str(path).endswith(".bz2") else f"cat {path}"
    t = "$'\\t'" if sep == "\t" else "','"
    if header:
        return f"{cat} | (IFS= read -r h; printf '%s\\n' \"$h\"; sort -s -t {t} -k1,1) > sorted_file"
    return f"{cat} | sort -s -t {t} -k1,1 > sorted_file"


RESOLUTION_SAMPLE: int = 10_000   # events read before the log's timestamp resolution is decided


def timestamp_resolution(timestamps):
    """The step of a log's clock in seconds: 60 when every timestamp is a whole minute, else 1.

    Music4All's listening_history writes minutes ('2019-02-20 12:28'), so each of its timestamps is a multiple
    of 60; a clock that keeps seconds lands on a whole minute once in 60 events, so 10 such events in a row
    happen by chance once in 60**10. [1550665680, 1550665860] -> 60; [1550665680, 1550665710] -> 1; [] -> 1.
    """
    timestamps = list(timestamps)
    return 60 if timestamps and all(t % 60 == 0 for t in timestamps) else 1


def iter_user_plays(path, catalog, *, id_information=None, id_metadata=None, fmt="auto", stats=None,
                    resolution=None):
    """Stream a listening log and yield (user, plays) one user at a time.

    plays: list of (ts unix seconds, catalogue row) sorted oldest first. A play whose track is not in the catalogue
    is kept with row -1: it is dropped from what a model sees but its timestamp still ends the previous play, so
    dwell time (gap to the next play) stays correct downstream. Filter with `row >= 0`.

    Music4All ids join through id_metadata (id -> spotify_id == catalogue track_id) first and else through
    id_information by norm_key(artist, song); Last.fm joins by norm_key(artist, track). id tables may be paths or
    the dicts from load_id_information / load_id_metadata.
    Rows of one user must be consecutive (true of every public file); a user seen again after another stops the
    run with the `sort` command that fixes the file. stats (a dict) is updated in place as the stream advances.

    resolution: the step of the log's clock in seconds; None detects it (timestamp_resolution) from the first
    users' events, at least RESOLUTION_SAMPLE of them or the whole file: those users are held back until it is
    known, so stats["resolution_s"] is set before the first user is yielded, and dwell times can be read with it.
    """
    stats = {} if stats is None else stats
    if isinstance(id_information, str) or hasattr(id_information, "__fspath__"):
        id_information = load_id_information(id_information)
    if isinstance(id_metadata, str) or hasattr(id_metadata, "__fspath__"):
        id_metadata = load_id_metadata(id_metadata)
    if fmt != "auto" and fmt not in LOG_FORMATS:
        fail(path, f"unknown log format '{fmt}'; expected one of auto, {', '.join(LOG_FORMATS)}")
    by_id, by_key, cache = catalog.index(), catalog.key_index(), {}
    info, meta = id_information or {}, id_metadata or {}
    known = 0

    def resolve(track):
        """Music4All id or (artist, track) -> catalogue row or -1 (cached: ids repeat millions of times)."""
        nonlocal known
        row = cache.get(track)
        if row is None:
            if isinstance(track, tuple):
                row = by_key.get(norm_key(*track), -1)
            else:
                row = by_id.get(meta.get(track), -1)
                if row < 0 and track in info:
                    row = by_key.get(norm_key(info[track][0], info[track][1]), -1)
            cache[track] = row
        if not isinstance(track, tuple) and (track in meta or track in info):
            known += 1
        return row

    bad = BadRows()
    n_events = matched = users = 0
    with open_binary(path) as f:
        lines = decoded_lines(path, f, strict=False)
        first = next(((n, t) for n, t in lines if t is None or t.strip()), None)
        if first is None:
            fail(path, "empty file (expected a listening log)")
        if first[1] is None:
            fail(path, "undecodable bytes (tried utf-8, utf-8-sig): re-save the file as UTF-8", line=first[0])
        text = first[1].rstrip("\r\n")
        fmt = detect_format(path, text) if fmt == "auto" else fmt
        if fmt != "lastfm":
            sep, names = LOG_HEADERS[fmt]
            header = text.split(sep)
            if not all(c in header for c in names):
                fail(path, f"missing column(s) {', '.join(c for c in names if c not in header)} for the {fmt} "
                           f"format; the header has: {', '.join(header)}", line=first[0])
            iu, it, its = (header.index(c) for c in names)
            width = len(header)
            body = lines
            if not info and not meta:
                fail(path, "Music4All track ids need id_information (and optionally id_metadata) to join the "
                           "catalogue")
        else:
            sep, iu, its, width = "\t", 0, 1, 6
            body = _chain_first(first, lines)
        stats["format"] = fmt
        cur, group, done = None, [], set()
        held, n_held = [], 0   # the first users, held back until the timestamp resolution is known
        decided = resolution is not None
        if decided:
            stats.update(resolution_s=int(resolution), resolution_source="given")

        def decide_resolution():
            nonlocal decided
            ts = [t for _, plays in held for t, _ in plays]
            r = timestamp_resolution(ts)
            off_minute = sum(t % 60 != 0 for t in ts)
            why = "every one is a whole minute" if r == 60 else f"{off_minute:,} are not whole minutes"
            stats.update(resolution_s=r, resolution_source=f"detected from the first {len(ts):,} timestamps: {why}")
            decided = True

        def release(item):
            """Yield a finished user, or hold it back while the resolution is still unknown."""
            nonlocal n_held
            if decided:
                yield item
                return
            held.append(item)
            n_held += len(item[1])
            if n_held >= RESOLUTION_SAMPLE:
                decide_resolution()
                yield from held
                held.clear()

        def update_stats():
            stats.update(events_read=n_events, matched=matched, unmatched=n_events - matched,
                         bad_rows=bad.total(), bad_examples=bad.examples, users=users,
                         match_rate=matched / max(n_events, 1))
            if fmt != "lastfm":
                stats["known_ids"] = known  # events whose Music4All id is in the id tables

        def finish():
            nonlocal users
            if group[0][0] > group[-1][0]:
                group.reverse()  # newest-first files: keep ties in play order after the stable sort
            group.sort(key=lambda p: p[0])
            users += 1
            update_stats()
            return cur, group

        for lineno, text in body:
            if text is None:
                bad.add("undecodable bytes", lineno)
                continue
            cells = text.rstrip("\r\n").split(sep)
            if len(cells) != width:
                if len(cells) > 1 or cells[0].strip():
                    bad.add("wrong column count", lineno, None, f"{len(cells)} fields, expected {width}")
                continue
            try:
                ts = parse_ts(cells[its])
            except ValueError:
                bad.add("unparseable timestamp", lineno, "timestamp", cells[its])
                continue
            user = cells[iu]
            if user != cur:
                if group:
                    yield from release(finish())
                if user in done:
                    fail(path, f"user {user} appears again after other users' rows; the file must be grouped by "
                               f"user: {sort_command(path, sep, fmt != 'lastfm')}", line=lineno)
                done.add(user)
                cur, group = user, []
            row = resolve((cells[3], cells[5]) if fmt == "lastfm" else cells[it])
            n_events += 1
            matched += row >= 0
            group.append((ts, row))
        if group:
            yield from release(finish())
        if held:   # a file shorter than RESOLUTION_SAMPLE events
            decide_resolution()
            yield from held
        update_stats()
    if n_events == 0:
        detail = f"; first problem: {bad.examples[0]}" if bad.examples else ""
        fail(path, f"no listening event could be parsed as {fmt} ({bad.total()} bad lines){detail}")


ENGINES = ("auto", "numpy", "loop")
ENGINE_HELP = ("how the log is read: 'loop' is this file's readable reference, one event at a time; 'numpy' "
               "(fastlog.py) does the same on arrays, about 20x faster, and writes the same bytes; 'auto' takes "
               "numpy for the Onion, Music4All and Onion-CSV layouts and the loop for Last.fm-1K")


def log_engine(engine, path):
    """'numpy' or 'loop' for --engine auto|numpy|loop and this log: numpy where fastlog.py reads the layout."""
    if engine == "loop":
        return "loop"
    fmt = log_format(path)
    if fmt in NUMPY_FORMATS:
        return "numpy"
    if engine == "numpy":
        fail(path, f"--engine numpy reads the {', '.join(NUMPY_FORMATS)} layouts; this log is {fmt}: use --engine loop")
    return "loop"


def _chain_first(first, rest):
    yield first
    yield from rest


NUMPY_FORMATS = ("onion", "music4all", "onion_csv")   # the layouts fastlog.py reads; Last.fm-1K stays on the loop
_BOM = b"\xef\xbb\xbf"


def first_line(path, f):
    """(line number, text) of the first non-blank line of a binary file, as iter_user_plays finds it (BOM dropped)."""
    lineno = 0
    while True:
        raw = f.readline()
        if not raw:
            fail(path, "empty file (expected a listening log)")
        lineno += 1
        if lineno == 1 and raw.startswith(_BOM):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            fail(path, "undecodable bytes (tried utf-8, utf-8-sig): re-save the file as UTF-8", line=lineno)
        if text.strip():
            return lineno, text


def log_format(path):
    """The log's layout ('onion', 'music4all', 'onion_csv', 'lastfm') from its first non-blank line."""
    with open_binary(path) as f:
        lineno, text = first_line(path, f)
    return detect_format(path, text.rstrip("\r\n"))
