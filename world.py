"""A calibrated synthetic music world, written in the exact real file formats.

The full public data sets cannot be downloaded here, so the default pipeline runs on this world; point the same
commands at the real files to run on real data. Three commands:

  python world.py calibrate --spotify ../shared/data/spotify_tracks/union_8325.csv --out world_calibration.json
  python world.py generate --out runs/demo/world --tracks 2000 --users 400 --genres 20 --seed 0
  python world.py listen --catalog ../shared/data/spotify_tracks/by_genre_6000.csv --out runs/demo/listen

generate writes catalog.csv (Spotify Tracks layout), userid_trackid_timestamp.tsv (Music4All-Onion),
id_information.csv and id_metadata.csv (Music4All, tab-separated), truth.json (the planted tastes and skip model
that later stages must recover) and world_config.json. listen simulates the same listeners over a real catalogue.

Generative model, in one place:
  features   per genre Gaussian in a transformed space (logit for [0,1] features, raw loudness / tempo) with a
             pooled within-genre correlation; an artist's tracks scatter around the artist's centre.
  listening  sessions of plays; the next track is a neighbour of the previous one (feature space, popularity
             weighted), the same artist, a popular track, a favourite-genre track or a random one.
  skips      p_skip = sigmoid(b0 + b1 * misfit(user, track) + b2 * s_t), s_t = a * (standardised x_t @ w) + noise;
             b0 is solved so that the share of skipped plays hits --skip-share.
"""
import argparse
import math
import os
import random
import sys

import numpy as np
from tqdm import tqdm

import formats
import logfiles
from calibration import (CAL_GENRES, EPS, MODEL_FEATURES, SHRINK_ROWS, calibrate, from_model_space, standardise,
                         to_model_space)
from common import UserError, fail, read_json, run_main, save_config, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
CALIBRATION: str = os.path.join(HERE, "world_calibration.json")  # committed output of `world.py calibrate`

TRACKS: int = 2000             # catalogue size
USERS: int = 400               # listeners
GENRES: int = 20               # genres used (the largest calibrated ones)
SEED: int = 0
ARTIST_TRACKS = (3, 12)        # tracks per artist, inclusive range
ARTIST_SHARE: float = 0.5      # share of within-genre feature variance that lies between artist centres
DUPLICATE_SHARE: float = 0.01  # tracks listed under a second genre, as the real file repeats track_ids
COLLAB_SHARE: float = 0.08     # tracks with a second credited artist ("A;B")
PLAYS_PER_USER: float = 125.0  # mean plays per user (log-normal across users)
ACTIVITY_SIGMA: float = 0.6    # log-normal spread of plays per user
MIN_PLAYS: int = 5
SESSION_PLAYS: float = 12.0    # mean plays per session (geometric)
DAYS: float = 90.0             # listening window
START: int = 1577836800        # 2020-01-01 00:00:00 UTC, as the Onion events
MIN_SESSION_GAP: int = 3600    # sessions are separated by at least an hour
P_SIMILAR: float = 0.55        # next track: one of the nearest neighbours of the previous one
P_ARTIST: float = 0.10         # another track of the same artist
P_POPULAR: float = 0.10        # a globally popular track
P_GENRE: float = 0.15          # a track of one of the user's favourite genres (also every session's first)
P_EXPLORE: float = 0.10        # any track, uniformly
NEIGHBOURS: int = 20           # neighbours searched within the previous track's primary genre
ZIPF_EXPONENT: float = 1.0     # popularity weight of the rank r (0 = most popular): (r + offset) ** -exponent
ZIPF_OFFSET: float = 10.0
CENTRE_NOISE: float = 0.5      # user centre = a favourite-genre track + this much standardised noise
GENRE_PENALTY: float = 1.0     # misfit added for a track outside the user's favourite genres
SKIP_SHARE: float = 0.35       # target share of skipped plays (b0 is solved for it)
SKIP_MISFIT: float = 1.5       # b1
SKIP_PROPENSITY: float = 2.0   # b2: some tracks are skipped by almost everyone (intros, weak songs)
PROPENSITY_LINEAR: float = 0.8  # a: share (as a correlation) of s_t explained by the track's features
PARTIAL_SHARE: float = 0.12    # non-skipped plays stopped between 30 and 90 s
SKIP_SECONDS = (5, 25)         # dwell of a skip; with the 0-3 s gap the next play starts before 30 s
FULL_FRACTION = (0.85, 1.0)    # share of the track heard when it is not skipped
GAP_SECONDS = (0, 3)           # pause between plays of a session

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# ---------------------------------------------------------------------------------------------- catalogue

