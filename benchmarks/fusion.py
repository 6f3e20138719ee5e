"""Does the LLM know anything the strongest baseline does not? Its scores fused with content x co-listening's.

    python benchmarks/fusion.py --run runs/demo --adapter runs/demo/sft/adapter [--queries 1000] [--out fusion.json]

Every next-track figure of the README has the SFT model below `content x co-listening`. That alone cannot say whether
the model is a worse copy of the baseline or knows something else (the listener's other plays in the prompt, what
it learnt of each ID) and is only worse on what the baseline does well. A product of the two says it: rank by

    f_lam(t) = log p_LLM(t | prompt) + lam * r(t),    r(t) = log(1 + plays_t) - ||x_t - x_c||^2 / tau + mu log(1 + n_ct)

(r: the baseline's score before its context-genre-first step; p_LLM: the model's exact probability of the whole
ID, ranking.score_all_ids), optionally with the context's genre first as the baseline ranks. lam -> infinity with
the genre first is the baseline, lam = 0 without it the model. If some lam ranks held-out plays better than the
baseline, paired, the model carries information the baseline lacks; if none does, it does not.

Queries: --queries validation next plays drawn as benchmarks/val_next.py draws them (same seed, same plays, so its
rows pair with these); the baseline's (tau, mu) and the fusion's (lam, genre first) are both chosen on the first
--select of the validation plays not drawn (val_next.py's BASELINE_CHOICE plays: the same (tau, mu)), by HR@10,
never on the queries. No test window is read.
"""
import argparse
import os
import time

import numpy as np
import torch
from tqdm import tqdm

import harness  # first: it puts the repository root on sys.path for the imports below
import baselines as B
import evaluate as E
import lora
import metrics
import model as M
import ranking
import rvq
import signals
import val_next as V
from common import UserError, read_json, run_main, write_json

# -----------------------------------------------------------------------------
RUN: str = "runs/demo"          # a pipeline run folder (sft_data, prefs)
MODEL: str = M.DEFAULT_MODEL    # the base the adapter was trained on
QUERIES: int = 1000             # validation next plays scored (val_next.py's draw)
SELECT: int = 300               # other validation plays that choose (lam, genre first): the model scores each
SEED: int = 0                   # the draw and the bootstrap
LAMBDAS = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)   # the baseline's weight in the product
K: int = 10
# -----------------------------------------------------------------------------


def fused_scores(logp, prior, in_genre, lam, genre_first):
    """logp (N,) the model's log-probs of every track's ID, prior (N,) the baseline's score r, in_genre (N,) bool
    -> (N,) logp + lam * prior, with the context's genre first (baselines.genre_first) if genre_first.

    Example: logp [-1, -3], prior [0, 4], one genre: lam 0 ranks track 0 first (-1 > -3), lam 1 track 1 (1 > -1)."""
    s = np.asarray(logp, dtype=np.float64) + lam * np.asarray(prior, dtype=np.float64)
    return B.genre_first(s, in_genre) if genre_first else s


def colisten_prior(x, item, popularity, colisten, tau, mu):
    """content x co-listening's score before its genre step: log(1 + plays) - ||x - x_c||^2 / tau + mu log(1 + n)."""
    return np.log1p(popularity) + B.content_knn_scores(x, item) / tau + mu * np.log1p(colisten)


def llm_log_probs(model, fmt, vocab, trie, prompts, code_row, n_items, desc):
    """(Q, N) the model's summed log-prob of every catalogue ID after each prompt (ranking.score_all_ids)."""
    out = np.full((len(prompts), n_items), -np.inf)
    rows = None
    for i, p in enumerate(tqdm(prompts, desc=desc, leave=False)):
        codes, scores = ranking.score_all_ids(model, fmt.prompt(p), vocab, trie)
        if rows is None:
            rows = np.array([code_row[c] for c in codes])
        out[i, rows] = scores.numpy()
    return out


