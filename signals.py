"""What the quantiser reads: each track's signal blocks, preprocessed, scaled and concatenated.

  audio   the seed's 10 audio features, preprocessed by type (standardised; log for the skewed ones; `key` on the
          pitch-class circle): 11 columns
  genre   one-hot primary genre
  collab  PPMI + truncated SVD of training-window co-listening; cold tracks get a ridge map of their content
  quality the logit of each track's training-window long-listen rate (long listens and skips, as data.py prefs
          labels them); cold tracks, never labelled there, get a ridge map of their content
  attrs   0/1 for each attribute phrase of the requests (tasks.ATTRIBUTES: "high-energy", "for studying", ...)
          that holds for the track, from its audio features: tracks that answer the same words share codes
Each block is scaled to a chosen total variance (rvq.py --weights), so that it weighs what its weight says, not what
its width says. rvq.py quantises the concatenation.
"""
import math

import numpy as np
import torch

import formats
import logfiles
import sessions
import tasks

# -----------------------------------------------------------------------------
LOG_EPS: float = 1e-3       # log(x + eps): values below ~1e-3 (a third of instrumentalness is 0) stay near one point
COLLAB_DIM: int = 16        # PPMI-SVD dimensions of the collab block (enough for 20 genres' neighbourhoods)
COLLAB_WINDOW: int = 3      # plays within this distance in a session co-occur (as the item kNN's counts)
COLLAB_RIDGE: float = 1.0   # ridge of the content -> collab map that places cold tracks (and the quality map)
FEATURES = formats.FEATURES   # the seed's 10 audio features, raw units, this order
SKEWED = ("speechiness", "acousticness", "instrumentalness", "liveness")
COLUMNS = ("danceability", "energy", "key_cos", "key_sin", "loudness", "speechiness", "acousticness",
           "instrumentalness", "liveness", "valence", "tempo")               # D = 11 model dims
# -----------------------------------------------------------------------------


# ----------------------------------------------------------------------------- preprocessing

def _transformed(features_raw, log_eps):
    """(N,10) raw -> (N,10) with log(x + eps) on the skewed columns (key left raw)."""
    z = np.array(features_raw, dtype=np.float64)
    for name in SKEWED:
        j = FEATURES.index(name)
        z[:, j] = np.log(np.maximum(z[:, j], 0.0) + log_eps)  # audio features are in [0, 1]
    return z


def _key_circle(key):
    """(N,) pitch classes 0..11 (-1 = none) -> (N,2) unscaled (cos, sin); no key -> (0, 0)."""
    key = np.asarray(key, dtype=np.float64)
    angle = 2.0 * np.pi * key / 12.0
    pair = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    pair[key < 0] = 0.0
    return pair


def fit_preprocess(features_raw, log_eps=LOG_EPS):
    """Fit the per-feature-type scaling on the catalogue.

    features_raw: (N,10) float in FEATURES order, raw units. Returns a dict of float64 arrays:
    mean (10,), std (10,) of the (log-)transformed columns (key's entries unused: 0 and 1),
    key_scale () so that the (cos, sin) pair's summed variance is 1, like one standardised feature,
    log_eps ().
    """
    z = _transformed(features_raw, log_eps)
    mean, std = z.mean(axis=0), z.std(axis=0)
    std[std == 0] = 1.0  # a constant column stays constant instead of dividing by zero
    k = FEATURES.index("key")
    mean[k], std[k] = 0.0, 1.0
    pair_var = _key_circle(z[:, k]).var(axis=0).sum()
    key_scale = 1.0 / math.sqrt(pair_var) if pair_var > 0 else 1.0
    return {"mean": mean, "std": std, "key_scale": np.float64(key_scale), "log_eps": np.float64(log_eps)}


def preprocess(features_raw, params):
    """(N,10) raw features in FEATURES order -> (N,11) model inputs in COLUMNS order (float64).

    Continuous: (x - mean) / std. Skewed: (log(x + eps) - mean) / std. key: the pitch class on
    the circle, key_scale * (cos, sin)(2 pi key / 12), so key 11 sits next to key 0; key -1 -> (0, 0).
    """
    features_raw = np.asarray(features_raw, dtype=np.float64)
    if features_raw.ndim != 2 or features_raw.shape[1] != len(FEATURES):
        raise ValueError(f"features must be (N, {len(FEATURES)}), got {features_raw.shape}")
    z = (_transformed(features_raw, float(params["log_eps"])) - params["mean"]) / params["std"]
    k = FEATURES.index("key")
    pair = float(params["key_scale"]) * _key_circle(features_raw[:, k])
    return np.concatenate([z[:, :k], pair, z[:, k + 1:]], axis=1)


