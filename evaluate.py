"""Evaluation: ranking metrics, hallucination, preference accuracy, baselines, report and plots.

    python evaluate.py --run runs/demo

Reads what the earlier stages wrote under --run (sft_data/, prefs/, sft/, dpo/, and the
catalogue and Semantic-ID table named in sft_data/meta.json); writes eval/report.md,
eval/results.json and eval/*.png (plots need matplotlib, an optional dependency).

Test sets:
  next_track  held-out later plays: the prompt names the previous track (name + ID); the
              relevant item is the track the user then listened to for long.
  attributes  requests with held-out phrasings; relevant = every track satisfying all of
              the requested attributes (precision@K and NDCG@K matter here).
  preferences held-out (chosen, rejected) pairs: share where log p(chosen) > log p(rejected).
Systems (baselines.py): random, popularity, genre popularity, content kNN, genre content kNN and content x
popularity (audio features; the last with a kernel width chosen on the validation window), content x co-listening
(with co-listening; its power chosen there too), neighbour ranks x co-listening (the same inputs, every number of its
form learned from the training next plays), item kNN (co-listening), SASRec (sasrec.py, sequential), MiniLM text
similarity
(the "semantic similarity" approach); for preferences, per-track play count, long-listen rate and
audio logistic regression. The LLMs: base zero-shot, SFT and DPO, ranking the catalogue's IDs by
log-probability: exactly (a pruned walk over the ID trie) or by constrained beam search.

    torchrun --standalone --nproc-per-node N -- evaluate.py --run runs/demo

(the `--`, or torchrun takes --run for its own --run-path) shares the LLMs' work out (ddp.py): each process ranks
every N-th batch of queries, decodes every N-th batch of hallucination prompts and scores every N-th batch of
preference pairs, exactly as one process would; all of them get every result back (the baselines, cheap, run in
each), and rank 0 writes: the same numbers as one process.
"""
import argparse
import hashlib
import json
import os
import time

import numpy as np
import torch
from tqdm import tqdm

import baselines as B
import ddp
import dpo
import formats
import lora
import model as M
import ranking
import rvq
import sasrec
import signals
from common import UserError, atomic_open, need_file, read_json, run_main, save_config, write_json
from metrics import KS, N_BOOT, bootstrap_ci, bootstrap_ratio_ci, paired_bootstrap, per_query, top_k_pessimistic
from tasks import describe_track

# -----------------------------------------------------------------------------
RANKING: str = "auto"          # exact (every ID that can reach the top K is scored), beam, or auto: exact up to
                               # EXACT_MAX_ITEMS tracks, beam above (the exact walk grows with the catalogue)
EXACT_MAX_ITEMS: int = 20_000
BEAM_WIDTH: int = 21           # >= max(KS), plus one for the prompt's own track, which is excluded
HALLUCINATION_BEAM: int = 10   # unconstrained beam: malformed / invalid shares at @1, @5, @10
HALLUCINATION_PROMPTS: int = 0  # test prompts decoded without constraints, per model; 0: every one (the demo's
                                # 200 + 120); 40, the demo's until 2026-12-03, cannot tell 5% from 0%: one
                                # hallucinated answer is 2.5%
MAX_NEXT: int = 0              # cap on next-track test queries (0: all)
RANKER_EPOCHS: int = B.RANKER_EPOCHS   # epochs of neighbour ranks x co-listening (baselines.fit_neighbour_ranks)
RANKER_PATIENCE: int = B.RANKER_PATIENCE   # its epochs without a lower validation cross-entropy before it stops
RANKER_DENSE_MAX_ITEMS: int = 5_000   # largest catalogue it builds (N, N) tables for (2.9 GB peak at 5,000 tracks,
                               # growing as N^2: far past memory at the real Spotify catalogue's 90,000); above,
                               # baselines.NeighbourRanksSparse: the same scores, 0.45 GB at 5,000 and 1.3 GB at
                               # 90,000 (benchmarks/bench_ranker.py)
RANKER_PLAYS: int = 0          # training next plays the learned baseline fits on (0: every one, the demo's 15,758-
                               # 16,745); a seeded draw when capped: at 90,000 tracks an epoch costs about 7 ms a play
                               # on 2 cores (benchmarks/bench_ranker.py), so a real log's millions need a cap
VAL_NEXT: int = 0              # validation next-track examples that choose the content baselines' width and power
                               # (0: every one, the same set whatever else data.py shuffled among them; the first
                               # 500 of the file, the default until 2026-12-06, changed with the number of attribute
                               # requests, and with them the choice)
MAX_ATTRIBUTES: int = 0        # cap on attribute test queries (0: all)
BATCH_SIZE: int = 8            # prompts per beam-search batch (x 21 beams: on 2 cores 16 ran slower, more padding)
SCORE_BATCH_SIZE: int = 16     # preference pairs per scoring forward
SEED: int = 0
DEVICE: str = "auto"
NEIGHBOUR_RANKS = "neighbour ranks x co-listening"   # the learned ranker's row
# -----------------------------------------------------------------------------


# ============================================================================= LLM systems

def same_weights(adapter_a, adapter_b):
    """True when two adapter folders are the same function: byte-identical weights (LoRA and Semantic-ID rows)
    and the same LoRA scaling (dropout, a training option, may differ)."""
    files = (lora.ADAPTER_WEIGHTS, M.ID_TOKENS_FILE, lora.ADAPTER_CONFIG)
    if not all(os.path.exists(os.path.join(d, f)) for d in (adapter_a, adapter_b) for f in files):
        return False
    if any(M.file_sha256(os.path.join(adapter_a, f)) != M.file_sha256(os.path.join(adapter_b, f)) for f in files[:2]):
        return False
    keys = ("r", "lora_alpha", "use_rslora", "target_modules")
    ca, cb = (read_json(os.path.join(d, lora.ADAPTER_CONFIG), "adapter config") for d in (adapter_a, adapter_b))
    return all(ca.get(k) == cb.get(k) for k in keys)