_ADJ = ("Golden Silent Electric Broken Velvet Neon Wild Lonely Crimson Hidden Midnight Burning Frozen Distant Sweet "
        "Restless Paper Silver Hollow Bright Little Endless Secret Heavy Gentle Cold Blue Red Strange Quiet Sacred "
        "Fading Lost Northern Summer Faded Savage Holy Rising Falling Dirty Lucky Empty Violet Twisted Shining "
        "Final Last Young").split()
_NOUN = ("River Heart City Dream Fire Ocean Summer Road Light Shadow Garden Rain Mirror Echo Storm Sky Night Highway "
         "Moon Signal Horizon Island Thunder Window Desert Forest Engine Angel Letter Stranger Wave Kingdom Ghost "
         "Diamond Satellite Canyon Harbor Paradise Machine Memory Season Valley Voice Sunrise Fever Circle Mountain "
         "Flame").split()
_FIRST = ("Mira Leo Ava Jonah Nora Felix Ivy Theo Luna Oscar Maya Elias Cleo Hugo Iris Milo Zoe Otis June Arlo "
          "Rosa Silas Lena Jasper Vera Emil Nina Caleb Alma Rafael Sofia Tomas Dalia Marco Esme Ruben Lila Dario "
          "Ines Kai").split()
_LAST = ("Kessler Moreau Hale Lindqvist Okafor Varga Castillo Brandt Novak Reyes Sato Laurent Quinn Adler Marsh "
         "Petrov Silva Holm Ferreira Kane Winter Rossi Blake Navarro Lund Costa Frost Mendes Ward Byrne Tanaka Voss "
         "Fischer Romero Shaw Dumont Ortiz Berg Sousa").split()


def _artist_name(rnd, used):
    """A plausible artist name not used before (deterministic given rnd)."""
    a, n, f, l = rnd.choice(_ADJ), rnd.choice(_NOUN), rnd.choice(_FIRST), rnd.choice(_LAST)
    name = rnd.choice((f"{f} {l}", f"The {a} {n}s", f"{a} {n}", f"{f} & the {n}s", f"{n} {l}", f"{f} {n}"))
    while name in used:
        name = f"{name} {rnd.choice(_LAST)}"
    used.add(name)
    return name


def _title(rnd, used_keys, artist):
    a, n, n2 = rnd.choice(_ADJ), rnd.choice(_NOUN), rnd.choice(_NOUN)
    for _ in range(50):
        t = rnd.choice((f"{a} {n}", f"{n} of the {n2}", f"The {n}", f"{a} {n}s", f"{n}", f"{a} Love",
                        f"{n} {n2}", f"Into the {n}"))
        key = formats.norm_key(artist, t)
        if key not in used_keys:
            break
        a, n, n2 = rnd.choice(_ADJ), rnd.choice(_NOUN), rnd.choice(_NOUN)
    else:
        t = f"{t} {len(used_keys)}"
        key = formats.norm_key(artist, t)
    used_keys.add(key)
    return t


def _random_ids(rng, n, length, taken=()):
    """n unique random base62 strings of the given length (22: Spotify track ids, 16: Music4All ids)."""
    taken, out = set(taken), []
    while len(out) < n:
        for row in rng.integers(0, 62, size=(n - len(out), length)):
            s = "".join(_B62[c] for c in row)
            if s not in taken:
                taken.add(s)
                out.append(s)
    return out


