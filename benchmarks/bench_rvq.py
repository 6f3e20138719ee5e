"""rvq.py against the seed's quantiser, vector-quantize-pytorch's ResidualVQ, on the same input matrix.

The seed called `ResidualVQ(dim=10, codebook_size=256, num_quantizers=3, kmeans_init=True, kmeans_iters=10)`
once over its min-max scaled catalogue. Here both quantisers get the SAME matrix (signals.preprocess, D = 11),
in one process; the seed's own way (min-max scaled 10 raw features) is a context row whose MSE lives in
another space (compare its "unexplained" share: MSE / mean per-dim variance of its own input).
Catalogues: the real union_8325.csv and a synthetic world.py catalogue of 90,000 tracks (generated once into
runs/bench/world90k; delete that folder to regenerate). MSE: per element, of the IDs as issued (ours after
collision resolution, which moves tracks off shared IDs; the peer leaves collisions); "MSE greedy": ours before it.

    pip install --no-deps -r requirements-bench-nodeps.txt
    python benchmarks/bench_rvq.py
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import formats  # noqa: E402
import rvq  # noqa: E402
import signals  # noqa: E402
from common import UserError, run_main  # noqa: E402

REAL: str = os.path.join(ROOT, "..", "shared", "data", "spotify_tracks", "union_8325.csv")
WORLD_DIR: str = os.path.join(ROOT, "runs", "bench", "world90k")  # generated once, then reused
SYNTHETIC_TRACKS: int = 90000   # about the real Spotify Tracks catalogue (89,740 unique tracks)
LEVELS: int = 3
CODEBOOK_SIZE: int = 256
KMEANS_ITERS: int = 10          # the seed's setting for the peer
SEED: int = 0
REPEATS: int = 3                # runs per method, interleaved; the fastest counts (the machine is shared)


def unexplained(x, recon):
    """MSE / mean per-dim variance: the share of the input's variance the IDs do not reproduce."""
    return float((x - recon).pow(2).mean() / x.var(dim=0, unbiased=False).mean())


def run_ours(x, levels, k, seed):
    """rvq.py as `rvq.py train` runs it: fit (float32), encode (float64), resolve collisions."""
    t = time.perf_counter()
    books = rvq.fit_rvq(x.float(), levels, k, seed).double()
    codes = rvq.encode(x, books)
    unique, _ = rvq.resolve_collisions(x, codes, books)
    wall = time.perf_counter() - t
    recon, greedy = rvq.decode(unique, books), rvq.decode(codes, books)
    return {"mse": float((x - recon).pow(2).mean()), "mse_greedy": float((x - greedy).pow(2).mean()),
            "unexplained": unexplained(x, recon), "unique": len(torch.unique(unique, dim=0)) / len(x), "time": wall}


def run_peer(x, levels, k, seed, resolve=False):
    """ResidualVQ called once over the catalogue, as the seed did (k-means init of each level, train mode).

    resolve: then give its IDs the same collision resolution as ours, so both issue 100% unique IDs and their
    MSE compares like for like.
    """
    from vector_quantize_pytorch import ResidualVQ
    torch.manual_seed(seed)
    t = time.perf_counter()
    model = ResidualVQ(dim=x.shape[1], codebook_size=k, num_quantizers=levels, kmeans_init=True,
                       kmeans_iters=KMEANS_ITERS)
    with torch.no_grad():  # the seed ignored gradients; no_grad only saves the peer time
        quantized, indices, _ = model(x.float()[None])  # (1,N,D), (1,N,L)
    codes = indices[0].long()
    if resolve:
        books = model.codebooks.detach().double().reshape(levels, k, -1)        # (L, K, D)
        greedy = float((x - rvq.decode(codes, books)).pow(2).mean())
        codes, _ = rvq.resolve_collisions(x, codes, books)
        wall = time.perf_counter() - t
        recon = rvq.decode(codes, books)
        return {"mse": float((x - recon).pow(2).mean()), "mse_greedy": greedy, "unexplained": unexplained(x, recon),
                "unique": len(torch.unique(codes, dim=0)) / len(x), "time": wall}
    wall = time.perf_counter() - t
    recon = quantized[0].double()
    mse = float((x - recon).pow(2).mean())  # the peer issues its greedy codes as they are
    return {"mse": mse, "mse_greedy": mse, "unexplained": unexplained(x, recon),
            "unique": len(torch.unique(codes, dim=0)) / len(x), "time": wall}


