"""Real data formats: the Spotify Tracks catalogue and the listening logs that join to it.

Readers turn the public files into a Catalog (one row per unique track) and stream listening events one user at a
time, so a 2 GB Music4All-Onion log never sits in memory. Writers produce the exact same layouts; world.py uses them
so that the synthetic default world and the real data go through one code path.

Formats (see ../shared/data/SOURCES.md):
  Spotify Tracks `dataset.csv`     comma-separated, optional leading unnamed index column, columns selected by name
  Music4All-Onion events           `userid_trackid_timestamp.tsv[.bz2]`: user_id, track_id, timestamp (newest first)
  Music4All `listening_history`    tab-separated despite `.csv`: user, song, timestamp
  Onion derived CSV                old_user_id, old_item_id, timestamp, user_id, item_id (comma-separated)
  Last.fm-1K                       no header, tab-separated: user, ISO time, artist mbid, artist, track mbid, track
  Music4All id_information / id_metadata   tab-separated with header, joined on the 16-character `id`
"""
import argparse
import bz2
import contextlib
import csv
import json
import os
import re
import shutil
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from tqdm import tqdm

from common import (UserError, atomic_open, atomic_path, fail, file_sha256, read_json, run_main, save_config,
                    write_json)
from idfiles import IDS_FILE, load_semantic_ids, read_rvq_meta

FEATURES = ("danceability", "energy", "key", "loudness", "speechiness", "acousticness",
            "instrumentalness", "liveness", "valence", "tempo")   # the seed's 10 audio features, this order
UNIT_FEATURES = ("danceability", "energy", "speechiness", "acousticness", "instrumentalness", "liveness",
                 "valence")  # Spotify defines these on [0, 1]
CATALOG_COLUMNS = ("track_id", "artists", "album_name", "track_name", "popularity", "duration_ms", "explicit",
                   "danceability", "energy", "key", "loudness", "mode", "speechiness", "acousticness",
                   "instrumentalness", "liveness", "valence", "tempo", "time_signature", "track_genre")
REQUIRED_COLUMNS = ("track_id", "artists", "track_name") + FEATURES + ("track_genre",)
ID_INFORMATION_COLUMNS = ("id", "artist", "song", "album_name")
ID_METADATA_COLUMNS = ("id", "spotify_id", "popularity", "release", "danceability", "energy", "key", "mode",
                       "valence", "tempo", "duration_ms")
LOG_FORMATS = ("onion", "music4all", "onion_csv", "lastfm")
MAX_EXAMPLES: int = 5  # bad-row examples kept in a report
_SEP_NAMES = {",": "comma", "\t": "tab", ";": "semicolon"}


@dataclass(eq=False)
class Catalog:
    track_id: list        # (N,) str, unique after loading
    track_name: list      # (N,) str
    artists: list         # (N,) str, ';'-joined as in the file
    album_name: list      # (N,) str
    genres: list          # (N,) list[str], primary genre first (all genres the track appeared under)
    features: np.ndarray  # (N, 10) float64, FEATURES order, raw units
    popularity: np.ndarray   # (N,) int64
    duration_ms: np.ndarray  # (N,) int64; 0 = unknown (an empty cell): never caps a dwell time
    explicit: np.ndarray     # (N,) bool
    mode: np.ndarray         # (N,) int64
    _cache: dict = field(default_factory=dict, repr=False)

    def __len__(self):
        return len(self.track_id)

    def __eq__(self, other):
        if not isinstance(other, Catalog):
            return NotImplemented
        lists = ("track_id", "track_name", "artists", "album_name", "genres")
        arrays = ("features", "popularity", "duration_ms", "explicit", "mode")
        return (all(getattr(self, k) == getattr(other, k) for k in lists)
                and all(np.array_equal(getattr(self, k), getattr(other, k)) for k in arrays))

    def index(self):
        """track_id -> row."""
        if "index" not in self._cache:
            self._cache["index"] = {t: i for i, t in enumerate(self.track_id)}
        return self._cache["index"]

    def keys(self):
        """(N,) norm_key(artists, track_name) of each row."""
        if "keys" not in self._cache:
            self._cache["keys"] = [norm_key(a, t) for a, t in zip(self.artists, self.track_name)]
        return self._cache["keys"]

    def key_index(self):
        """norm_key -> first row with that key (the same song can sit on several albums)."""
        if "key_index" not in self._cache:
            idx = {}
            for i, k in enumerate(self.keys()):
                idx.setdefault(k, i)
            self._cache["key_index"] = idx
        return self._cache["key_index"]

    def primary_genre(self):
        return [g[0] for g in self.genres]

    def feature(self, name):
        """(N,) one column of features by name."""
        return self.features[:, FEATURES.index(name)]


# ---------------------------------------------------------------------------------------------- join keys

_SUFFIX_WORDS = r"(remaster(ed)?|version|edit|live|mono|stereo|mix|from|feat|ft|single|deluxe|acoustic|bonus|demo)"
_DASH_SUFFIX = re.compile(r"\s+-\s+[^-]*\b" + _SUFFIX_WORDS + r"\b.*$", re.IGNORECASE)
_BRACKET_SUFFIX = re.compile(r"\s*[(\[][^)\]]*\b(" + _SUFFIX_WORDS + r"|with)\b[^)\]]*[)\]]", re.IGNORECASE)
_NON_WORD = re.compile(r"[\W_]+")


def _norm_text(s):
    s = unicodedata.normalize("NFKD", s)
    s = "".join(c for c in s if not unicodedata.combining(c)).lower().replace("&", " and ")
    return _NON_WORD.sub(" ", s).strip()


def norm_key(artist, title):
    """Normalised "artist|title" join key.

    Lowercase, accents and punctuation stripped, whitespace runs collapsed; only the first of ';'-joined artists;
    release decorations such as " - Remastered 2011", "(feat. X)", "[Live]" dropped from the title, because
    Music4All and Last.fm spell the same recording with and without them.
    """
    artist = artist.split(";")[0]
    title = _BRACKET_SUFFIX.sub("", _DASH_SUFFIX.sub("", title))
    return _norm_text(artist) + "|" + _norm_text(title)


# ---------------------------------------------------------------------------------------------- text input

def _open_binary(path):
    return bz2.open(path, "rb") if str(path).endswith(".bz2") else open(path, "rb")