def make_catalog(cal, n_tracks, n_genres, seed):
    """Sample a Catalog from the calibration; returns (Catalog, album release year per row (N,) int)."""
    names = list(cal["genres"])
    if not 1 <= n_genres <= len(names):
        raise UserError(f"--genres must be between 1 and {len(names)} (the calibrated genres), got {n_genres}")
    if n_tracks < n_genres:
        raise UserError(f"--tracks ({n_tracks}) must be at least --genres ({n_genres})")
    rng, rnd = np.random.default_rng([seed, 1]), random.Random(seed)
    chol = np.linalg.cholesky(np.asarray(cal["correlation"]) + 1e-6 * np.eye(len(MODEL_FEATURES)))
    gauss = lambda n: rng.standard_normal((n, len(MODEL_FEATURES))) @ chol.T  # noqa: E731  (n, 9) correlated
    z, genre, artist_of, art_lat = [], [], [], []
    n_art = 0
    for gi, g in enumerate(names[:n_genres]):
        s = cal["genres"][g]
        n_g = n_tracks // n_genres + (gi < n_tracks % n_genres)
        sizes = []
        while sum(sizes) < n_g:
            sizes.append(int(rng.integers(ARTIST_TRACKS[0], ARTIST_TRACKS[1] + 1)))
        sizes[-1] -= sum(sizes) - n_g
        centre = gauss(len(sizes))
        rep = np.repeat(np.arange(len(sizes)), sizes)
        zz = math.sqrt(ARTIST_SHARE) * centre[rep] + math.sqrt(1 - ARTIST_SHARE) * gauss(n_g)
        perm = rng.permutation(n_g)  # the real file is not ordered by artist within a genre
        z.append(np.asarray(s["mean"]) + np.asarray(s["std"]) * zz[perm])
        artist_of.append(n_art + rep[perm])
        genre += [gi] * n_g
        art_lat.append(rng.standard_normal(len(sizes)))
        n_art += len(sizes)
    z, genre, artist_of = np.concatenate(z), np.array(genre), np.concatenate(artist_of)
    n = len(z)
    kd = cal["key_distribution"]
    key = rng.choice([int(k) for k in kd], size=n, p=np.array(list(kd.values())) / sum(kd.values()))
    feats = from_model_space(z, key)
    gs = [cal["genres"][names[g]] for g in genre]
    mode = (rng.random(n) < np.array([s["mode_share"] for s in gs])).astype(np.int64)
    explicit = rng.random(n) < np.array([s["explicit_rate"] for s in gs])
    logdur = np.array([s["log_duration_mean"] for s in gs]) + np.array([s["log_duration_std"] for s in gs]) * \
        rng.standard_normal(n)
    duration = np.clip(np.exp(logdur), 30_000, 1_200_000).astype(np.int64)
    latent = 0.8 * np.concatenate(art_lat)[artist_of] + 0.6 * rng.standard_normal(n)  # popular artists' tracks
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-latent, kind="stable")] = np.arange(n)
    q = np.asarray(cal["popularity_quantiles"])
    popularity = np.round(np.interp(1 - (rank + 0.5) / n, np.linspace(0, 1, len(q)), q)).astype(np.int64)
    # names: artists, then per artist 1-3 albums with a year, then unique titles
    used = set()
    artist_names = [_artist_name(rnd, used) for _ in range(n_art)]
    albums = []
    for a in range(n_art):
        k = rnd.randint(1, 3)
        albums.append([(rnd.choice((f"{rnd.choice(_ADJ)} {rnd.choice(_NOUN)}s", rnd.choice(_NOUN),
                                    artist_names[a], f"{rnd.choice(_NOUN)} {rnd.choice(_NOUN)}")),
                        1960 + int(62 * rnd.random() ** 0.5)) for _ in range(k)])
    same_genre = {}
    for a, g in zip(artist_of, genre):
        same_genre.setdefault(g, []).append(a)
    titles_used = {a: set() for a in range(n_art)}
    art_str, title, album, year = [], [], [], np.zeros(n, dtype=np.int64)
    for i in range(n):
        a = int(artist_of[i])
        credit = artist_names[a]
        t = _title(rnd, titles_used[a], credit)
        alb, year[i] = rnd.choice(albums[a])
        u = rnd.random()
        other = artist_names[rnd.choice(same_genre[genre[i]])]
        if u < COLLAB_SHARE and other != credit:
            credit = f"{credit};{other}"
            if rnd.random() < 0.5:
                t = f"{t} (feat. {other})"
        elif u < COLLAB_SHARE + 0.04 and year[i] < 2000:
            t = f"{t} - Remastered {rnd.randint(2005, 2021)}"
        art_str.append(credit), title.append(t), album.append(alb)
    genres = [[names[g]] for g in genre]
    for i in rng.choice(n, size=int(round(DUPLICATE_SHARE * n)) if n_genres > 1 else 0, replace=False):
        second = int(rng.integers(n_genres - 1))
        genres[i].append(names[second + (second >= genre[i])])
    cat = formats.Catalog(_random_ids(rng, n, 22), title, art_str, album, genres, feats, popularity, duration,
                          explicit, mode)
    return cat, year


# ---------------------------------------------------------------------------------------------- listening

def skip_probability(misfit, propensity, b0, b1, b2):
    """(P,) misfit, (P,) s_t -> (P,) p_skip = sigmoid(b0 + b1 * misfit + b2 * s_t)."""
    return 1 / (1 + np.exp(-(b0 + b1 * misfit + b2 * propensity)))


def solve_b0(misfit, propensity, b1, b2, target):
    """b0 such that the mean skip probability over the plays equals target (bisection; the mean is monotone in b0)."""
    lo, hi = -50.0, 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if skip_probability(misfit, propensity, mid, b1, b2).mean() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def misfit(x_tracks, centres, in_favourite, genre_penalty=GENRE_PENALTY):
    """(P, D) standardised track features, (P, D) user centres, (P,) bool -> (P,) mean squared distance
    + genre_penalty where the track's genre is not a favourite of the user."""
    return ((x_tracks - centres) ** 2).mean(1) + genre_penalty * ~in_favourite