def synthetic_catalog(tracks, seed):
    """(features (N,10), description): a world.py catalogue, else a stand-in Gaussian mixture in raw units."""
    path = os.path.join(WORLD_DIR, "catalog.csv")
    if not os.path.exists(path) and os.path.exists(os.path.join(ROOT, "world.py")):
        subprocess.run([sys.executable, os.path.join(ROOT, "world.py"), "generate", "--out", WORLD_DIR,
                        "--tracks", str(tracks), "--users", "20", "--seed", str(seed)], check=True)
    if os.path.exists(path):
        cat, _ = formats.load_catalog(path)
        return cat.features, f"world.py generate --tracks {tracks} --users 20 --seed {seed}"
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.05, 0.95, (100, 10))
    x = np.clip(centres[rng.integers(100, size=tracks)] + rng.normal(0, 0.08, (tracks, 10)), 0, 1)
    x[:, 2] = rng.integers(-1, 12, tracks)              # key
    x[:, 3] = -60 + 60 * x[:, 3]                        # loudness, dB
    x[:, 9] = 60 + 150 * x[:, 9]                        # tempo, BPM
    return x, "stand-in Gaussian mixture (world.py absent)"


def bench(name, features, levels, k, seed, repeats):
    x = torch.from_numpy(signals.preprocess(features, signals.fit_preprocess(features)))  # (N,11) float64
    lo, hi = features.min(axis=0), features.max(axis=0)
    minmax = torch.from_numpy((features - lo) / np.where(hi > lo, hi - lo, 1.0))  # the seed's input, (N,10)
    methods = [("ours: rvq.py", lambda: run_ours(x, levels, k, seed)),
               ("peer: ResidualVQ", lambda: run_peer(x, levels, k, seed)),
               ("peer + our collision resolution", lambda: run_peer(x, levels, k, seed, resolve=True)),
               ("peer, seed's way (min-max, D=10)", lambda: run_peer(minmax, levels, k, seed))]
    runs = {label: [] for label, _ in methods}
    for _ in range(repeats):  # interleaved, so a busy spell on the machine hits every method
        for label, fn in methods:
            runs[label].append(fn())
    rows = []
    for label, results in runs.items():
        same = all({**r, "time": 0} == {**results[0], "time": 0} for r in results)
        rows.append((label, {**results[0], "time": min(r["time"] for r in results), "repeatable": same}))
    print(f"\n{name}: {len(x):,} tracks, {levels} x {k} codes, input signals.preprocess (D={x.shape[1]})")
    print(f"{'method':<34} {'MSE':>8} {'MSE greedy':>10} {'unexplained':>11} {'unique IDs':>10} {'time s':>7} "
          f"{'repeatable':>10}")
    for label, r in rows:
        print(f"{label:<34} {r['mse']:>8.4f} {r['mse_greedy']:>10.4f} {100 * r['unexplained']:>10.2f}% "
              f"{100 * r['unique']:>9.2f}% {r['time']:>7.2f} {'yes' if r['repeatable'] else 'NO':>10}")
    ours, peer, peer_unique = rows[0][1], rows[1][1], rows[2][1]
    print(f"ours / peer: MSE x{ours['mse'] / peer['mse']:.3f} (greedy codes x{ours['mse_greedy'] / peer['mse']:.3f}), "
          f"time x{ours['time'] / peer['time']:.2f}; both with unique IDs: MSE x{ours['mse'] / peer_unique['mse']:.3f}, "
          f"time x{ours['time'] / peer_unique['time']:.2f}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description="rvq.py vs vector-quantize-pytorch ResidualVQ")
    p.add_argument("--real", default=REAL, help="real Spotify Tracks CSV")
    p.add_argument("--tracks", type=int, default=SYNTHETIC_TRACKS, help="synthetic catalogue size (0: skip)")
    p.add_argument("--levels", type=int, default=LEVELS,
                   help="codes per track, for both quantisers (default %(default)s, the seed's num_quantizers)")
    p.add_argument("--codebook-size", type=int, default=CODEBOOK_SIZE,
                   help="codes per level, for both quantisers (default %(default)s, the seed's codebook_size)")
    p.add_argument("--seed", type=int, default=SEED,
                   help="seed of both quantisers and of the synthetic catalogue when it is generated "
                        "(default %(default)s)")
    p.add_argument("--repeats", type=int, default=REPEATS, help="runs per method; the fastest counts")
    args = p.parse_args(argv)
    try:
        import vector_quantize_pytorch  # noqa: F401
    except ImportError:
        raise UserError("vector-quantize-pytorch is not installed: "
                        "pip install --no-deps -r requirements-bench-nodeps.txt")
    from importlib.metadata import version
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"vector-quantize-pytorch {version('vector-quantize-pytorch')}")
    if os.path.exists(args.real):
        cat, _ = formats.load_catalog(args.real)
        bench(f"real {os.path.basename(args.real)}", cat.features, args.levels, args.codebook_size, args.seed,
              args.repeats)
    else:
        print(f"{args.real} absent: real catalogue skipped")
    if args.tracks:
        features, how = synthetic_catalog(args.tracks, args.seed)
        bench(f"synthetic ({how})", features, args.levels, args.codebook_size, args.seed, args.repeats)


if __name__ == "__main__":
    run_main(main)
