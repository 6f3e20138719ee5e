"""Semantic IDs: a residual vector quantiser trained on the catalogue's audio features.

Each track becomes L codes (c_1, ..., c_L), one per level, chosen greedily: level 1 quantises the
track's feature vector, level l quantises what levels 1..l-1 left over (residual quantisation, as
in TIGER: Rajput et al. 2023, "Recommender Systems with Generative Retrieval", Sec. 3.1, which
uses an RQ-VAE; here the encoder is the identity on engineered features, so RQ is residual k-means).
Every level is trained for real (k-means++ init on the whole catalogue, Lloyd to convergence,
dead-code reset), deterministic, and every catalogue track gets a unique ID (collisions resolved
explicitly; TIGER appends a 4th token instead).

    python rvq.py train --catalog runs/demo/world/catalog.csv --out runs/demo/rvq
    python rvq.py encode --rvq runs/demo/rvq --catalog new.csv

Outputs in --out: rvq.safetensors (codebooks + preprocessing), semantic_ids.tsv, rvq_report.json,
rvq_config.json; with --logs also split.json, the log's time split and the files it came from, which
`data.py sft` reuses instead of reading the whole log once more for it.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

import fastlog
import formats
import logfiles
import sessions
from common import UserError, atomic_path, fail, need_file, run_main, save_config, write_json
from formats import IDS_FILE, MODEL_FILE, write_semantic_ids
from signals import (COLLAB_DIM, COLLAB_RIDGE, COLLAB_WINDOW, COLUMNS, FEATURES, block_scale, co_listening,
                     fit_cold_map, fit_preprocess, genre_onehot, listen_labels, ppmi_svd, preprocess, rate_logit,
                     signal_blocks, signal_dims, signal_matrix, with_signal_defaults)
from tasks import attribute_flags

# -----------------------------------------------------------------------------
LEVELS: int = 3             # codes per track (TIGER and the seed: 3)
CODEBOOK_SIZE: int = 256    # codes per level (K); K**LEVELS IDs in all
SEED: int = 0               # level l uses SEED + l
MAX_ITER: int = 100         # Lloyd iterations per level at most
TOL: float = 1e-4           # stop a level when the k-means objective drops by less than this fraction
CHUNK: int = 4096           # rows per distance block: CHUNK x K floats stay in cache (1.5x faster than 16k)
PURITY_PERMUTATIONS: int = 20  # random code assignments averaged for the genre-purity baseline
SIGNALS: str = "audio"      # blocks the quantiser reads, comma-separated: audio (the seed's), genre, collab, ...
WEIGHTS: str = ""           # total variance of each block, comma-separated in SIGNALS order (empty: BLOCK_WEIGHTS)
# a block's total variance when --weights is empty. quality is one column, and at the weight of the others it
# would split genres (first-code genre purity 0.95 at 0.5): at 0.25 the first code still holds one genre (0.99-1.00
# on the validation windows of seeds 0 and 1), and a logistic regression on the codes alone, fitted to the 640 DPO
# training pairs, ranks validation pairs at 0.73-0.74 instead of 0.64, at 0.01-0.02 less next-track HR@10 of the ID
# prefixes (benchmarks/quality_ids.py; EXPERIMENTS.md, "Listening quality in the IDs")
# attrs (13 columns) at 1.0 splits genres too (first-code genre purity 0.90 on seed 0's world): at 0.5 the first
# code holds one genre at 0.98 and the first two codes agree with their tracks' attribute phrases at 0.94 instead of
# 0.90 without the block (the quality sheet's attribute_purity_per_level)
BLOCK_WEIGHTS = {"audio": 1.0, "genre": 1.0, "collab": 1.0, "quality": 0.25, "attrs": 0.5}
# blocks only the last level quantises (fit_rvq's last_only); "": every level reads all. "quality" ranked attribute
# requests +0.02 to +0.05 better on three worlds, DPO's preferences as before, next tracks 0.000-0.055 HR@10 worse on
# the test windows (EXPERIMENTS.md, "The long-listen rate in the last code alone"): the demo's since 2026-12-06 (the
# Makefile's LAST_LEVEL_SIGNALS); "" here, as SIGNALS is the seed's audio alone
LAST_LEVEL_SIGNALS: str = ""
KNN_NEIGHBOURS: int = 10    # co-listening neighbours per track in the quality sheet's prefix-sharing share

# danceability, energy, loudness, valence, tempo are standardised; these heavy-tailed ones are logged first
REPORT_FILE = "rvq_report.json"
CONFIG_FILE = "rvq_config.json"
VECTORS_FILE = "track_vectors.safetensors"   # each track's quantiser input x, the rows of semantic_ids.tsv
# -----------------------------------------------------------------------------


# ----------------------------------------------------------------------------- k-means

def nearest(x, centroids, chunk=CHUNK):
    """Nearest centroid of each row: x (N,D), centroids (K,D) -> (assign (N,) int64, err (N,) float).

    argmin over ||c||^2 - 2 x.c (||x||^2 is the same for every c), in blocks of `chunk` rows;
    err is the exact squared distance ||x - c_assign||^2, not the cancellation-prone expansion.
    Ties go to the lowest code index.
    """
    c2 = (centroids * centroids).sum(dim=1)  # (K,)
    assign = torch.empty(x.shape[0], dtype=torch.int64)
    for s in range(0, x.shape[0], chunk):
        xb = x[s:s + chunk]  # (B,D)
        assign[s:s + chunk] = torch.addmm(c2, xb, centroids.T, alpha=-2.0).argmin(dim=1)
    err = (x - centroids[assign]).pow(2).sum(dim=1)
    return assign, err


def kmeans_pp_init(x, k, generator):
    """k-means++ seeding (Arthur & Vassilvitskii 2007): x (N,D) -> (K,D) centroids, rows of x.

    First centre uniform, then each next one drawn with probability proportional to the squared
    distance to the nearest centre so far; an already picked point has weight 0, so the K picks are
    distinct rows. If fewer than K distinct points exist, the rest are drawn uniformly from unpicked rows.
    """
    n = x.shape[0]
    if k > n:
        raise ValueError(f"cannot pick {k} centres from {n} points")
    picked = torch.zeros(n, dtype=torch.bool)
    idx = torch.empty(k, dtype=torch.int64)
    idx[0] = torch.randint(n, (1,), generator=generator)
    d2 = (x - x[idx[0]]).pow(2).sum(dim=1)  # (N,) squared distance to the nearest centre
    picked[idx[0]] = True
    for j in range(1, k):
        cum = torch.cumsum(d2, dim=0)
        u = torch.rand(1, generator=generator, dtype=x.dtype)
        if cum[-1] > 0:
            i = int(torch.searchsorted(cum, u * cum[-1], right=True).clamp_(max=n - 1))
        else:  # every point coincides with a centre: fill up with unpicked duplicates
            free = torch.nonzero(~picked).squeeze(1)
            i = int(free[int(u * len(free)) % len(free)])
        idx[j] = i
        picked[i] = True
        d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(dim=1))
    return x[idx].clone()


def lloyd_update(x, assign, err, centroids):
    """One Lloyd update with dead-code reset: x (N,D), assign (N,), err (N,) squared distance of
    each row to its centroid, centroids (K,D) -> new centroids (K,D), each the mean of its rows.

    A code that lost all its points is re-seeded at the point with the largest current error
    (several dead codes: the next largest errors, distinct points); codes keep their place when no
    point has positive error (fewer distinct points than codes).
    """
    k, d = centroids.shape
    counts = torch.bincount(assign, minlength=k)  # (K,)
    sums = torch.zeros(k, d, dtype=x.dtype).index_add_(0, assign, x)  # (K,D)
    new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
    dead = torch.nonzero(counts == 0).squeeze(1)
    if len(dead):
        order = torch.sort(err, descending=True, stable=True).indices[:len(dead)]
        order = order[err[order] > 0]
        new[dead[:len(order)]] = x[order]
    return new


def kmeans(x, k, seed=SEED, max_iter=MAX_ITER, tol=TOL):
    """Lloyd's k-means with k-means++ init and dead-code reset.

    x: (N,D) float tensor (float32 for speed or float64). Iterates until no assignment changes,
    the objective sum ||x - c||^2 drops by less than tol of itself, or max_iter updates.
    Returns (centroids (K,D), assign (N,) int64), where assign is the nearest centroid of each row.
    Deterministic for a given seed (same input -> bit-identical centroids on the same machine).
    """
    x = torch.as_tensor(x)
    generator = torch.Generator().manual_seed(seed)
    centroids = kmeans_pp_init(x, k, generator)
    assign, err = nearest(x, centroids)
    inertia = float(err.sum())
    for _ in range(max_iter):
        centroids = lloyd_update(x, assign, err, centroids)
        new_assign, err = nearest(x, centroids)
        new_inertia = float(err.sum())
        changed = bool((new_assign != assign).any())
        assign = new_assign
        if not changed or inertia - new_inertia <= tol * inertia:
            break
        inertia = new_inertia
    return centroids, assign


# ----------------------------------------------------------------------------- residual quantisation

def fit_rvq(x, levels=LEVELS, k=CODEBOOK_SIZE, seed=SEED, max_iter=MAX_ITER, tol=TOL, last_only=None):
    """Residual quantiser (TIGER, Rajput et al. 2023, Sec. 3.1: r_0 = x, c_l = argmin_k ||r_l - e^l_k||,
    r_{l+1} = r_l - e^l_{c_l}), each level's codebook fitted by k-means on the whole catalogue's residuals.

    x: (N,D) float. last_only: (D,) bool, the columns that only the last level reads, or None (every level reads all).
    Returns codebooks (L,K,D) of x's dtype.

    A column in last_only is zeroed in the residual every level but the last fits, so those levels' centroids
    are 0 there: it adds the same ||r_d||^2 to a row's distance to every code of such a level, which leaves
    encode's argmin, and so the codes, to the other columns, and it reaches the last level whole. Why: a
    signal that should not split the prefixes (the long-listen rate, whose one column would otherwise take part
    of the second code from the audio that attribute requests name) can still be held by the last code.
    Example: x = [[0, 5], [0, -5], [10, 5], [10, -5]], levels 2, K 2, column 1 last-only: level 1 splits on
    column 0 (centroids (0, 0), (10, 0)); the residuals are (0, +-5), and level 2 splits them: (0, 5), (0, -5).
    """
    x = torch.as_tensor(x)
    keep = None if last_only is None else (~torch.as_tensor(last_only, dtype=torch.bool)).to(x.dtype)   # (D,)
    residual = x.clone()
    books = []
    for level in tqdm(range(levels), desc="rvq levels", disable=None):
        seen = residual if keep is None or level == levels - 1 else residual * keep   # (N,D): what this level reads
        centroids, assign = kmeans(seen, k, seed=seed + level, max_iter=max_iter, tol=tol)
        books.append(centroids)
        residual = residual - centroids[assign]
    return torch.stack(books)


def encode(x, codebooks):
    """Greedy residual encoding: x (N,D), codebooks (L,K,D) -> codes (N,L) int64."""
    residual = torch.as_tensor(x, dtype=codebooks.dtype).clone()
    codes = torch.empty(residual.shape[0], codebooks.shape[0], dtype=torch.int64)
    for level, book in enumerate(codebooks):
        codes[:, level], _ = nearest(residual, book)
        residual -= book[codes[:, level]]
    return codes


def decode(codes, codebooks):
    """codes (N,L) int64, codebooks (L,K,D) -> reconstructions (N,D) = sum_l codebooks[l, codes[:, l]]."""
    codes = torch.as_tensor(codes)
    out = torch.zeros(codes.shape[0], codebooks.shape[2], dtype=codebooks.dtype)
    for level in range(codes.shape[1]):
        out += codebooks[level][codes[:, level]]
    return out


def _id_numbers(codes, k):
    """codes (N,L) -> (N,) int64 mixed-radix numbers c_1 K^(L-1) + ... + c_L (one per full ID)."""
    weights = torch.tensor([k ** (codes.shape[1] - 1 - j) for j in range(codes.shape[1])], dtype=torch.int64)
    return (codes * weights).sum(dim=1)


def resolve_collisions(x, codes, codebooks):
    """Make every full ID unique, changing as few codes and adding as little error as possible.

    Tracks sharing all L codes: the one with the lowest reconstruction error keeps the ID (ties: the
    lowest row); the others, in order of ID then error then row, move to the free ID with the lowest
    reconstruction error that keeps the prefix c_1..c_{L-1}; if those K IDs are all taken, the best
    free (c_{L-1}, c_L) pair under c_1..c_{L-2}; and so on upward.
    x (N,D), codes (N,L) int64, codebooks (L,K,D) -> (codes_unique (N,L) int64, n_moved int).

    Worked example (tests/test_rvq.py): two tracks both encode to (0, 0, 0); track 1 sits exactly on that ID's
    reconstruction (error 0), track 0 is 0.4 off along one axis (error 0.16). Track 1 keeps (0, 0, 0); track 0
    moves to the free last-level code whose reconstruction is nearest to it, here (0, 0, 2): n_moved = 1. Six
    identical tracks under a prefix (1, 2) with K = 4 last-level codes: four get (1, 2, 0..3), the other two move
    up a level to free (c_2, c_3) pairs under c_1 = 1, never further up than needed.
    """
    x = torch.as_tensor(x, dtype=codebooks.dtype)
    n_levels, k, _ = codebooks.shape
    if x.shape[0] > k ** n_levels:
        raise ValueError(f"{x.shape[0]} tracks cannot get unique IDs from {k}^{n_levels} codes")
    codes = torch.as_tensor(codes).clone()
    ids = _id_numbers(codes, k)
    err = (x - decode(codes, codebooks)).pow(2).sum(dim=1).tolist()
    ids_list = ids.tolist()
    order = sorted(range(len(ids_list)), key=lambda i: (ids_list[i], err[i], i))
    occupied = set(ids_list)
    movers = [i for prev, i in zip([None] + order, order) if prev is not None and ids_list[prev] == ids_list[i]]
    for i in movers:
        for depth in range(1, n_levels + 1):  # how many trailing levels may change
            keep = n_levels - depth
            base = decode(codes[i:i + 1, :keep], codebooks[:keep])[0] if keep else torch.zeros_like(x[i])
            tails = torch.cartesian_prod(*[torch.arange(k)] * depth).reshape(-1, depth)  # (K^depth, depth)
            recon = base + decode(tails, codebooks[keep:])  # (K^depth, D)
            cand_err = (x[i] - recon).pow(2).sum(dim=1)
            cand_ids = (_id_numbers(codes[i:i + 1, :keep], k) * k ** depth if keep else 0) + _id_numbers(tails, k)
            cand_ids = cand_ids.tolist()
            best = next((j for j in torch.sort(cand_err, stable=True).indices.tolist()
                         if cand_ids[j] not in occupied), None)
            if best is not None:
                codes[i, keep:] = tails[best]
                occupied.add(cand_ids[best])
                break
    return codes, len(movers)


# ----------------------------------------------------------------------------- quality report

def _entropy(counts):
    """Normalised entropy H(p) / log K of a (K,) count vector: 1.0 for a uniform use of all K codes."""
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log()).sum() / math.log(len(counts))) if len(counts) > 1 else 0.0


def genre_purity(code, labels, k):
    """Share of tracks whose label is the majority label of their code: code (N,) int, labels (N,) int."""
    code, labels = torch.as_tensor(code), torch.as_tensor(labels)
    n_labels = int(labels.max()) + 1
    table = torch.bincount(code * n_labels + labels, minlength=k * n_labels).reshape(k, n_labels)
    return float(table.max(dim=1).values.sum()) / len(code)


def quality_report(x, codes, codes_unique, codebooks, primary_genres, seed=SEED, n_perm=PURITY_PERMUTATIONS):
    """The Semantic-ID quality sheet as a JSON-ready dict.

    x (N,D); codes (N,L) greedy codes; codes_unique (N,L) after resolve_collisions; primary_genres (N,) str.
    MSE is per element, mean over N and D; "explained" = 1 - MSE / (mean per-dim variance of x).
    Collisions = tracks whose full ID an earlier track already has (N - distinct IDs); tracks with
    identical features (the same song under several track_ids) always collide, counted apart.
    Genre purity of code 1 is compared with the same code sizes filled by randomly permuted genres.
    """
    x = torch.as_tensor(x, dtype=codebooks.dtype)
    n, n_levels, k = x.shape[0], codebooks.shape[0], codebooks.shape[1]
    total_var = float(x.var(dim=0, unbiased=False).mean())
    levels, prev_mse = [], total_var
    for level in range(n_levels):
        mse = float((x - decode(codes[:, :level + 1], codebooks[:level + 1])).pow(2).mean())
        counts = torch.bincount(codes[:, level], minlength=k)
        levels.append({"level": level + 1, "mse": mse, "explained": 1.0 - mse / total_var,
                       "gain": (prev_mse - mse) / total_var, "used": int((counts > 0).sum()),
                       "usage": float((counts > 0).sum()) / k, "entropy": _entropy(counts)})
        prev_mse = mse
    _, sizes = torch.unique(_id_numbers(codes, k), return_counts=True)
    unique_after = len(torch.unique(_id_numbers(codes_unique, k)))
    mse_unique = float((x - decode(codes_unique, codebooks)).pow(2).mean())
    names = {g: j for j, g in enumerate(sorted(set(primary_genres)))}
    labels = torch.tensor([names[g] for g in primary_genres], dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    random_purity = sum(genre_purity(codes[:, 0], labels[torch.randperm(n, generator=generator)], k)
                        for _ in range(n_perm)) / n_perm
    purity = genre_purity(codes[:, 0], labels, k)
    return {
        "tracks": n, "levels": n_levels, "codebook_size": k, "dims": x.shape[1], "total_variance": total_var,
        "per_level": levels,
        "ids": {"unique_before": len(sizes), "collisions_before": n - len(sizes),
                "colliding_groups": int((sizes > 1).sum()), "largest_bucket": int(sizes.max()),
                "identical_feature_rows": n - len(torch.unique(x, dim=0)),
                "unique_after": unique_after, "collisions_after": n - unique_after,
                "moved": int((codes_unique != codes).any(dim=1).sum()),
                "mse_after_resolution": mse_unique, "mse_added": mse_unique - levels[-1]["mse"]},
        "genre_purity": {"genres": len(names), "code1": purity, "random": random_purity,
                         "lift": purity / random_purity if random_purity > 0 else None,
                         "random_permutations": n_perm, "seed": seed},
    }


def prefix_genre_purity(codes, primary):
    """Genre purity of the ID prefixes: for l = 1..L, the share of tracks whose primary genre is the majority
    genre of the tracks sharing their first l codes. codes (N,L), primary (N,) str -> [L floats]."""
    codes = np.asarray(codes)
    names = {g: j for j, g in enumerate(sorted(set(primary)))}
    labels = np.array([names[g] for g in primary])
    out = []
    for level in range(1, codes.shape[1] + 1):
        _, group = np.unique(codes[:, :level], axis=0, return_inverse=True)
        table = np.zeros((group.max() + 1, len(names)), dtype=np.int64)
        np.add.at(table, (group.reshape(-1), labels), 1)
        out.append(float(table.max(axis=1).sum() / len(labels)))
    return out


def prefix_attribute_purity(codes, flags):
    """How well the ID prefixes tell the attribute phrases: for l = 1..L, the share of (track, attribute) flags equal
    to the majority flag of the tracks sharing the track's first l codes, averaged over the attributes.

    codes (N,L), flags (N,A) 0/1 (tasks.attribute_flags) -> [L floats]; 1.0 where every prefix group agrees on every
    phrase. Worked example: flags [[1], [1], [0], [1]] with first codes [0, 0, 1, 1] -> groups {1, 1}, {0, 1}: 3 of 4
    tracks hold their group's majority (a tie counts once) -> 0.75.
    """
    codes, flags = np.asarray(codes), np.asarray(flags, np.int64)
    out = []
    for level in range(1, codes.shape[1] + 1):
        _, group = np.unique(codes[:, :level], axis=0, return_inverse=True)
        group = group.reshape(-1)
        ones = np.zeros((group.max() + 1, flags.shape[1]), dtype=np.int64)
        np.add.at(ones, group, flags)
        size = np.bincount(group)[:, None]
        out.append(float(np.maximum(ones, size - ones).sum() / flags.size))
    return out


def prefix_rate_explained(codes, logit, warm):
    """How much of the long-listen rate the ID prefixes tell: for l = 1..L, the share of the variance of the
    labelled tracks' rate logits that the means of their first-l-code groups explain (1 - within / total).

    codes (N,L), logit (N,), warm (N,) bool -> [L floats]. Worked example: logits [0, 0, 2, 2] with first codes
    [0, 0, 1, 1] -> 1.0 at level 1; with first codes [0, 1, 0, 1] -> 0.0.
    """
    codes, logit = np.asarray(codes)[warm], np.asarray(logit, np.float64)[warm]
    total = float(((logit - logit.mean()) ** 2).sum())
    out = []
    for level in range(1, codes.shape[1] + 1):
        _, group = np.unique(codes[:, :level], axis=0, return_inverse=True)
        group = group.reshape(-1)
        mean = np.bincount(group, weights=logit) / np.bincount(group)
        out.append(1.0 - float(((logit - mean[group]) ** 2).sum()) / total if total > 0 else 0.0)
    return out


def neighbour_code_share(i, j, c, code1, k, neighbours=KNN_NEIGHBOURS):
    """Share of each track's top co-listening neighbours (item kNN, training window) that share its first code,
    averaged over tracks with a neighbour; and the share expected if first codes were random (sum of squared
    code shares). (i, j, c): co-listening counts; code1 (N,) first codes."""
    order = np.lexsort((-c, i))            # by track, then most co-listened first
    i, j = i[order], j[order]
    shares, start = [], 0
    for s in range(1, len(i) + 1):
        if s == len(i) or i[s] != i[start]:
            nb = j[start:start + neighbours]
            shares.append(float((code1[nb] == code1[i[start]]).mean()))
            start = s
    p = np.bincount(code1, minlength=k) / len(code1)
    return {"share": float(np.mean(shares)) if shares else None, "random": float((p ** 2).sum()),
            "tracks": len(shares), "neighbours": neighbours}


def format_report(rep):
    """The report as a printable table (a few lines)."""
    lines = [f"{'level':>5}  {'mse':>8}  {'explained':>9}  {'gain':>6}  {'used/K':>9}  {'entropy':>7}"]
    for r in rep["per_level"]:
        lines.append(f"{r['level']:>5}  {r['mse']:>8.4f}  {100 * r['explained']:>8.1f}%  {100 * r['gain']:>5.1f}%"
                     f"  {r['used']:>4}/{rep['codebook_size']:<4}  {r['entropy']:>7.3f}")
    i, g = rep["ids"], rep["genre_purity"]
    lines.append(f"IDs: {rep['tracks']} tracks, {i['unique_before']} distinct before resolution "
                 f"({i['collisions_before']} collisions in {i['colliding_groups']} groups, largest bucket "
                 f"{i['largest_bucket']}; {i['identical_feature_rows']} have a duplicate's features); "
                 f"{i['unique_after']} distinct after; {i['moved']} moved, "
                 f"MSE +{i['mse_added']:.5f}")
    lift = f" (x{g['lift']:.2f})" if g["lift"] else ""
    lines.append(f"genre purity of code 1: {g['code1']:.3f} vs {g['random']:.3f} random{lift}, {g['genres']} genres")
    if "per_level" in g:
        lines.append("genre purity of the ID prefixes (levels 1..L): " + ", ".join(f"{v:.3f}" for v in g["per_level"]))
    nb = rep.get("colisten_neighbours_sharing_code1")
    if nb and nb["share"] is not None:
        lines.append(f"co-listening neighbours sharing the first code: {nb['share']:.3f} "
                     f"(random codes: {nb['random']:.3f}; top {nb['neighbours']} of {nb['tracks']} tracks)")
    if "attribute_purity_per_level" in rep:
        lines.append("request phrases agreeing with their ID prefix's majority (levels 1..L): "
                     + ", ".join(f"{v:.3f}" for v in rep["attribute_purity_per_level"]))
    if "rate_explained_per_level" in rep:
        lines.append("long-listen rate (logit) explained by the ID prefixes (levels 1..L): "
                     + ", ".join(f"{v:.3f}" for v in rep["rate_explained_per_level"]))
    if "rate_explained_per_code" in rep:
        lines.append("long-listen rate (logit) explained by each level's code alone: "
                     + ", ".join(f"{v:.3f}" for v in rep["rate_explained_per_code"]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- artifacts

def save_rvq(folder, codebooks, params, levels, k):
    """rvq.safetensors: codebooks (L,K,D) and preprocessing tensors; metadata names the features."""
    from safetensors.torch import save_file
    p = with_signal_defaults(params)
    tensors = {"codebooks": codebooks.contiguous()}
    tensors.update({f"pre_{name}": torch.as_tensor(np.asarray(p[name], dtype=np.float64)).reshape(-1)
                    for name in ("mean", "std", "key_scale", "log_eps")})
    tensors["block_scales"] = torch.tensor(p["scales"], dtype=torch.float64)
    tensors["block_weights"] = torch.tensor(p["weights"], dtype=torch.float64)
    for name in ("collab_map", "quality_map"):
        if p.get(name) is not None:
            tensors[name] = torch.as_tensor(np.asarray(p[name], dtype=np.float64)).contiguous()
    # one metadata entry: safetensors writes several in hash order, which would change the file's bytes
    meta = {"rvq": json.dumps({"format": "rvq-1", "features": list(FEATURES), "columns": list(COLUMNS),
                               "levels": levels, "codebook_size": k, "signals": p["signals"],
                               "genres": p["genres"], "t_val": p.get("t_val")})}
    with atomic_path(os.path.join(folder, MODEL_FILE)) as tmp:
        save_file(tensors, tmp, metadata=meta)


def save_track_vectors(path, x):
    """x (N, D): the quantiser's input, one row per track in semantic_ids.tsv's order (sft.py --track-vectors)."""
    from safetensors.torch import save_file
    with atomic_path(path) as tmp:
        save_file({"vectors": x.float().contiguous()}, tmp, metadata={"format": "pt"})


def load_track_vectors(folder, n_tracks):
    """(N, D) float32 from rvq.py train's track_vectors.safetensors; one line if it is missing or another table's."""
    from safetensors import safe_open
    path = os.path.join(folder, VECTORS_FILE)
    need_file(path, "track-vector file (an rvq folder written before rvq.py train wrote one: train it again)")
    try:
        with safe_open(path, framework="pt") as f:
            x = f.get_tensor("vectors")
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        fail(path, f"not a readable track-vector file ({e})")
    if x.ndim != 2 or x.shape[0] != n_tracks:
        fail(path, f"{tuple(x.shape)} vectors, expected one row per track of semantic_ids.tsv ({n_tracks})")
    return x


def load_rvq(folder):
    """Load rvq.safetensors -> {"codebooks": (L,K,D) tensor, "params": preprocess dict, "meta": dict}."""
    from safetensors import safe_open
    path = os.path.join(folder, MODEL_FILE)
    need_file(path, "RVQ model")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        fail(path, f"not a readable safetensors file ({e})")
    need = ["codebooks", "pre_mean", "pre_std", "pre_key_scale", "pre_log_eps"]
    missing = [name for name in need if name not in tensors]
    try:
        info = json.loads(meta.get("rvq", "{}"))
    except json.JSONDecodeError:
        info = {}
    if missing or info.get("format") != "rvq-1":
        fail(path, f"not an rvq.py model (missing {', '.join(missing) or 'rvq metadata'})")
    books = tensors["codebooks"]
    params = with_signal_defaults({
        "mean": tensors["pre_mean"].numpy(), "std": tensors["pre_std"].numpy(),
        "key_scale": np.float64(tensors["pre_key_scale"][0]), "log_eps": np.float64(tensors["pre_log_eps"][0]),
        "signals": info.get("signals", ["audio"]), "genres": info.get("genres", []), "t_val": info.get("t_val"),
        "scales": tensors["block_scales"].tolist() if "block_scales" in tensors else None,
        "weights": tensors["block_weights"].tolist() if "block_weights" in tensors else None,
        "collab_map": tensors["collab_map"].numpy() if "collab_map" in tensors else None,
        "quality_map": tensors["quality_map"].numpy() if "quality_map" in tensors else None})
    dims = signal_dims(params)
    if books.ndim != 3 or books.shape[2] != dims or info.get("features") != list(FEATURES):
        fail(path, f"codebooks {tuple(books.shape)} / features do not match the signals {params['signals']} "
                   f"({dims} dims)")
    meta = {"features": list(FEATURES), "columns": list(COLUMNS), "levels": books.shape[0],
            "codebook_size": books.shape[1], "signals": params["signals"], "t_val": params["t_val"]}
    return {"codebooks": books, "params": params, "meta": meta}


def encode_new(features_raw, rvq, primary_genres=None):
    """Codes for tracks outside the catalogue (cold start): (N,10) raw features -> (N,L) int64.

    Uses the saved preprocessing and codebooks, greedy like the catalogue. primary_genres (N,) feeds the
    genre block (an unknown genre: all zeros); the collab and quality blocks of a new track are predicted from its
    audio and genre by the saved maps, as for the catalogue's cold tracks. Collision resolution applies only to
    the catalogue, so a new track may share its full ID with an existing track.
    """
    primary = [""] * len(features_raw) if primary_genres is None else list(primary_genres)
    x = signal_matrix(signal_blocks(features_raw, primary, rvq["params"]), rvq["params"])
    return encode(torch.as_tensor(x, dtype=rvq["codebooks"].dtype), rvq["codebooks"])


# ----------------------------------------------------------------------------- CLI

def train(args):
    catalog, cat_report = formats.load_catalog(args.catalog)
    print(formats.catalog_note(cat_report))
    n = len(catalog.track_id)
    if args.levels < 1 or args.codebook_size < 2 or args.codebook_size ** args.levels >= 2 ** 62:
        raise UserError("--levels must be >= 1, --codebook-size >= 2 and codebook-size^levels < 2^62")
    if args.codebook_size > n:
        raise UserError(f"--codebook-size {args.codebook_size} exceeds the catalogue's {n} tracks; use a smaller one")
    if n > args.codebook_size ** args.levels:
        raise UserError(f"{n} tracks need more than {args.codebook_size}^{args.levels} IDs; "
                        "raise --levels or --codebook-size")
    signals = [b.strip() for b in args.signals.split(",") if b.strip()]
    unknown = [b for b in signals if b not in BLOCK_WEIGHTS] or len(set(signals)) < len(signals)
    if unknown or not signals:
        raise UserError(f"--signals {args.signals!r}: expected a comma-separated subset of "
                        f"{', '.join(BLOCK_WEIGHTS)}")
    weights = [float(w) for w in args.weights.split(",")] if args.weights else [BLOCK_WEIGHTS[b] for b in signals]
    if len(weights) != len(signals) or min(weights) <= 0:
        raise UserError(f"--weights {args.weights!r}: one positive number per signal ({', '.join(signals)})")
    last_only = [b.strip() for b in args.last_level_signals.split(",") if b.strip()]
    if [b for b in last_only if b not in signals]:
        raise UserError(f"--last-level-signals {args.last_level_signals!r}: expected blocks of --signals "
                        f"({', '.join(signals)})")
    if last_only and args.levels < 2:
        raise UserError("--last-level-signals needs --levels 2 or more (the levels before the last leave them out)")
    for b in ("collab", "quality"):
        if b in signals and not args.logs:
            raise UserError(f"--signals {b} needs --logs (the listening log; only its training window is read)")
    primary = [g[0] if len(g) else "" for g in catalog.genres]
    params = fit_preprocess(catalog.features)
    params.update(signals=signals, weights=weights, genres=sorted(set(primary)))
    cooc, collab, quality = None, None, None
    if args.logs:
        # the same time split as data.py sft, so only training-window listening shapes the IDs
        split, co, labels = sessions.split_times, co_listening, listen_labels
        if logfiles.log_engine(args.engine, args.logs) == "numpy":   # the same passes on arrays, the same counts
            split, co, labels = fastlog.split_times, fastlog.co_listening, fastlog.listen_labels
        inputs = sessions.split_inputs(args.logs, args.catalog, args.id_information, args.id_metadata,
                                       args.val_fraction, args.test_fraction)   # before the log is read
        params["t_val"], t_test = split(args.logs, catalog, args.id_information, args.id_metadata,
                                        args.val_fraction, args.test_fraction)
        cooc = co(args.logs, catalog, params["t_val"], args.collab_window, args.id_information, args.id_metadata)
    content = np.hstack([preprocess(catalog.features, params), genre_onehot(primary, params["genres"])])
    if "collab" in signals:
        emb = ppmi_svd(*cooc, n, args.collab_dim, args.seed)
        warm = np.abs(emb).sum(1) > 0
        params["collab_map"] = fit_cold_map(content, emb, warm, args.collab_ridge)
        collab = (emb, warm)
        print(f"collab block: {int(warm.sum())} of {n} tracks co-listened in the training window; "
              f"{n - int(warm.sum())} placed from their audio and genre")
    if "quality" in signals:
        long, skip = labels(args.logs, catalog, params["t_val"], id_information=args.id_information,
                            id_metadata=args.id_metadata)
        logit, warm = rate_logit(long, skip)[:, None], (long + skip) > 0
        params["quality_map"] = fit_cold_map(content, logit, warm, args.collab_ridge)
        quality = (logit, warm)
        print(f"quality block: {int(warm.sum())} of {n} tracks long-listened or skipped in the training window; "
              f"{n - int(warm.sum())} placed from their audio and genre")
    blocks = signal_blocks(catalog.features, primary, params, collab, quality)
    # one block: used as it is (the seed's input); several: each scaled to its weight's total variance
    params["scales"] = [1.0] if len(signals) == 1 else [block_scale(blocks[b]) for b in signals]
    x = torch.from_numpy(signal_matrix(blocks, params))  # (N,D) float64
    # float32 halves the distance work; the residual chain and the report stay in float64
    # (D,) bool: the columns of the blocks only the last level reads
    late = np.concatenate([np.full(blocks[b].shape[1], b in last_only) for b in signals])
    books = fit_rvq(x.float(), args.levels, args.codebook_size, args.seed, args.max_iter, args.tol,
                    last_only=late if last_only else None).double()
    codes = encode(x, books)
    codes_unique, _ = resolve_collisions(x, codes, books)
    rep = quality_report(x, codes, codes_unique, books, primary, seed=args.seed)
    rep["catalog"] = cat_report
    rep["signals"] = {"blocks": signals, "weights": weights, "dims": {b: blocks[b].shape[1] for b in signals}}
    if collab is not None:
        rep["signals"]["collab_warm_tracks"] = int(collab[1].sum())
    if quality is not None:
        rep["signals"]["quality_warm_tracks"] = int(quality[1].sum())
        rep["rate_explained_per_level"] = prefix_rate_explained(codes_unique, quality[0][:, 0], quality[1])
        # each level's code alone, whatever the codes before it: what a score with one weight per code can take of
        # the rate (high at the last level where --last-level-signals quality puts it). A policy's log-prob of a code
        # is normalised over the codes its prefix allows, so there such a weight only orders tracks of one prefix
        logit, warm = quality[0][:, 0], quality[1]
        rep["rate_explained_per_code"] = [prefix_rate_explained(codes_unique[:, [level]], logit, warm)[0]
                                          for level in range(args.levels)]
    rep["genre_purity"]["per_level"] = prefix_genre_purity(codes_unique, primary)
    rep["attribute_purity_per_level"] = prefix_attribute_purity(codes_unique, attribute_flags(catalog.features))
    if cooc is not None:
        rep["colisten_neighbours_sharing_code1"] = neighbour_code_share(*cooc, codes_unique[:, 0].numpy(),
                                                                        args.codebook_size)
    os.makedirs(args.out, exist_ok=True)
    split_path = os.path.join(args.out, sessions.SPLIT_FILE)
    if os.path.exists(split_path):   # an earlier run's split never stands beside these IDs, even if killed below
        os.remove(split_path)
    save_rvq(args.out, books, params, args.levels, args.codebook_size)
    write_semantic_ids(os.path.join(args.out, IDS_FILE), catalog.track_id, codes_unique)
    save_track_vectors(os.path.join(args.out, VECTORS_FILE), x)
    write_json(os.path.join(args.out, REPORT_FILE), rep)
    save_config(args.out, args, name=CONFIG_FILE, dims=len(COLUMNS), columns=list(COLUMNS), tracks=n)
    if args.logs:   # last: data.py sft reuses this split instead of reading the whole log for it again
        sessions.write_split(args.out, inputs, params["t_val"], t_test)
    print(format_report(rep))
    written = [MODEL_FILE, IDS_FILE, VECTORS_FILE, REPORT_FILE, CONFIG_FILE] + \
        ([sessions.SPLIT_FILE] if args.logs else [])
    print(f"wrote {args.out}/{{{', '.join(written)}}}")


def encode_cli(args):
    rvq = load_rvq(args.rvq)
    catalog, cat_report = formats.load_catalog(args.catalog)
    if cat_report["dropped"]:   # stderr: stdout is the ID table; a skipped row is a track that gets no codes
        print(formats.catalog_note(cat_report), file=sys.stderr)
    codes = encode_new(catalog.features, rvq, [g[0] if g else "" for g in catalog.genres])
    try:
        print("\t".join(["track_id"] + [f"code_{j}" for j in range(codes.shape[1])]))
        for tid, row in zip(catalog.track_id, codes.tolist()):
            print("\t".join([tid] + [str(c) for c in row]))
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv=None):
    p = argparse.ArgumentParser(description="Residual-VQ Semantic IDs for the catalogue.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="fit the quantiser, write IDs and the quality report")
    t.add_argument("--catalog", required=True, help="catalogue CSV (Spotify Tracks layout)")
    t.add_argument("--out", required=True, help="output folder (semantic_ids.tsv, rvq.safetensors, the quality report)")
    t.add_argument("--levels", type=int, default=LEVELS, help="codes per track")
    t.add_argument("--codebook-size", type=int, default=CODEBOOK_SIZE, help="codes per level")
    t.add_argument("--seed", type=int, default=SEED, help="k-means++ seed (level l uses seed + l)")
    t.add_argument("--max-iter", type=int, default=MAX_ITER, help="Lloyd iterations per level at most")
    t.add_argument("--tol", type=float, default=TOL, help="relative objective drop that stops a level")
    t.add_argument("--signals", default=SIGNALS,
                   help="what the IDs encode, comma-separated: audio (the seed's 10 features), genre (one-hot "
                        "primary genre), collab (co-listening of the training window; needs --logs), quality "
                        "(the training window's long-listen rate; needs --logs), attrs (0/1 for each attribute "
                        "phrase of the requests that holds for the track: codes that group tracks answering the "
                        "same words)")
    t.add_argument("--weights", default=WEIGHTS,
                   help="total variance of each signal block, in --signals order (default "
                        f"{', '.join(f'{b} {w:g}' for b, w in BLOCK_WEIGHTS.items())}: quality and attrs at the "
                        "weight of the others would split genres)")
    t.add_argument("--last-level-signals", default=LAST_LEVEL_SIGNALS,
                   help="blocks of --signals that only the last level quantises, comma-separated (e.g. quality: "
                        "the earlier codes, which name the genre and the sound, are not split by it; attribute "
                        "requests ranked better on three worlds: EXPERIMENTS.md)")
    t.add_argument("--logs", default=None,
                   help="listening log: its training window feeds the collab and quality blocks and the quality "
                        "sheet")
    t.add_argument("--id-information", default=None, help="Music4All id_information (for Music4All ids)")
    t.add_argument("--id-metadata", default=None, help="Music4All id_metadata (join by spotify_id)")
    t.add_argument("--val-fraction", type=float, default=sessions.VAL_FRACTION,
                   help="as data.py sft: the split that decides the training window")
    t.add_argument("--test-fraction", type=float, default=sessions.TEST_FRACTION,
                   help="as data.py sft: the split that decides the training window")
    t.add_argument("--collab-dim", type=int, default=COLLAB_DIM, help="PPMI-SVD dimensions of the collab block")
    t.add_argument("--collab-window", type=int, default=COLLAB_WINDOW,
                   help="plays at most this far apart in a session co-occur")
    t.add_argument("--collab-ridge", type=float, default=COLLAB_RIDGE,
                   help="ridge of the audio+genre -> collab (and quality) maps that place cold tracks")
    t.add_argument("--engine", choices=logfiles.ENGINES, default="auto", help=logfiles.ENGINE_HELP)
    e = sub.add_parser("encode", help="codes for new tracks from a trained quantiser")
    e.add_argument("--rvq", required=True, help="folder written by `rvq.py train`")
    e.add_argument("--catalog", required=True, help="CSV of new tracks (Spotify Tracks layout)")
    args = p.parse_args(argv)
    if args.cmd == "train":
        need_file(args.catalog, "catalogue")
        train(args)
    else:
        encode_cli(args)


if __name__ == "__main__":
    run_main(main)