def nearest_neighbours(x, blocks, k):
    """(N, D) points, list of index arrays -> (N, k) indices of the k nearest other points of the same block.

    Searching within a block (primary genre) costs sum(n_b^2) instead of N^2: 90,000 tracks stay fast. A block with
    fewer than k + 1 points repeats its neighbours cyclically; a singleton is its own neighbour.
    """
    out = np.zeros((len(x), k), dtype=np.int64)
    for idx in blocks:
        xb = x[idx]
        sq = (xb ** 2).sum(1)
        kk = min(k, len(idx) - 1)
        if kk == 0:
            out[idx] = idx[0]
            continue
        for s in range(0, len(idx), 1024):
            d = sq[s:s + 1024, None] - 2 * xb[s:s + 1024] @ xb.T + sq[None, :]  # (chunk, n_b)
            d[np.arange(d.shape[0]), np.arange(s, s + d.shape[0])] = np.inf
            part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            order = np.take_along_axis(d, part, 1).argsort(1, kind="stable")
            nb = idx[np.take_along_axis(part, order, 1)]
            out[idx[s:s + 1024]] = np.tile(nb, (1, -(-k // kk)))[:, :k]
    return out


def planted_propensity(x, a, rng):
    """(N, D) standardised features -> (s (N,), w (D,), lin_mean, lin_std).

    s_t = a * (x_t @ w - lin_mean) / lin_std + sqrt(1 - a^2) * noise: unit variance, correlation a with a linear
    function of the features, so a model that sees feature-derived IDs can learn part of it.
    """
    w = rng.standard_normal(x.shape[1])
    w /= np.linalg.norm(w)
    lin = x @ w
    lin_mean, lin_std = float(lin.mean()), float(lin.std() or 1.0)
    s = a * (lin - lin_mean) / lin_std + math.sqrt(1 - a ** 2) * rng.standard_normal(len(x))
    return s, w, lin_mean, lin_std


def make_users(rng, x, members, pop_w, n_users, o):
    """Planted tastes: 1-3 favourite genres (drawn by genre size), a centre near a favourite-genre track, activity.

    Returns favs (list of genre index arrays), fav (U, G) bool, centres (U, D), n_plays (U,).
    """
    sizes = np.array([len(m) for m in members], dtype=float)
    fav, centres, favs = np.zeros((n_users, len(members)), dtype=bool), np.zeros((n_users, x.shape[1])), []
    n_plays = np.maximum(o.min_plays, np.round(rng.lognormal(math.log(o.plays_per_user) - ACTIVITY_SIGMA ** 2 / 2,
                                                             ACTIVITY_SIGMA, n_users))).astype(np.int64)
    for u in range(n_users):
        k = min(int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2])), len(members))
        f = rng.choice(len(members), size=k, replace=False, p=sizes / sizes.sum())
        fav[u, f] = True
        favs.append(f)
        m = members[f[0]]
        centres[u] = x[rng.choice(m, p=pop_w[m] / pop_w[m].sum())] + o.centre_noise * rng.standard_normal(x.shape[1])
    return favs, fav, centres, n_plays