def rank_with_model(model, fmt, prompts, trie, id_to_row, relevant, exclude, args, desc):
    """Top-K catalogue rows per prompt, ranked by the model's log p(ID | prompt) (summed over the L codes).

    ranking "exact": every ID that can reach the top K is scored (ranking.exact_top_k, a pruned walk over the
    ID trie), so the list is the model's true top K; "beam": constrained beam search (approximate, for
    catalogues too large to walk). Ties (equal scores) are broken against the relevant items, as for the
    baselines. A model whose ID rows are all identical (the zero-shot base: every ID starts at the mean
    embedding) gives every ID the same score: all of them tie, and no model run is needed.
    """
    k = max(KS) + 1                      # one more: the prompt's own track is excluded afterwards
    n_items = max(id_to_row.values()) + 1
    if M.ids_indistinguishable(model, fmt.vocab):
        scored = [[(codes, 0.0) for codes in trie.valid]] * len(prompts)
    else:
        # a model's list depends on the prompt alone, and next-track queries repeat prompts (one template, one
        # context track: the demo's 1,000 test queries hold some 600 distinct prompts), so each distinct prompt
        # is ranked once and its list shared by the queries that asked it
        distinct = list(dict.fromkeys(prompts))
        enc = [fmt.prompt(p) for p in distinct]
        batches = []
        # under torchrun each rank takes every N-th batch; gather puts all of them back in order on every rank
        for s in tqdm(ddp.shard(range(0, len(enc), args.batch_size)), desc=desc, disable=ddp.bar_off(),
                      leave=False):
            chunk = enc[s:s + args.batch_size]
            if args.ranking == "exact":
                batches.append(ranking.exact_top_k(model, chunk, fmt.vocab, trie, k, device=args.device,
                                                   batch_size=args.batch_size))
            else:
                res = ranking.beam_search(model, chunk, fmt.vocab, args.beam_width, trie=trie,
                                          pad_id=M.pad_id_of(fmt.tokenizer), batch_size=args.batch_size,
                                          device=args.device)
                batches.append([[(tuple(fmt.vocab.level_code(t)[1] for t in toks), sc) for toks, sc in r]
                                for r in res])
        by_prompt = dict(zip(distinct, (r for batch in ddp.gather(batches) for r in batch)))
        scored = [by_prompt[p] for p in prompts]
    out = []
    for i, res in enumerate(scored):
        v = np.full(n_items, -np.inf)
        for codes, sc in res:
            v[id_to_row[codes]] = sc
        out.append(top_k_pessimistic(v, relevant[i], max(KS), exclude=exclude[i]))
    return out


def id_codes(toks, vocab, end_id):
    """Codes of a generated sequence if it is exactly L level-ordered ID tokens then the end token, else None."""
    L = vocab.levels
    if len(toks) != L + 1 or toks[L] != end_id:
        return None
    if not all(vocab.is_id_token(t) and vocab.level_code(t)[0] == l for l, t in enumerate(toks[:L])):
        return None
    return tuple(vocab.level_code(t)[1] for t in toks[:L])


def exit_level(codes, trie):
    """Where a generated ID leaves the catalogue: the 1-based level of its first code that no track has after the
    codes before it; 0 for a catalogue ID, None for a malformed answer (codes None). Example: tracks (0, 1) and
    (0, 3): (0, 3) -> 0, (0, 2) -> 2, (1, 1) -> 1. It says what a model has not learnt: level L alone, the
    last codes of real prefixes; level 1 or 2, prefixes no track has."""
    if codes is None:
        return None
    for level in range(len(codes)):
        if codes[level] not in trie.allowed(codes[:level]).tolist():
            return level + 1
    return 0


def exit_counts(levels, n_levels):
    """{"malformed": n, "level 1": n, ...}: how many top-1 answers leave the catalogue where (exit_level's values;
    catalogue IDs not counted)."""
    return {"malformed": sum(x is None for x in levels),
            **{f"level {l}": sum(x == l for x in levels) for l in range(1, n_levels + 1)}}


def hallucination(model, fmt, prompts, trie, args, desc):
    """Shares of unconstrained top-K outputs that are malformed, or well-formed but match no track.

    Returns (shares, per_prompt): shares {"malformed@k", "invalid@k", "hallucinated@k"} pooled over every output of
    every prompt, and per_prompt {"hallucinated@k": (P,) counts, "outputs@k": (P,) counts} for the intervals
    (metrics.bootstrap_ratio_ci: 40 prompts tell 5% from 0% only roughly), and "top1": (P,) texts of the best beams,
    so that the report can show what a hallucinated answer looks like, and "exit_level@1": (P,) where each top-1
    answer leaves the catalogue (exit_level). A beam stops at the end token
    (beam_search's end_id): one that ends before its L ID tokens is malformed, scored by what it generated, not by
    tokens it would have gone on to score after its end.
    """
    enc = [fmt.prompt(p) for p in prompts]
    batches = []
    for s in tqdm(ddp.shard(range(0, len(enc), args.batch_size)), desc=desc, disable=ddp.bar_off(), leave=False):
        batches.append(ranking.beam_search(model, enc[s:s + args.batch_size], fmt.vocab, args.hallucination_beam,
                                           trie=None, end_id=fmt.end_id, pad_id=M.pad_id_of(fmt.tokenizer),
                                           batch_size=args.batch_size, device=args.device))
    res = [r for batch in ddp.gather(batches) for r in batch]   # every rank's batches, in order
    codes = [[id_codes(toks, fmt.vocab, fmt.end_id) for toks, _ in r] for r in res]   # (P, beams), None: malformed
    shares, per_prompt = {}, {"top1": [fmt.decode(r[0][0]) if r else "" for r in res],
                               "exit_level@1": [exit_level(cs[0], trie) if cs else None for cs in codes]}
    for k in (1, 5, 10):
        malformed = [sum(c is None for c in cs[:k]) for cs in codes]
        invalid = [sum(c is not None and c not in trie.valid for c in cs[:k]) for cs in codes]
        outputs = [len(cs[:k]) for cs in codes]
        total = max(sum(outputs), 1)
        shares[f"malformed@{k}"] = sum(malformed) / total
        shares[f"invalid@{k}"] = sum(invalid) / total
        shares[f"hallucinated@{k}"] = (sum(malformed) + sum(invalid)) / total
        per_prompt[f"hallucinated@{k}"] = [m + i for m, i in zip(malformed, invalid)]
        per_prompt[f"outputs@{k}"] = outputs
    return shares, per_prompt


