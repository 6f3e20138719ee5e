"""Next-track HR@10 / NDCG@10 on the VALIDATION window: compare options without ever looking at the test set.

    python benchmarks/val_next.py --run runs/ablation/default --adapter SFT=runs/ablation/default/sft/adapter \\
        --adapter SFT_b8=runs/b8/sft/adapter [--queries 200] [--out val_next.json]

Queries: --queries next-track examples of RUN/sft_data/val.jsonl (a seeded draw; long listens after a play, built as
the test queries are, from the window between the training and the test windows), each with its prompt exactly as
the SFT model saw such prompts; the context track is the last Semantic ID in the prompt. Rows, all ranking the whole
catalogue, the context track excluded, ties broken against the relevant item (evaluate.py's rules):
  genre popularity, item kNN   training-window statistics, as evaluate.py
  SASRec                       RUN/sasrec on the plays the prompt shows (early-stopped on validation sessions, so
                               optimistic here)
  ID prefix popularity         tracks sharing the context's first code, then its first two codes, by popularity:
                               what the Semantic IDs' prefixes alone say, no model (a proxy to compare ID options)
  content x popularity         evaluate.py's: the context's genre, then log(1 + plays) - audio distance^2 / tau,
                               tau chosen on other validation next plays than these queries
  content x co-listening       evaluate.py's: the same + lam log(1 + co-listens with the context), (tau, lam)
                               chosen on those plays
  each --adapter NAME=FOLDER   an SFT or DPO adapter on --model, ranked exactly (ranking.exact_top_k); for a DPO
                               adapter also its validation preference accuracy (FOLDER/../summary.json), so the
                               DPO options can be weighed on both without the test set
Then every other row minus the first adapter, paired on the same queries, with 95% bootstrap intervals.
Attribute requests too (--attribute-queries, P@10 of each adapter): drawn afresh from the catalogue with the training
phrasings, or with phrasings held out of training and test alike (--attribute-phrasings heldout; tasks.request_examples,
its own seeded draw, one request per attribute set), every track that has the requested attributes relevant, as
evaluate.py's test requests, whose phrasings are held out; so the attribute side of an option can be weighed without
the test set as well.
And hallucination (--hallucination-prompts, half next-track queries, half attribute requests): each adapter decodes
them without constraints (evaluate.py's beam), hallucinated@1 = its best beam is no catalogue track; per prompt, so
two adapters pair on the same prompts.
And preferences (--pairs, default RUN/prefs/val.jsonl): each adapter's accuracy on validation preference pairs
(chosen above rejected by summed log-prob, evaluate.py's rule) beside the long-listen rate's on the same pairs. The
demo keeps 96 validation pairs; `data.py prefs --max-val 3000 --out ELSEWHERE` writes every pair of the window
(its val.jsonl; the pairs are the same tracks whatever the Semantic IDs, so two runs' rows pair). With
--reward-reference NAME (the SFT adapter a DPO adapter started from), every other adapter also gets a row
"OTHER reward": the same pairs ranked by DPO's implicit reward log pi(y|x) - log ref(y|x) instead of log pi(y|x)
(dpo.implicit_reward_hits; what dpo.py logs as rewards/accuracies).
And whether a model reads the context track's ID or only its genre (--swap-context): each adapter ranks every query
again with the context's ID swapped for another track of its primary genre (the genre word stays), and prints HR@10
with the true and with the swapped ID (paired; both lists without either prompt's track) and the share of its top 10
that stays.
--pair A.json:ROW B.json:ROW pairs two rows of earlier --out files instead (another run's IDs, another reference);
with --by-plays also within the queries whose context track, and those whose relevant track, the training window
played under 20 times or more (where a gap between two rankers lives).
"""
import argparse
import os
import time

import numpy as np
import torch

import harness  # first: it puts the repository root on sys.path for the imports below
import baselines as B
import dpo
import evaluate as E
import metrics
import formats
import lora
import model as M
import ranking
import rvq
import sasrec
import signals
import tasks
from common import UserError, need_file, read_json, run_main, write_json