def _decoded_lines(path, f, strict):
    """Yield (line number, text) of a binary file: utf-8 with or without BOM.

    Lines are decoded one by one so an undecodable byte is reported with its line. strict: stop with an error;
    else yield (line, None) so the caller can count it as a bad row.
    """
    for lineno, raw in enumerate(f, 1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if strict:
                fail(path, f"undecodable bytes (tried utf-8, utf-8-sig) at byte {e.start} of the line: "
                           "re-save the file as UTF-8", line=lineno)
            yield lineno, None


class _Counter:
    """Counts of dropped rows by reason plus the first few examples (for reports)."""

    def __init__(self):
        self.counts, self.examples = {}, []

    def add(self, reason, line, column=None, value=None):
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            where = f"line {line}" + (f", column '{column}'" if column else "")
            self.examples.append(f"{where}: {reason}" + ("" if value is None else f" ({value!r})"))

    def total(self):
        return sum(self.counts.values())


def _read_header(path, lines, sep, required, what):
    """Parse the header line; stop with one line when the file is empty, has the wrong separator or lacks columns."""
    for lineno, text in lines:
        if text.strip():
            break
    else:
        fail(path, f"empty file (expected a {what} with a header line)")
    text = text.rstrip("\r\n")
    header = next(csv.reader([text], delimiter=sep))
    cols = {name.strip(): i for i, name in reversed(list(enumerate(header)))}
    missing = [c for c in required if c not in cols]
    if missing:
        for other in _SEP_NAMES:
            if other != sep and all(c in text.split(other) for c in required[:2]):
                fail(path, f"looks {_SEP_NAMES[other]}-separated; a {what} is {_SEP_NAMES[sep]}-separated",
                     line=lineno)
        fail(path, f"missing required column(s) {', '.join(missing)}; the header has: "
                   f"{', '.join(h for h in header if h) or '(nothing)'}", line=lineno)
    return cols, len(header), lineno


# ---------------------------------------------------------------------------------------------- catalogue

def _number(value, column, lineno, bad, lo=None, hi=None, integer=False):
    """Parse one numeric cell; None (and a counted reason) when it is unusable."""
    if value == "":
        bad.add(f"missing {column}", lineno, column)
        return None
    try:
        x = float(value)
    except ValueError:
        bad.add(f"non-numeric {column}", lineno, column, value)
        return None
    if x != x:
        bad.add(f"NaN {column}", lineno, column, value)
        return None
    if abs(x) == float("inf") or (lo is not None and x < lo) or (hi is not None and x > hi) \
            or (integer and x != int(x)):
        bad.add(f"out-of-range {column}", lineno, column, value)
        return None
    return x


_RANGES = {**{f: (0.0, 1.0) for f in UNIT_FEATURES}, "key": (-1, 11), "tempo": (0.0, None),
           "loudness": (None, None)}  # loudness: any finite dB value
# (column, value when the cell is empty, low, high, must be an integer); an empty feature is a missing value.
# An empty duration_ms reads as 0, which means "unknown": it never caps a dwell (a cap of 0 would make every play
# of the track a skip); load_catalog's report counts them.
_NUMERIC = [(c, "", *_RANGES[c], c == "key") for c in FEATURES] + [
    ("popularity", "0", 0, 100, True), ("duration_ms", "0", 0, None, True), ("mode", "1", 0, 1, True)]
_BOOLS = {"true": True, "false": False, "1": True, "0": False, "": False}


def load_catalog(path):
    """Read a Spotify Tracks `dataset.csv` layout into (Catalog, report).

    Columns are selected by name (a leading unnamed index column and extra columns are ignored). A row with a bad
    value is skipped and counted; a track_id seen again adds its genre to the first row (values of the first row
    win). Whole-file problems stop with one line naming the file.
    """
    bad, rows_read, merged = _Counter(), 0, 0
    ids, names, artists, albums, genres, feats, pops, durs, expl, modes = ([] for _ in range(10))
    row_of = {}
    with _open_binary(path) as f:
        lines = _decoded_lines(path, f, strict=True)
        cols, width, header_line = _read_header(path, lines, ",", REQUIRED_COLUMNS, "Spotify Tracks CSV")
        reader = csv.reader((text for _, text in lines))
        for cells in reader:
            lineno = header_line + reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            rows_read += 1
            if len(cells) != width:
                bad.add("wrong column count", lineno, None, f"{len(cells)} fields, header has {width}")
                continue
            get = lambda c, default="": cells[cols[c]].strip() if c in cols else default  # noqa: E731
            tid, name, art, genre = get("track_id"), get("track_name"), get("artists"), get("track_genre")
            missing = next((c for c, v in (("track_id", tid), ("track_name", name), ("artists", art),
                                           ("track_genre", genre)) if not v), None)
            if missing:
                bad.add(f"missing {missing}", lineno, missing)
                continue
            values = []
            for c, default, lo, hi, integer in _NUMERIC:  # a row is counted once, under its first bad value
                values.append(_number(get(c) or default, c, lineno, bad, lo, hi, integer))
                if values[-1] is None:
                    break
            ex = _BOOLS.get(get("explicit").lower()) if values[-1] is not None else None
            if values[-1] is not None and ex is None:
                bad.add("non-boolean explicit", lineno, "explicit", get("explicit"))
            if ex is None:
                continue
            x, (pop, dur, mode) = values[:len(FEATURES)], values[len(FEATURES):]
            if tid in row_of:
                merged += 1
                g = genres[row_of[tid]]
                if genre not in g:
                    g.append(genre)
                continue
            row_of[tid] = len(ids)
            ids.append(tid), names.append(name), artists.append(art), albums.append(get("album_name"))
            genres.append([genre]), feats.append(x), pops.append(pop), durs.append(dur), expl.append(ex)
            modes.append(mode)
    if rows_read == 0:
        fail(path, "no data rows after the header")
    if not ids:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(bad.counts.items(), key=lambda kv: -kv[1]))
        fail(path, f"no usable rows: all {rows_read} rows were dropped ({reasons}); first: {bad.examples[0]}")
    cat = Catalog(ids, names, artists, albums, genres, np.array(feats, dtype=np.float64).reshape(-1, len(FEATURES)),
                  np.array(pops, dtype=np.int64), np.array(durs, dtype=np.int64), np.array(expl, dtype=bool),
                  np.array(modes, dtype=np.int64))
    report = {"path": str(path), "rows_read": rows_read, "kept": len(ids), "dropped": bad.total(),
              "dropped_by_reason": bad.counts, "dropped_examples": bad.examples, "duplicate_rows_merged": merged,
              "unknown_duration": int((cat.duration_ms == 0).sum())}
    return cat, report


def _fmt_float(x):
    return repr(float(x))  # shortest text that reads back to the same float64


def write_catalog(cat, path):
    """Write the real `dataset.csv` layout: leading unnamed index column, one row per (track, genre).

    All primary-genre rows come first in catalogue order, then the extra genres, so load_catalog reads back an
    equal Catalog (first appearance fixes the row order, later rows only add genres).
    """
    key_col = FEATURES.index("key")
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("",) + CATALOG_COLUMNS)
        n = 0
        for level in range(max((len(g) for g in cat.genres), default=1)):
            for i in range(len(cat)):
                if level >= len(cat.genres[i]):
                    continue
                x = dict(zip(FEATURES, cat.features[i]))
                vals = {"track_id": cat.track_id[i], "artists": cat.artists[i], "album_name": cat.album_name[i],
                        "track_name": cat.track_name[i], "popularity": int(cat.popularity[i]),
                        "duration_ms": int(cat.duration_ms[i]), "explicit": "True" if cat.explicit[i] else "False",
                        "mode": int(cat.mode[i]), "time_signature": 4, "track_genre": cat.genres[i][level],
                        **{k: _fmt_float(v) for k, v in x.items()}, "key": int(cat.features[i, key_col])}
                w.writerow([n] + [vals[c] for c in CATALOG_COLUMNS])
                n += 1


# ---------------------------------------------------------------------------------------------- Music4All id tables

