"""Exact ranking (ranking.exact_top_k, a pruned walk over the ID trie) against constrained beam search, widths 10-50.

    python benchmarks/bench_exact.py [--run runs/demo] [--prompts 40] [--k 21] [--widths 10 21 50] [--batch-size 8]
                                     [--chunk 64]

The model is RUN/sft/adapter on its base, LoRA merged (as evaluate.py runs it). Queries: the first --prompts
next-track test prompts and the first --prompts attribute prompts (RUN/sft_data/test_next.jsonl,
test_attributes.jsonl), their relevant tracks mapped to codes through the Semantic-ID table named in
RUN/sft_data/meta.json (one ID per track). Each list is ranked as evaluate.py ranks it: the next-track prompt's own
track is excluded, then equal scores are broken against the relevant items (pessimistic). Per beam width, against
exact: the mean share of the exact top 20 that the beam's top 20 holds; how many queries' HR@10 and NDCG@10 differ,
and the mean difference (beam - exact). Seconds per prompt of each method (a first batch once, untimed, as
warm-up), and token forwards per prompt: exact_top_k's (the prompt counts one) against the full walk's (1 + one per
trie prefix of length 1 .. L-1) and a beam's (1 + its beams at levels 1 .. L-1), and the least that any exact walk
needs (least_forwards: 1 + the prefixes scoring above the true k-th score, each of which may lead to a top-k ID).
"""
import argparse
import json
import os
import time

import numpy as np
import torch

import harness  # first: it puts the repository root on sys.path for the imports below
import formats
import lora
import metrics
import model as M
import ranking
from common import need_file, read_json, run_main, write_json

# -----------------------------------------------------------------------------
RUN: str = "runs/demo"          # a pipeline run folder (make demo builds runs/demo)
MODEL: str = M.DEFAULT_MODEL
PROMPTS: int = 40               # first prompts of each test set
K: int = 21                     # exact top K (evaluate.py: 20 + the prompt's own track, excluded)
WIDTHS: tuple = (10, 21, 50)    # beam widths compared with exact
BATCH_SIZE: int = 8             # prompts per batch, for both methods
CHUNK: int = 64                 # rows per forward of exact_top_k (its default: evaluate.py runs it so)
TOP: int = 20                   # overlap of the top-TOP lists
CUT: int = 10                   # HR@CUT, NDCG@CUT
# -----------------------------------------------------------------------------


def rank(scored, relevant, exclude):
    """IDs best first from [(codes, score)]: `exclude` dropped, equal scores broken against the relevant ones."""
    kept = [(c, s) for c, s in scored if c not in exclude]
    return [c for c, _ in sorted(kept, key=lambda cs: (-cs[1], cs[0] in relevant, cs[0]))]


def load(args):
    """(model, fmt, trie, queries); a query: {set, prompt ids, relevant codes, excluded codes}."""
    data = os.path.join(args.run, "sft_data")
    meta = read_json(os.path.join(data, "meta.json"), "SFT data meta.json")
    adapter = args.sft or os.path.join(args.run, "sft", "adapter")
    need_file(os.path.join(adapter, M.ID_VOCAB_FILE), "SFT adapter (id_vocab.json)")
    model, tok, vocab = M.load_policy(args.model, adapter=adapter, id_table_sha=meta["id_table_sha256"])
    lora.merge_lora(model)   # as evaluate.py: the same function, one matmul per projection instead of three
    track_ids, codes = formats.load_semantic_ids(meta["semantic_ids"])
    codes_of = {t: tuple(int(c) for c in cs) for t, cs in zip(track_ids, codes)}
    trie = ranking.IDTrie(list(codes_of.values()), vocab.levels)
    fmt = M.PromptFormat(tok, vocab)
    queries = []
    for name, file in (("next-track", "test_next.jsonl"), ("attributes", "test_attributes.jsonl")):
        with open(need_file(os.path.join(data, file), "test set"), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()][:args.prompts]
        for q in rows:
            ctx = q.get("context_track")
            queries.append({"set": name, "prompt": fmt.prompt(q["prompt"]),
                            "relevant": {codes_of[t] for t in q["relevant"] if t in codes_of},
                            "exclude": {codes_of[ctx]} if ctx in codes_of else set()})
    return model, fmt, trie, queries, adapter


