"""evaluate.py's learned baseline, neighbour ranks x co-listening, at catalogue sizes: the dense form (N, N tables)
against the sparse form (each track's nearest neighbours, CSR co-listening) that evaluate.py uses above
--ranker-dense-max-items, in the same run.

    python benchmarks/bench_ranker.py                    # the dense and the sparse form at 5,000 tracks, then the
                                                         # sparse one at 90,000 (the real Spotify catalogue's size)

A synthetic catalogue per size (seeded): D = 11 standardised features, 114 genres (the Spotify Tracks dataset's),
one primary genre a track and a tenth of the tracks in a second one, 20 random co-listens a track, PLAYS training
next plays and VAL validation plays. Each form is built, then fitted one epoch by baselines.fit_neighbour_ranks (the
validation loss in chunks for the sparse form, as evaluate.py runs it); each in a subprocess of its own, so that its
peak memory is its own. Prints, per row: tracks, form, build seconds, seconds of the epoch (training steps and the
validation), peak RSS; and the sparse form's time and memory as ratios to the dense one at the same size.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import baselines as B  # noqa: E402
from common import run_main  # noqa: E402

# -----------------------------------------------------------------------------
DENSE_TRACKS: int = 5_000      # evaluate.py's RANKER_DENSE_MAX_ITEMS: the largest catalogue of the dense form
LARGE_TRACKS: int = 90_000     # about the real Spotify Tracks catalogue (89,740 unique tracks)
GENRES: int = 114              # the Spotify Tracks dataset's genres
PLAYS: int = 20_000            # training next plays (the demo's worlds have 15,758-16,745)
VAL: int = 3_000               # validation next plays (the demo's: 2,224-2,368)
SEED: int = 0
# -----------------------------------------------------------------------------


def catalogue(n, seed=SEED):
    """(x, popularity, members, primary, cooc) of a synthetic catalogue of n tracks."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 11))
    primary = rng.integers(0, GENRES, n)
    members = np.zeros((n, GENRES), bool)
    members[np.arange(n), primary] = True
    members[rng.choice(n, n // 10, replace=False), rng.integers(0, GENRES, n // 10)] = True
    cooc = {}
    for i, j in zip(rng.integers(0, n, 20 * n).tolist(), rng.integers(0, n, 20 * n).tolist()):
        if i != j:
            cooc.setdefault(i, {})[j] = cooc.get(i, {}).get(j, 0.0) + 1.0
    return x, rng.integers(0, 100, n).astype(float), members, primary, cooc


def one(n, form):
    """Build and fit one form at n tracks: {build_s, epoch_s, peak_gb}."""
    x, pop, members, primary, cooc = catalogue(n)
    rng = np.random.default_rng(SEED + 1)
    train = list(zip(rng.integers(0, n, PLAYS).tolist(), rng.integers(0, n, PLAYS).tolist()))
    val = list(zip(rng.integers(0, n, VAL).tolist(), rng.integers(0, n, VAL).tolist()))
    t = time.perf_counter()
    if form == "dense":
        in_genre = members[:, primary].T
        colisten = np.stack([B.colisten_counts(cooc, c, n) for c in range(n)])
        m = B.NeighbourRanks(x, pop, in_genre, colisten=colisten)
        del in_genre, colisten
    else:
        m = B.NeighbourRanksSparse(x, pop, members, primary, cooc=cooc)
    build = time.perf_counter() - t
    t = time.perf_counter()
    B.fit_neighbour_ranks(m, train, val, epochs=1, chunk=None if form == "dense" else B.RANKER_BATCH)
    return {"build_s": build, "epoch_s": time.perf_counter() - t,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dense-tracks", type=int, default=DENSE_TRACKS,
                   help="catalogue size of the dense-against-sparse comparison (default %(default)s: the largest "
                        "evaluate.py builds the dense form for)")
    p.add_argument("--large-tracks", type=int, default=LARGE_TRACKS,
                   help="catalogue size of the sparse form alone (default %(default)s: the real catalogue's)")
    p.add_argument("--one", nargs=2, metavar=("TRACKS", "FORM"), help=argparse.SUPPRESS)   # the subprocess's row
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1])))
        return
    rows = []
    for n, form in ((args.dense_tracks, "dense"), (args.dense_tracks, "sparse"), (args.large_tracks, "sparse")):
        out = subprocess.run([sys.executable, __file__, "--one", str(n), form], capture_output=True, text=True,
                             check=True).stdout
        rows.append((n, form, json.loads(out.strip().splitlines()[-1])))
        r = rows[-1][2]
        print(f"{n:>7,} tracks  {form:6s}  build {r['build_s']:6.1f} s  one epoch ({PLAYS:,} plays + {VAL:,} "
              f"validation) {r['epoch_s']:6.1f} s  peak RSS {r['peak_gb']:.2f} GB", flush=True)
    d, s = rows[0][2], rows[1][2]
    print(f"sparse / dense at {args.dense_tracks:,} tracks: epoch time {s['epoch_s'] / d['epoch_s']:.2f}x, "
          f"build {s['build_s'] / d['build_s']:.2f}x, peak RSS {s['peak_gb'] / d['peak_gb']:.2f}x")


if __name__ == "__main__":
    run_main(main)