# -----------------------------------------------------------------------------
RUN: str = "runs/demo"          # a pipeline run folder: its sft_data, and sasrec if there
MODEL: str = M.DEFAULT_MODEL    # the base the adapters were trained on
QUERIES: int = 200              # validation next-track queries (as many as the test set's default)
SEED: int = 0                   # the draw of the queries and the bootstrap
BATCH_SIZE: int = 8             # prompts per exact-ranking batch
K: int = 10                     # HR@K, NDCG@K, P@K
PAIRS: str = ""                 # validation preference pairs; "" = RUN/prefs/val.jsonl, "none" = skip them
ATTRIBUTE_QUERIES: int = 40     # attribute requests (as many as the test set's default)
ATTRIBUTE_PHRASINGS: str = "train"  # how they are phrased (PHRASINGS); train keeps the earlier figures reproducible
PHRASINGS = {"train": tasks.TRAIN_REQUEST_TEMPLATES, "heldout": tasks.VAL_REQUEST_TEMPLATES}
HALLUCINATION_PROMPTS: int = 200  # prompts decoded without constraints per adapter: half next-track, half attribute
SWAP_CONTEXT: bool = False      # also rank each query with its context ID swapped for another track of its genre
BY_PLAYS: bool = False          # with --pair: also split the paired HR@10 by the tracks' training-window plays
PLAYS_EDGES = (20,)             # --by-plays: queries split at 20 training-window plays of the context and of the
                                # relevant track (id_ceiling.py found the ID rankers' gap on contexts seen less often)
BASELINE_CHOICE: int = 500      # validation next plays (of those not drawn as queries, in file order) that choose
                                # the content baselines' width and power: the first 500, as evaluate.py chose until
                                # 2026-12-06 (it now takes every one), so that EXPERIMENTS.md's figures reproduce
# -----------------------------------------------------------------------------


def prefix_popularity_scores(codes, popularity, ctx):
    """ID prefix popularity: 2 for the context's first code, +4 for its first two codes, + popularity in [0, 1).

    codes (N, L) int, -1 for a track without an ID; popularity (N,); ctx a row. Returns (N,) float64.
    """
    first = codes[:, 0] == codes[ctx, 0]
    two = first & (codes[:, 1] == codes[ctx, 1])
    return 2.0 * first + 4.0 * two + popularity / (popularity.max() + 1.0)


def val_queries(sft_data, n, seed, code_row, rest=False):
    """[(prompt, history rows, relevant row)]: n of the validation window's next-track examples, drawn by seed;
    rest=True also returns the examples not drawn, in file order (to fit a baseline's parameter on, not on these)."""
    rows = E.val_next_examples(sft_data, code_row)
    if not rows:
        raise UserError(f"{os.path.join(sft_data, 'val.jsonl')}: no next_track examples")
    order = np.random.default_rng(seed).permutation(len(rows))
    drawn = [rows[i] for i in order[:n]]
    return (drawn, [rows[i] for i in sorted(order[n:])]) if rest else drawn


def score_vector(scored, code_row, n_items):
    """(N,) scores from exact_top_k's [(codes, score)]: -inf for the tracks it did not reach."""
    v = np.full(n_items, -np.inf)
    for cs, sc in scored:
        v[code_row[cs]] = sc
    return v


def attribute_queries(catalog, row_codes, n, seed, templates=tasks.TRAIN_REQUEST_TEMPLATES, with_attributes=False):
    """[(prompt, relevant rows)]: n attribute requests phrased by `templates` (the training phrasings by default),
    one per attribute set; with_attributes: [(attributes, prompt, relevant rows)], the same draw."""
    masks = tasks.attribute_masks(catalog)
    rng = np.random.default_rng([seed, 1])   # a draw of its own: the next-track queries' stays as it was
    out, seen = [], set()
    for attrs, prompt, _ in tasks.request_examples(catalog, row_codes, masks, 20 * n, templates, rng):
        if tuple(attrs) not in seen and len(out) < n:
            seen.add(tuple(attrs))
            out.append((attrs, prompt, set(tasks.relevant_rows(catalog, masks, attrs, row_codes))))
    return out if with_attributes else [q[1:] for q in out]


RATE = "long-listen rate"       # the preference baseline beside the adapters (evaluate.py's strongest)
CONTENT_POP = "content x popularity"   # the next-track baseline of the same name in evaluate.py
CONTENT_CO = "content x co-listening"  # and the one that adds the context's co-listens to it
# what is paired against the first adapter: (per-query key, suffix of the --out key, printed name)
PAIRED = (("hit", "", f"HR@{K}"), ("preference", " (preferences)", "preference accuracy"),
          ("precision", " (attributes)", f"attribute P@{K}"), ("hallucinated", " (hallucinated@1)", "hallucinated@1"))


