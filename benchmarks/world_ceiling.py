"""How well anything can do on a synthetic world's test sets: the planted model's own ranking, against every system.

    python benchmarks/world_ceiling.py --run runs/demo [--out runs/demo/eval/ceiling.json]

world.py writes down what it planted (world/truth.json, world_config.json): how a session's next track is drawn
from the previous one and the listener's tastes, and how likely each listener is to skip each track. From those,
this script scores every catalogue track for each of evaluate.py's test queries and pairs with the probabilities
that generated the logs, which no model trained on the logs can beat on average:

  next track   the target is a long listen (> 90 s) played right after the context in the same session, so the
               Bayes ranking is by P(next = t | context, listener) x P(long | t, listener)          (1)
  preferences  a pair's chosen track was heard > 90 s and its rejected one skipped (< 30 s): the Bayes choice
               is the track with the larger P(long | t, listener) / P(skip | t, listener)            (2)

Two rows of each: "planted, listener known" uses the pair's or query's listener (an upper bound: no system here is
told who listens), "planted, listener averaged" averages (1) and (2)'s terms over the listeners, weighted by their
plays, and sees the context alone as the models do (a reference, not a bound: knowing which listeners play the
context would narrow it). Each is paired against every system of RUN/eval/results.json on the same queries and
pairs (evaluate.py's per-query values, its query keys checked): planted - system, 95% bootstrap interval. What it
tells: how much room a target such as "above SASRec, paired interval above 0" leaves at 200 test queries.
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
import world as W
from common import UserError, need_file, read_json, run_main, write_json
from sessions import LONG_LISTEN

K: int = 10   # HR@K, NDCG@K, as report.md's columns


def shared_next_probs(prev, artist, nbr, pop_w, mix):
    """The moves of world.walk that do not depend on the listener, weighted by their share: (N,), summing to
    1 - the genre move's share. planted_next_probs's terms but the favourite-genre one (see there)."""
    n = len(pop_w)
    w = np.asarray(mix, np.float64) / np.sum(mix)
    similar = np.zeros(n)
    np.add.at(similar, nbr[prev], pop_w[nbr[prev]])
    same = (artist == artist[prev]).astype(np.float64)
    if same.sum() > 1:
        same[prev] = 0.0
    return w[0] * similar / similar.sum() + w[1] * same / same.sum() + w[2] * pop_w / pop_w.sum() + w[4] / n


def planted_next_probs(prev, artist, nbr, pop_w, genre_w, mix):
    """P(next = t | prev, listener) of world.walk: (N,) float64, summing to 1.

    prev: the context row; artist (N,) first-artist index; nbr (N, k) prev's neighbour rows (repeats allowed, as
    world.nearest_neighbours pads small blocks); pop_w (N,) popularity weights; genre_w (N,) the listener's
    favourite-genre draw (pop_w on the favourite genres' tracks, 0 elsewhere, any scale); mix: the weights of
    (similar, artist, popular, genre, explore), normalised here as walk does.
    A move to "artist" picks another track of prev's artist uniformly (prev itself when it is the artist's only
    one). Example: 3 tracks, pop_w [2, 1, 1], nbr [[1, 2]] for prev 0, all one artist, genre_w [0, 1, 1], mix
    (1, 1, 1, 1, 0) / 4: similar [0, .5, .5], artist [0, .5, .5], popular [.5, .25, .25], genre [0, .5, .5] ->
    [0.125, 0.4375, 0.4375].
    """
    genre_w = np.asarray(genre_w, np.float64)
    return shared_next_probs(prev, artist, nbr, pop_w, mix) + mix[3] / np.sum(mix) * genre_w / genre_w.sum()


def long_listen_probs(p_skip, duration_s, partial_share, full_fraction=W.FULL_FRACTION, long_listen=LONG_LISTEN):
    """P(dwell > long_listen) of a play under world.dwell_seconds: (N,) from (N,) p_skip and (N,) seconds.

    A play not skipped and not stopped early (1 - partial_share of the others) is heard for duration x U,
    U ~ Uniform(full_fraction), rounded to whole seconds: more than 90 s when duration x U >= 90.5.
    Example: p_skip 0.2, partial 0.1, a 200 s track: 0.8 x 0.9 x 1 = 0.72; a 100 s track needs U >= 0.905:
    0.72 x (1 - 0.905) / 0.15 = 0.456.
    """
    lo, hi = full_fraction
    d = np.maximum(np.asarray(duration_s, np.float64), 1e-9)
    heard = np.clip((hi - (long_listen + 0.5) / d) / (hi - lo), 0.0, 1.0)
    return (1.0 - p_skip) * (1.0 - partial_share) * heard


class PlantedWorld:
    """The planted quantities of one world.py world, rebuilt as simulate() built them from its catalogue."""

    def __init__(self, world_dir, catalog):
        truth = read_json(os.path.join(world_dir, "truth.json"), "world truth (world.py generate)")
        o = read_json(os.path.join(world_dir, "world_config.json"), "world options (world.py generate)")
        if list(truth["tracks"]["track_id"]) != list(catalog.track_id):
            raise UserError(f"{world_dir}/truth.json: its tracks are not the catalogue's rows in order: use the "
                            "catalogue world.py wrote beside it")
        x, mean, _, names, genre, _, self.pop_w, self.artist, self.nbr = W.walk_tables(
            catalog, int(o["neighbours"]), float(o["zipf_exponent"]))
        if not np.allclose(mean, truth["feature_space"]["mean"]):
            raise UserError(f"{world_dir}/truth.json: its feature space is not this catalogue's")
        self.mix = [o["p_similar"], o["p_artist"], o["p_popular"], o["p_genre"], o["p_explore"]]
        users = truth["users"]
        self.user_index = {u["user_id"]: i for i, u in enumerate(users)}
        self.plays = np.array([u["plays"] for u in users], np.float64)
        fav = np.array([[names[g] in u["favourite_genres"] for g in range(len(names))] for u in users])  # (U, G)
        self.genre_w = fav[:, genre] * self.pop_w[None, :]                                            # (U, N)
        sk = truth["skip_model"]
        centres = np.array([u["centre"] for u in users])                                              # (U, D)
        mis = np.stack([W.misfit(x, centres[u][None, :], fav[u, genre], sk["genre_penalty"])
                        for u in range(len(users))])                                                   # (U, N)
        prop = np.array(truth["tracks"]["skip_propensity"])
        p_skip = W.skip_probability(mis, prop[None, :], sk["b0"], sk["b1"], sk["b2"])                 # (U, N)
        self.p_skip = p_skip
        self.p_long = long_listen_probs(p_skip, catalog.duration_ms[None, :] / 1000.0, o["partial_share"])
        # over the listeners, weighted by their plays: P(long | t), and the genre move's P(t) P(long | t)
        self.w_user = self.plays / self.plays.sum()
        self.mean_long = self.w_user @ self.p_long                                                    # (N,)
        genre_p = self.genre_w / self.genre_w.sum(1, keepdims=True)
        self.mean_genre_long = self.w_user @ (genre_p * self.p_long)                                  # (N,)

    def next_scores(self, prev, user=None):
        """(1) for every track: the listener's, or (user None) its terms averaged over listeners by plays."""
        if user is not None:
            u = self.user_index[user]
            return planted_next_probs(prev, self.artist, self.nbr, self.pop_w, self.genre_w[u], self.mix) \
                * self.p_long[u]
        # sum_u w_u P(t | prev, u) P(long | t, u): the listener-free moves times the mean P(long | t), plus the
        # genre move's own mean
        return shared_next_probs(prev, self.artist, self.nbr, self.pop_w, self.mix) * self.mean_long \
            + self.mix[3] / np.sum(self.mix) * self.mean_genre_long

    def pair_scores(self, user=None):
        """(2) for every track: log P(long) / P(skip), the listener's or averaged over listeners by plays."""
        if user is not None:
            u = self.user_index[user]
            return np.log(self.p_long[u] + 1e-300) - np.log(self.p_skip[u] + 1e-300)
        return np.log(self.mean_long + 1e-300) - np.log(self.w_user @ self.p_skip + 1e-300)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="an evaluated run of a synthetic world (its world/, sft_data/, "
                                                "prefs/ and eval/results.json)")
    p.add_argument("--results", default=None,
                   help="evaluate.py's results.json to pair against (default RUN/eval/results.json)")
    p.add_argument("--n-boot", type=int, default=metrics.N_BOOT, help="bootstrap resamples of the queries")
    p.add_argument("--out", default=None, help="JSON of the table (optional)")
    args = p.parse_args(argv)
    sft_data = os.path.join(args.run, "sft_data")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    world_dir = os.path.dirname(os.path.abspath(meta["catalog"]))
    need_file(os.path.join(world_dir, "truth.json"), "the world's truth: a synthetic world of world.py (real logs "
                                                     "have no planted model)")
    results_path = args.results or os.path.join(args.run, "eval", "results.json")
    per_query = read_json(results_path, "evaluation results (evaluate.py)").get("per_query")
    if per_query is None:
        raise UserError(f"{results_path}: no per-query values: evaluate the run again")
    catalog, _ = formats.load_catalog(meta["catalog"])
    index = catalog.index()
    planted = PlantedWorld(world_dir, catalog)

    queries = [json.loads(line) for line in open(os.path.join(sft_data, "test_next.jsonl"), encoding="utf-8")
               if line.strip()]
    context = [[index[q["context_track"]]] for q in queries]
    relevant = [{index[t] for t in q["relevant"]} for q in queries]
    pairs_path = os.path.join(args.run, "prefs", "test.jsonl")
    pairs = [json.loads(line) for line in open(pairs_path, encoding="utf-8") if line.strip()]
    chosen, rejected = E.pair_rows(pairs_path, index)
    keys = {"next_track": E.query_key([sorted(c) for c in context], [sorted(r) for r in relevant]),
            "preferences": E.query_key(chosen.tolist(), rejected.tolist())}
    for task, key in keys.items():
        if per_query["keys"].get(task) != key:
            raise UserError(f"{results_path}: evaluated on other {task} queries than {sft_data} and {pairs_path} "
                            "hold now: evaluate the run again")

    rows = {"next_track": {}, "preferences": {}}
    averaged = planted.pair_scores()
    for label, known in (("planted, listener known", True), ("planted, listener averaged", False)):
        ranked = [metrics.top_k_pessimistic(planted.next_scores(c[0], q["user"] if known else None), rel, K,
                                            exclude=c) for q, c, rel in zip(queries, context, relevant)]
        m = metrics.per_query(ranked, relevant, ks=(K,))
        rows["next_track"][label] = {"hit@10": m[f"hit@{K}"], "ndcg@10": m[f"ndcg@{K}"]}
        rows["preferences"][label] = np.array([
            B.pair_accuracy(planted.pair_scores(pr["user"]) if known else averaged, [ch], [rj])[0]
            for pr, ch, rj in zip(pairs, chosen, rejected)])
    print(f"{args.run}: {len(queries)} test next-track queries, {len(pairs)} test preference pairs; the planted "
          f"model of {world_dir}")
    table = {"next_track": [], "preferences": []}
    for task, metric in (("next_track", "hit@10"), ("next_track", "ndcg@10"), ("preferences", None)):
        print(f"\n{task} {metric or 'accuracy'}")
        w = max(28, *(len(n) for n in per_query[task]))      # the longest name in line
        print(f"  {'system':{w}s} {'value (95% interval)':>26s}   {'planted, known - system':>26s}   "
              f"{'planted, averaged - system':>26s}")
        systems = {**{k: (v[metric] if metric else v) for k, v in rows[task].items()},
                   **{k: (v[metric] if metric else v) for k, v in per_query[task].items()}}
        for name, vals in systems.items():
            vals = np.asarray(vals, np.float64)
            ci = metrics.bootstrap_ci(vals, args.n_boot)
            diffs = [metrics.paired_bootstrap(systems[ref], vals, args.n_boot) if name not in rows[task] else None
                     for ref in rows[task]]
            cells = ["-" if d is None else f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" for d in diffs]
            print(f"  {name:{w}s} {ci[0]:>8.3f} [{ci[1]:.3f}, {ci[2]:.3f}]   {cells[0]:>26s}   {cells[1]:>26s}")
            table[task].append({"system": name, "metric": metric or "accuracy", "mean": ci[0], "lo": ci[1],
                                "hi": ci[2], "planted_known_minus": diffs[0], "planted_averaged_minus": diffs[1]})
    if args.out:
        write_json(args.out, table)
        print(f"\n-> {args.out}")


if __name__ == "__main__":
    run_main(main)