def hallucination_prompts(next_prompts, attribute_prompts, n):
    """The n prompts decoded without constraints: half next-track, half attribute, the first of each; where one
    family has fewer, the other fills the rest; n 0: all of them. 40 of 200 + 40 test prompts: 20 + 20; 0 or 240:
    all, 200 + 40."""
    if n <= 0:
        return list(next_prompts) + list(attribute_prompts)
    n_next = min(len(next_prompts), n // 2)
    n_attr = min(len(attribute_prompts), n - n_next)
    n_next = min(len(next_prompts), n - n_attr)
    return list(next_prompts[:n_next]) + list(attribute_prompts[:n_attr])


def pair_logps(model, fmt, path, args):
    """Summed log-probs of the chosen and of the rejected answer of every pair in path: two (N,) fp32 tensors."""
    return dpo.score_pairs(model, dpo.read_pairs(path, fmt), M.pad_id_of(fmt.tokenizer), args.device,
                           args.score_batch_size, desc="preference pairs")


def preference_accuracy(model, fmt, path, args):
    """Per pair: 1 if the model's summed log-prob ranks the chosen answer above the rejected one (a tie: 1/2)."""
    return dpo.pair_hits(*pair_logps(model, fmt, path, args)).numpy()


# ============================================================================= driver

def read_tests(path, limit):
    need_file(path, "test set")
    rows = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
    return rows[:limit] if limit else rows


def val_next_examples(sft_data, code_row, name="val.jsonl"):
    """[(prompt, history rows, next row)] of the validation window's next-track examples (sft_data/val.jsonl, in
    file order, which data.py shuffled): the plays are read back from the prompt's Semantic IDs, the context last.
    code_row: {codes tuple: catalogue row}. name="train.jsonl": the training examples', read the same way."""
    path = os.path.join(sft_data, name)
    need_file(path, "SFT examples (data.py sft)")
    levels, out = len(next(iter(code_row))), []
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        r = json.loads(line) if line.strip() else {}
        if r.get("task") != "next_track":
            continue
        found = [int(c) for _, c in formats.ID_TOKEN_RE.findall(r["prompt"])]
        answer = tuple(int(c) for _, c in formats.ID_TOKEN_RE.findall(r["answer"]))
        try:
            hist = [code_row[tuple(found[j:j + levels])] for j in range(0, len(found), levels)]
            out.append((r["prompt"], hist, code_row[answer]))
        except KeyError:
            raise UserError(f"{path}, line {n}: an ID not in the Semantic-ID table: rebuild the SFT data")
    return out


def baseline_choice_queries(sft_data, code_row, n=VAL_NEXT):
    """[(context row, {next row})] on which the content baselines choose their width and power: the validation
    window's next plays (val_next_examples), every one for n = 0, else the first n in file order. Every one is a set
    that does not change with the other tasks' examples data.py shuffled among them; the first n is not."""
    return [(h[-1], {r}) for _, h, r in val_next_examples(sft_data, code_row)[:n or None]]


def ranker_training_plays(plays, cap, seed):
    """The training next plays the learned baseline fits on: every one for cap = 0 (or cap >= their number), else
    a draw of cap of them by seed, kept in file order (the first cap in the file would be the earliest sessions)."""
    if not cap or cap >= len(plays):
        return list(plays)
    keep = np.sort(np.random.default_rng(seed).choice(len(plays), size=cap, replace=False))
    return [plays[i] for i in keep]


def summarise(per_q, n_boot):
    return {m: dict(zip(("mean", "lo", "hi"), bootstrap_ci(v, n_boot))) for m, v in per_q.items()}


def load_listening(sft_data, prefs_dir, n_items):
    """Training-window statistics: popularity (N,), co-listening {i: {j: count}}, per-track labels."""
    path = os.path.join(sft_data, "listening_stats.npz")
    need_file(path, "listening statistics (data.py sft)")
    stats = np.load(path)
    cooc = {}
    for i, j, c in zip(stats["cooc_i"], stats["cooc_j"], stats["cooc_count"]):
        cooc.setdefault(int(i), {})[int(j)] = float(c)
    path = os.path.join(prefs_dir, "track_labels.npz")
    need_file(path, "per-track listening labels (data.py prefs)")
    labels = dict(np.load(path))
    if len(labels["long"]) != n_items:
        raise UserError(f"{path}: {len(labels['long'])} tracks, the catalogue has {n_items}; rebuild it")
    return stats["popularity"].astype(np.float64), cooc, labels


# per-query values kept in results.json ("per_query"), so that two runs of one world pair on the same queries
# (benchmarks/pair_runs.py: another CONTEXT_TEXT or other IDs against the demo's)
PER_QUERY_METRICS = {"next_track": ("hit@10", "ndcg@10"), "attributes": ("precision@10", "ndcg@10")}


def query_key(*parts):
    """16 hex digits naming what a set of queries asks (context and relevant tracks, request texts, pairs), the
    same for two runs whose prompts differ in form only (another CONTEXT_TEXT, other Semantic IDs)."""
    return hashlib.sha256(json.dumps(parts, default=int).encode()).hexdigest()[:16]


def pair_rows(path, row_of_track):
    """(chosen rows, rejected rows) of a pairs JSONL file, as catalogue rows: (P,), (P,)."""
    need_file(path, "preference pairs")
    rows = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
    return (np.array([row_of_track[r["chosen_track"]] for r in rows], dtype=np.int64),
            np.array([row_of_track[r["rejected_track"]] for r in rows], dtype=np.int64))


def pairs_dpo_drew(dpo_dir, n):
    """Indices of the training pairs dpo.py drew (its summary.json), so that the '(pairs)' baselines see exactly
    the DPO training data when train.jsonl holds more pairs than the steps draw (data.py prefs --max-train 0); all
    n where the summary does not say (an older run) or counts another file."""
    path = os.path.join(dpo_dir, "summary.json")
    summary = read_json(path, "DPO summary") if os.path.exists(path) else {}
    index = summary.get("train_pairs_drawn_index")
    if index is None or summary.get("train_pairs") != n:
        return np.arange(n)
    return np.asarray(index, dtype=np.int64)


def strongest(per_q, names, metric):
    """The name among `names` with the highest mean of `metric` (the bar an LLM must clear)."""
    names = [n for n in names if n in per_q]
    return max(names, key=lambda n: float(np.mean(per_q[n][metric]))) if names else None


def evaluate(args):
    device = ddp.setup(M.pick_device(args.device))   # under torchrun: this rank's device
    args.device = str(device)
    sft_data, prefs_dir = os.path.join(args.run, "sft_data"), os.path.join(args.run, "prefs")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    adapters = {"sft": args.sft or os.path.join(args.run, "sft", "adapter"),
                "dpo": args.dpo or os.path.join(args.run, "dpo", "adapter")}
    for name, a in adapters.items():
        need_file(os.path.join(a, M.ID_VOCAB_FILE), f"{name.upper()} adapter")
    ids_path = meta["semantic_ids"]
    if M.file_sha256(ids_path) != meta["id_table_sha256"]:
        raise UserError(f"{ids_path} changed since the SFT data was built; rebuild the later stages")
    catalog, _ = formats.load_catalog(meta["catalog"])
    track_ids, codes = formats.load_semantic_ids(ids_path)
    row_of_track = catalog.index()
    rows = np.array([row_of_track[t] for t in track_ids])
    id_to_row = {tuple(int(c) for c in cs): int(r) for cs, r in zip(codes, rows)}
    trie = ranking.IDTrie(list(id_to_row), meta["levels"])
    n_items = len(catalog)
    if args.ranking == "auto":   # the exact walk's cost grows with the prefixes it may have to expand
        args.ranking = "exact" if n_items <= args.exact_max_items else "beam"
    popularity, cooc, labels = load_listening(sft_data, prefs_dir, n_items)
    feats = signals.preprocess(catalog.features, rvq.load_rvq(meta["rvq"])["params"])
    genres = B.genre_masks(catalog.genres)

    tests = {"next_track": read_tests(os.path.join(sft_data, "test_next.jsonl"), args.max_next),
             "attributes": read_tests(os.path.join(sft_data, "test_attributes.jsonl"), args.max_attributes)}
    relevant = {k: [{row_of_track[t] for t in q["relevant"]} for q in v] for k, v in tests.items()}
    context = {k: [[row_of_track[q["context_track"]]] if q.get("context_track") else [] for q in v]
               for k, v in tests.items()}
    # what a sequential baseline may read: the plays the prompt shows (older test sets: the context track)
    history = [[row_of_track[t] for t in q.get("history", [q["context_track"]])] for q in tests["next_track"]]
    prompts = {k: [q["prompt"] for q in v] for k, v in tests.items()}
    kmax = max(KS)
    ranked = {k: {} for k in tests}

    def scored(name, test, score_fn):
        ranked[test][name] = [top_k_pessimistic(score_fn(i), relevant[test][i], kmax, exclude=context[test][i])
                              for i in range(len(tests[test]))]

    def ctx_genre(i):   # the context track's primary genre: the prompt names it
        return genres[catalog.genres[context["next_track"][i][0]][0]]

    def request_genre(i):
        g = B.genre_in_request(prompts["attributes"][i], genres)
        return genres[g] if g else np.zeros(n_items, dtype=bool)

    t0 = time.time()
    for test in tests:
        scored("random", test, lambda i: B.random_scores(n_items, i, args.seed))
        scored("popularity", test, lambda i: popularity)
    scored("genre popularity", "next_track", lambda i: B.genre_popularity_scores(popularity, ctx_genre(i)))
    scored("genre popularity", "attributes", lambda i: B.genre_popularity_scores(popularity, request_genre(i)))
    nxt = context["next_track"]
    scored("content kNN", "next_track", lambda i: B.content_knn_scores(feats, nxt[i][0]))
    scored("genre content kNN", "next_track", lambda i: B.genre_content_knn_scores(feats, nxt[i][0], ctx_genre(i)))
    # content x co-listening reads both next-track signals the model is given, audio and co-listening; its width
    # and power, and content x popularity's width, from the validation window's next plays, never the test's:
    # content x popularity is its lam-0 column (B.select_tau's choice, tested equal, without a pass of its own)
    val_q = baseline_choice_queries(sft_data, id_to_row, args.val_next)
    (tau_co, lam), val_hr_co = B.select_tau_lambda(feats, popularity, cooc, val_q,
                                                   lambda c: genres[catalog.genres[c][0]])
    tau, val_hr = B.select_tau_from_grid(val_hr_co)
    scored("content x popularity", "next_track",
           lambda i: B.content_popularity_scores(feats, nxt[i][0], popularity, ctx_genre(i), tau))
    scored("content x co-listening", "next_track", lambda i: B.content_colisten_scores(
        feats, nxt[i][0], popularity, B.colisten_counts(cooc, nxt[i][0], n_items), ctx_genre(i), tau_co, lam))
    scored("item kNN", "next_track", lambda i: B.item_knn_scores(cooc, popularity, nxt[i][0]))
    # the same inputs with every number of their form learned from the training window's next plays by SFT's own
    # objective, the epoch kept by the validation plays' likelihood (as sft.py keeps its best validation loss): the
    # bar for a model that learns from these plays, not only a baseline with two numbers chosen
    t_fit = time.time()
    dense = n_items <= args.ranker_dense_max_items
    if dense:      # the readable form: (N, N) tables of ranks, genre rows and co-listens
        in_genre = np.stack([genres[g[0]] for g in catalog.genres])                        # (N, N) row c: c's genre
        colisten = np.stack([B.colisten_counts(cooc, c, n_items) for c in range(n_items)])  # (N, N) co-listens n_ct
        ranker = B.NeighbourRanks(feats, popularity, in_genre, colisten=colisten)
        del in_genre, colisten
    else:          # the same scores from each track's nearest neighbours and sparse co-listening rows
        column = {g: k for k, g in enumerate(genres)}
        ranker = B.NeighbourRanksSparse(feats, popularity, np.stack(list(genres.values()), 1),
                                        np.array([column[gs[0]] for gs in catalog.genres]), cooc=cooc)
    train_next = [(h[-1], r) for _, h, r in val_next_examples(sft_data, id_to_row, name="train.jsonl")]
    train_next = ranker_training_plays(train_next, args.ranker_plays, args.seed)
    ranker, ranker_ce = B.fit_neighbour_ranks(ranker, train_next, [(c, min(r)) for c, r in val_q],
                                              epochs=args.ranker_epochs, seed=args.seed,
                                              chunk=None if dense else B.RANKER_BATCH,
                                              patience=args.ranker_patience)
    with torch.no_grad():  # one context at a time: the same scores as a batch's rows, without a (Q, N) table
        scored(NEIGHBOUR_RANKS, "next_track", lambda i: ranker(torch.tensor([nxt[i][0]]))[0].double().numpy())
    ranker_info = {"form": "dense" if dense else "sparse", "train_plays": len(train_next),
                   "validation_plays": len(val_q), "kept_epoch": min(ranker_ce, key=ranker_ce.get),
                   "fit_seconds": round(time.time() - t_fit, 1),
                   "validation_cross_entropy": {str(e): v for e, v in ranker_ce.items()},
                   "genre_gain": float(ranker.g.detach()), "colisten_power": float(ranker.lam.detach()),
                   "rank_weights": [float(v) for v in ranker.w.detach()[1:]]}
    del ranker
    sasrec_dir = args.sasrec or os.path.join(args.run, "sasrec")
    if os.path.exists(os.path.join(sasrec_dir, "model.safetensors")):
        sas = sasrec.load(sasrec_dir)
        sas_scores = sasrec.score(sas, history, n_items)                          # (Q, N)
        scored("SASRec", "next_track", lambda i: sas_scores[i])
        del sas, sas_scores
    elif ddp.is_main():
        print(f"no SASRec model in {sasrec_dir} (run sasrec.py): its row is left out")
    if not args.no_minilm:
        enc = B.MiniLM(device)
        items = enc.embed([describe_track(catalog, i) for i in range(n_items)], desc="MiniLM tracks")
        for test in tests:
            q = enc.embed([formats.ID_TOKEN_RE.sub("", p) for p in prompts[test]], desc="MiniLM queries")
            sims = q @ items.T                                                  # (Q, N) cosine
            scored("MiniLM", test, lambda i: sims[i])
        del enc
    if ddp.is_main():
        print(f"baselines ranked in {time.time() - t0:.0f}s")

    # preference baselines: per-track scores, on the same held-out pairs as the LLMs
    pref_path = os.path.join(prefs_dir, "test.jsonl")
    test_ch, test_rj = pair_rows(pref_path, row_of_track)
    train_ch, train_rj = pair_rows(os.path.join(prefs_dir, "train.jsonl"), row_of_track)
    drawn = pairs_dpo_drew(os.path.dirname(os.path.normpath(adapters["dpo"])), len(train_ch))
    train_ch, train_rj = train_ch[drawn], train_rj[drawn]   # the pairs DPO trained on, not the whole file
    prefs = {name: B.pair_accuracy(sc, test_ch, test_rj) for name, sc in B.preference_scores(
        feats, popularity, labels["long"], labels["skip"], train_ch, train_rj).items()}

    hall, hall_pp = {}, {}
    for name, adapter in (("base", None), ("SFT", adapters["sft"]), ("DPO", adapters["dpo"])):
        t0 = time.time()
        if name == "DPO" and same_weights(adapters["sft"], adapter):
            # dpo.py kept its starting point (no step beat step 0 on the held-out pairs): the very SFT weights,
            # so the very same lists and scores; ranking them again would cost minutes for nothing
            for test in tests:
                ranked[test]["DPO"] = ranked[test]["SFT"]
            hall["DPO"], hall_pp["DPO"], prefs["DPO"] = hall["SFT"], hall_pp["SFT"], prefs["SFT"]
            if ddp.is_main():
                print("DPO: the SFT weights, byte for byte (dpo.py kept step 0): SFT's results reused")
            continue
        model, tok, vocab = M.load_policy(args.model, adapter=adapter, levels=meta["levels"],
                                          codebook_size=meta["codebook_size"],
                                          id_table_sha=meta["id_table_sha256"], device=device)
        # inference only: W0 + (alpha/r) B A folded into W0 is the same function (tests/test_lora.py) at one
        # matmul per projection instead of three
        lora.merge_lora(model)
        fmt = M.PromptFormat(tok, vocab)
        label = f"LLM {name}" if name == "base" else name
        for test in tests:
            ranked[test][label] = rank_with_model(model, fmt, prompts[test], trie, id_to_row, relevant[test],
                                                  context[test], args, f"{name} {test}")
        h_prompts = hallucination_prompts(prompts["next_track"], prompts["attributes"], args.hallucination_prompts)
        hall[label], hall_pp[label] = hallucination(model, fmt, h_prompts, trie, args, f"{name} unconstrained")
        if adapter is not None:  # the base model's ID rows are all the mean embedding: every pair ties
            prefs[label] = preference_accuracy(model, fmt, pref_path, args)
        if ddp.is_main():
            print(f"{label}: evaluated in {time.time() - t0:.0f}s")
        del model

    results = {"queries": {k: len(v) for k, v in tests.items()}, "catalogue_size": n_items,
               "ranking_method": args.ranking, "ranking": {}, "paired": {}, "strongest_baseline": {},
               "hallucination": hall, "hallucination_ci": {}, "hallucination_examples": {},
               "hallucination_exits": {}, "hallucination_prompts": len(h_prompts),
               "preference_accuracy": {},
               "content_popularity": {"tau": tau, "validation_queries": len(val_q),
                                      "validation_hit@10": {str(t): v for t, v in val_hr.items()}},
               "content_colisten": {"tau": tau_co, "lambda": lam, "validation_queries": len(val_q),
                                    "validation_hit@10": {f"{t:g},{m:g}": v for (t, m), v in val_hr_co.items()}},
               "neighbour_ranks": ranker_info}
    for label, pp in hall_pp.items():   # pooled shares with intervals over the prompts
        results["hallucination_ci"][label] = {
            f"hallucinated@{k}": dict(zip(("mean", "lo", "hi"), bootstrap_ratio_ci(
                pp[f"hallucinated@{k}"], pp[f"outputs@{k}"], args.n_boot))) for k in (1, 5, 10)}
        results["hallucination_examples"][label] = [                # what the report shows of them
            {"prompt": p, "top1": t} for p, t, bad in zip(h_prompts, pp["top1"], pp["hallucinated@1"]) if bad]
        results["hallucination_exits"][label] = exit_counts(pp["exit_level@1"], meta["levels"])
    # one output a prompt at @1: the per-prompt 0/1 values pair DPO with SFT on the same prompts
    d = paired_bootstrap(hall_pp["DPO"]["hallucinated@1"], hall_pp["SFT"]["hallucinated@1"], args.n_boot)
    results["paired"]["hallucination: DPO - SFT (hallucinated@1)"] = dict(zip(("mean", "lo", "hi"), d))
    per_q_all = {}
    llms = ("LLM base", "SFT", "DPO")
    for test in tests:
        per_q_all[test] = {name: per_query(lists, relevant[test]) for name, lists in ranked[test].items()}
        results["ranking"][test] = {name: summarise(pq, args.n_boot) for name, pq in per_q_all[test].items()}
    # the bar: the strongest baseline of each task, by the task's headline metric
    for test, metric, extra in (("next_track", "hit@10", ("ndcg@10",)), ("attributes", "precision@10",
                                                                         ("ndcg@10",))):
        pq = per_q_all[test]
        base = [n for n in pq if n not in llms]
        best = strongest(pq, base, metric)
        # the target asks for both metrics: the strongest by the second too, where another baseline leads on it
        by = {m: strongest(pq, base, m) for m in (metric,) + extra}
        results["strongest_baseline"][test] = {"name": best, "metric": metric, "by_metric": by}
        comparisons = [("SFT", best), ("DPO", best), ("DPO", "SFT")]
        comparisons += [(a, n) for n in by.values() if n != best for a in ("SFT", "DPO")]
        if test == "next_track":
            comparisons += [("SFT", n) for n in ("genre popularity", "item kNN", "SASRec", "content x popularity",
                                                 "content x co-listening", NEIGHBOUR_RANKS)
                            if n not in by.values()]
        for a, b in dict.fromkeys(comparisons):         # each comparison once, in order
            if a in pq and b in pq:
                for m in (metric,) + extra:
                    d = paired_bootstrap(pq[a][m], pq[b][m], args.n_boot)
                    results["paired"][f"{test}: {a} - {b} ({m})"] = dict(zip(("mean", "lo", "hi"), d))
    for label, acc in prefs.items():
        results["preference_accuracy"][label] = dict(zip(("mean", "lo", "hi"), bootstrap_ci(acc, args.n_boot)))
    best = max((n for n in prefs if n not in llms), key=lambda n: float(np.mean(prefs[n])))
    results["strongest_baseline"]["preferences"] = {"name": best, "metric": "accuracy"}
    for a, b in (("SFT", best), ("DPO", best), ("DPO", "SFT")):
        d = paired_bootstrap(prefs[a], prefs[b], args.n_boot)
        results["paired"][f"preferences: {a} - {b} (accuracy)"] = dict(zip(("mean", "lo", "hi"), d))
    results["preference_pairs"] = len(prefs["DPO"])
    keys = {"next_track": query_key([sorted(c) for c in context["next_track"]],
                                    [sorted(r) for r in relevant["next_track"]]),
            "attributes": query_key(prompts["attributes"], [sorted(r) for r in relevant["attributes"]]),
            "preferences": query_key(test_ch.tolist(), test_rj.tolist())}
    # the unconstrained prompts are the first of each family's queries (hallucination_prompts): named by both
    keys["hallucination"] = query_key(keys["next_track"], keys["attributes"], len(h_prompts))
    results["per_query"] = {
        "keys": keys,
        **{test: {name: {m: [float(v) for v in pq[m]] for m in PER_QUERY_METRICS[test]}
                  for name, pq in per_q_all[test].items()} for test in tests},
        "preferences": {name: [float(v) for v in acc] for name, acc in prefs.items()},
        "hallucination": {label: [float(v) for v in pp["hallucinated@1"]] for label, pp in hall_pp.items()}}
    return results


# ============================================================================= report

def fmt_ci(s):
    return f"{s['mean']:.4f} [{s['lo']:.3f}, {s['hi']:.3f}]"


REPORT_COLUMNS = {"next_track": ("hit@1", "hit@5", "hit@10", "hit@20", "ndcg@10", "ndcg@20", "mrr@20"),
                  "attributes": ("precision@1", "precision@10", "precision@20", "ndcg@10", "ndcg@20", "hit@10")}
PREFERENCE_NOTES = {
    "play count": "training-window plays of the track",
    "long-listen rate": "(long + 1) / (long + skip + 2) over the track's training-window labelled plays",
    "audio logistic": "logistic regression of long listen vs skip on the 10 audio features (training window)",
    "play count (pairs)": "times the track appears in the DPO training pairs",
    "long-listen rate (pairs)": "(chosen + 1) / (chosen + rejected + 2) in the DPO training pairs",
    "audio logistic (pairs)": "Bradley-Terry logistic regression on the DPO training pairs' feature differences",
    "SFT": "log p(chosen) > log p(rejected) under the SFT model",
    "DPO": "log p(chosen) > log p(rejected) under the DPO model",
}


def render_report(results, run):
    ranking = {"exact": "exactly (every ID that can reach the top 21 is scored)",
               "beam": "by constrained beam search (approximate)"}.get(results.get("ranking_method"), "")
    lines = [f"# Evaluation of `{run}`", "",
             f"Catalogue: {results['catalogue_size']:,} tracks. Values: mean [95% bootstrap interval] over queries. "
             "Every system ranks the whole catalogue; the prompt's own track is excluded; ties are broken against "
             f"the relevant items (pessimistic). The LLMs rank {ranking}. Baselines see what the prompt gives (the "
             "context track, its genre) and the training window's logs only.", ""]
    cp = results.get("content_popularity")
    if cp:   # the one baseline with a parameter: say where it came from
        lines += [f"content x popularity: the context's genre first, then log(1 + plays) - squared audio-feature "
                  f"distance / {cp['tau']:g}, the kernel width of the best HR@10 on {cp['validation_queries']} "
                  "validation next-track examples (results.json: content_popularity).", ""]
    cc = results.get("content_colisten")
    if cc:
        lines += [f"content x co-listening: the same, plus {cc['lambda']:g} log(1 + co-listens with the context), "
                  f"width {cc['tau']:g}: the (width, power) of the best HR@10 on the same "
                  f"{cc['validation_queries']} validation examples (results.json: content_colisten).", ""]
    nr = results.get("neighbour_ranks")
    if nr:
        lines += [f"{NEIGHBOUR_RANKS}: g [same genre] + b_t + w[rank of t among the context's genre by audio distance] "
                  f"+ {nr['colisten_power']:.2f} log(1 + co-listens with the context), every number learned by "
                  f"softmax cross-entropy over the catalogue on the {nr['train_plays']:,} training next plays "
                  f"(epoch {nr['kept_epoch']}, the lowest cross-entropy on the {nr['validation_plays']:,} validation "
                  "ones; results.json: neighbour_ranks).", ""]
    titles = {"next_track": "Next track (held-out later plays)",
              "attributes": "Requests by attributes (held-out phrasings)"}
    for test, systems in results["ranking"].items():
        cols = REPORT_COLUMNS.get(test, tuple(next(iter(systems.values()))))
        best = results.get("strongest_baseline", {}).get(test, {})
        lines += [f"## {titles.get(test, test)}: {results['queries'][test]} queries", "",
                  "| system | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| {n} | " + " | ".join(fmt_ci(s[c]) for c in cols) + " |" for n, s in systems.items()]
        if best.get("name"):
            lines += ["", "Strongest baseline " + "; ".join(
                f"by {m}: **{n}**" for m, n in best.get("by_metric", {best["metric"]: best["name"]}).items()) + "."]
        lines.append("")
    best = results.get("strongest_baseline", {}).get("preferences", {})
    lines += [f"## Preference accuracy on {results['preference_pairs']} held-out pairs", "",
              "Share of held-out pairs (test window) ranked right: the chosen (long listen) answer above the rejected "
              "(skip); ties count 1/2. Baselines score each track; '(pairs)' rows are fitted on exactly the DPO "
              "training pairs (equal data), the others on all training-window labelled plays. The base model is "
              "not listed: its new ID rows all start at the mean embedding, so every pair ties.", "",
              "| system | accuracy | what it scores |", "|---|---|---|"]
    lines += [f"| {n} | {fmt_ci(s)} | {PREFERENCE_NOTES.get(n, '')} |"
              for n, s in results["preference_accuracy"].items()]
    if best.get("name"):
        lines += ["", f"Strongest baseline: **{best['name']}**."]
    ci = results.get("hallucination_ci", {})
    lines += ["", f"## Hallucination (unconstrained beam search, {results.get('hallucination_prompts', '')} prompts)",
              "", "malformed: not exactly L ID tokens then the end token; invalid: well-formed but no such track; "
              "hallucinated: either, with its 95% interval over the prompts.", "",
              "| model | " + " | ".join(next(iter(results["hallucination"].values()))) + " |",
              "|---|" + "---|" * len(next(iter(results["hallucination"].values())))]
    lines += [f"| {n} | " + " | ".join(fmt_ci(ci[n][m]) if m in ci.get(n, {}) else f"{v:.3f}" for m, v in h.items())
              + " |" for n, h in results["hallucination"].items()]
    exits = {n: e for n, e in results.get("hallucination_exits", {}).items() if n != "LLM base" and any(e.values())}
    if exits:   # what a model has not learnt of the catalogue: which codes of a real prefix exist, or the prefixes
        lines += ["", "Where the top-1 answers that are no track leave the catalogue (level l: the first l - 1 codes "
                  "are some track's, the l-th follows them in none): "
                  + "; ".join(f"{n}: " + ", ".join(f"{k} {v}" for k, v in e.items()) for n, e in exits.items()) + "."]
    shown = {n: ex for n, ex in results.get("hallucination_examples", {}).items() if n != "LLM base" and ex}
    if shown:   # the base model never answers with an ID: its 100% says all there is
        lines += ["", "Top-1 answers that are no track (the request, then what the model wrote; at most 10 a model):",
                  ""]
        lines += [f"- {n}: `{e['prompt']}` -> `{e['top1']}`" for n, ex in shown.items() for e in ex[:10]]
    lines += ["", "## Paired differences (same queries, 95% bootstrap interval)", "",
              "| comparison | difference |", "|---|---|"]
    lines += [f"| {k} | {fmt_ci(v)} |" for k, v in results["paired"].items()]
    return "\n".join(lines) + "\n"


def console_table(results):
    """The headline numbers, compact enough for a terminal."""
    out = []
    for test, systems in results["ranking"].items():
        out.append(f"\n{test} ({results['queries'][test]} queries, LLMs ranked {results.get('ranking_method')})")
        cols = ["hit@1", "hit@10", "ndcg@10", "hit@20"] if test == "next_track" else \
            ["precision@1", "precision@10", "ndcg@10", "hit@10"]
        w = max(18, max(len(n) for n in systems) + 1)   # the longest name (NEIGHBOUR_RANKS) in line
        out.append(f"{'system':<{w}}" + "".join(f"{c:>20}" for c in cols))
        for n, s in systems.items():
            out.append(f"{n:<{w}}" + "".join(f"{s[c]['mean']:>8.3f} [{s[c]['lo']:.2f},{s[c]['hi']:.2f}]"
                                             for c in cols))
    out.append("\npreference accuracy (held-out pairs)")
    for n, s in results["preference_accuracy"].items():
        out.append(f"{n:<26}{fmt_ci(s)}")
    out.append("\npaired differences against the strongest baseline (95% interval)")
    for test, best in results.get("strongest_baseline", {}).items():
        for metric, name in best.get("by_metric", {best["metric"]: best["name"]}).items():   # older results: one
            for k, v in results["paired"].items():
                if k.startswith(f"{test}: ") and f" - {name} ({metric})" in k:
                    out.append(f"  {k:<66}{v['mean']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]")
    out.append("\nhallucination@10 (unconstrained): " + ", ".join(
        f"{n} {h['hallucinated@10']:.3f}" for n, h in results["hallucination"].items()))
    ci = results.get("hallucination_ci", {})
    out.append(f"hallucinated@1 ({results.get('hallucination_prompts')} prompts, 95% interval): " + ", ".join(
        f"{n} {c['hallucinated@1']['mean']:.3f} [{c['hallucinated@1']['lo']:.3f}, {c['hallucinated@1']['hi']:.3f}]"
        for n, c in ci.items() if n != "LLM base"))
    return "\n".join(out)


def read_log(path):
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []


def plots(results, run, out):
    """PNG plots; skipped with a note when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib not installed: no plots (pip install matplotlib)")
        return []
    written = []

    def save(fig, name):
        path = os.path.join(out, name)
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    log = read_log(os.path.join(run, "sft", "log.jsonl"))
    if log:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["step"] for r in log], [r["loss"] for r in log], lw=0.8, label="train")
        ev = [r for r in log if "val/loss" in r]
        ax.plot([r["step"] for r in ev], [r["val/loss"] for r in ev], "o-", label="validation")
        # log scale: the first steps (new ID rows, all equal) start some 30x above where training levels off
        ax.set(xlabel="step", ylabel="loss per answer token", title="SFT loss", yscale="log")
        lo, hi = ax.get_ylim()   # ticks 2, 3, 5, 10, ... rather than 2 x 10^0
        ax.set_yticks([v for v in (0.5, 1, 2, 3, 5, 10, 20, 50, 100, 200) if lo <= v <= hi])
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend()
        save(fig, "sft_loss.png")
    log = read_log(os.path.join(run, "dpo", "log.jsonl"))
    if log:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        tr = [r for r in log if "rewards/margins" in r]
        ev = [r for r in log if "eval/rewards/margins" in r]
        for ax, key, title in ((axes[0], "rewards/margins", "DPO reward margin"),
                               (axes[1], "rewards/accuracies", "DPO reward accuracy")):
            ax.plot([r["step"] for r in tr], [r[key] for r in tr], lw=0.8, label="train batch")
            ax.plot([r["step"] for r in ev], [r["eval/" + key] for r in ev], "o-", label="held-out")
            ax.set(xlabel="step", title=title)
            ax.legend()
        save(fig, "dpo_rewards.png")
    acc = results.get("preference_accuracy", {})
    if acc:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = list(acc)
        ax.barh(names, [acc[n]["mean"] for n in names],
                xerr=[[acc[n]["mean"] - acc[n]["lo"] for n in names], [acc[n]["hi"] - acc[n]["mean"] for n in names]],
                capsize=2, color=["C1" if n in ("SFT", "DPO") else "C0" for n in names])
        ax.axvline(0.5, color="grey", lw=0.8, ls="--")
        ax.invert_yaxis()
        ax.set(xlabel="held-out preference accuracy", xlim=(0.3, 1.0), title="Preferences: chosen above rejected")
        save(fig, "preference_accuracy.png")
    # the LLMs solid and thick in colours of their own, every baseline thin and dashed in a colour of its own: with
    # a dozen systems matplotlib's 10-colour cycle would give SFT a baseline's colour
    llm_style = {"SFT": dict(color="tab:red", lw=2.2, marker="o", zorder=3),
                 "DPO": dict(color="black", lw=2.2, marker="s", zorder=3),
                 "LLM base": dict(color="0.55", lw=1.5, marker="x", zorder=2)}
    palette = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (6, 7, 14, 15)]  # no reds, greys
    for test, systems in results["ranking"].items():
        fig, ax = plt.subplots(figsize=(7.5, 3.8))
        baselines = [n for n in systems if n not in llm_style]
        for n, s in systems.items():
            style = llm_style.get(n) or dict(color=palette[baselines.index(n) % len(palette)], lw=1.0, ls="--",
                                             marker=".", zorder=1)
            ax.errorbar(KS, [s[f"hit@{k}"]["mean"] for k in KS],
                        yerr=[[s[f"hit@{k}"]["mean"] - s[f"hit@{k}"]["lo"] for k in KS],
                              [s[f"hit@{k}"]["hi"] - s[f"hit@{k}"]["mean"] for k in KS]],
                        capsize=2, label=n, **style)
        ax.set(xlabel="K", ylabel="HR@K", xticks=KS, title=f"HR@K, {test} (95% intervals)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        save(fig, f"hr_{test}.png")
    return written


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder (sft_data/, prefs/, sft/, dpo/ inside)")
    p.add_argument("--out", default=None, help="output folder (default RUN/eval)")
    p.add_argument("--model", default=M.DEFAULT_MODEL, help="base model the adapters were trained on")
    p.add_argument("--sft", default=None, help="SFT adapter (default RUN/sft/adapter)")
    p.add_argument("--dpo", default=None, help="DPO adapter (default RUN/dpo/adapter)")
    p.add_argument("--ranking", choices=("auto", "exact", "beam"), default=RANKING,
                   help="how the LLMs rank the catalogue: exact (a pruned walk over the ID trie that scores every "
                        "ID able to reach the top K), beam (constrained beam search, approximate), or auto "
                        "(exact up to --exact-max-items tracks)")
    p.add_argument("--exact-max-items", type=int, default=EXACT_MAX_ITEMS,
                   help="largest catalogue ranked exactly under --ranking auto")
    p.add_argument("--sasrec", default=None, help="SASRec baseline folder (default RUN/sasrec; sasrec.py writes it)")
    p.add_argument("--beam-width", type=int, default=BEAM_WIDTH,
                   help=f"beams of the constrained beam search (--ranking beam): at least the largest K plus one "
                        f"({max(KS) + 1}), so that {max(KS)} remain after the prompt's own track is excluded "
                        "(default %(default)s)")
    p.add_argument("--hallucination-beam", type=int, default=HALLUCINATION_BEAM,
                   help="beams of the unconstrained decoding that measures hallucination; malformed / invalid "
                        "shares are reported at @1, @5 and @10 (default %(default)s)")
    p.add_argument("--hallucination-prompts", type=int, default=HALLUCINATION_PROMPTS,
                   help="test prompts decoded without constraints, per model: half next-track, half attribute, "
                        "the other family filling in where one runs out; 0: every test prompt (the demo's 200 + "
                        "120; default %(default)s). 40, the demo's until 2026-12-03, gives an interval too wide to "
                        "tell 5%% from 0%%")
    p.add_argument("--max-next", type=int, default=MAX_NEXT,
                   help="cap on next-track test queries, the first ones of the file (0: all; default %(default)s)")
    p.add_argument("--val-next", type=int, default=VAL_NEXT,
                   help="validation next-track examples (the first of sft_data/val.jsonl) on which content x "
                        "popularity's kernel width, and content x co-listening's width and power, are chosen, and "
                        "on which the learned baseline keeps its epoch (0: every one, a set that does not depend on "
                        "the other tasks' examples data.py shuffled among them; default %(default)s). The choice "
                        "scores every track for each of them under 36 settings (content x popularity's 6 are "
                        "among them): cap it on a real log, e.g. 5000")
    p.add_argument("--ranker-epochs", type=int, default=RANKER_EPOCHS,
                   help="epochs of Adam for the learned baseline neighbour ranks x co-listening, the one of the "
                        "lowest validation cross-entropy kept (default %(default)s: on the demo's three worlds the "
                        "lowest came at epochs 5-6; about 3 s an epoch)")
    p.add_argument("--ranker-patience", type=int, default=RANKER_PATIENCE,
                   help="the learned baseline stops after this many epochs in a row without a lower validation "
                        "cross-entropy (0: every one of --ranker-epochs). The epoch kept is the same unless the "
                        "lowest would have come after such a stop (default %(default)s: on the demo's three worlds "
                        "all 8 epochs run, on a world of 8,000 tracks 4, the lowest at epoch 2)")
    p.add_argument("--ranker-plays", type=int, default=RANKER_PLAYS,
                   help="training next plays the learned baseline fits on, a seeded draw of them (0: every one; "
                        "default %(default)s). An epoch costs about 7 ms a play at 90,000 tracks on 2 cores "
                        "(benchmarks/bench_ranker.py): cap it for a real log's millions, e.g. 50000")
    p.add_argument("--ranker-dense-max-items", type=int, default=RANKER_DENSE_MAX_ITEMS,
                   help="largest catalogue for which neighbour ranks x co-listening builds its (N, N) tables (the "
                        "readable form); above it, a form that keeps each track's nearest neighbours and sparse "
                        "co-listening rows, the same scores (default %(default)s: the tables take 2.9 GB at their peak "
                        "there and grow as N^2; benchmarks/bench_ranker.py)")
    p.add_argument("--max-attributes", type=int, default=MAX_ATTRIBUTES,
                   help="cap on attribute test queries, the first ones of the file (0: all; default %(default)s)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="prompts per ranking or decoding batch (default %(default)s: with 21 beams each, 16 ran "
                        "slower on 2 cores, more padding)")
    p.add_argument("--score-batch-size", type=int, default=SCORE_BATCH_SIZE,
                   help="preference pairs per scoring forward (default %(default)s)")
    p.add_argument("--n-boot", type=int, default=N_BOOT,
                   help="bootstrap resamples behind every 95%% interval (default %(default)s)")
    p.add_argument("--no-minilm", action="store_true", help="skip the MiniLM text-similarity baseline")
    p.add_argument("--seed", type=int, default=SEED,
                   help=f"seed of the random baseline's orderings (default %(default)s); the bootstrap always "
                        f"uses seed {SEED}")
    p.add_argument("--device", default=DEVICE,
                   help="cpu, cuda or auto (cuda when torch sees a GPU, else cpu; default %(default)s)")
    args = p.parse_args(argv)
    if args.beam_width < max(KS) + 1:
        p.error(f"--beam-width must be at least {max(KS) + 1} (the largest K, plus the prompt's own track)")
    if args.ranker_epochs < 1:
        p.error("--ranker-epochs must be at least 1")
    if args.ranker_patience < 0:
        p.error("--ranker-patience must be 0 (every epoch) or more")
    if args.ranker_plays < 0:
        p.error("--ranker-plays must be 0 (every training next play) or a positive count")
    if args.val_next < 0:
        p.error("--val-next must be 0 (every validation next-track example) or a positive count")
    return args


def main(argv=None):
    args = parse_args(argv)
    ddp.setup(M.pick_device(args.device))   # under torchrun: join the other processes first; rank 0 alone writes
    out = args.out or os.path.join(args.run, "eval")
    os.makedirs(out, exist_ok=True)
    if ddp.is_main():
        save_config(out, args)
    results = evaluate(args)   # under torchrun: the same results on every rank
    writer = ddp.is_main()
    ddp.cleanup()
    if not writer:
        return
    write_json(os.path.join(out, "results.json"), results)
    pngs = plots(results, args.run, out)
    table = console_table(results)
    with atomic_open(os.path.join(out, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(table.lstrip("\n") + "\n")
    # report.md is what make waits for: written last, so a kill before it leaves no stale summary behind
    with atomic_open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(render_report(results, args.run))
        if pngs:
            f.write("\n## Plots\n\n" + "\n".join(f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                                 for p in pngs) + "\n")
    print(table)
    print(f"\nreport: {os.path.join(out, 'report.md')}; numbers: {os.path.join(out, 'results.json')}"
          + (f"; plots: {', '.join(pngs)}" if pngs else ""))


if __name__ == "__main__":
    run_main(main)
