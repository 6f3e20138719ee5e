"""Real data formats: the Spotify Tracks catalogue, the Music4All id tables and the quantiser's files.

Readers turn the public files into a Catalog (one row per unique track); writers produce the exact same layouts, so
that world.py's synthetic default world and the real data go through one code path. The listening logs that join
to the catalogue are logfiles.py's. Imports numpy and common only: no torch in the data stage.

Formats (see ../shared/data/SOURCES.md):
  Spotify Tracks `dataset.csv`     comma-separated, optional leading unnamed index column, columns selected by name
  Music4All id_information / id_metadata   tab-separated with header, joined on the 16-character `id`
  semantic_ids.tsv                 rvq.py's ID table: track_id<TAB>code_0<TAB>code_1..., catalogue order
  rvq.safetensors                  rvq.py's model; read_rvq_meta reads its header without torch
  a Semantic ID in text            `<a_12><b_200><c_7>`: one token per level, letters a, b, c... (id_text)
"""
import bz2
import csv
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from common import atomic_open, fail, need_file

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
MAX_EXAMPLES: int = 5  # bad-row examples kept in a report
SEP_NAMES = {",": "comma", "\t": "tab", ";": "semicolon"}


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

def open_binary(path):
    return bz2.open(path, "rb") if str(path).endswith(".bz2") else open(path, "rb")


def decoded_lines(path, f, strict):
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


class BadRows:
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


def read_header(path, lines, sep, required, what):
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
        for other in SEP_NAMES:
            if other != sep and all(c in text.split(other) for c in required[:2]):
                fail(path, f"looks {SEP_NAMES[other]}-separated; a {what} is {SEP_NAMES[sep]}-separated",
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
    bad, rows_read, merged = BadRows(), 0, 0
    ids, names, artists, albums, genres, feats, pops, durs, expl, modes = ([] for _ in range(10))
    row_of = {}
    with open_binary(path) as f:
        lines = decoded_lines(path, f, strict=True)
        cols, width, header_line = read_header(path, lines, ",", REQUIRED_COLUMNS, "Spotify Tracks CSV")
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


def catalog_note(report):
    """One line on what load_catalog kept: tracks, rows read, rows skipped by reason and the first one, merges.

    Example (tests/test_rvq.py): "cat.csv: 5 tracks from 7 rows; 1 row skipped (non-numeric energy: 1), first line
    7, column 'energy': non-numeric energy ('high'); 1 more row of a track_id already read merged (their genres
    added)". A skipped row is a track the IDs, the prompts and the metrics never see, so the stages that read a
    catalogue first say so instead of dropping it quietly.
    """
    note = f"{report['path']}: {report['kept']:,} tracks from {report['rows_read']:,} rows"
    if report["dropped"]:
        by = sorted(report["dropped_by_reason"].items(), key=lambda kv: -kv[1])
        note += (f"; {report['dropped']:,} row{'s' if report['dropped'] > 1 else ''} skipped "
                 f"({', '.join(f'{k}: {v:,}' for k, v in by)}), first {report['dropped_examples'][0]}")
    if report["duplicate_rows_merged"]:
        m = report["duplicate_rows_merged"]
        note += f"; {m:,} more row{'s' if m > 1 else ''} of a track_id already read merged (their genres added)"
    return note


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
    with open_binary(path) as f:
        lines = decoded_lines(path, f, strict=True)
        cols, width, _ = read_header(path, lines, "\t", required, what)
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


# ---------------------------------------------------------------------------------------------- Semantic IDs

MODEL_FILE = "rvq.safetensors"
IDS_FILE = "semantic_ids.tsv"
ATTRIBUTE_ANSWERS = "attribute_answers.jsonl"   # data.py sft: every track (as its ID) answering each request
ID_TOKEN_RE = re.compile(r"<([a-z])_(\d+)>")   # one Semantic-ID token in text: level letter, code


def id_token(level, code):
    """`<c_7>` for level 2, code 7: the one spelling of a Semantic-ID token (levels a, b, c, ...)."""
    return f"<{chr(97 + level)}_{int(code)}>"


def id_text(codes):
    """`<a_12><b_200><c_7>` for codes (12, 200, 7)."""
    return "".join(id_token(level, c) for level, c in enumerate(codes))


def row_codes_of(catalog, track_ids, codes):
    """{catalogue row: codes tuple} for the tracks of an ID table (load_semantic_ids' track_ids (N,), codes (N, L))."""
    index = catalog.index()
    return {index[t]: tuple(int(c) for c in cs) for t, cs in zip(track_ids, codes)}


def write_semantic_ids(path, track_ids, codes):
    """semantic_ids.tsv: header track_id<TAB>code_0...code_{L-1}, one line per track in catalogue order."""
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(["track_id"] + [f"code_{j}" for j in range(codes.shape[1])]) + "\n")
        for tid, row in zip(track_ids, codes.tolist()):
            f.write("\t".join([tid] + [str(c) for c in row]) + "\n")


def load_semantic_ids(path):
    """Read semantic_ids.tsv -> (track_ids list (N,), codes np.int64 (N,L)); one-line errors on bad input."""
    need_file(path, "Semantic-ID table")
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    header = lines[0].rstrip("\r").split("\t") if lines else []
    n_levels = len(header) - 1
    if n_levels < 1 or header != ["track_id"] + [f"code_{j}" for j in range(n_levels)]:
        fail(path, "expected the header 'track_id<TAB>code_0<TAB>code_1...'", line=1)
    track_ids, codes, seen_track, seen_id = [], [], set(), {}
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != n_levels + 1:
            fail(path, f"expected {n_levels + 1} tab-separated fields, got {len(fields)}", line=lineno)
        tid = fields[0]
        if not tid:
            fail(path, "empty track_id", line=lineno, column="track_id")
        if tid in seen_track:
            fail(path, f"track_id {tid} appears twice", line=lineno, column="track_id")
        for j, value in enumerate(fields[1:]):
            if not value.isdigit():
                fail(path, f"expected a non-negative integer code, got {value!r}", line=lineno, column=f"code_{j}")
        row = tuple(int(v) for v in fields[1:])
        if row in seen_id:
            fail(path, f"Semantic ID {row} already used by {seen_id[row]} (IDs must be unique)", line=lineno)
        seen_track.add(tid)
        seen_id[row] = tid
        track_ids.append(tid)
        codes.append(row)
    if not track_ids:
        fail(path, "no tracks below the header", line=1)
    return track_ids, np.array(codes, dtype=np.int64).reshape(-1, n_levels)


def read_rvq_meta(folder):
    """What the data stage needs of folder/rvq.safetensors: {"levels", "codebook_size", "signals", "t_val"}.

    Read from the file's header through safetensors' numpy front end: no tensor is loaded and torch is not
    imported (rvq.load_rvq loads and checks the whole model).
    """
    from safetensors import safe_open
    path = os.path.join(folder, MODEL_FILE)
    need_file(path, "RVQ model")
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            shape = f.get_slice("codebooks").get_shape() if "codebooks" in f.keys() else []
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        fail(path, f"not a readable safetensors file ({e})")
    try:
        info = json.loads(meta.get("rvq", "{}"))
    except json.JSONDecodeError:
        info = {}
    if len(shape) != 3 or info.get("format") != "rvq-1":
        fail(path, "not an rvq.py model (expected (levels, codebook size, dims) codebooks and rvq metadata)")
    return {"levels": int(shape[0]), "codebook_size": int(shape[1]), "signals": info.get("signals", ["audio"]),
            "t_val": info.get("t_val")}