# ----------------------------------------------------------------------------- signal blocks
# The quantiser reads a concatenation of named blocks, each scaled to a chosen total variance, so that a
# 16-column block and an 11-column one weigh what their weights say, not what their widths say:
#   audio   the seed's 10 audio features, preprocessed as above (11 columns)
#   genre   one-hot primary genre: tracks of a genre share a first code once this block dominates
#   collab  PPMI + truncated SVD of training-window co-listening (Levy & Goldberg 2014: the factorisation
#           behind item2vec); tracks that people play one after another get nearby vectors, hence prefixes.
#           A track never played in the training window (cold start, or a new track) gets the vector a ridge
#           regression predicts from its audio and genre blocks.
#   quality logit of the track's smoothed long-listen rate in the training window, (long + 1) / (long + skip + 2):
#           what the long-listen-rate baseline scores. Some tracks are skipped by almost everyone (intros, weak
#           songs); with this block such tracks share codes, so a preference learnt on one code (DPO on a few
#           hundred pairs) carries to every track holding it, where per-track IDs would need a pair per track.
#           A cold track gets the logit a ridge regression predicts from its audio and genre blocks.
#   attrs   0/1 for each request phrase that holds for the track (tasks.attribute_flags): codes that group
#           tracks answering the same words. The audio block holds the same features as standardised distances,
#           where a track at energy 0.69 sits next to one at 0.71, which requests split; the flags put the
#           requests' thresholds into the quantiser's input. A function of the features alone, so a new track gets
#           its flags too. Tried, not kept (EXPERIMENTS.md, "Attribute phrases in the IDs").

def block_scale(x):
    """1 / sqrt(total variance) of a block x (N, d): multiplying by it gives the block total variance 1."""
    total = float(np.asarray(x, np.float64).var(axis=0).sum())
    return 1.0 / math.sqrt(total) if total > 0 else 1.0


def genre_onehot(primary, names):
    """(N,) primary genre names, the known names (G,) -> (N, G) one-hot; an unknown genre is all zeros."""
    col = {g: j for j, g in enumerate(names)}
    out = np.zeros((len(primary), len(names)))
    for i, g in enumerate(primary):
        if g in col:
            out[i, col[g]] = 1.0
    return out


def co_listening(log, catalog, t_val, window=COLLAB_WINDOW, id_information=None, id_metadata=None):
    """Symmetric co-listening counts of the training window: (i (M,), j (M,), count (M,)) int64 arrays.

    Two catalogued plays of one session at most `window` plays apart, both before t_val, co-occur once
    (each direction counted), as sessions.mine_logs counts them for item kNN; fastlog.co_listening is the same
    on arrays.
    """
    counts = {}
    for _, plays in logfiles.iter_user_plays(log, catalog, id_information=id_information, id_metadata=id_metadata):
        for sess in sessions.sessions_of(plays, catalog):
            rows = [r for ts, r, _ in sess if r >= 0 and ts < t_val]
            for a, ra in enumerate(rows):
                for rb in rows[a + 1:a + 1 + window]:
                    if ra != rb:
                        counts[(ra, rb)] = counts.get((ra, rb), 0) + 1
                        counts[(rb, ra)] = counts.get((rb, ra), 0) + 1
    keys = np.array(list(counts), dtype=np.int64).reshape(-1, 2)
    return keys[:, 0], keys[:, 1], np.array(list(counts.values()), dtype=np.int64)


def listen_labels(log, catalog, t_val, rule=None, id_information=None, id_metadata=None):
    """Training-window long listens and skips per track: (long (N,), skip (N,)) int64 arrays.

    As `data.py prefs` counts them for the long-listen-rate baseline (prefs/track_labels.npz) with its default
    options: sessions split at sessions.SESSION_GAP, a play's dwell the time to the next play (capped at the
    track's length), labelled by rule (default the seed's: over 90 s long, under 30 s a skip), plays before t_val
    only. fastlog.listen_labels is the same on arrays.
    """
    rule = rule or sessions.DwellRule()
    long, skip = np.zeros(len(catalog), dtype=np.int64), np.zeros(len(catalog), dtype=np.int64)
    stats = {}
    for _, plays in logfiles.iter_user_plays(log, catalog, id_information=id_information, id_metadata=id_metadata,
                                             stats=stats):
        resolution = stats["resolution_s"]   # known before the first user arrives
        for sess in sessions.sessions_of(plays, catalog, resolution=resolution):
            for ts, row, dwell in sess:
                if row >= 0 and dwell is not None and ts < t_val:
                    label = rule.label(dwell, catalog.duration_ms[row] / 1000.0, resolution)[0]
                    long[row] += label == "chosen"
                    skip[row] += label == "rejected"
    return long, skip


def rate_logit(long, skip):
    """logit of the smoothed long-listen rate (long + 1) / (long + skip + 2) (Laplace's rule), (N,) in and out.

    The baseline's score, on a scale without bounds: 3 long listens and 1 skip -> rate 4/6 -> log 2 = 0.693;
    a track never labelled -> rate 1/2 -> 0. Equal to log((long + 1) / (skip + 1)).
    """
    return np.log((np.asarray(long, np.float64) + 1.0) / (np.asarray(skip, np.float64) + 1.0))