def catalogue_codes(meta):
    """The catalogue of an SFT data folder's meta.json and its Semantic IDs: (catalog, {track id: row}, C (N, L) int
    codes with -1 for a track without an ID, {codes tuple: row} of the tracks with one)."""
    catalog, _ = formats.load_catalog(meta["catalog"])
    track_ids, codes = formats.load_semantic_ids(meta["semantic_ids"])
    index = catalog.index()
    C = np.full((len(catalog), meta["levels"]), -1, dtype=np.int64)
    for t, cs in zip(track_ids, codes):
        C[index[t]] = cs
    code_row = {tuple(int(c) for c in C[r]): r for r in range(len(catalog)) if C[r, 0] >= 0}
    return catalog, index, C, code_row


def genre_rows_of(catalog, rows):
    """{primary genre: [rows]} of the given catalogue rows, each list in ascending row order."""
    out = {}
    for r in sorted(rows):
        out.setdefault(catalog.genres[r][0], []).append(int(r))
    return out


def swap_context(prompts, contexts, row_codes, genre_rows, genre_of, seed=SEED):
    """The same prompts with the context track's Semantic ID swapped for another track of its primary genre.

    What a model reads of the context beyond its genre: the genre word stays, the ID changes. prompts: [str];
    contexts: [row], the track whose ID each prompt shows last; row_codes {row: codes}; genre_rows {genre: [rows]};
    genre_of(row) -> its primary genre. Returns ([prompt], [the swapped-in row]), one seeded draw per prompt (a
    genre of one track keeps its prompt and row). Example: '... like (rock) <a_1><b_2><c_3>' with another rock
    track (1, 5, 0) -> '... like (rock) <a_1><b_5><c_0>'.
    """
    rng = np.random.default_rng([seed, 2])   # a stream of its own: the queries' draw stays as it was
    out, rows = [], []
    for prompt, c in zip(prompts, contexts):
        others = [r for r in genre_rows[genre_of(c)] if r != c]
        o = int(others[rng.integers(len(others))]) if others else c
        old, new = formats.id_text(row_codes[c]), formats.id_text(row_codes[o])
        head, sep, tail = prompt.rpartition(old)   # the last ID in the prompt is the context's
        if not sep:
            raise UserError(f"the prompt {prompt!r} does not show its context track's ID {old}")
        out.append(head + new + tail)
        rows.append(o)
    return out, rows


def top_overlap(a, b, k=K):
    """Share of the top k of list a that is in the top k of list b: |a[:k] & b[:k]| / k (lists of rows)."""
    return len(set(a[:k]) & set(b[:k])) / k


def count_bucket(counts, edges=PLAYS_EDGES):
    """Bucket names of counts split at edges (each edge starts a bucket): edges (5, 10) -> "0-4", "5-9", "10+".

    >>> count_bucket([0, 4, 5, 12, 30], (5, 10, 20))
    ['0-4', '0-4', '5-9', '10-19', '20+']
    """
    names = [f"{lo}-{hi - 1}" for lo, hi in zip((0,) + tuple(edges), edges)] + [f"{edges[-1]}+"]
    return [names[int(np.searchsorted(edges, c, side="right"))] for c in counts]


def paired_by_group(a, b, groups, seed=SEED):
    """The paired difference of two per-query lists within each group of queries: where a gap between two rankers
    lives (e.g. on rarely played tracks).

    a, b: (Q,) per-query values (hits) of two rows on the same queries; groups: (Q,) a group name per query.
    Returns {name: (queries, mean a, mean b, (mean a - b, lo, hi))}, the names in sorted order, each interval a
    paired bootstrap within the group. Example: a = [1, 0, 1, 1], b = [0, 0, 1, 0], groups = [x, y, x, y]:
    x (2, 1.0, 0.5, (+0.5, ..)), y (2, 0.5, 0.0, (+0.5, ..)).
    """
    a, b, groups = np.asarray(a, float), np.asarray(b, float), np.asarray(groups)
    out = {}
    for g in sorted(set(groups.tolist())):
        m = groups == g
        out[g] = (int(m.sum()), float(a[m].mean()), float(b[m].mean()),
                  metrics.paired_bootstrap(a[m].tolist(), b[m].tolist(), seed=seed))
    return out


def same_queries(hits_a, hits_b):
    """True if two files' hits of the rows that read no Semantic ID (genre popularity, item kNN), which depend on
    the queries alone, agree on the next-track queries (their attribute P@10, where a file has it, is left aside:
    it depends on the requests)."""
    return all({m: hits_a.get(r, {}).get(m) for m in ("hit", "ndcg")} ==
               {m: hits_b.get(r, {}).get(m) for m in ("hit", "ndcg")} for r in ("genre popularity", "item kNN"))