def hits_of(score_rows, queries):
    """val_next.py's {hit, ndcg} per query (context excluded, ties pessimistic) of one score row per query."""
    return V.query_hits(queries, lambda i: score_rows[i])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=RUN, help="run folder whose sft_data and prefs to use")
    p.add_argument("--model", default=MODEL, help="base model folder of the adapter")
    p.add_argument("--adapter", required=True, help="the SFT (or DPO) adapter folder whose scores are fused")
    p.add_argument("--queries", type=int, default=QUERIES, help="validation next plays scored (val_next.py's draw)")
    p.add_argument("--select", type=int, default=SELECT,
                   help="validation plays not drawn that choose the fusion's (lam, genre first), never the scored "
                        "queries; the model scores each, so more cost time (default %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="the draw of the queries and the bootstrap")
    p.add_argument("--out", default=None, help="JSON of the per-query hits, the choice and the table")
    p.add_argument("--scores", default=None,
                   help="an .npz of the model's log-probs of every track (selection and queries): written after "
                        "scoring, read instead of scoring when it exists (another fusion of the same model's scores)")
    args = p.parse_args(argv)
    sft_data = os.path.join(args.run, "sft_data")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    catalog, index, C, code_row = V.catalogue_codes(meta)
    n_items = len(catalog)
    queries, others = V.val_queries(sft_data, args.queries, args.seed, code_row, rest=True)
    choice = others[:args.select]
    if len(choice) < args.select:
        raise UserError(f"{sft_data}/val.jsonl: {len(choice)} validation plays besides the queries, --select "
                        f"{args.select} asked")
    popularity, cooc, _ = E.load_listening(sft_data, os.path.join(args.run, "prefs"), n_items)
    genres = B.genre_masks(catalog.genres)
    in_genre = [genres[g[0]] for g in catalog.genres]
    feats = signals.preprocess(catalog.features, rvq.load_rvq(meta["rvq"])["params"])
    # (tau, mu) on val_next.py's plays, so that the baseline's row is its row; lam on the first --select of them
    (tau, mu), _ = B.select_tau_lambda(feats, popularity, cooc,
                                       [(h[-1], {r}) for _, h, r in others[:V.BASELINE_CHOICE]],
                                       lambda c: in_genre[c])

    def priors(qs):
        return [colisten_prior(feats, h[-1], popularity, B.colisten_counts(cooc, h[-1], n_items), tau, mu)
                for _, h, _ in qs]

    t0 = time.time()
    if args.scores and os.path.exists(args.scores):
        z = np.load(args.scores)
        logp_sel, logp_q = z["selection"], z["queries"]
        if logp_sel.shape != (len(choice), n_items) or logp_q.shape != (len(queries), n_items):
            raise UserError(f"{args.scores}: scores of {logp_sel.shape} and {logp_q.shape}, expected "
                            f"{(len(choice), n_items)} and {(len(queries), n_items)} (other --queries/--select?)")
    else:   # the model is loaded only to score
        model, tok, vocab = M.load_policy(args.model, adapter=args.adapter, id_table_sha=meta["id_table_sha256"])
        lora.merge_lora(model)
        fmt = M.PromptFormat(tok, vocab)
        trie = ranking.IDTrie(list(code_row), meta["levels"])
        logp_sel = llm_log_probs(model, fmt, vocab, trie, [q[0] for q in choice], code_row, n_items, "selection")
        logp_q = llm_log_probs(model, fmt, vocab, trie, [q[0] for q in queries], code_row, n_items, "queries")
        print(f"model scores of every track: {len(choice) + len(queries)} prompts, {time.time() - t0:.0f} s")
        if args.scores:
            tmp = args.scores + ".tmp.npz"
            np.savez(tmp, selection=logp_sel.astype(np.float32), queries=logp_q.astype(np.float32))
            os.replace(tmp, args.scores)
    prior_sel, prior_q = priors(choice), priors(queries)
    grid = [(lam, g) for g in (False, True) for lam in LAMBDAS]
    sel_hr = {}
    for lam, g in grid:
        rows = [fused_scores(l, r, in_genre[h[-1]], lam, g) for l, r, (_, h, _) in zip(logp_sel, prior_sel, choice)]
        sel_hr[(lam, g)] = float(np.mean(hits_of(rows, choice)["hit"]))
    best = max(grid, key=lambda x: sel_hr[x])   # ties: the first (smallest lam, genre first off)
    print(f"selection plays ({len(choice)}): HR@{K} by (lam, genre first): "
          + ", ".join(f"{lam:g}{'g' if g else ''} {v:.3f}" for (lam, g), v in sel_hr.items()))
    print(f"chosen: lam {best[0]:g}, genre first {'on' if best[1] else 'off'}; baseline width {tau:g}, "
          f"co-listening power {mu:g}")
    rows = {
        V.CONTENT_CO: [B.genre_first(r, in_genre[h[-1]]) for r, (_, h, _) in zip(prior_q, queries)],
        "model": list(logp_q),
        "model x baseline": [fused_scores(l, r, in_genre[h[-1]], *best) for l, r, (_, h, _) in
                             zip(logp_q, prior_q, queries)],
    }
    hits = {n: hits_of(s, queries) for n, s in rows.items()}
    # an optimistic bound, not a result: the weight that ranks the queries themselves best
    q_hr = {(lam, g): float(np.mean(hits_of([fused_scores(l, r, in_genre[h[-1]], lam, g) for l, r, (_, h, _) in
                                             zip(logp_q, prior_q, queries)], queries)["hit"])) for lam, g in grid}
    top = max(grid, key=lambda x: q_hr[x])
    print(f"(the best weight on the queries themselves, an optimistic bound: lam {top[0]:g}, genre first "
          f"{'on' if top[1] else 'off'}, HR@{K} {q_hr[top]:.3f})")
    print(f"\n{len(queries)} validation next-track queries ({sft_data}/val.jsonl, seed {args.seed})")
    table = {}
    for n, h in hits.items():
        table[n] = {f"{m}@{K}": metrics.bootstrap_ci(h[m], seed=args.seed) for m in ("hit", "ndcg")}
        print(f"{n:24s} HR@{K} {np.mean(h['hit']):.3f}  NDCG@{K} {np.mean(h['ndcg']):.3f}")
    paired = {}
    for n in ("model x baseline", "model"):
        for m in ("hit", "ndcg"):
            d = metrics.paired_bootstrap(hits[n][m], hits[V.CONTENT_CO][m], seed=args.seed)
            paired[f"{n} - {V.CONTENT_CO} {m}@{K}"] = d
            print(f"  {n} - {V.CONTENT_CO} {m}@{K}: {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]")
    if args.out:
        write_json(args.out, {"queries": len(queries), "select": len(choice), "tau": tau, "mu": mu,
                              "lam": best[0], "genre_first": best[1],
                              "selection_hit": {f"{lam:g}{'g' if g else ''}": v for (lam, g), v in sel_hr.items()},
                              "query_hit_by_weight": {f"{lam:g}{'g' if g else ''}": v for (lam, g), v in q_hr.items()},
                              "table": table, "paired": paired, "hits": hits})


if __name__ == "__main__":
    run_main(main)