def walk(rng, nbr, artist, members, favs, pop_w, n_plays, o):
    """The chain of played tracks: (U, L) track rows and (U, L) session-start flags, L = max plays.

    Every random choice is drawn for all (user, step) at once; the loop then advances all users one step at a time,
    since only "similar" and "same artist" depend on the previous track.
    """
    n_users, n, L = len(n_plays), len(pop_w), int(n_plays.max())
    cum = np.cumsum(pop_w[nbr], 1)  # (N, K) popularity-weighted neighbour choice
    cum /= cum[:, -1:]
    # artists as slices of a sorted order: artist a owns by_artist[start[a] : start[a] + size[a]]
    by_artist = np.argsort(artist, kind="stable")
    art_size = np.bincount(artist)
    art_start = np.concatenate([[0], np.cumsum(art_size)[:-1]])
    pos_in_artist = np.empty(n, dtype=np.int64)
    pos_in_artist[by_artist] = np.arange(n) - art_start[artist[by_artist]]
    probs = np.array([o.p_similar, o.p_artist, o.p_popular, o.p_genre, o.p_explore])
    move = rng.choice(5, size=(n_users, L), p=probs / probs.sum())
    session_start = np.zeros((n_users, L), dtype=bool)
    for u in range(n_users):
        starts = np.concatenate([[0], np.cumsum(rng.geometric(1 / o.session_plays, size=n_plays[u]))])
        session_start[u, starts[starts < n_plays[u]]] = True
    move[session_start] = 3  # a session opens on the user's taste
    genre_pick = np.zeros((n_users, L), dtype=np.int64)
    for u in range(n_users):
        m = np.concatenate([members[g] for g in favs[u]])
        genre_pick[u] = rng.choice(m, size=L, p=pop_w[m] / pop_w[m].sum())
    popular_pick = rng.choice(n, size=(n_users, L), p=pop_w / pop_w.sum())
    explore_pick = rng.integers(0, n, size=(n_users, L))
    u_sim, u_art = rng.random((n_users, L)), rng.random((n_users, L))
    track = np.zeros((n_users, L), dtype=np.int64)
    for j in tqdm(range(L), desc="listening", disable=None, leave=False):
        prev = track[:, j - 1] if j else genre_pick[:, 0]
        sim = nbr[prev, (cum[prev] < u_sim[:, j, None]).sum(1).clip(max=nbr.shape[1] - 1)]
        a, size = artist[prev], art_size[artist[prev]]
        other = np.floor(u_art[:, j] * np.maximum(size - 1, 1)).astype(np.int64)
        other += (other >= pos_in_artist[prev]) & (size > 1)  # not the track just played
        same = by_artist[art_start[a] + np.minimum(other, size - 1)]
        track[:, j] = np.choose(move[:, j], [sim, same, popular_pick[:, j], genre_pick[:, j], explore_pick[:, j]])
    return track, session_start


def dwell_seconds(rng, skip, partial, duration_s):
    """(P,) bool, (P,) bool, (P,) track length in s -> (P,) int seconds heard (at least 1, at most the track)."""
    p = len(skip)
    dwell = np.where(skip, rng.uniform(*SKIP_SECONDS, p),
                     np.where(partial, rng.uniform(30, 90, p), duration_s * rng.uniform(*FULL_FRACTION, p)))
    return np.maximum(1, np.round(np.minimum(dwell, np.maximum(duration_s, 1)))).astype(np.int64)


def walk_tables(cat, neighbours, zipf_exponent):
    """What the walk draws from, read off the catalogue alone (no randomness): simulate's inputs, and what
    benchmarks/world_ceiling.py rebuilds a world's planted model from.

    Returns x (N, 9) standardised model-space features, their mean and std, names (G,) primary genres in order of
    first appearance, genre (N,) index into names, members [G arrays of rows], pop_w (N,) popularity weights
    (rank + ZIPF_OFFSET) ** -zipf_exponent, artist (N,) first-credited-artist index, nbr (N, neighbours) the nearest
    neighbours within the primary genre (genres of at most `neighbours` tracks pooled).
    """
    n = len(cat)
    x, mean, std = standardise(to_model_space(cat.features))  # (N, 9)
    names = list(dict.fromkeys(cat.primary_genre()))
    genre_of = {g: i for i, g in enumerate(names)}
    genre = np.array([genre_of[g] for g in cat.primary_genre()])
    members = [np.flatnonzero(genre == g) for g in range(len(names))]
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-cat.popularity, kind="stable")] = np.arange(n)
    pop_w = (rank + ZIPF_OFFSET) ** -zipf_exponent  # (N,)
    first_artist = [a.split(";")[0] for a in cat.artists]
    art_ids = {a: i for i, a in enumerate(dict.fromkeys(first_artist))}
    artist = np.array([art_ids[a] for a in first_artist])
    small = [m for m in members if len(m) <= neighbours]
    blocks = [m for m in members if len(m) > neighbours] + ([np.concatenate(small)] if small else [])
    nbr = nearest_neighbours(x, blocks, neighbours)  # (N, K)
    return x, mean, std, names, genre, members, pop_w, artist, nbr


