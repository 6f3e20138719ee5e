"""What knowing the listener adds to the preference bar: a listener-aware score from the training pairs alone.

    python benchmarks/listener_prefs.py --run runs/demo [--out runs/demo/eval/listener_prefs.json]

evaluate.py's preference bar, the per-track long-listen rate, sees the track alone. The synthetic world skips by
the track and by the listener (world.skip_probability: the track's misfit to the listener's taste, and its own
propensity), and benchmarks/world_ceiling.py's planted model ranks the test pairs some 0.07-0.10 better told the
listener than averaged over them. No system of the pipeline is told who listens; a pair's prompt is its context
track. Would telling the model the listener open a way to the preference target? This script measures how much of
that room a score learned from the training pairs alone takes. Per listener u, a profile of their training pairs
(chosen tracks heard to the end, rejected ones skipped), and for a track t the features

  f(u, t) = [ logit rate(t),                                   the bar (training-window long-listen rate)
              logit of u's long-listen share in t's genre,     (L + a p_u) / (L + S + a), p_u u's overall share
              u's share of pair tracks in t's genre,           (L + S) / (n_long + n_skip): a favourite genre
              mean squared distance of t's audio features to the mean of u's chosen tracks ]   (u's taste centre)

with L, S u's chosen and rejected tracks of t's genre. A Bradley-Terry fit, P(chosen > rejected) =
s(w . (f(u, c) - f(u, r))), learns w on the training pairs, each pair taken out of its listener's profile and
out of its two tracks' rate counts (leave one out: no feature holds the label it is fitted to, as on the test pairs,
drawn later; without it the rate's own weight and the listener's both read the pair's answer). Then the accuracy on
the test pairs of evaluate.py, paired against the rate; the SFT and DPO rows of that run's evaluation beside them
(RUN/eval/results.json or --results: its per-pair values, the same pairs).
"""
import argparse
import json
import os

import numpy as np

import harness  # noqa: F401  first: it puts the repository root on sys.path for the imports below
import baselines as B
import evaluate as E
import formats
import metrics
import rvq
import signals
from common import UserError, need_file, read_json, run_main, write_json

# -----------------------------------------------------------------------------
PRIOR: float = 2.0   # pseudo-plays of a listener's genre share toward their overall share: one play says little
N_BOOT: int = 2000
FEATURES = ("logit rate", "listener's genre share heard", "listener's genre share played", "distance to taste centre")
ROWS = {"listener-aware (all four)": (0, 1, 2, 3), "rate + the listener's genres": (0, 1, 2),
        "rate + the listener's taste centre": (0, 3)}
# -----------------------------------------------------------------------------


def logit(p):
    return np.log(p) - np.log1p(-p)


def listener_profiles(users, chosen, rejected, genre, x, n_users):
    """Per listener, what their pairs say: dict of long (U, G) chosen counts by genre, skip (U, G) rejected counts,
    centre_sum (U, D) the chosen tracks' features summed, n_long (U,), n_skip (U,).

    users (P,) listener rows; chosen, rejected (P,) catalogue rows; genre (N,) genre rows; x (N, D) features.
    Example: one listener, pairs (c=0, r=1), (c=2, r=1), genres [0, 1, 0]: long [[2, 0]], skip [[0, 2]].
    """
    n_genres = int(genre.max()) + 1
    long, skip = np.zeros((n_users, n_genres)), np.zeros((n_users, n_genres))
    np.add.at(long, (users, genre[chosen]), 1.0)
    np.add.at(skip, (users, genre[rejected]), 1.0)
    centre_sum = np.zeros((n_users, x.shape[1]))
    np.add.at(centre_sum, users, x[chosen])
    return {"long": long, "skip": skip, "centre_sum": centre_sum, "n_long": long.sum(1), "n_skip": skip.sum(1)}


def pair_features(prof, users, tracks, genre, x, long, skip, out_chosen=None, out_rejected=None, prior=PRIOR):
    """f(u, t) of the module docstring for each (users[i], tracks[i]): (P, 4) float64.

    long, skip (N,): the training window's long listens and skips a track (the rate's counts). out_chosen,
    out_rejected (P,) catalogue rows, or None: the pair's own two tracks, taken out of u's profile and out of the
    rate's counts (its chosen play one long listen, its rejected one skip: leave one out, for the training pairs the
    weights are fitted on). A listener with no chosen track left has the catalogue's mean (0 in standardised
    features) as centre.
    Example: u's pairs (c=0, r=1) and (c=2, r=1), genres [0, 1, 0], track 0 scored with its pair (0, 1) left out,
    prior 2: the profile is the pair (2, 1), p_u = (1 + 1) / (2 + 2) = 0.5, genre share heard (1 + 2 * 0.5) /
    (1 + 0 + 2) = 2/3, played 1/2, centre x[2].
    """
    g = genre[tracks]
    t_long, t_skip = long[tracks].astype(np.float64), skip[tracks].astype(np.float64)
    L, S = prof["long"][users, g], prof["skip"][users, g]
    n_long, n_skip, centre_sum = prof["n_long"][users], prof["n_skip"][users], prof["centre_sum"][users]
    if out_chosen is not None:
        t_long, t_skip = t_long - (tracks == out_chosen), t_skip - (tracks == out_rejected)
        L = L - (genre[out_chosen] == g)
        S = S - (genre[out_rejected] == g)
        n_long, n_skip, centre_sum = n_long - 1.0, n_skip - 1.0, centre_sum - x[out_chosen]
    n_all = n_long + n_skip
    p_u = (n_long + 1.0) / (n_all + 2.0)                                   # Laplace, as the long-listen rate
    heard = (L + prior * p_u) / (L + S + prior)
    played = (L + S) / np.maximum(n_all, 1.0)
    centre = centre_sum / np.maximum(n_long, 1.0)[:, None]
    dist = ((x[tracks] - centre) ** 2).mean(1)
    rate = B.long_listen_rate(np.maximum(t_long, 0.0), np.maximum(t_skip, 0.0))
    return np.stack([logit(rate), logit(heard), played, dist], axis=1)