def read_pair_rows(a, b):
    """[(path, file, row name)] of two "FILE:ROW" specs of --out JSONs made on the same validation queries."""
    rows = []
    for spec in (a, b):
        path, sep, name = spec.rpartition(":")
        if not sep:
            raise UserError(f"--pair takes FILE:ROW, got {spec!r}")
        d = read_json(path, "val_next.py --out JSON")
        if name not in d["hits"]:
            raise UserError(f"{path}: no row {name!r} (rows: {', '.join(d['hits'])})")
        rows.append((path, d, name))
    (pa, da, _), (pb, db, _) = rows
    if da["queries"] != db["queries"] or not same_queries(da["hits"], db["hits"]):
        raise UserError(f"{pa} and {pb} were not made on the same validation queries (--run of one world, same "
                        "--queries and --seed)")
    return rows


def query_hits(queries, score_fn, k=K):
    """{"hit": [...], "ndcg": [...]}: HR@k and NDCG@k of each query's scores score_fn(i) over the whole catalogue,
    the context track excluded, ties broken against the relevant item (evaluate.py's rules)."""
    ranked = [metrics.top_k_pessimistic(score_fn(i), {q[2]}, k, exclude=[q[1][-1]]) for i, q in enumerate(queries)]
    m = metrics.per_query(ranked, [{q[2]} for q in queries], ks=(k,))
    return {"hit": m[f"hit@{k}"].tolist(), "ndcg": m[f"ndcg@{k}"].tolist()}


def paired_by_plays(run, n_queries, seed, a, b):
    """Two --out rows' paired HR@10 split by how often the context track and the relevant track were played in
    the training window (count_bucket at PLAYS_EDGES): {"context": {bucket: ...}, "answer": {...}} as
    paired_by_group. The files' queries are drawn again from run, n_queries and seed (theirs), and checked against
    their genre popularity row, which depends on the queries alone."""
    (pa, da, na), (_, db, nb) = read_pair_rows(a, b)
    sft_data = os.path.join(run, "sft_data")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    catalog, _, _, code_row = catalogue_codes(meta)
    queries = val_queries(sft_data, n_queries, seed, code_row)
    popularity, _, _ = E.load_listening(sft_data, os.path.join(run, "prefs"), len(catalog))
    genres = B.genre_masks(catalog.genres)
    check = query_hits(queries, lambda i: B.genre_popularity_scores(
        popularity, genres[catalog.genres[queries[i][1][-1]][0]]))
    theirs = da["hits"].get("genre popularity", {})
    if da["queries"] != n_queries or check != {m: theirs.get(m) for m in ("hit", "ndcg")}:
        raise UserError(f"{pa}: its queries are not the draw of --run {run} --queries {n_queries} --seed {seed}; "
                        "pass the options it was made with")
    plays = {"context": [popularity[q[1][-1]] for q in queries], "answer": [popularity[q[2]] for q in queries]}
    return {side: paired_by_group(da["hits"][na]["hit"], db["hits"][nb]["hit"], count_bucket(c), seed=seed)
            for side, c in plays.items()}


