"""What the preference target asks of a next-track model: the frontier of one score, measured without any model.

    python benchmarks/pref_frontier.py --run runs/levers/qual_s0 --pairs runs/levers/val1000_q0.jsonl \\
        [--llm runs/levers/val_q_s0.json:SFT] [--out runs/levers/frontier_s0.json]

A preference pair and a next-track query share one prompt (the context track), and the LLM answers both with one
number per track, log p(track | prompt). Which track is played next and whether it is then heard to the end are two
different things in the logs (the synthetic world's walk picks the next track whatever the listener will skip,
world.py): the next-track target, a long listen right after the context, is best ranked by P(next = j | ctx) x
P(long | j), what SFT's targets (long-listened next plays) teach; a pair's chosen and rejected tracks were both
played after the context, and which of them was heard to the end is best told by P(long | j) alone, the long-listen
rate. One score per (context, track) cannot be the best of both. This script walks the family

    s_k(ctx, j) = log P(next = j | ctx) + k * log rate(j),      k >= 0                                     (1)

from training-window counts alone, the information the model has: P(next = j | ctx) is the context's co-listening
counts with a popularity prior (next_play_logp), rate(j) the smoothed long-listen rate of evaluate.py's baseline.
k = 1 is what SFT's targets estimate; DPO's optimum pi_ref(y | x) exp(r(x, y) / beta) / Z(x) (Rafailov et al.
2023, eq. 4), with a reward r that rises with the rate, moves toward large k as beta falls; k = inf ranks by the
rate alone (co-listening breaks ties).
A second family keeps HR@10 by construction: the top M tracks by s_1 in s_1's order, every other track below them
ordered by the rate alone (head_tail_scores; M = 10 leaves every top-10 list as s_1's, so HR@10 is s_1's, and every
pair outside the context's head is ranked as the rate ranks it). For each score: validation next-track HR@10 and
NDCG@10 (val_next.py's queries, the same draw) and the accuracy on validation preference pairs, with 95% bootstrap
intervals; paired on the same queries and pairs, HR@10 against k = 1 and the preference accuracy against the
long-listen rate. --llm FILE:ROW adds a row of an earlier `val_next.py --out` on the same queries and pairs (an
adapter, or a baseline such as SASRec), to place the model on the same axes.
"""
import argparse
import json
import os

import numpy as np

import harness  # first: it puts the repository root on sys.path for the imports below
import baselines as B
import evaluate as E
import formats
import metrics
from common import UserError, need_file, read_json, run_main, write_json
from val_next import QUERIES, SEED, val_queries

# -----------------------------------------------------------------------------
KS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, float("inf"))   # the weights of log rate(j) in (1)
HEADS = (1, 3, 5, 10, 20)      # M of head_tail_scores: the top M by s_1 kept, the rest ranked by the rate
# pseudo-counts of the popularity prior in P(next | ctx): a track never co-listened with the context still has a
# probability, in proportion to its plays (Dirichlet smoothing)
PRIOR: float = 1.0
K: int = 10             # HR@K, NDCG@K
# -----------------------------------------------------------------------------


def next_play_logp(cooc_row, popularity, prior=PRIOR):
    """log P(next = j | ctx) from the context's co-listening counts with a popularity prior: (N,) float64.

    cooc_row {j: count} (the context's row of evaluate.load_listening's co-listening); popularity (N,) plays.
    P(j) = (c_j + prior * pop_j / sum pop) / (sum c + prior). Example: counts {1: 3}, popularity [1, 1, 2],
    prior 1: P = [0.25 / 4, 3.25 / 4, 0.5 / 4].
    """
    pop = np.asarray(popularity, np.float64) + 1e-12        # a track never played keeps a finite log
    p = prior * pop / pop.sum()
    for j, c in cooc_row.items():
        p[j] += c
    return np.log(p / p.sum())