def least_forwards(model, prompts, vocab, trie, exact, k, pad, batch_size):
    """Per prompt, the token forwards that any exact top-k walk must spend: its prompt, and every prefix of length
    1 .. L-1 scoring above the true k-th score (exact[i][k - 1]: one of its IDs may score above it too, and it is
    scored only by a forward of the prefix). Prefixes are scored by a fresh TrieScorer, level by level."""
    out = []
    for s in range(0, len(prompts), batch_size):
        sc = ranking.TrieScorer(model, prompts[s:s + batch_size], vocab, trie, pad_id=pad)
        for b, res in enumerate(exact[s:s + batch_size]):
            theta, frontier, need = res[k - 1][1], [()], 1
            for _ in range(vocab.levels - 1):
                frontier = [q for q in sc.children(b, frontier) if sc.score[(b, q)] > theta]
                need += len(frontier)
                sc.expand([(b, q) for q in frontier])
            out.append(need)
    return out


def timed(fn, prompts, batch_size):
    """fn(batch) over all prompts in batches; a first batch once, untimed, as warm-up. (results, seconds)."""
    fn(prompts[:batch_size])
    t = time.perf_counter()
    out = []
    for s in range(0, len(prompts), batch_size):
        out += fn(prompts[s:s + batch_size])
    return out, time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description="ranking.exact_top_k against constrained beam search")
    p.add_argument("--run", default=RUN, help="pipeline run folder with sft_data/ and sft/adapter/")
    p.add_argument("--sft", default=None, help="SFT adapter (default RUN/sft/adapter)")
    p.add_argument("--model", default=MODEL, help="base model folder (the one the SFT adapter was trained on)")
    p.add_argument("--prompts", type=int, default=PROMPTS, help="first prompts of each test set")
    p.add_argument("--k", type=int, default=K,
                   help="exact top K (default %(default)s: evaluate.py's 20, plus the prompt's own track, which is "
                        "excluded)")
    p.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS),
                   help="beam widths compared with exact ranking (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="prompts per batch, for both methods (default %(default)s)")
    p.add_argument("--chunk", type=int, default=CHUNK,
                   help="rows per forward of exact_top_k (default %(default)s, evaluate.py's); the rows of a batch's "
                        "prompts share forwards, so larger batches and chunks mean fewer, larger matrix products")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch threads (default: torch's default here, %(default)s)")
    p.add_argument("--out", default=None, help="JSON of the figures (default RUN/bench_exact.json)")
    args = p.parse_args(argv)
    harness.need_run(os.path.join(args.run, "sft_data", "test_next.jsonl"),
                     (args.run, f"{args.run}/sft_data/config.json"))
    torch.set_num_threads(args.threads)
    model, fmt, trie, queries, adapter = load(args)
    vocab, pad = fmt.vocab, M.pad_id_of(fmt.tokenizer)
    prompts = [q["prompt"] for q in queries]
    v = harness.versions("torch", "transformers")
    print(f"{adapter}: {len(queries)} queries ({args.prompts} per test set), {len(trie.valid)} IDs, exact top "
          f"{args.k} vs beam widths {args.widths}, batches of {args.batch_size} ({args.chunk} rows a forward), "
          f"{args.threads} threads; "
          + ", ".join(f"{k} {x}" for k, x in v.items()))

    stats = {}
    exact, secs = timed(lambda b: ranking.exact_top_k(model, b, vocab, trie, args.k, batch_size=args.batch_size,
                                                      pad_id=pad, chunk=args.chunk, stats=stats),
                        prompts, args.batch_size)
    forwards = stats["forwards"][-len(prompts):]          # the timed pass's, not the warm-up's
    least = least_forwards(model, prompts, vocab, trie, exact, args.k, pad, args.batch_size)
    rows = [{"method": f"exact top {args.k}", "secs_per_prompt": secs / len(prompts),
             "forwards_per_prompt": float(np.mean(forwards))}]
    exact_ranked = [rank(r, q["relevant"], q["exclude"]) for r, q in zip(exact, queries)]
    beams_ok = True
    for w in args.widths:
        def beam(b, w=w):
            res = ranking.beam_search(model, b, vocab, w, trie=trie, pad_id=pad, batch_size=args.batch_size)
            return [[(tuple(vocab.level_code(t)[1] for t in toks), s) for toks, s in r] for r in res]
        res, secs = timed(beam, prompts, args.batch_size)
        row = {"method": f"beam width {w}", "secs_per_prompt": secs / len(prompts),
               "forwards_per_prompt": 1 + sum(min(w, len({c[:l] for c in trie.valid}))
                                              for l in range(1, vocab.levels))}
        for name in ("next-track", "attributes"):
            idx = [i for i, q in enumerate(queries) if q["set"] == name]
            share, hr, nd = [], [], []
            for i in idx:
                q, ex = queries[i], exact_ranked[i]
                got = rank(res[i], q["relevant"], q["exclude"])
                share.append(len(set(got[:TOP]) & set(ex[:TOP])) / max(1, len(ex[:TOP])))
                hr.append(metrics.hit_at_k(got, q["relevant"], CUT) - metrics.hit_at_k(ex, q["relevant"], CUT))
                nd.append(metrics.ndcg_at_k(got, q["relevant"], CUT) - metrics.ndcg_at_k(ex, q["relevant"], CUT))
            row[name] = {"queries": len(idx), "top_overlap": float(np.mean(share)),
                         "hr_differ": int(np.sum(np.abs(hr) > 1e-12)), "ndcg_differ": int(np.sum(np.abs(nd) > 1e-12)),
                         "hr_diff": float(np.mean(hr)), "ndcg_diff": float(np.mean(nd))}
        # exact's k-th score can never be below a beam's k-th (the beam's k IDs are real): a check of exactness
        if w >= args.k:
            beams_ok &= all(e[args.k - 1][1] >= r[args.k - 1][1] - 1e-4 for e, r in zip(exact, res))
        rows.append(row)
    harness.warn_threads({"bench_exact": {"threads": torch.get_num_threads()}}, args.threads)

    full = len(trie.children)
    print(f"\n{'method':<14} {'s/prompt':>9} {'forwards/prompt':>16}")
    for r in rows:
        print(f"{r['method']:<14} {r['secs_per_prompt']:>9.3f} {r['forwards_per_prompt']:>16.1f}")
    print(f"{'full walk':<14} {'':>9} {full:>16d}")
    print(f"exact top {args.k} forwards per prompt: mean {np.mean(forwards):.1f}, min {min(forwards)}, "
          f"max {max(forwards)}, of the full walk's {full} ({np.mean(forwards) / full:.1%}); the least any exact "
          f"walk needs: mean {np.mean(least):.1f} ({np.mean(least) / np.mean(forwards):.1%} of exact_top_k's)")
    for name in ("next-track", "attributes"):
        print(f"\n{name} ({rows[1][name]['queries']} queries), beam against exact: top-{TOP} overlap; queries whose "
              f"HR@{CUT} / NDCG@{CUT} differ; mean difference beam - exact")
        print(f"{'width':>6} {'overlap':>8} {'HR differ':>10} {'NDCG differ':>12} {'HR diff':>9} {'NDCG diff':>10}")
        for r in rows[1:]:
            m = r[name]
            print(f"{r['method'].split()[-1]:>6} {m['top_overlap']:>8.3f} {m['hr_differ']:>10d} "
                  f"{m['ndcg_differ']:>12d} {m['hr_diff']:>+9.3f} {m['ndcg_diff']:>+10.4f}")
    print(f"\nexact k-th score >= beam k-th score on every prompt (widths >= {args.k}): {beams_ok}")
    out = args.out or os.path.join(args.run, "bench_exact.json")
    write_json(out, {"config": vars(args), "versions": v, "adapter": adapter, "ids": len(trie.valid),
                     "full_walk_forwards": full, "exact_forwards": forwards, "least_forwards": least, "rows": rows,
                     "exact_kth_at_least_beam_kth": beams_ok})
    print(f"figures: {out}")


if __name__ == "__main__":
    run_main(main)
