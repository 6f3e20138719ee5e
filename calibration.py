"""The numbers that make the synthetic world real: per-genre statistics of real Spotify rows (`world.py calibrate`).

Features live in a transformed space (logit for the [0, 1] features, raw loudness and tempo), where each genre is a
Gaussian; genres with few rows are shrunk toward the global statistics. world.py generate draws its catalogue from
the committed world_calibration.json.
"""
import math

import numpy as np

import formats

MODEL_FEATURES = tuple(f for f in formats.FEATURES if f != "key")  # key is categorical: drawn from its histogram
EPS: float = 1e-3              # logit clip for [0,1] features; below it a feature is written as exactly 0
CAL_GENRES: int = 20           # genres kept by calibrate (most rows first)
SHRINK_ROWS: float = 50.0      # pseudo-rows of the global statistics added to each genre's (shrinkage prior)
POP_LEVELS: int = 21           # popularity quantiles stored (0%, 5%, ..., 100%)


# ---------------------------------------------------------------------------------------------- feature space

def to_model_space(features):
    """(N, 10) raw features -> (N, 9) transformed: logit(clip(x, EPS, 1-EPS)) for [0,1] features, raw loudness/tempo.

    In this space each genre is roughly Gaussian, so a mean, a std and one correlation matrix describe it.
    """
    cols = []
    for f in MODEL_FEATURES:
        x = features[:, formats.FEATURES.index(f)]
        if f in formats.UNIT_FEATURES:
            x = np.clip(x, EPS, 1 - EPS)
            x = np.log(x) - np.log1p(-x)
        cols.append(x)
    return np.stack(cols, axis=1)


def from_model_space(z, key):
    """(N, 9) transformed, (N,) key -> (N, 10) raw features, rounded as Spotify publishes them."""
    out = np.zeros((len(z), len(formats.FEATURES)))
    for j, f in enumerate(MODEL_FEATURES):
        x = z[:, j]
        if f in formats.UNIT_FEATURES:
            at_floor = x <= math.log(EPS / (1 - EPS)) + 1e-9  # the clip made exact zeros the mass at or below EPS
            x = np.where(at_floor, 0.0, _round_sig(1 / (1 + np.exp(-x)), 3))
        elif f == "loudness":
            x = np.round(np.clip(x, -60.0, 4.0), 3)
        else:
            x = np.round(np.clip(x, 40.0, 220.0), 3)
        out[:, formats.FEATURES.index(f)] = x
    out[:, formats.FEATURES.index("key")] = key
    return out


def _round_sig(x, digits):
    return np.array([float(f"{v:.{digits}g}") for v in x])


def standardise(x):
    """(N, D) -> (standardised (N, D), mean (D,), std (D,)); a constant column keeps std 1."""
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 0, std, 1.0)
    return (x - mean) / std, mean, std


# ---------------------------------------------------------------------------------------------- calibration

def shrink(value, n, prior, k=SHRINK_ROWS):
    """Posterior-mean style shrinkage: a genre with n rows counts as n real rows plus k rows at the prior."""
    return (n * np.asarray(value) + k * np.asarray(prior)) / (n + k)


def calibrate(cat, n_genres=CAL_GENRES, k=SHRINK_ROWS):
    """Catalog -> dict of the numbers generate needs (see the module docstring)."""
    z = to_model_space(cat.features)  # (N, 9)
    logdur = np.log(np.maximum(cat.duration_ms, 1000))
    counts = {}
    for gs in cat.genres:
        for g in gs:
            counts[g] = counts.get(g, 0) + 1
    top = sorted(counts, key=lambda g: (-counts[g], g))[:n_genres]
    glob = {"mean": z.mean(0), "var": z.var(0), "mode_share": cat.mode.mean(), "explicit_rate": cat.explicit.mean(),
            "log_duration_mean": logdur.mean(), "log_duration_var": logdur.var()}
    genres, resid = {}, []
    for g in top:
        m = np.array([g in gs for gs in cat.genres])
        n, zg = int(m.sum()), z[m]
        resid.append((zg - zg.mean(0)) / np.where(zg.std(0) > 0, zg.std(0), 1.0))
        genres[g] = {"rows": n,
                     "mean": shrink(zg.mean(0), n, glob["mean"], k),
                     "std": np.sqrt(shrink(zg.var(0), n, glob["var"], k)),
                     "mode_share": float(shrink(cat.mode[m].mean(), n, glob["mode_share"], k)),
                     "explicit_rate": float(shrink(cat.explicit[m].mean(), n, glob["explicit_rate"], k)),
                     "log_duration_mean": float(shrink(logdur[m].mean(), n, glob["log_duration_mean"], k)),
                     "log_duration_std": float(np.sqrt(shrink(logdur[m].var(), n, glob["log_duration_var"], k)))}
    corr = np.corrcoef(np.concatenate(resid), rowvar=False)
    keys = cat.feature("key").astype(int)
    r = lambda a: np.round(np.asarray(a, dtype=float), 4).tolist()  # noqa: E731
    return {"features": list(MODEL_FEATURES),
            "transform": f"logit(clip(x, {EPS}, 1 - {EPS})) for {', '.join(formats.UNIT_FEATURES)}; "
                         "raw loudness, tempo",
            "shrinkage": f"per-genre mean, variance and shares = (n * genre + {k:g} * global) / (n + {k:g}), "
                         "n = the genre's rows: the 1000-row genres barely move, a 50-row genre moves halfway to "
                         "global",
            "tracks": len(cat),
            "genres": {g: {kk: (r(v) if isinstance(v, np.ndarray) else (round(v, 5) if isinstance(v, float) else v))
                           for kk, v in s.items()} for g, s in genres.items()},
            "correlation": r(corr),
            "correlation_note": "pooled within-genre correlation of the standardised transformed features",
            "global": {"mean": r(glob["mean"]), "std": r(np.sqrt(glob["var"])),
                       "mode_share": round(float(glob["mode_share"]), 5),
                       "explicit_rate": round(float(glob["explicit_rate"]), 5)},
            "key_distribution": {str(kk): round(float((keys == kk).mean()), 5) for kk in range(-1, 12)},
            "popularity_quantiles": r(np.quantile(cat.popularity, np.linspace(0, 1, POP_LEVELS)))}