def _read_tsv(path, required, what, optional=()):
    """Yield a dict of the named columns per row of a tab-separated file with header (csv quoting allowed)."""
    with _open_binary(path) as f:
        lines = _decoded_lines(path, f, strict=True)
        cols, width, _ = _read_header(path, lines, "\t", required, what)
        names = list(required) + [c for c in optional if c in cols]
        for cells in csv.reader((text for _, text in lines), delimiter="\t"):
            if len(cells) == width:  # short or long rows are damaged: they cannot join anything reliably
                yield {c: cells[cols[c]] for c in names}


def load_id_information(path):
    """Music4All id_information: id -> (artist, song, album_name)."""
    return {r["id"]: (r["artist"], r["song"], r.get("album_name", ""))
            for r in _read_tsv(path, ("id", "artist", "song"), "Music4All id_information file", ("album_name",))}


def load_id_metadata(path):
    """Music4All id_metadata: id -> spotify_id."""
    return {r["id"]: r["spotify_id"] for r in _read_tsv(path, ("id", "spotify_id"), "Music4All id_metadata file")}


def write_id_information(rows, path):
    """rows: iterable of (id, artist, song, album_name) -> Music4All tab-separated layout with header."""
    _write_tsv(rows, path, ID_INFORMATION_COLUMNS)


def write_id_metadata(rows, path):
    """rows: iterable of tuples in ID_METADATA_COLUMNS order (already formatted or numbers)."""
    _write_tsv(rows, path, ID_METADATA_COLUMNS)


def _write_tsv(rows, path, header):
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


# ---------------------------------------------------------------------------------------------- listening logs

def format_ts(ts):
    """unix seconds -> '2019-02-20 12:28:30' (UTC), the Music4All-Onion timestamp."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


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


_HEADERS = {"onion": ("\t", ("user_id", "track_id", "timestamp")),
            "music4all": ("\t", ("user", "song", "timestamp")),
            "onion_csv": (",", ("old_user_id", "old_item_id", "timestamp"))}


def _detect_format(path, first):
    for fmt, (sep, cols) in _HEADERS.items():
        if all(c in first.split(sep) for c in cols):
            return fmt
    for fmt, (sep, cols) in _HEADERS.items():
        for other in _SEP_NAMES:
            if other != sep and all(c in first.split(other) for c in cols):
                fail(path, f"looks {_SEP_NAMES[other]}-separated; a {fmt} log is {_SEP_NAMES[sep]}-separated",
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


def _sort_command(path, sep, header):
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

    bad = _Counter()
    n_events = matched = users = 0
    with _open_binary(path) as f:
        lines = _decoded_lines(path, f, strict=False)
        first = next(((n, t) for n, t in lines if t is None or t.strip()), None)
        if first is None:
            fail(path, "empty file (expected a listening log)")
        if first[1] is None:
            fail(path, "undecodable bytes (tried utf-8, utf-8-sig): re-save the file as UTF-8", line=first[0])
        text = first[1].rstrip("\r\n")
        fmt = _detect_format(path, text) if fmt == "auto" else fmt
        if fmt != "lastfm":
            sep, names = _HEADERS[fmt]
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
                               f"user: {_sort_command(path, sep, fmt != 'lastfm')}", line=lineno)
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
    """'numpy' or 'loop': what --engine auto|numpy|loop means for this log (fastlog.choose_engine)."""
    if engine == "loop":
        return "loop"
    import fastlog   # imported here: fastlog imports this module
    return fastlog.choose_engine(engine, path)


def _chain_first(first, rest):
    yield first
    yield from rest


# ============================================================================================== SFT examples
# Three task families, all answered with a Semantic ID (`<a_12><b_200><c_7>`):
#   attributes   "chill acoustic jazz for studying" -> a track satisfying every requested attribute
#   grounding    "Play {artist} - {title}"          -> that track's ID (the model must know the catalogue)
#   next_track   "I want to listen to {artist} - {title} <ID> or something similar" -> a track listeners played
#                next, for long. The prompt carries the named track's ID beside its name, as TIGER feeds the
#                history as IDs: a 135M model learns to read IDs in a CPU budget, not to memorise every name.
# The answer never appears in its prompt. Logs are split by time: train < t_val <= val < t_test <= test.

SESSION_GAP: int = 30 * 60     # seconds of silence that start a new session
LONG_LISTEN: float = 90.0      # dwell > 90 s: a long listen (chosen), as the seed
SKIP: float = 30.0             # dwell < 30 s: a skip (rejected), as the seed
HISTORY: int = 20             # session plays kept per next-track query (TIGER feeds about 20 items)
PROMPT_HISTORY: int = 1       # of those, the plays a prompt shows (1: the context track alone, as the seed)
CONTEXT_TEXT: str = "genre"    # what a next-track prompt shows of its context track: its genre and Semantic ID
                               # ("genre"), the ID alone ("id"), or its artist, title, genre and ID ("name").
                               # Against "name", an SFT step costs ~10% less ("id":
                               # ~27%), and with 160 steps instead of 120 "genre" ranks validation next tracks as
                               # well and attribute requests better; "id" ranks next tracks better and attribute
                               # requests far worse: no prompt then puts a genre word beside an ID (README,
                               # "Shorter prompts")
MAX_SESSIONS: int = 200_000   # sessions per window kept for sequential baselines (uniform sample; memory bound)
VAL_FRACTION: float = 0.1      # share of (matched) events in the validation window, before the test window
TEST_FRACTION: float = 0.2     # share of events in the final, held-out test window

# (attribute, value) -> (phrase, where it goes, predicate over the (N, 10) feature matrix)
_F = {name: i for i, name in enumerate(FEATURES)}
ATTRIBUTES = {
    ("energy", "high"): ("high-energy", "pre", lambda x: x[:, _F["energy"]] > 0.7),
    ("energy", "low"): ("chill", "pre", lambda x: x[:, _F["energy"]] < 0.4),
    ("mood", "happy"): ("upbeat", "pre", lambda x: x[:, _F["valence"]] > 0.6),
    ("mood", "sad"): ("melancholic", "pre", lambda x: x[:, _F["valence"]] < 0.3),
    ("tempo", "fast"): ("fast", "pre", lambda x: x[:, _F["tempo"]] > 130),
    ("tempo", "slow"): ("slow", "pre", lambda x: x[:, _F["tempo"]] < 90),
    ("dance", "yes"): ("danceable", "pre", lambda x: x[:, _F["danceability"]] > 0.7),
    ("acoustic", "yes"): ("acoustic", "pre", lambda x: x[:, _F["acousticness"]] > 0.6),
    ("instrumental", "yes"): ("instrumental", "pre", lambda x: x[:, _F["instrumentalness"]] > 0.5),
    ("activity", "workout"): ("for a workout", "post",
                              lambda x: (x[:, _F["energy"]] > 0.7) & (x[:, _F["tempo"]] > 120)),
    ("activity", "studying"): ("for studying", "post",
                               lambda x: (x[:, _F["energy"]] < 0.5) & (x[:, _F["speechiness"]] < 0.1)),
    ("activity", "party"): ("for a party", "post",
                            lambda x: (x[:, _F["danceability"]] > 0.7) & (x[:, _F["energy"]] > 0.6)),
    ("activity", "sleep"): ("to fall asleep to", "post",
                            lambda x: (x[:, _F["energy"]] < 0.3) & (x[:, _F["acousticness"]] > 0.5)),
}
BPM_STEP: int = 5              # "around 125 BPM": tempo within +- BPM_STEP of a multiple of BPM_STEP
TRAIN_REQUEST_TEMPLATES = (
    "I need music for a {desc} playlist", "Play something {desc}", "I'm looking for a {desc} song",
    "Can you recommend {desc} tracks?", "Give me some {desc} music", "Put on a {desc} track",
    "Any {desc} songs?", "Recommend a {desc} tune", "I'd like to hear something {desc}", "Find me {desc} music",
)
TEST_REQUEST_TEMPLATES = (  # held out entirely: never seen in training
    "What's a good {desc} track?", "Queue up some {desc} songs", "I'm in the mood for {desc} music",
    "Suggest a {desc} song, please",
)
GROUNDING_TEMPLATES = ("Play {track}", "{track}", "Put on {track}")
NEXT_TEMPLATES = ("I want to listen to {track} or something similar", "Something like {track}",
                  "More like {track}, please", "Play me songs similar to {track}")
CONTEXT_TEXTS = ("genre", "id", "name")   # next_track_prompt's context_text


def display_artist(artists):
    return ", ".join(a for a in artists.split(";") if a)


def track_text(cat, row, codes=None):
    """'{artist} - {title}'; with codes, the context form '{artist} - {title} ({genre}) <a_1><b_2><c_3>'.

    The context names its primary genre beside the ID: listening continues within a genre far more often
    than within an audio-feature neighbourhood, and the ID alone (audio features) does not say it.
    """
    s = f"{display_artist(cat.artists[row])} - {cat.track_name[row]}"
    return s if codes is None else f"{s} ({cat.genres[row][0]}) {id_text(codes)}"


def next_track_prompt(cat, hist, row_codes, template=None, n_history=1, context_text=CONTEXT_TEXT):
    """The next-track request for a listening history hist (catalogue rows, oldest first; the last is the
    context track): that track by genre and ID (context_text "genre"), by ID alone ("id"), or by name, genre
    and ID ("name"), and with n_history > 1 the plays before it as IDs.

    hist [7, 3] with n_history 2 -> 'Played before: <a_..><b_..><c_..>. I want to listen to (rock)
    <a_..><b_..><c_..> or something similar'; "id": '... listen to <a_..><b_..><c_..> or ...'; "name":
    '... listen to A - T (rock) <a_..><b_..><c_..> or ...'. An ID costs 3 tokens, a name 10 or more: a fixed
    budget of SFT steps sees more examples without names (TIGER feeds its whole history as IDs). The genre
    word beside the ID is what teaches the model which IDs a genre word means (attribute requests), and the
    only genre an ID from the audio features alone carries.
    """
    if context_text not in CONTEXT_TEXTS:
        raise UserError(f"context text {context_text!r}: expected one of {', '.join(CONTEXT_TEXTS)}")
    prev = hist[-1]
    track = (id_text(row_codes[prev]) if context_text == "id" else
             f"({cat.genres[prev][0]}) {id_text(row_codes[prev])}" if context_text == "genre" else
             track_text(cat, prev, row_codes[prev]))
    text = (template or NEXT_TEMPLATES[0]).format(track=track)
    earlier = list(hist[-n_history:-1]) if n_history > 1 else []
    if earlier:
        text = "Played before: " + " ".join(id_text(row_codes[r]) for r in earlier) + ". " + text
    return text


def id_text(codes):
    return "".join(f"<{chr(97 + l)}_{int(c)}>" for l, c in enumerate(codes))


def attribute_masks(cat):
    """{(attribute, value): (N,) bool} for every attribute, including ('genre', g) for every genre."""
    masks = {k: np.asarray(pred(cat.features)) for k, (_, _, pred) in ATTRIBUTES.items()}
    for g in sorted({g for gs in cat.genres for g in gs}):
        masks[("genre", g)] = np.array([g in gs for gs in cat.genres])
    return masks


def bpm_mask(cat, bpm):
    return np.abs(cat.feature("tempo") - bpm) <= BPM_STEP


def describe_request(attrs):
    """'chill acoustic jazz for studying' from [(attribute, value), ...]."""
    pre = [ATTRIBUTES[a][0] for a in attrs if a in ATTRIBUTES and ATTRIBUTES[a][1] == "pre"]
    post = [ATTRIBUTES[a][0] for a in attrs if a in ATTRIBUTES and ATTRIBUTES[a][1] == "post"]
    post += [f"around {v} BPM" for k, v in attrs if k == "bpm"]
    genre = [v for k, v in attrs if k == "genre"]
    return " ".join(pre + genre + post) if (pre or genre) else "music " + " ".join(post)


def describe_track(cat, row):
    """A track's text for the text-similarity baseline: name, artist, genres and words for its features."""
    x = cat.features[row:row + 1]
    words = [phrase for (attr, _), (phrase, _, pred) in ATTRIBUTES.items() if pred(x)[0]]
    return (f"{cat.track_name[row]} by {display_artist(cat.artists[row])}. Genre: {', '.join(cat.genres[row])}. "
            f"{', '.join(words)}. {cat.feature('tempo')[row]:.0f} BPM.")