def simulate(cat, n_users, seed, o):
    """Listeners over a Catalog. o: the parsed options (probabilities, skip model, sizes).

    Returns (events, truth): events = (user (P,), row (P,), ts (P,), dwell (P,)) in user-major play order.
    """
    rng = np.random.default_rng([seed, 2])
    x, mean, std, names, genre, members, pop_w, artist, nbr = walk_tables(cat, o.neighbours, o.zipf_exponent)
    prop, w, lin_mean, lin_std = planted_propensity(x, o.propensity_linear, rng)
    favs, fav, centres, n_plays = make_users(rng, x, members, pop_w, n_users, o)
    track, session_start = walk(rng, nbr, artist, members, favs, pop_w, n_plays, o)
    valid = np.arange(track.shape[1])[None, :] < n_plays[:, None]
    user, row, start = np.nonzero(valid)[0], track[valid], session_start[valid]
    # skips from the planted model; b0 makes the expected share of skips the requested one
    mis = misfit(x[row], centres[user], fav[user, genre[row]], o.genre_penalty)
    b0 = solve_b0(mis, prop[row], o.skip_misfit, o.skip_propensity, o.skip_share)
    skip = rng.random(len(row)) < skip_probability(mis, prop[row], b0, o.skip_misfit, o.skip_propensity)
    partial = ~skip & (rng.random(len(row)) < o.partial_share)
    dwell = dwell_seconds(rng, skip, partial, cat.duration_ms[row] / 1000.0)
    step = dwell + rng.integers(GAP_SECONDS[0], GAP_SECONDS[1] + 1, len(row))
    ts = _timestamps(user, start, step, rng, o)
    truth = {"feature_space": {"features": list(MODEL_FEATURES),
                               "transform": f"logit(clip(x, {EPS}, 1 - {EPS})) for [0,1] features, raw loudness "
                                            "and tempo; then (x - mean) / std over the catalogue",
                               "mean": mean.tolist(), "std": std.tolist()},
             "skip_model": {"formula": "p_skip = sigmoid(b0 + b1 * misfit + b2 * s_t)",
                            "misfit": "mean over the 9 features of (x_t - centre_u)^2 + genre_penalty * "
                                      "[primary genre of t not a favourite of u]",
                            "b0": b0, "b1": o.skip_misfit, "b2": o.skip_propensity,
                            "genre_penalty": o.genre_penalty, "target_skip_share": o.skip_share},
             "propensity": {"formula": "s_t = a * (x_t @ w - lin_mean) / lin_std + sqrt(1 - a^2) * noise",
                            "a": o.propensity_linear, "w": w.tolist(), "lin_mean": lin_mean,
                            "lin_std": lin_std},
             "transitions": {"similar": o.p_similar, "artist": o.p_artist, "popular": o.p_popular,
                             "genre": o.p_genre, "explore": o.p_explore, "neighbours": o.neighbours,
                             "neighbour_search": "within the primary genre; genres with <= neighbours tracks pooled",
                             "popularity_weight": f"(rank + {ZIPF_OFFSET:g}) ** -{o.zipf_exponent:g}",
                             "session_first": "genre"},
             "dwell": {"skip_seconds": list(SKIP_SECONDS), "partial_seconds": [30, 90],
                       "partial_share_of_non_skips": o.partial_share, "full_fraction": list(FULL_FRACTION),
                       "gap_seconds": list(GAP_SECONDS)},
             "users": [{"user_id": str(u), "favourite_genres": [names[g] for g in favs[u]],
                        "centre": np.round(centres[u], 4).tolist(), "plays": int(n_plays[u])}
                       for u in range(n_users)],
             "tracks": {"track_id": list(cat.track_id), "skip_propensity": np.round(prop, 4).tolist()},
             "realised": {"events": int(len(row)), "skip_share": float((dwell < 30).mean()),
                          "long_share": float((dwell > 90).mean()), "planted_skips": float(skip.mean())}}
    return (user, row, ts, dwell), truth


def _timestamps(user, start, step, rng, o):
    """(P,) user, session-start flag, seconds until the next play -> (P,) unix seconds.

    Session starts are spread uniformly over the window, then pushed later where a session would overlap the
    previous one (plus MIN_SESSION_GAP), so sessions are separated by hours.
    """
    ts = np.zeros(len(user), dtype=np.int64)
    session = np.cumsum(start) - 1  # (P,) global session index
    offset = np.cumsum(step) - step
    offset -= offset[np.flatnonzero(start)][session]  # seconds since the session began
    length = np.bincount(session, weights=step).astype(np.int64)  # (S,)
    first = np.flatnonzero(start)
    bounds = np.flatnonzero(np.diff(np.concatenate([[-1], user[first], [-1]])))
    window = int(o.days * 86400)
    begin = np.zeros(len(first), dtype=np.int64)
    for a, b in zip(bounds[:-1], bounds[1:]):  # sessions of one user: first[a:b]
        t = np.sort(rng.integers(0, window, b - a))
        for s in range(a, b):
            t_s = t[s - a] if s == a else max(t[s - a], begin[s - 1] + length[s - 1] + MIN_SESSION_GAP)
            begin[s] = t_s
    ts[:] = START + begin[session] + offset
    return ts