def paired_from_files(a, b, seed=SEED, skipped=None):
    """Paired HR@10 / NDCG@10 difference of row A minus row B read from two --out JSONs, each "FILE:ROW".

    For rows of different runs (other Semantic IDs cannot share one call: an adapter needs its own ID table). The
    two files must hold the same queries: the same count, and the same hits for the rows that read no Semantic ID
    (genre popularity, item kNN), which depend on the queries alone. Returns {"hit@10": (mean, lo, hi), ...}.
    Attribute P@10 and hallucinated@1 are paired only where both files ranked the same requests (count and
    phrasings) and decoded as many prompts; otherwise `skipped` (a list) gets a line saying why.
    """
    (pa, da, na), (pb, db, nb) = read_pair_rows(a, b)
    both = "preference" in da["hits"][na] and "preference" in db["hits"][nb]
    if both and da["hits"].get(RATE) != db["hits"].get(RATE):   # the rate's per-pair hits depend on the pairs alone
        raise UserError(f"{pa} and {pb} were not made on the same preference pairs (--pairs)")
    name = {"hallucinated": "hallucinated@1", "preference": "preference accuracy"}
    skipped = [] if skipped is None else skipped
    out = {}
    for m in ("hit", "ndcg", "precision", "hallucinated", "preference"):
        if m not in da["hits"][na] or m not in db["hits"][nb]:
            continue
        ma, mb = da["hits"][na][m], db["hits"][nb][m]
        if m == "precision":   # files written before the phrasings were recorded used the training ones
            ka, kb = ((d.get("attribute_queries"), d.get("attribute_phrasings", "train")) for d in (da, db))
            if ka != kb or len(ma) != len(mb):
                skipped.append(f"attribute P@{K} not paired: other requests ({ka[0]} {ka[1]} vs {kb[0]} {kb[1]})")
                continue
        if m == "hallucinated" and len(ma) != len(mb):
            skipped.append(f"hallucinated@1 not paired: {len(ma)} vs {len(mb)} prompts decoded")
            continue
        out[name.get(m, f"{m}@{K}")] = metrics.paired_bootstrap(ma, mb, seed=seed)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=RUN, help="run folder whose sft_data, prefs (and sasrec) to use")
    p.add_argument("--model", default=MODEL, help="base model folder of the adapters")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=FOLDER",
                   help="an adapter to rank with (repeat); the first is the reference of the paired differences")
    p.add_argument("--queries", type=int, default=QUERIES, help="validation next-track queries")
    p.add_argument("--attribute-queries", type=int, default=ATTRIBUTE_QUERIES,
                   help="attribute requests, ranked by each adapter (0: none)")
    p.add_argument("--attribute-phrasings", choices=tuple(PHRASINGS), default=ATTRIBUTE_PHRASINGS,
                   help="how the attribute requests are phrased: 'train', the training phrasings (every figure of "
                        "the README before 2026-12-03); 'heldout', phrasings in neither the training nor the test "
                        "examples (tasks.VAL_REQUEST_TEMPLATES), as the test requests are held out: a gain on the "
                        "training phrasings alone did not reach the test window (EXPERIMENTS.md, 'Group targets'). The "
                        "same seed draws the same attribute sets either way, so the two pair (default %(default)s)")
    p.add_argument("--hallucination-prompts", type=int, default=HALLUCINATION_PROMPTS,
                   help="validation prompts each adapter decodes without constraints, half next-track queries, half "
                        "attribute requests (as evaluate.py's test prompts); hallucinated@1 = best beam is no track "
                        "(default %(default)s; 0: skip)")
    p.add_argument("--seed", type=int, default=SEED, help="draw of the queries and the bootstrap")
    p.add_argument("--swap-context", action="store_true", default=SWAP_CONTEXT,
                   help="also rank every query with its context ID swapped for another track of the same genre (the "
                        "genre word stays): HR@10 then, and how much of the top 10 stays; whether a model reads the "
                        "context's ID at all, or only its genre")
    p.add_argument("--pairs", default=PAIRS,
                   help="validation preference pairs each adapter ranks beside the long-listen rate (default "
                        "RUN/prefs/val.jsonl; 'none' skips them; more pairs: `data.py prefs --max-val 3000`)")
    p.add_argument("--reward-reference", default=None, metavar="NAME",
                   help="the --adapter whose log-probs are DPO's reference (its SFT adapter): each other adapter "
                        "also ranks the pairs by its implicit reward against it, a row 'OTHER reward' (default: none)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="prompts per exact-ranking batch")
    p.add_argument("--out", default=None, help="JSON of the per-query hits and the table (optional)")
    p.add_argument("--pair", nargs=2, metavar="FILE:ROW", default=None,
                   help="no ranking: the paired difference of two rows of earlier --out JSONs (first minus second), "
                        "e.g. an adapter of another run, whose other Semantic IDs cannot share one call")
    p.add_argument("--by-plays", action="store_true", default=BY_PLAYS,
                   help="with --pair: the paired HR@10 also split by how often the context track and the relevant "
                        "track were played in the training window (under 20, 20+): where a gap lives. Draws the "
                        "files' queries again: give the --run, --queries and --seed they were made with")
    args = p.parse_args(argv)
    if args.by_plays and not args.pair:
        raise UserError("--by-plays splits a --pair: give --pair A.json:ROW B.json:ROW")
    if args.pair:
        skipped = []
        for m, d in paired_from_files(*args.pair, seed=args.seed, skipped=skipped).items():
            print(f"{args.pair[0]} - {args.pair[1]} {m}: {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]")
        for line in skipped:
            print(line)
        if args.by_plays:
            for side, groups in paired_by_plays(args.run, args.queries, args.seed, *args.pair).items():
                for g, (n, ma, mb, d) in groups.items():
                    print(f"  {side} track played {g:>5s} times: {n:4d} queries, HR@{K} {ma:.3f} - {mb:.3f}: "
                          f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]")
        return
    adapters = [a.split("=", 1) for a in args.adapter]
    if any(len(a) != 2 for a in adapters):
        raise UserError("--adapter takes NAME=FOLDER")
    if args.reward_reference and args.reward_reference not in [a[0] for a in adapters]:
        raise UserError(f"--reward-reference {args.reward_reference}: no --adapter of that name")
    if args.reward_reference and args.pairs == "none":
        raise UserError("--reward-reference needs preference pairs (--pairs)")
    sft_data = os.path.join(args.run, "sft_data")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    catalog, index, C, code_row = catalogue_codes(meta)
    n_items = len(catalog)
    queries, others = val_queries(sft_data, args.queries, args.seed, code_row, rest=True)
    popularity, cooc, labels = E.load_listening(sft_data, os.path.join(args.run, "prefs"), n_items)
    genres = B.genre_masks(catalog.genres)
    hits, pref_acc, pair_logps = {}, {}, {}

    def record(name, score_fn):
        hits[name] = query_hits(queries, score_fn)
        print(f"{name:24s} HR@{K} {np.mean(hits[name]['hit']):.3f}  NDCG@{K} {np.mean(hits[name]['ndcg']):.3f}",
              flush=True)

    pairs_path = (os.path.join(args.run, "prefs", "val.jsonl") if args.pairs == "" else
                  None if args.pairs == "none" else args.pairs)
    if pairs_path:   # the tracks of each pair, and the long-listen rate's hit on it
        need_file(pairs_path, "validation preference pairs (data.py prefs)")
        pair_ch, pair_rj = E.pair_rows(pairs_path, index)
        hits[RATE] = {"preference": B.pair_accuracy(B.long_listen_rate(labels["long"], labels["skip"]),
                                                    pair_ch, pair_rj).tolist()}
        print(f"{len(pair_ch)} validation preference pairs from {pairs_path}; {RATE} accuracy "
              f"{np.mean(hits[RATE]['preference']):.3f}")
    print(f"{len(queries)} validation next-track queries from {sft_data}/val.jsonl")
    record("genre popularity", lambda i: B.genre_popularity_scores(
        popularity, genres[catalog.genres[queries[i][1][-1]][0]]))
    record("item kNN", lambda i: B.item_knn_scores(cooc, popularity, queries[i][1][-1]))
    sas_dir = os.path.join(args.run, "sasrec")
    if os.path.exists(os.path.join(sas_dir, "model.safetensors")):
        sas_scores = sasrec.score(sasrec.load(sas_dir), [q[1] for q in queries], n_items)
        record("SASRec", lambda i: sas_scores[i])
    record("ID prefix popularity", lambda i: prefix_popularity_scores(C, popularity, queries[i][1][-1]))
    # the strongest next-track baselines of the test windows; their width and power chosen by evaluate.py's rule
    # (the best HR@10 on validation next plays), on plays not drawn as queries here, so that they are not fitted to
    # what they are scored on (BASELINE_CHOICE: how many, and why not every one)
    feats = signals.preprocess(catalog.features, rvq.load_rvq(meta["rvq"])["params"])
    in_genre = [genres[g[0]] for g in catalog.genres]
    choice = [(h[-1], {r}) for _, h, r in others[:BASELINE_CHOICE]]
    tau, _ = B.select_tau(feats, popularity, choice, lambda c: in_genre[c])
    record(CONTENT_POP, lambda i: B.content_popularity_scores(
        feats, queries[i][1][-1], popularity, in_genre[queries[i][1][-1]], tau))
    print(f"  ({CONTENT_POP}: kernel width {tau:g}, chosen on {len(choice)} other validation next plays)")
    (tau_co, lam), _ = B.select_tau_lambda(feats, popularity, cooc, choice, lambda c: in_genre[c])
    record(CONTENT_CO, lambda i: B.content_colisten_scores(
        feats, queries[i][1][-1], popularity, B.colisten_counts(cooc, queries[i][1][-1], n_items),
        in_genre[queries[i][1][-1]], tau_co, lam))
    print(f"  ({CONTENT_CO}: width {tau_co:g}, co-listening power {lam:g}, chosen on the same plays)")
    trie = ranking.IDTrie(list(code_row), meta["levels"])
    attr_queries = attribute_queries(catalog, {r: c for c, r in code_row.items()}, args.attribute_queries,
                                     args.seed, PHRASINGS[args.attribute_phrasings]) if args.attribute_queries else []
    if attr_queries:
        print(f"{len(attr_queries)} attribute requests ({args.attribute_phrasings} phrasings, a fresh draw); the "
              f"adapters' P@{K}:")
    if args.swap_context:
        swapped, swapped_rows = swap_context([q[0] for q in queries], [q[1][-1] for q in queries],
                                             {r: c for c, r in code_row.items()},
                                             genre_rows_of(catalog, code_row.values()),
                                             lambda r: catalog.genres[r][0], args.seed)
    for name, folder in adapters:
        model, tok, vocab = M.load_policy(args.model, adapter=folder, id_table_sha=meta["id_table_sha256"])
        lora.merge_lora(model)   # as evaluate.py
        fmt = M.PromptFormat(tok, vocab)
        enc = [fmt.prompt(q[0]) for q in queries]
        t0 = time.time()
        scored = []
        with torch.no_grad():
            for s in range(0, len(enc), args.batch_size):
                scored += ranking.exact_top_k(model, enc[s:s + args.batch_size], vocab, trie, K + 1,
                                              batch_size=args.batch_size)

        def llm_scores(i, scored=scored):
            return score_vector(scored[i], code_row, n_items)
        record(name, llm_scores)
        print(f"{'':24s} ({time.time() - t0:.0f} s)")
        if args.swap_context:   # the same queries, another track of the context's genre in the prompt
            with torch.no_grad():
                top = ranking.exact_top_k(model, [fmt.prompt(x) for x in swapped], vocab, trie, K + 2,
                                          batch_size=args.batch_size)
            true_top, swap_top = [], []
            for i, q in enumerate(queries):
                drop = [q[1][-1], swapped_rows[i]]   # neither prompt's own track counts, in either list
                true_top.append(metrics.top_k_pessimistic(llm_scores(i), {q[2]}, K, exclude=drop))
                swap_top.append(metrics.top_k_pessimistic(score_vector(top[i], code_row, n_items), {q[2]}, K,
                                                          exclude=drop))
            # both lists without both tracks, so the two HR@10 pair; the true one may differ from "hit" above, as
            # one more track left out can lift the next play into the top 10 (or be the next play, rarely)
            hits[name]["hit_unswapped"] = [float(q[2] in t) for q, t in zip(queries, true_top)]
            hits[name]["hit_swapped"] = [float(q[2] in t) for q, t in zip(queries, swap_top)]
            hits[name]["top_kept"] = [top_overlap(a, b) for a, b in zip(true_top, swap_top)]
            d = metrics.paired_bootstrap(hits[name]["hit_swapped"], hits[name]["hit_unswapped"], seed=args.seed)
            print(f"{'':24s} context swapped within its genre: HR@{K} {np.mean(hits[name]['hit_unswapped']):.3f} "
                  f"-> {np.mean(hits[name]['hit_swapped']):.3f} ({d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]); top {K} "
                  f"kept {np.mean(hits[name]['top_kept']):.3f}")
        if attr_queries:
            with torch.no_grad():
                top = ranking.exact_top_k(model, [fmt.prompt(q[0]) for q in attr_queries], vocab, trie, K,
                                          batch_size=args.batch_size)
            # ties broken against the relevant tracks, as above
            ranked = [metrics.top_k_pessimistic(score_vector(t, code_row, n_items), rel, K)
                      for t, (_, rel) in zip(top, attr_queries)]
            hits[name]["precision"] = metrics.per_query(ranked, [q[1] for q in attr_queries], ks=(K,))[
                f"precision@{K}"].tolist()
            print(f"{'':24s} attribute requests P@{K} {np.mean(hits[name]['precision']):.3f}")
        if args.hallucination_prompts:
            h_prompts = E.hallucination_prompts([q[0] for q in queries], [q[0] for q in attr_queries],
                                                args.hallucination_prompts)
            on = argparse.Namespace(batch_size=args.batch_size, hallucination_beam=E.HALLUCINATION_BEAM,
                                    device=str(next(model.parameters()).device))   # evaluate.py's beam
            _, per_prompt = E.hallucination(model, fmt, h_prompts, trie, on, f"{name} unconstrained")
            hits[name]["hallucinated"] = [float(n) for n in per_prompt["hallucinated@1"]]   # 1.0: best beam no track
            exits = E.exit_counts(per_prompt["exit_level@1"], meta["levels"])
            print(f"{'':24s} hallucinated@1 (unconstrained, {len(h_prompts)} prompts) "
                  f"{np.mean(hits[name]['hallucinated']):.3f} (off the catalogue at: "
                  + ", ".join(f"{k} {v}" for k, v in exits.items()) + ")")
        if pairs_path:
            on = argparse.Namespace(device=str(next(model.parameters()).device),
                                    score_batch_size=E.SCORE_BATCH_SIZE)   # evaluate.py's scoring batches
            c, r = pair_logps[name] = E.pair_logps(model, fmt, pairs_path, on)
            hits[name]["preference"] = dpo.pair_hits(c, r).tolist()   # evaluate.py's rule
            print(f"{'':24s} validation preference accuracy {np.mean(hits[name]['preference']):.3f} "
                  f"({len(pair_ch)} pairs)")
            bias = model.lm_head.id_bias.detach().view(vocab.levels, vocab.codebook_size).numpy()
            if bias.any():   # dpo.py --id-bias-lr: the bias's own per-track score, sum_l b_l[c_l], as a row of its own
                score = np.where(C[:, 0] >= 0, bias[np.arange(vocab.levels), np.maximum(C, 0)].sum(1), 0.0)
                hits[f"{name} ID bias"] = {"preference": B.pair_accuracy(score, pair_ch, pair_rj).tolist()}
                print(f"{'':24s} its ID bias alone as a track's score: preference accuracy "
                      f"{np.mean(hits[name + ' ID bias']['preference']):.3f} (row '{name} ID bias')")
        summary_path = os.path.join(os.path.dirname(os.path.abspath(folder)), "summary.json")
        d = read_json(summary_path, "summary") if os.path.exists(summary_path) else {}
        if "eval/logp_accuracy" in d:
            # a DPO run: its held-out preference accuracy at the kept checkpoint, on the validation pairs that
            # chose that checkpoint (so slightly optimistic), to weigh against next-track HR@10
            pref_acc[name] = (d["eval/logp_accuracy"], d.get("held_out_pairs"))
            print(f"{'':24s} validation preference accuracy {pref_acc[name][0]:.3f} "
                  f"({pref_acc[name][1]} pairs, dpo.py's checkpoint choice)")
    if args.reward_reference:   # DPO's own reward model: each adapter's log-probs against its reference's
        ref_c, ref_r = pair_logps[args.reward_reference]
        for name, (c, r) in [(n, v) for n, v in pair_logps.items() if n != args.reward_reference]:
            hits[f"{name} reward"] = {"preference": dpo.implicit_reward_hits(c, r, ref_c, ref_r).tolist()}
            print(f"{name + ' reward':24s} validation preference accuracy of its implicit reward against "
                  f"{args.reward_reference} {np.mean(hits[name + ' reward']['preference']):.3f}")
    table = {n: {f"{m}@{K}": metrics.bootstrap_ci(h[m], seed=args.seed) for m in ("hit", "ndcg", "precision") if m in h}
             for n, h in hits.items()}
    for n, h in hits.items():
        for m, label in (("hallucinated", "hallucinated@1"), ("preference", "preference accuracy"),
                         ("hit_unswapped", f"hit@{K}, both tracks excluded"),
                         ("hit_swapped", f"hit@{K}, context swapped"), ("top_kept", f"top {K} kept, context swapped")):
            if m in h:
                table[n][label] = metrics.bootstrap_ci(h[m], seed=args.seed)
    paired = {}
    if adapters:
        ref = adapters[0][0]
        print(f"\npaired against {ref} (95% interval)")
        for name in [n for n in hits if n != ref]:
            for metric, suffix, label in PAIRED:
                if metric in hits[name] and metric in hits[ref]:
                    d = metrics.paired_bootstrap(hits[name][metric], hits[ref][metric], seed=args.seed)
                    paired[f"{name} - {ref}{suffix}"] = d
                    print(f"  {name} - {ref} {label}: {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]")
    if args.out:
        write_json(args.out, {"queries": len(queries), "attribute_queries": len(attr_queries),
                              "attribute_phrasings": args.attribute_phrasings, "table": table,
                              "paired": paired, "hits": hits, "content_popularity_tau": tau,
                              "preference_accuracy": pref_acc})


if __name__ == "__main__":
    run_main(main)