def request_examples(cat, row_codes, masks, n, templates, rng):
    """n attribute requests, each anchored on a random catalogue track that satisfies it.

    Returns [(attrs, prompt, anchor_row)]: genre plus up to two other attributes the anchor has.
    """
    rows = np.array(sorted(row_codes))
    out = []
    for _ in range(n):
        attrs = []
        while not attrs:  # a request without attributes ("Suggest a music  song") would make every track relevant
            r = int(rng.choice(rows))
            own = [k for k in ATTRIBUTES if masks[k][r]]
            attrs = [("genre", cat.genres[r][0])] if rng.random() < 0.85 else []
            for j in rng.permutation(len(own))[:int(rng.integers(0 if attrs else 1, 3))]:
                attrs.append(own[j])
            if rng.random() < 0.1:
                attrs.append(("bpm", int(round(cat.feature("tempo")[r] / BPM_STEP) * BPM_STEP)))
        order = {k: i for i, k in enumerate(("genre",) + tuple(dict.fromkeys(a for a, _ in ATTRIBUTES)) + ("bpm",))}
        # dict.fromkeys, not set: a set of strings iterates in an order that changes with PYTHONHASHSEED, and
        # the stable sort would pass that order on to two attributes of one kind (two activities)
        attrs = sorted(dict.fromkeys(attrs), key=lambda a: order[a[0]])
        prompt = templates[int(rng.integers(len(templates)))].format(desc=describe_request(attrs))
        out.append((attrs, prompt[0].upper() + prompt[1:], r))
    return out


def relevant_rows(cat, masks, attrs, rows_with_id):
    m = np.ones(len(cat), dtype=bool)
    for a in attrs:
        m &= bpm_mask(cat, a[1]) if a[0] == "bpm" else masks[a]
    return [int(i) for i in np.flatnonzero(m) if i in rows_with_id]


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


