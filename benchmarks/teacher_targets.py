"""The bar's next-track distribution per context track, for SFT to learn from (sft.py --answer-targets teacher).

    python benchmarks/teacher_targets.py --run runs/demo --out runs/demo/sft_data/teacher.npz
    python sft.py --data runs/demo/sft_data --answer-targets teacher --teacher runs/demo/sft_data/teacher.npz ...

content x co-listening (baselines.content_colisten_scores) scores a candidate j after the context c as

    s_j = log(1 + plays_j) - ||x_j - x_c||^2 / tau + lam log(1 + n_cj)                                   (1)

the log of a popularity prior times a Gaussian kernel in feature space times the co-listening count to a power: an
unnormalised P(j | c). SFT learns P(j | c) from the context's next plays in the training window, about 1.3 a track
in the demo's 480 steps, and its gap to the bar lies on the contexts and answers played rarely (README, "What this
says"). Here (1), with tau and lam chosen on the validation window's next plays exactly as evaluate.py chooses them,
becomes a distribution over the context's genre (the prompt names it; 66% of next tracks share it), its K most
likely tracks renormalised:

    q(j | c) = exp(s_j) / sum_{k in top K} exp(s_k),   j in the top K of c's genre, j != c                 (2)

Every input is the training window's (plays, co-listening) or a track's own features: nothing of the validation or
test plays but the two numbers, as for the baseline. Writes an npz: rows (N, K) catalogue rows, probs (N, K), tau,
lam, the catalogue's row order (sft.teacher_answers reads it).
"""
import argparse
import os

import numpy as np

import harness  # first: it puts the repository root on sys.path for the imports below
import baselines as B
import evaluate as E
import formats
import rvq
import signals
from common import atomic_path, read_json, run_main, save_config

TOP_K: int = 50   # tracks a context's distribution keeps; (2) past the 50th of a genre's ~100 tracks is small


def teacher_distribution(x, popularity, colisten, in_genre, item, tau, lam, k=TOP_K):
    """(2) for one context: (rows (k,), probs (k,)), most likely first.

    x: (N, D) features, popularity: (N,) plays, colisten: (N,) the context's co-listening counts, in_genre: (N,)
    bool, the context's genre; the context itself is never a candidate. Example: x [[0], [1], [2]], plays [0, 9, 99],
    context 0, one genre, tau 4, lam 1, track 1 co-listened 9 times: s_1 = log 10 - 1/4 + log 10 = 4.35, s_2 = log 100
    - 1 = 3.61; k = 2 gives rows [1, 2], probs [0.679, 0.321] (e^0.75 : 1)."""
    # (1) as baselines.content_colisten_scores writes it, without its genre-first shift (the mask below does that)
    s = np.log1p(popularity) + B.content_knn_scores(x, item) / tau + lam * np.log1p(colisten)
    s = np.where(np.asarray(in_genre, bool), s, -np.inf)
    s[item] = -np.inf
    k = min(k, int(np.isfinite(s).sum()))
    top = np.argsort(-s, kind="stable")[:k]
    p = np.exp(s[top] - s[top].max())
    return top, p / p.sum()


def build(run, k=TOP_K):
    sft_data = os.path.join(run, "sft_data")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    catalog, _ = formats.load_catalog(meta["catalog"])
    track_ids, codes = formats.load_semantic_ids(meta["semantic_ids"])
    row_of_track = catalog.index()
    id_to_row = {tuple(int(c) for c in cs): row_of_track[t] for t, cs in zip(track_ids, codes)}
    n = len(catalog)
    popularity, cooc, _ = E.load_listening(sft_data, os.path.join(run, "prefs"), n)   # evaluate.py's very inputs
    x = signals.preprocess(catalog.features, rvq.load_rvq(meta["rvq"])["params"])
    genres = B.genre_masks(catalog.genres)
    genre_of = lambda c: genres[catalog.genres[c][0]]   # noqa: E731  the context's primary genre, as evaluate.py
    (tau, lam), _ = B.select_tau_lambda(x, popularity, cooc, E.baseline_choice_queries(sft_data, id_to_row),
                                        genre_of)
    rows, probs = np.full((n, k), -1, np.int64), np.zeros((n, k), np.float32)
    for c in range(n):
        top, p = teacher_distribution(x, popularity, B.colisten_counts(cooc, c, n), genre_of(c), c, tau, lam, k)
        rows[c, :len(top)], probs[c, :len(top)] = top, p
    return rows, probs, tau, lam


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a run folder with sft_data/ (data.py sft), prefs/ and rvq/")
    p.add_argument("--top-k", type=int, default=TOP_K, help="tracks kept per context (default %(default)s)")
    p.add_argument("--out", required=True, help="the npz to write (sft.py --teacher)")
    args = p.parse_args(argv)
    rows, probs, tau, lam = build(args.run, args.top_k)
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, rows=rows, probs=probs, tau=tau, lam=lam)
    save_config(os.path.dirname(os.path.abspath(args.out)), args, name="teacher_config.json", tau=tau, lam=lam)
    print(f"{args.out}: the top {args.top_k} of content x co-listening (tau {tau:g}, lam {lam:g}) for "
          f"{len(rows):,} context tracks")


if __name__ == "__main__":
    run_main(main)