def fit_pairs(d):
    """Bradley-Terry weights from (P, D) feature differences chosen - rejected: (D,). Each pair also counts as
    rejected - chosen with label 0, so no intercept is needed (B.audio_logistic_from_pairs does the same)."""
    w, _ = B.fit_logistic(np.vstack([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))], intercept=False)
    return w


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder whose prefs (train and test pairs) and rvq to use")
    p.add_argument("--results", default=None,
                   help="evaluate.py's results.json whose SFT and DPO rows to place beside (default RUN/eval/"
                        "results.json when it exists)")
    p.add_argument("--prior", type=float, default=PRIOR,
                   help="pseudo-plays of a listener's genre share toward their overall share (default %(default)s)")
    p.add_argument("--n-boot", type=int, default=N_BOOT,
                   help="bootstrap resamples of the intervals (default %(default)s)")
    p.add_argument("--out", default=None, help="JSON of the table (optional)")
    args = p.parse_args(argv)
    meta = read_json(os.path.join(args.run, "sft_data", "meta.json"), "SFT data meta.json")
    catalog, _ = formats.load_catalog(meta["catalog"])
    index = catalog.index()
    x = signals.preprocess(catalog.features, rvq.load_rvq(meta["rvq"])["params"])   # evaluate.py's audio features
    names = {g: i for i, g in enumerate(dict.fromkeys(catalog.primary_genre()))}
    genre = np.array([names[g] for g in catalog.primary_genre()])
    prefs = os.path.join(args.run, "prefs")
    _, _, labels = E.load_listening(os.path.join(args.run, "sft_data"), prefs, len(catalog))
    long, skip = labels["long"], labels["skip"]
    split = {}
    for name in ("train", "test"):
        path = os.path.join(prefs, f"{name}.jsonl")
        need_file(path, f"{name} preference pairs (data.py prefs)")
        split[name] = ([json.loads(line)["user"] for line in open(path, encoding="utf-8") if line.strip()],
                       *E.pair_rows(path, index))
    listeners = {u: i for i, u in enumerate(dict.fromkeys(split["train"][0] + split["test"][0]))}
    (tr_u, tr_c, tr_r), (te_u, te_c, te_r) = [(np.array([listeners[u] for u in s[0]]), s[1], s[2])
                                              for s in (split["train"], split["test"])]
    prof = listener_profiles(tr_u, tr_c, tr_r, genre, x, len(listeners))
    d_train = (pair_features(prof, tr_u, tr_c, genre, x, long, skip, tr_c, tr_r, args.prior)
               - pair_features(prof, tr_u, tr_r, genre, x, long, skip, tr_c, tr_r, args.prior))
    d_test = (pair_features(prof, te_u, te_c, genre, x, long, skip, prior=args.prior)
              - pair_features(prof, te_u, te_r, genre, x, long, skip, prior=args.prior))

    rate = B.pair_accuracy(B.long_listen_rate(long, skip), te_c, te_r)
    rows, weights = {"long-listen rate": rate}, {}
    for name, cols in ROWS.items():
        w = fit_pairs(d_train[:, cols])
        weights[name] = dict(zip([FEATURES[c] for c in cols], map(float, w)))
        s = d_test[:, cols] @ w
        rows[name] = (s > 0) + 0.5 * (s == 0)
    results = args.results or os.path.join(args.run, "eval", "results.json")
    if args.results or os.path.exists(results):
        pq = read_json(results, "evaluation results (evaluate.py)").get("per_query", {})
        if pq.get("keys", {}).get("preferences") != E.query_key(te_c.tolist(), te_r.tolist()):
            raise UserError(f"{results}: evaluated on other preference pairs than {prefs}/test.jsonl: evaluate again")
        rows.update({n: np.asarray(pq["preferences"][n], np.float64) for n in ("SFT", "DPO")
                     if n in pq.get("preferences", {})})

    print(f"{args.run}: {len(te_u)} test pairs of {len(listeners)} listeners; profiles and weights from "
          f"{len(tr_u)} training pairs")
    table = {}
    w_name = max(len(n) for n in rows)
    print(f"  {'score':{w_name}s}  {'accuracy (95% interval)':>24s}   {'- long-listen rate, paired':>26s}")
    for name, acc in rows.items():
        ci = metrics.bootstrap_ci(acc, args.n_boot)
        d = metrics.paired_bootstrap(acc, rate, args.n_boot) if name != "long-listen rate" else None
        cell = "-" if d is None else f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"
        print(f"  {name:{w_name}s}  {ci[0]:>8.3f} [{ci[1]:.3f}, {ci[2]:.3f}]   {cell:>26s}")
        table[name] = {"accuracy": ci, "minus_rate": d}
    for name, w in weights.items():
        print(f"  weights of {name}: " + ", ".join(f"{k} {v:+.3f}" for k, v in w.items()))
    if args.out:
        write_json(args.out, {"run": args.run, "pairs": len(te_u), "table": table, "weights": weights,
                              "options": vars(args)})


if __name__ == "__main__":
    run_main(main)
