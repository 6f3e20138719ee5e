"""The quantiser's files, read without torch: the Semantic-ID table and rvq.safetensors' metadata.

rvq.py (which needs torch to train) writes them; data.py, which only reads them, imports this module instead of
rvq.py, so the data stage does not pay torch's 2.5 s import. Imports numpy and common only.
"""
import json
import os

import numpy as np

from common import atomic_open, fail, need_file

MODEL_FILE = "rvq.safetensors"
IDS_FILE = "semantic_ids.tsv"


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
        for j, field in enumerate(fields[1:]):
            if not field.isdigit():
                fail(path, f"expected a non-negative integer code, got {field!r}", line=lineno, column=f"code_{j}")
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