def write_logs(out, cat, events, seed, release=None):
    """Music4All-Onion events + id_information / id_metadata for the catalogue; every play joins by id and name."""
    user, row, ts, _ = events
    m4a = _random_ids(np.random.default_rng([seed, 3]), len(cat), 16)
    logfiles.write_onion_events(((str(u), m4a[r], int(t)) for u, r, t in zip(user, row, ts)),
                                os.path.join(out, "userid_trackid_timestamp.tsv"))
    formats.write_id_information(((m4a[i], cat.artists[i].split(";")[0], cat.track_name[i], cat.album_name[i])
                                  for i in range(len(cat))), os.path.join(out, "id_information.csv"))
    f = cat.features
    col = lambda name: f[:, formats.FEATURES.index(name)]  # noqa: E731
    formats.write_id_metadata(((m4a[i], cat.track_id[i], f"{float(cat.popularity[i])}",
                                "" if release is None else int(release[i]), float(col("danceability")[i]),
                                float(col("energy")[i]), f"{col('key')[i]:.1f}", f"{float(cat.mode[i])}",
                                float(col("valence")[i]), float(col("tempo")[i]),
                                int(cat.duration_ms[i])) for i in range(len(cat))),
                              os.path.join(out, "id_metadata.csv"))


def summary(cat, events, truth):
    return {"tracks": len(cat), "users": len(truth["users"]), "events": int(len(events[0])),
            "skip_share": round(truth["realised"]["skip_share"], 4),
            "long_share": round(truth["realised"]["long_share"], 4), "b0": round(truth["skip_model"]["b0"], 4)}


# ---------------------------------------------------------------------------------------------- CLI

def _listening_options(p):
    p.add_argument("--users", type=int, default=USERS, help="listeners simulated (default %(default)s)")
    p.add_argument("--seed", type=int, default=SEED,
                   help="seed of every random draw (catalogue, listeners, ids) (default %(default)s)")
    p.add_argument("--plays-per-user", type=float, default=PLAYS_PER_USER,
                   help="mean plays per listener, log-normal across listeners (default %(default)s)")
    p.add_argument("--min-plays", type=int, default=MIN_PLAYS,
                   help="fewest plays a listener has; smaller log-normal draws are raised to it "
                        "(default %(default)s)")
    p.add_argument("--session-plays", type=float, default=SESSION_PLAYS,
                   help="mean plays per session, geometric (default %(default)s)")
    p.add_argument("--days", type=float, default=DAYS,
                   help="listening window in days from 2020-01-01, as the Onion events; session starts are spread "
                        "uniformly over it (default %(default)s)")
    p.add_argument("--p-similar", type=float, default=P_SIMILAR,
                   help="weight of the next track being one of the previous one's nearest neighbours, popularity "
                        "weighted; the five --p-* weights are normalised to sum to 1 (default %(default)s)")
    p.add_argument("--p-artist", type=float, default=P_ARTIST,
                   help="weight of the next track being another track of the same artist (default %(default)s)")
    p.add_argument("--p-popular", type=float, default=P_POPULAR,
                   help="weight of the next track being a globally popular one (default %(default)s)")
    p.add_argument("--p-genre", type=float, default=P_GENRE,
                   help="weight of the next track being a track of one of the listener's favourite genres; every "
                        "session opens this way (default %(default)s)")
    p.add_argument("--p-explore", type=float, default=P_EXPLORE,
                   help="weight of the next track being any track, uniformly (default %(default)s)")
    p.add_argument("--neighbours", type=int, default=NEIGHBOURS,
                   help="nearest neighbours per track, searched within its primary genre; genres with no more "
                        "tracks than this are pooled (default %(default)s)")
    p.add_argument("--zipf-exponent", type=float, default=ZIPF_EXPONENT,
                   help=f"popularity weight of the track of popularity rank r (0 = most popular): "
                        f"(r + {ZIPF_OFFSET:g}) ** -exponent (default %(default)s)")
    p.add_argument("--centre-noise", type=float, default=CENTRE_NOISE,
                   help="a listener's taste centre is a favourite-genre track plus this much standardised noise "
                        "(default %(default)s)")
    p.add_argument("--genre-penalty", type=float, default=GENRE_PENALTY,
                   help="misfit added for a track whose primary genre is not one of the listener's favourites "
                        "(default %(default)s)")
    p.add_argument("--skip-share", type=float, default=SKIP_SHARE,
                   help="target share of skipped plays; the skip model's b0 is solved for it (default %(default)s)")
    p.add_argument("--skip-misfit", type=float, default=SKIP_MISFIT,
                   help="b1 of p_skip = sigmoid(b0 + b1 * misfit + b2 * s_t): how much a track outside the "
                        "listener's taste is skipped more (default %(default)s)")
    p.add_argument("--skip-propensity", type=float, default=SKIP_PROPENSITY,
                   help="b2 of the same: how much a track's own propensity (intros, weak songs) makes everyone skip "
                        "it (default %(default)s)")
    p.add_argument("--propensity-linear", type=float, default=PROPENSITY_LINEAR,
                   help="a: correlation of a track's skip propensity s_t with a linear function of its features, "
                        "the part a model that sees the features can learn (default %(default)s)")
    p.add_argument("--partial-share", type=float, default=PARTIAL_SHARE,
                   help="share of non-skipped plays stopped between 30 and 90 s (default %(default)s)")