def ppmi(i, j, c, n):
    """Positive PMI of each count: max(0, log(c_ij * total / (c_i * c_j))), c_i = row sums. (M,) in, (M,) out.

    Worked example: counts (0,1): 2, (1,0): 2, (1,2): 1, (2,1): 1 -> total 6, row sums 2, 3, 1;
    PPMI(0,1) = log(2 * 6 / (2 * 3)) = log 2, PPMI(1,2) = log(1 * 6 / (3 * 1)) = log 2.
    """
    c = np.asarray(c, np.float64)
    row = np.bincount(i, weights=c, minlength=n)
    return np.maximum(np.log(c * c.sum() / (row[i] * row[j])), 0.0)


def ppmi_svd(i, j, c, n, dim, seed=0):
    """Item vectors from co-listening counts: (N, dim), rows of never co-listened items are 0.

    PPMI_ij = max(0, log(c_ij * total / (c_i * c_j))), c_i the row sums; then a rank-`dim` truncated SVD
    PPMI ~ U S V^T and the vectors U sqrt(S) (Levy & Goldberg 2014). Randomised SVD on the sparse matrix
    (torch.svd_lowrank), seeded, so it scales to a real catalogue.
    """
    if len(c) == 0:
        return np.zeros((n, dim))
    pmi = ppmi(i, j, c, n)
    keep = pmi > 0
    a = torch.sparse_coo_tensor(np.stack([i[keep], j[keep]]), pmi[keep], (n, n), check_invariants=True).coalesce()
    q = min(dim, n - 1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        u, s, _ = torch.svd_lowrank(a, q=min(q + 10, n), niter=6)
    emb = np.zeros((n, dim))
    emb[:, :q] = (u[:, :q] * s[:q].sqrt()).numpy()
    return emb


def fit_cold_map(content, emb, warm, ridge=COLLAB_RIDGE):
    """Ridge regression content -> collab (or quality) vector on the warm tracks: W (D + 1, dim), bias last.

    content (N, D), emb (N, dim), warm (N,) bool. A cold track's vector is [content, 1] @ W.
    """
    x = np.hstack([content[warm], np.ones((int(warm.sum()), 1))])
    reg = ridge * np.eye(x.shape[1])
    reg[-1, -1] = 0.0                      # the bias is not shrunk
    return np.linalg.solve(x.T @ x + reg, x.T @ emb[warm])


def signal_blocks(features_raw, primary, rvq_params, collab=None, quality=None):
    """{name: (N, d) unscaled block} for the signals in rvq_params["signals"].

    collab: the catalogue's PPMI-SVD vectors (N, dim) and warm mask (N,); quality: its rate logits (N, 1) and
    labelled mask (N,); None for new tracks, whose collab and quality (like the catalogue's cold ones) are
    predicted from [audio, genre] by the saved maps.
    """
    audio = preprocess(features_raw, rvq_params)
    genre = genre_onehot(primary, rvq_params["genres"])
    blocks = {"audio": audio, "genre": genre}
    if "attrs" in rvq_params["signals"]:
        blocks["attrs"] = tasks.attribute_flags(features_raw).astype(np.float64)   # 0/1 columns
    content = np.hstack([audio, genre, np.ones((len(audio), 1))])
    for name, known in (("collab", collab), ("quality", quality)):
        if name in rvq_params["signals"]:
            pred = content @ rvq_params[f"{name}_map"]
            if known is not None:
                values, warm = known
                pred[warm] = values[warm]
            blocks[name] = pred
    return {name: blocks[name] for name in rvq_params["signals"]}


def with_signal_defaults(params):
    """The preprocessing dict completed with the signal fields; a bare one means the seed's audio-only input."""
    p = dict(params)
    p["signals"] = list(p.get("signals") or ["audio"])
    p["genres"] = list(p.get("genres") or [])
    p["weights"] = list(p.get("weights") or [1.0] * len(p["signals"]))
    p["scales"] = list(p.get("scales") or [1.0] * len(p["signals"]))
    p.setdefault("collab_map", None)
    p.setdefault("quality_map", None)
    p.setdefault("t_val", None)
    return p


def signal_dims(params):
    """Width of the quantiser's input for these signals."""
    widths = {"audio": len(COLUMNS), "genre": len(params["genres"]), "attrs": len(tasks.ATTRIBUTES)}
    for name in ("collab", "quality"):
        widths[name] = 0 if params.get(f"{name}_map") is None else np.asarray(params[f"{name}_map"]).shape[1]
    return sum(widths[b] for b in params["signals"])


def signal_matrix(blocks, rvq_params):
    """The quantiser's input (N, D): the blocks side by side, block b times scale_b * sqrt(weight_b)."""
    return np.hstack([blocks[b] * rvq_params["scales"][k] * math.sqrt(rvq_params["weights"][k])
                      for k, b in enumerate(rvq_params["signals"])])