def mine_logs(log, catalog, row_codes, t_val, t_test, caps, rng, id_information=None, id_metadata=None,
              long_listen=LONG_LISTEN, gap=SESSION_GAP, stats=None, history=HISTORY, max_sessions=MAX_SESSIONS):
    """One streaming pass for the SFT stage: next-track transitions per window and training-window statistics.

    Returns (transitions {window: [(user, history_rows, next_row)]}, counts {window: all transitions seen},
    popularity (N,), cooc {(i, j): count}, sequences {"train"|"val": [[row, ...], ...]}).
    A transition is a play followed, in the same session, by a long listen of another catalogued track;
    history_rows are the session's last `history` catalogued plays up to and including that play (oldest
    first), so its last element is the context track. Each window keeps a uniform sample of at most
    caps[window] transitions. Co-listening counts pairs within 3 plays of each other in a training-window
    session (symmetric). sequences: each session's catalogued plays inside one window (a session crossing a
    window boundary is cut there), for sequential baselines such as SASRec; at most max_sessions per window.
    """
    transitions = {w: Reservoir(caps[w], rng) for w in ("train", "val", "test")}
    sequences = {w: Reservoir(max_sessions, rng) for w in ("train", "val")}
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


def jsonl(record):
    """One line of a .jsonl file: the record as JSON, non-ASCII characters kept as they are."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def flat_sequences(seqs):
    """[[row, ...], ...] -> (items int32, offsets int64 of length S + 1): session s is items[off[s]:off[s+1]]."""
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(q) for q in seqs])
    items = np.fromiter((r for q in seqs for r in q), dtype=np.int32, count=int(offsets[-1]))
    return items, offsets


def build_sft(args):
    """`data.py sft`: write train/val JSONL, the two test sets, listening statistics and meta.json."""
    rng = np.random.default_rng(args.seed)
    catalog, cat_report = load_catalog(args.catalog)
    ids_path = os.path.join(args.rvq, IDS_FILE)
    track_ids, codes = load_semantic_ids(ids_path)
    rvq_meta = read_rvq_meta(args.rvq)
    index = catalog.index()
    missing = [t for t in track_ids if t not in index]
    if missing:
        fail(ids_path, f"{len(missing)} track ids are not in {args.catalog} (first: {missing[0]}); "
                       "the ID table was built from another catalogue")
    row_codes = {index[t]: tuple(int(c) for c in cs) for t, cs in zip(track_ids, codes)}
    masks = attribute_masks(catalog)
    examples = {"train": [], "val": []}   # their JSON lines
    counts = {s: dict.fromkeys(("attributes", "grounding", "next_track"), 0) for s in examples}
    answers = {r: id_text(c) for r, c in row_codes.items()}

    def add(split, prompt, row, task):
        examples[split].append(jsonl({"prompt": prompt, "answer": answers[row], "task": task,
                                      "track_id": catalog.track_id[row]}))
        counts[split][task] += 1

    # 1. requests by attributes (train phrasings), validation on the same phrasings, test on held-out ones
    for split, n in (("train", args.attribute_examples), ("val", args.attribute_examples // 10)):
        for attrs, prompt, r in request_examples(catalog, row_codes, masks, n, TRAIN_REQUEST_TEMPLATES, rng):
            add(split, prompt, r, "attributes")
    tests_attr, seen = [], set()
    for attrs, prompt, r in request_examples(catalog, row_codes, masks, 20 * args.test_attributes,
                                             TEST_REQUEST_TEMPLATES, rng):
        key = tuple(attrs)
        if key in seen or len(tests_attr) >= args.test_attributes:
            continue
        seen.add(key)
        rel = relevant_rows(catalog, masks, attrs, row_codes)
        tests_attr.append({"prompt": prompt, "task": "attributes", "attributes": [list(a) for a in attrs],
                           "relevant": [catalog.track_id[i] for i in rel]})
    # 2. grounding: name -> ID
    rows = sorted(row_codes)
    for r in rng.permutation(rows)[:args.grounding_examples]:
        add("train", GROUNDING_TEMPLATES[int(rng.integers(len(GROUNDING_TEMPLATES)))].format(
            track=track_text(catalog, int(r))), int(r), "grounding")
    # 3. next track from the logs, split by time
    split, mine = split_times, mine_logs
    if log_engine(args.engine, args.logs) == "numpy":   # fastlog: the same passes on numpy arrays, the same results
        import fastlog
        split, mine = fastlog.split_times, fastlog.mine_logs
    t_passes = time.time()
    # the split is a whole pass over the log; `rvq.py train --logs` (the stage before, when the IDs read the
    # log) made it already, so it is reused when it came from the very same files and fractions
    inputs = split_inputs(args.logs, args.catalog, args.id_information, args.id_metadata, args.val_fraction,
                          args.test_fraction)
    recorded, why = recorded_split(args.rvq, inputs)
    if recorded:
        (t_val, t_test), passes = recorded, 1
        print(f"time split: reused ({why}): one pass over the log")
    else:
        print(f"time split: computed here ({why}): two passes over the log")
        t_val, t_test = split(args.logs, catalog, args.id_information, args.id_metadata,
                              args.val_fraction, args.test_fraction)
        passes = 2
    if rvq_meta.get("t_val") is not None and rvq_meta["t_val"] > t_val:
        raise UserError(f"{args.rvq}: its IDs read listening up to {format_ts(rvq_meta['t_val'])}, after this "
                        f"split's training window ends ({format_ts(t_val)}); use the same --val-fraction / "
                        "--test-fraction in rvq.py train and data.py sft")
    log_stats = {}
    caps = {"train": args.next_examples, "val": args.next_examples // 10, "test": args.test_next}
    chosen, n_trans, popularity, cooc, seqs = mine(args.logs, catalog, row_codes, t_val, t_test, caps, rng,
                                                   args.id_information, args.id_metadata, stats=log_stats,
                                                   max_sessions=args.max_sessions)
    t_passes = time.time() - t_passes
    n_hist = args.prompt_history
    # a next-track line joins two cached halves: the prompt's (examples with one context share it) and the
    # answer's (one per track). A JSON object is "{" + its members joined by ", " + "}", so the halves make the
    # very bytes add() would write, without building and encoding a dict per example.
    heads, tails = {}, {}   # (template, the plays the prompt shows) -> '{"prompt": ..., '; next row -> the rest
    for w in ("train", "val"):
        # one draw per example, as one array: numpy's Generator gives the same numbers as a call per example
        templates = rng.integers(len(NEXT_TEMPLATES), size=len(chosen[w])).tolist()
        for (user, hist, nxt), t in zip(chosen[w], templates):
            key = (t, hist[-n_hist:])
            if key not in heads:
                prompt = next_track_prompt(catalog, hist, row_codes, NEXT_TEMPLATES[t], n_hist, args.context_text)
                heads[key] = jsonl({"prompt": prompt})[:-len("}\n")] + ", "
            if nxt not in tails:
                tails[nxt] = jsonl({"answer": answers[nxt], "task": "next_track",
                                    "track_id": catalog.track_id[nxt]})[len("{"):]
            examples[w].append(heads[key] + tails[nxt])
        counts[w]["next_track"] += len(chosen[w])
    # `history`: the plays the prompt shows, all a baseline may read; `session`: the longer history, for reference
    tests_next = [{"prompt": next_track_prompt(catalog, hist, row_codes, NEXT_TEMPLATES[0], n_hist,
                                             args.context_text),
                   "task": "next_track", "context_track": catalog.track_id[hist[-1]],
                   "history": [catalog.track_id[r] for r in hist[-n_hist:]],
                   "session": [catalog.track_id[r] for r in hist],
                   "relevant": [catalog.track_id[nxt]], "user": user} for user, hist, nxt in chosen["test"]]
    for split in examples:  # mix the task families
        examples[split] = [examples[split][i] for i in rng.permutation(len(examples[split]))]
    if not examples["train"] or not examples["val"]:
        raise UserError("no SFT examples could be built: check the catalogue, the ID table and the logs")

    out = args.out
    os.makedirs(out, exist_ok=True)
    for name, lines in (("train.jsonl", examples["train"]), ("val.jsonl", examples["val"]),
                        ("test_next.jsonl", map(jsonl, tests_next)), ("test_attributes.jsonl", map(jsonl, tests_attr))):
        with atomic_open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.writelines(lines)
    if isinstance(cooc, dict):   # the loop's {(i, j): count}; fastlog gives the arrays, in the same order
        cooc = (np.array([k[0] for k in cooc], dtype=np.int64), np.array([k[1] for k in cooc], dtype=np.int64),
                np.array(list(cooc.values()), dtype=np.int64))
    ci, cj, cc = cooc
    with atomic_path(os.path.join(out, "listening_stats.npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, popularity=popularity, cooc_i=ci, cooc_j=cj, cooc_count=cc,
                     **{f"{w}_seq_{k}": a for w in ("train", "val") for k, a in zip(("items", "offsets"), (
                         seqs[w] if isinstance(seqs[w], tuple) else flat_sequences(seqs[w])))})   # fastlog: flat
    meta = {"catalog": os.path.abspath(args.catalog), "rvq": os.path.abspath(args.rvq),
            "semantic_ids": os.path.abspath(ids_path), "id_table_sha256": file_sha256(ids_path),
            "levels": int(rvq_meta["levels"]), "codebook_size": int(rvq_meta["codebook_size"]),
            "logs": os.path.abspath(args.logs),
            "id_information": args.id_information and os.path.abspath(args.id_information),
            "id_metadata": args.id_metadata and os.path.abspath(args.id_metadata),
            "prompt_history": n_hist, "context_text": args.context_text, "t_val": t_val, "t_test": t_test,
            "t_val_utc": format_ts(t_val),
            "t_test_utc": format_ts(t_test),
            "examples": counts, "test_next": len(tests_next), "test_attributes": len(tests_attr),
            "transitions": n_trans, "log": log_stats, "catalog_report": cat_report}
    write_json(os.path.join(out, "meta.json"), meta)
    save_config(out, args, name="config.json")
    print(f"SFT examples: train {counts['train']}, val {counts['val']}; test: {len(tests_next)} next-track, "
          f"{len(tests_attr)} attribute requests; split at {format_ts(t_val)} / {format_ts(t_test)} UTC; "
          f"log match rate {log_stats.get('match_rate', 0):.1%}; log passes: {passes}, {t_passes:.1f} s "
          f"({passes * log_stats.get('events_read', 0) / max(t_passes, 1e-9):,.0f} events/s)")
    return meta


# ============================================================================================== preference pairs

def mine_pairs(sessions, row_codes, rule=DwellRule(), window_plays=0, counts=None, windows=None, history=0,
               durations=None, resolution=1, rejected_per_context=1):
    """Preference pairs of one user's sessions: [(context_row, chosen_row, rejected_row, ts)].

    The context is a play; the candidates are the plays after it in the same session (the next
    `window_plays` of them, or the rest of the session when 0). The first candidate that rule.label calls
    chosen (by default: dwell > 90 s) is chosen and the first it calls rejected (dwell < 30 s) is rejected;
    plays without a known dwell (a session's last, or one sharing its timestamp with the next play) are
    unlabelled. Both must be catalogued tracks other than the context, so the prompt never names an answer.
    ts = the context's time, which decides the split. durations: (N,) track lengths in seconds, 0 = unknown
    (for the relative thresholds; None: all unknown). resolution: the log's clock step in seconds.
    windows = (t_val, t_test): candidates must lie in the context's time window, so no validation pair
    uses a test-window play and no training pair a later one.
    history > 0: each pair also carries the session's last `history` catalogued plays up to the context
    (a tuple of rows, oldest first), as the next-track prompts show them: (context, chosen, rejected, ts, hist).
    counts (a dict) gains, per play, its label and "reason: " + the reason of label() (the two unknown dwells
    told apart: "session end", "same timestamp"), and why pairs were dropped.
    rejected_per_context K > 1 (for S-DPO): each pair ends with a tuple of up to K - 1 further rejected tracks,
    the next distinct skips after the context in play order (may be empty), after hist when history > 0.
    Example: plays ctx, a (skip), b (long), c (skip), a (skip), d (skip) with K = 3 give
    (ctx, b, a, ts, (c, d)): a is the pair's rejected answer, c and d the further ones.
    """
    counts = {} if counts is None else counts

    def count(k):
        counts[k] = counts.get(k, 0) + 1

    out = []
    for sess in sessions:
        labels = []
        for i, (ts, row, dwell) in enumerate(sess):
            dur = float(durations[row]) if durations is not None and row >= 0 else 0.0
            label, reason = rule.label(dwell, dur, resolution)
            if reason == "unknown dwell":   # only a session's last play or a same-timestamp one has none
                reason = "session end" if i == len(sess) - 1 else "same timestamp"
            count(label)
            count("reason: " + reason)
            labels.append(label)
        for i, (ts, ctx, _) in enumerate(sess):
            if ctx < 0 or ctx not in row_codes:
                continue
            cands = range(i + 1, min(i + 1 + window_plays, len(sess)) if window_plays else len(sess))
            if windows is not None:
                w = window(ts, *windows)
                inside = [j for j in cands if window(sess[j][0], *windows) == w]
                if len(inside) < len(cands):
                    count("candidates cut at a window boundary")
                cands = inside

            def first(label):
                return next((sess[j][1] for j in cands if labels[j] == label and sess[j][1] >= 0
                             and sess[j][1] != ctx and sess[j][1] in row_codes), None)

            chosen, rejected = first("chosen"), first("rejected")
            if chosen is None or rejected is None:
                count("dropped: no chosen and rejected play after the context")
            elif chosen == rejected:
                count("dropped: chosen and rejected are the same track")
            else:
                pair = (ctx, chosen, rejected, ts)
                if history:
                    pair += (tuple([r for _, r, _ in sess[:i + 1] if r >= 0 and r in row_codes][-history:]),)
                if rejected_per_context > 1:
                    more = []
                    for j in cands:
                        r = sess[j][1]
                        if labels[j] == "rejected" and r >= 0 and r in row_codes \
                                and r not in (ctx, chosen, rejected) and r not in more:
                            more.append(r)
                    pair += (tuple(more[:rejected_per_context - 1]),)
                out.append(pair)
    return out


def check_label_options(args):
    """One-line errors for thresholds that cannot label a play consistently."""
    for name in ("long_fraction", "skip_fraction"):
        x = getattr(args, name)
        if x is not None and not 0 < x <= 1:
            raise UserError(f"--{name.replace('_', '-')} {x:g}: a share of the track, between 0 (excluded) and 1")
    if args.skip > args.long_listen:
        raise UserError(f"--skip {args.skip:g} is above --long-listen {args.long_listen:g}: a play could be both a "
                        "skip and a long listen")
    if None not in (args.long_fraction, args.skip_fraction) and args.skip_fraction > args.long_fraction:
        raise UserError(f"--skip-fraction {args.skip_fraction:g} is above --long-fraction {args.long_fraction:g}: "
                        "a play could be both a skip and a long listen")
    if args.rejected_per_context < 1:
        raise UserError(f"--rejected-per-context {args.rejected_per_context}: at least 1 (the pair's own rejected)")
    if args.resolution < 0:
        raise UserError(f"--resolution {args.resolution}: seconds between clock ticks, or 0 to detect them")


PARTITIONS: int = 64            # hash partitions of the pair stream: dedupe holds one partition in memory


def _prefs_loop(log, catalog, row_codes, rule, args, t_val, t_test, n_hist, context_text, id_information,
                id_metadata, stats, counts):
    """`data.py prefs`' mining, one user at a time: pairs, deduplicated, capped, written to OUT/{train,val,test}.jsonl.

    Bounded memory at any log size: pairs stream into PARTITIONS temporary files by a hash of
    (context, chosen, rejected); each partition is then deduplicated on its own, and capped splits keep a
    uniform reservoir sample. Memory holds one user's plays, one partition and the caps, never the log.
    Returns the training-window labels per track (plays, long, skip), sessions, plays of tracks without a
    duration, pairs seen per window before the caps, and the mining's seconds; stats and counts are filled in.
    fastlog.mine_prefs does the same on arrays and writes the same bytes.
    """
    n = len(catalog)
    durations = (catalog.duration_ms / 1000.0).tolist()   # seconds, 0 = unknown
    # training-window labelled plays per track, for the preference baselines of evaluate.py
    plays, long, skips = (np.zeros(n, dtype=np.int64) for _ in range(3))
    n_sessions = unknown_duration = 0
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".partitions.", dir=args.out)
    try:
        parts = [open(os.path.join(tmp_dir, f"{b}.tsv"), "w", encoding="utf-8") for b in range(PARTITIONS)]
        plays_iter = iter_user_plays(log, catalog, id_information=id_information, id_metadata=id_metadata,
                                     stats=stats, resolution=args.resolution or None)
        for user, user_plays in tqdm(plays_iter, desc="mining pairs", unit=" users", disable=None):
            resolution = stats["resolution_s"]   # known before the first user arrives
            sess = sessions_of(user_plays, catalog, args.session_gap, resolution)
            n_sessions += len(sess)
            for ts, row, dwell in (p for ss in sess for p in ss):   # per-track labels of the training window
                unknown_duration += row >= 0 and durations[row] == 0
                if row >= 0 and dwell is not None and ts < t_val:
                    label = rule.label(dwell, durations[row], resolution)[0]
                    plays[row] += 1
                    long[row] += label == "chosen"
                    skips[row] += label == "rejected"
            for ctx, ch, rj, ts, hist, *more in mine_pairs(sess, row_codes, rule, args.window_plays, counts,
                                                           windows=(t_val, t_test), history=n_hist,
                                                           durations=durations, resolution=resolution,
                                                           rejected_per_context=args.rejected_per_context):
                key = (ctx * n + ch) * n + rj
                pair = {"prompt": next_track_prompt(catalog, hist, row_codes, n_history=n_hist,
                                                      context_text=context_text),
                        "chosen": id_text(row_codes[ch]), "rejected": id_text(row_codes[rj]),
                        "context_track": catalog.track_id[ctx], "chosen_track": catalog.track_id[ch],
                        "rejected_track": catalog.track_id[rj], "user": user, "time": format_ts(ts)}
                if more:   # S-DPO's further rejected answers; "rejected" stays the one pairwise accuracy uses
                    pair["more_rejected"] = [id_text(row_codes[r]) for r in more[0]]
                line = json.dumps(pair, ensure_ascii=False)
                parts[key % PARTITIONS].write(f"{key}\t{window(ts, t_val, t_test)}\t{line}\n")
        for f in parts:
            f.close()
        mined = time.time() - t0
        rng = np.random.default_rng(args.seed)
        caps = {"train": args.max_train, "val": args.max_val, "test": args.max_test}
        keep = {w: Reservoir(caps[w], rng) for w in caps}
        with contextlib.ExitStack() as stack:
            outs = {w: stack.enter_context(atomic_open(os.path.join(args.out, f"{w}.jsonl"), "w", encoding="utf-8"))
                    for w in caps}
            for b in range(PARTITIONS):   # the first occurrence of each (context, chosen, rejected) is kept
                seen = set()
                with open(os.path.join(tmp_dir, f"{b}.tsv"), encoding="utf-8") as f:
                    for line in f:
                        key, w, js = line.split("\t", 2)
                        if key in seen:
                            counts["dropped: duplicate pair"] = counts.get("dropped: duplicate pair", 0) + 1
                            continue
                        seen.add(key)
                        if caps[w]:
                            keep[w].add(js)
                        else:
                            keep[w].seen += 1
                            outs[w].write(js)
            for w in caps:
                if caps[w]:
                    outs[w].writelines(keep[w].sample())
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return {"plays": plays, "long": long, "skip": skips, "sessions": n_sessions, "unknown_duration": unknown_duration,
            "seen": {w: keep[w].seen for w in caps}, "mined": mined}


def build_prefs(args):
    """`data.py prefs`: (instruction, chosen ID, rejected ID) pairs from the logs, split by time (_prefs_loop or
    fastlog.mine_prefs mine them), the per-track labels and the report."""
    check_label_options(args)
    meta = read_json(os.path.join(args.sft_data, "meta.json"), "SFT data meta.json")
    catalog, _ = load_catalog(meta["catalog"])
    track_ids, codes = load_semantic_ids(meta["semantic_ids"])
    index = catalog.index()
    row_codes = {index[t]: tuple(int(c) for c in cs) for t, cs in zip(track_ids, codes)}
    log = args.logs or meta["logs"]
    t_val, t_test = meta["t_val"], meta["t_test"]
    n_hist = meta.get("prompt_history", 1)   # the prompts show what the SFT prompts show
    context_text = meta.get("context_text", "name")   # SFT data written before the option named the context
    stats, counts = {}, {}
    rule = DwellRule(args.long_listen, args.skip, args.long_fraction, args.skip_fraction)
    engine = log_engine(args.engine, log)   # fastlog: the same work on numpy arrays, the same files
    t0 = time.time()
    mine = _prefs_loop
    if engine == "numpy":
        import fastlog
        mine = fastlog.mine_prefs
    got = mine(log, catalog, row_codes, rule, args, t_val, t_test, n_hist, context_text,
               args.id_information or meta["id_information"], args.id_metadata or meta["id_metadata"], stats, counts)
    plays, long, skips, n_sessions, unknown_duration = (got[k] for k in ("plays", "long", "skip", "sessions",
                                                                          "unknown_duration"))
    seconds = time.time() - t0
    caps = {"train": args.max_train, "val": args.max_val, "test": args.max_test}
    n_pairs = {w: min(got["seen"][w], caps[w]) if caps[w] else got["seen"][w] for w in caps}
    report = {"events_read": stats.get("events_read", 0), "matched": stats.get("matched", 0),
              "match_rate": stats.get("match_rate", 0.0), "users": stats.get("users", 0), "sessions": n_sessions,
              "labelled": {k: counts.get(k, 0) for k in LABELS},
              "timestamp_resolution_s": stats.get("resolution_s"),
              "timestamp_resolution": stats.get("resolution_source"),
              "labelled_by_rule": {rule.explain(k, stats.get("resolution_s", 1)): counts.get("reason: " + k, 0)
                                   for k in rule.reasons()},
              "plays_of_tracks_without_duration": unknown_duration,
              "pairs": n_pairs, "pairs_before_caps": got["seen"],
              "dropped": {k[len("dropped: "):]: v for k, v in counts.items() if k.startswith("dropped")},
              "contexts_with_candidates_cut_at_a_window_boundary": counts.get("candidates cut at a window boundary",
                                                                              0),
              "bad_rows": stats.get("bad_rows", 0), "seconds": seconds,
              "events_per_second": stats.get("events_read", 0) / max(got["mined"], 1e-9)}
    with atomic_path(os.path.join(args.out, "track_labels.npz")) as tmp:
        with open(tmp, "wb") as f:   # plays with a known dwell, long listens, skips: training window only
            np.savez(f, plays=plays, long=long, skip=skips)
    write_json(os.path.join(args.out, "report.json"), report)
    write_json(os.path.join(args.out, "meta.json"), {k: meta[k] for k in ("levels", "codebook_size",
                                                                         "id_table_sha256", "semantic_ids")})
    save_config(args.out, args, name="config.json")
    print(f"preference pairs: train {n_pairs['train']}, val {n_pairs['val']}, test {n_pairs['test']} "
          f"from {report['events_read']:,} events ({report['match_rate']:.1%} matched), {n_sessions:,} sessions; "
          f"labelled {report['labelled']}; {report['events_per_second']:,.0f} events/s")
    return report


# ============================================================================================== CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Build the SFT examples and the preference pairs from real-format data.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sft", help="SFT examples (3 task families) + test sets + listening statistics")
    s.add_argument("--catalog", required=True, help="Spotify Tracks dataset.csv layout")
    s.add_argument("--rvq", required=True, help="rvq.py output folder (semantic_ids.tsv, rvq.safetensors)")
    s.add_argument("--logs", required=True, help="listening log (Onion, Music4All, Last.fm-1K; .bz2 too)")
    s.add_argument("--id-information", default=None, help="Music4All id_information (for Music4All ids)")
    s.add_argument("--id-metadata", default=None, help="Music4All id_metadata (join by spotify_id)")
    s.add_argument("--out", required=True,
                   help="output folder (train.jsonl, val.jsonl, test sets, listening statistics, meta.json)")
    s.add_argument("--attribute-examples", type=int, default=2000, help="attribute requests for training")
    s.add_argument("--grounding-examples", type=int, default=1000, help="name -> ID examples (tracks sampled)")
    s.add_argument("--next-examples", type=int, default=200_000,
                   help="next-track training examples, sampled uniformly (0: all, memory grows with the log)")
    s.add_argument("--test-next", type=int, default=1000, help="next-track test queries (sampled)")
    s.add_argument("--test-attributes", type=int, default=200, help="attribute test queries")
    s.add_argument("--prompt-history", type=int, default=PROMPT_HISTORY,
                   help="plays a next-track prompt shows: the context track and up to N - 1 plays before it (as IDs)")
    s.add_argument("--context-text", choices=CONTEXT_TEXTS, default=CONTEXT_TEXT,
                   help="what a next-track prompt shows of its context track: 'genre' its genre and Semantic ID "
                        "(the default: SFT steps ~10%% cheaper than with names), "
                        "'id' the ID alone (cheaper still; then no prompt puts a genre word beside an ID, and "
                        "attribute requests suffer), 'name' also its artist and title (the format before "
                        "2026-12-01). The pairs of `data.py prefs` and ask.py follow it")
    s.add_argument("--max-sessions", type=int, default=MAX_SESSIONS,
                   help="training / validation sessions kept for the SASRec baseline (uniform sample; 0: all)")
    s.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                   help="share of matched events in the validation window, just before the test window (the log "
                        "is split by time); use rvq.py train's value (default %(default)s)")
    s.add_argument("--test-fraction", type=float, default=TEST_FRACTION,
                   help="share of matched events in the final, held-out test window; use rvq.py train's value "
                        "(default %(default)s)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the sampled examples, test queries and sessions, the prompt phrasings and the "
                        "shuffle (default %(default)s)")
    s.add_argument("--engine", choices=ENGINES, default="auto", help=ENGINE_HELP)
    q = sub.add_parser("prefs", help="preference pairs from dwell times")
    q.add_argument("--sft-data", required=True, help="the `data.py sft` folder (catalogue, IDs, logs, split)")
    q.add_argument("--out", required=True,
                   help="output folder (train/val/test.jsonl, track_labels.npz, report.json, meta.json)")
    q.add_argument("--logs", default=None, help="listening log (default: the one the SFT data used)")
    q.add_argument("--id-information", default=None,
                   help="Music4All id_information (default: the one the SFT data used)")
    q.add_argument("--id-metadata", default=None, help="Music4All id_metadata (default: the one the SFT data used)")
    q.add_argument("--session-gap", type=int, default=SESSION_GAP, help="seconds")
    q.add_argument("--long-listen", type=float, default=LONG_LISTEN, help="chosen: dwell above this (s)")
    q.add_argument("--skip", type=float, default=SKIP, help="rejected: dwell below this (s)")
    q.add_argument("--long-fraction", type=float, default=None,
                   help="also chosen: more than this share of the track heard (e.g. 0.8), so tracks shorter than "
                        "--long-listen can be chosen; default off (the seed's absolute rule)")
    q.add_argument("--skip-fraction", type=float, default=None,
                   help="rejected only if also less than this share of the track was heard (e.g. 0.5), so a full "
                        "play of a track shorter than --skip is no skip; default off (the seed's absolute rule)")
    q.add_argument("--resolution", type=int, default=0,
                   help="seconds between the log's clock ticks (60 for minute timestamps): a dwell is labelled "
                        "only where this uncertainty cannot move it across a threshold; 0 detects it from the file")
    q.add_argument("--window-plays", type=int, default=0, help="candidates after the context (0: the session)")
    q.add_argument("--rejected-per-context", type=int, default=1,
                   help="skips kept per context: above 1, each pair also lists up to this many - 1 further skipped "
                        "tracks as more_rejected, which dpo.py --loss-type sdpo trains on (S-DPO); 1: plain pairs")
    q.add_argument("--max-train", type=int, default=0, help="cap on training pairs (0: all)")
    q.add_argument("--max-val", type=int, default=0, help="cap on validation pairs (0: all)")
    q.add_argument("--max-test", type=int, default=0, help="cap on test pairs (0: all)")
    q.add_argument("--seed", type=int, default=0,
                   help="seed of the uniform samples the --max-* caps keep (default %(default)s)")
    q.add_argument("--engine", choices=ENGINES, default="auto", help=ENGINE_HELP)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.cmd == "sft":
        build_sft(args)
    else:
        build_prefs(args)


if __name__ == "__main__":
    run_main(main)