def frontier_scores(next_logp, log_rate, k):
    """s_k = log P(next | ctx) + k log rate, eq. (1): (N,) from two (N,). k = inf: the rate first, then next_logp.

    Example: next_logp log [0.5, 0.25, 0.25], rate [0.2, 0.8, 0.4]: k = 0 ranks 0 first; k = 1 gives
    log [0.1, 0.2, 0.1], track 1 first and 0 tied with 2; k = inf orders 1, 2, 0.
    """
    if np.isinf(k):   # lexicographic: a rank by the rate, the next-play log-prob below one rank step
        ranks = np.unique(log_rate, return_inverse=True)[1].astype(np.float64)
        span = next_logp.max() - next_logp.min()
        return ranks + (next_logp - next_logp.min()) / (2.0 * span if span > 0 else 1.0)
    return next_logp + k * log_rate


def head_tail_scores(head_score, log_rate, m):
    """The top m tracks by head_score, in its order, above all others; those ordered by log_rate: (N,) float64.

    Example: head_score [3, 2, 1, 0], rate [0.1, 0.2, 0.9, 0.5], m = 1: order 0 (the head), then 2, 3, 1.
    """
    s = frontier_scores(head_score, log_rate, float("inf"))    # every rank below 1 + max rank
    head = np.argsort(-head_score, kind="stable")[:m]
    if len(head):
        s[head] = s.max() + 1.0 + frontier_scores(head_score[head], np.zeros(len(head)), float("inf"))
    return s


def llm_row(spec, n_queries, n_pairs):
    """FILE:ROW of an earlier val_next.py --out: {"hit", "ndcg"} per query, and "preference" per pair if it has one
    (a baseline row such as SASRec has none)."""
    path, _, row = spec.rpartition(":")
    need_file(path, "val_next.py --out")
    got = read_json(path, "val_next.py --out")
    h = got.get("hits", {}).get(row)
    if h is None:
        raise UserError(f"{path}: no row {row!r} (rows: {', '.join(got.get('hits', {}))})")
    if len(h.get("hit", [])) != n_queries or len(h.get("preference", [])) not in (0, n_pairs):
        raise UserError(f"{path}: row {row!r} has {len(h.get('hit', []))} queries and {len(h.get('preference', []))} "
                        f"pairs, here {n_queries} and {n_pairs}: run val_next.py with the same --queries, --seed "
                        "and --pairs")
    return {m: np.asarray(h[m], np.float64) for m in ("hit", "ndcg", "preference") if h.get(m)}