def _check(o):
    probs = (o.p_similar, o.p_artist, o.p_popular, o.p_genre, o.p_explore)
    if min(probs) < 0 or sum(probs) <= 0:
        raise UserError("--p-* move probabilities must be >= 0 and not all 0")
    for name, v in (("skip-share", o.skip_share), ("partial-share", o.partial_share),
                    ("propensity-linear", o.propensity_linear)):
        if not 0 <= v <= 1 or (name == "skip-share" and not 0 < v < 1):
            raise UserError(f"--{name} must be in [0, 1] (skip-share strictly inside), got {v}")
    if o.users < 1 or o.neighbours < 1 or o.plays_per_user <= 0 or o.session_plays < 1 or o.days <= 0:
        raise UserError("--users, --neighbours, --plays-per-user, --session-plays and --days must be positive")


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("calibrate", help="recompute world_calibration.json from a real Spotify Tracks CSV")
    c.add_argument("--spotify", required=True, help="Spotify Tracks CSV (dataset.csv layout)")
    c.add_argument("--out", default=CALIBRATION,
                   help="calibration JSON to write (default: world_calibration.json beside world.py, the file "
                        "generate reads)")
    c.add_argument("--genres", type=int, default=CAL_GENRES,
                   help="genres kept, those with the most rows first (default %(default)s)")
    c.add_argument("--shrink-rows", type=float, default=SHRINK_ROWS,
                   help="pseudo-rows of the global statistics added to each genre's (a shrinkage prior): a genre "
                        "with that many rows moves halfway to the global values (default %(default)s)")
    g = sub.add_parser("generate", help="write a synthetic catalogue and its listening logs")
    g.add_argument("--out", required=True,
                   help="output folder (catalog.csv, the log, the Music4All id tables, truth.json)")
    g.add_argument("--tracks", type=int, default=TRACKS, help="catalogue size (default %(default)s)")
    g.add_argument("--genres", type=int, default=GENRES,
                   help="genres used, the largest calibrated ones first (default %(default)s)")
    g.add_argument("--calibration", default=CALIBRATION,
                   help="calibration JSON written by `world.py calibrate` (default: the committed "
                        "world_calibration.json beside world.py)")
    _listening_options(g)
    s = sub.add_parser("listen", help="simulate listeners over a real catalogue file")
    s.add_argument("--catalog", required=True, help="Spotify Tracks CSV (dataset.csv layout)")
    s.add_argument("--out", required=True, help="output folder (the log, the Music4All id tables, truth.json)")
    _listening_options(s)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.command == "calibrate":
        cat, report = formats.load_catalog(args.spotify)
        cal = {"command": f"python world.py calibrate --spotify {args.spotify} --out {os.path.basename(args.out)}"
                          f" --genres {args.genres} --shrink-rows {args.shrink_rows:g}",
               **calibrate(cat, args.genres, args.shrink_rows)}
        write_json(args.out, cal)
        print(f"calibrated {len(cal['genres'])} genres from {report['kept']} tracks -> {args.out}")
        return
    _check(args)
    release = None
    if args.command == "generate":
        if args.tracks < 1:
            raise UserError("--tracks must be positive")
        cal = read_json(args.calibration, "calibration (run `python world.py calibrate`)")
        if "genres" not in cal or "correlation" not in cal:
            fail(args.calibration, "not a world calibration (no 'genres' / 'correlation')")
        cat, release = make_catalog(cal, args.tracks, args.genres, args.seed)
        formats.write_catalog(cat, os.path.join(args.out, "catalog.csv"))
    else:
        cat, report = formats.load_catalog(args.catalog)
        print(formats.catalog_note(report))
    events, truth = simulate(cat, args.users, args.seed, args)
    write_logs(args.out, cat, events, args.seed, release)
    write_json(os.path.join(args.out, "truth.json"), truth)
    info = summary(cat, events, truth)
    save_config(args.out, args, name="world_config.json", summary=info)
    print(" ".join(f"{k}={v}" for k, v in info.items()), "->", args.out)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