def fmt(ci):
    return f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder whose sft_data (queries, co-listening) and prefs to use")
    p.add_argument("--pairs", default="",
                   help="validation preference pairs (default RUN/prefs/val.jsonl, 96 in the demo: more with "
                        "`data.py prefs --max-val 3000`)")
    p.add_argument("--queries", type=int, default=QUERIES, help="validation next-track queries (val_next.py's)")
    p.add_argument("--seed", type=int, default=SEED, help="draw of the queries and the bootstrap (val_next.py's)")
    p.add_argument("--prior", type=float, default=PRIOR,
                   help="pseudo-counts of the popularity prior in P(next | ctx) (default %(default)s)")
    p.add_argument("--llm", action="append", default=[], metavar="FILE:ROW",
                   help="an adapter's row of an earlier val_next.py --out on the same queries and pairs (repeat)")
    p.add_argument("--out", default=None, help="JSON of the table (optional)")
    args = p.parse_args(argv)
    sft_data = os.path.join(args.run, "sft_data")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    catalog, _ = formats.load_catalog(meta["catalog"])
    track_ids, codes = formats.load_semantic_ids(meta["semantic_ids"])
    index = catalog.index()
    code_row = {tuple(int(c) for c in cs): index[t] for t, cs in zip(track_ids, codes)}
    queries = val_queries(sft_data, args.queries, args.seed, code_row)
    popularity, cooc, labels = E.load_listening(sft_data, os.path.join(args.run, "prefs"), len(catalog))
    log_rate = np.log(B.long_listen_rate(labels["long"], labels["skip"]))
    pairs_path = args.pairs or os.path.join(args.run, "prefs", "val.jsonl")
    need_file(pairs_path, "validation preference pairs (data.py prefs)")
    ctx_of = [index[json.loads(line)["context_track"]] for line in open(pairs_path, encoding="utf-8") if line.strip()]
    chosen, rejected = E.pair_rows(pairs_path, index)
    relevant = [{q[2]} for q in queries]
    next_q = [next_play_logp(cooc.get(q[1][-1], {}), popularity, args.prior) for q in queries]
    next_p = {c: next_play_logp(cooc.get(c, {}), popularity, args.prior) for c in set(ctx_of)}
    print(f"{len(queries)} validation next-track queries, {len(chosen)} validation preference pairs "
          f"({pairs_path}); training-window counts of {args.run}")

    def row(score):   # score(next_logp) -> (N,): per-query hits and per-pair accuracy
        ranked = [metrics.top_k_pessimistic(score(nq), rel, K, exclude=[q[1][-1]])
                  for nq, rel, q in zip(next_q, relevant, queries)]
        m = metrics.per_query(ranked, relevant, ks=(K,))
        pref = np.array([B.pair_accuracy(score(next_p[c]), [ch], [rj])[0]
                         for c, ch, rj in zip(ctx_of, chosen, rejected)])
        return {"hit": m[f"hit@{K}"], "ndcg": m[f"ndcg@{K}"], "preference": pref}

    rows = {}
    for k in KS:
        rows["k=inf (rate)" if np.isinf(k) else f"k={k:g}"] = row(lambda nq, k=k: frontier_scores(nq, log_rate, k))
    for m in HEADS:
        rows[f"head {m} by k=1, rate below"] = row(
            lambda nq, m=m: head_tail_scores(frontier_scores(nq, log_rate, 1.0), log_rate, m))
    rows["long-listen rate"] = {"preference": B.pair_accuracy(log_rate, chosen, rejected)}
    head = {c: set(np.argsort(-frontier_scores(next_p[c], log_rate, 1.0))[:K + 1].tolist()) - {c} for c in next_p}
    tail = np.mean([ch not in head[c] and rj not in head[c] for c, ch, rj in zip(ctx_of, chosen, rejected)])
    print(f"pairs whose two tracks are both outside the context's top {K} by k=1: {tail:.1%}")
    for spec in args.llm:
        rows[spec] = llm_row(spec, len(queries), len(chosen))

    # paired on the same queries and pairs: HR@10 against k = 1 (what SFT's targets estimate), preference accuracy
    # against the long-listen rate (the target's bar)
    refs = {"hit": rows["k=1"]["hit"], "preference": rows["long-listen rate"]["preference"]}
    table = {}
    print(f"\n{'score':36s} {'HR@10':>20s} {'NDCG@10':>20s} {'preference accuracy':>20s} "
          f"{'HR@10 - k=1':>24s} {'preference - rate':>24s}")
    for name, r in rows.items():
        t = {m: metrics.bootstrap_ci(r[m], seed=args.seed) for m in ("hit", "ndcg", "preference") if m in r}
        for m, ref in refs.items():
            if m in r and r[m] is not ref:
                t[f"{m} paired"] = metrics.paired_bootstrap(r[m], ref, seed=args.seed)
        table[name] = t
        cells = [fmt(t[m]) if m in t else "-" for m in ("hit", "ndcg", "preference")]
        cells += [f"{t[m][0]:+.3f} [{t[m][1]:+.3f}, {t[m][2]:+.3f}]" if m in t else "-"
                  for m in ("hit paired", "preference paired")]
        print(f"{name:36s} " + " ".join(f"{c:>{w}s}" for c, w in zip(cells, (20, 20, 20, 24, 24))))
    if args.out:
        write_json(args.out, {"run": args.run, "pairs": pairs_path, "queries": len(queries), "prior": args.prior,
                              "table": {n: {m: [float(x) for x in v] for m, v in t.items()} for n, t in table.items()}})


if __name__ == "__main__":
    run_main(main)
