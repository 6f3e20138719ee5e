"""ranking.beam_search (trie-constrained) against transformers' generate(num_beams=W, prefix_allowed_tokens_fn=...).

    python benchmarks/bench_beam.py [--run runs/demo] [--prompts 160] [--beam-width 20] [--batch-size 8]

Same model object for both (model.load_policy: the base + RUN/sft/adapter when present, else the base with random
Semantic-ID rows, so that scores have no ties), same prompts (the first --prompts of RUN/sft_data/test_next.jsonl,
encoded by PromptFormat and left-padded by model.left_pad), same batches of --batch-size prompts, same beam width,
the same trie (ranking.IDTrie over the run's semantic_ids.tsv). The peer: `generate(num_beams=W,
num_return_sequences=W, do_sample=False, max_new_tokens=L, prefix_allowed_tokens_fn=...)`, the function returning
the level-t tokens the trie allows after the beam's generated prefix; it is timed without output_scores (its fastest
call), then run once more, untimed, with output_scores to compare scores. HF divides a finished beam's summed
log-prob by (generated length) ** length_penalty = L ** 1.0; every result here has length L, so ordering by sum / L
is ordering by sum, and the HF score times L is compared with ours.

Measured: prompts per second (the first batch once, untimed, as warm-up), peak RSS of each system's own process,
and whether the top-W lists are identical: as sets, in order, and the largest score difference.
"""
import argparse
import json
import os
import sys
import time

import torch
from tqdm import tqdm

import harness  # first: it puts the repository root on sys.path for the imports below
import formats
import model as M
import ranking
from common import need_file, read_json, run_main, seed_everything, write_json

# -----------------------------------------------------------------------------
RUN: str = "runs/demo"             # a pipeline run folder (make demo builds runs/demo)
MODEL: str = M.DEFAULT_MODEL
PROMPTS: int = 160              # test prompts decoded by each system
BEAM_WIDTH: int = 20
BATCH_SIZE: int = 8             # prompts per beam-search batch (evaluate.py's default)
SEED: int = 0
TIE: float = 1e-4               # score gap below which two results' order is a numerical tie
TARGET: float = 3.0             # ours / peer prompts per second
# -----------------------------------------------------------------------------


def load(args):
    """(model, fmt, trie, encoded prompts) as both systems use them."""
    data = os.path.join(args.run, "sft_data")
    meta = read_json(os.path.join(data, "meta.json"), "SFT data meta.json")
    adapter = os.path.join(args.run, "sft", "adapter") if args.sft is None else args.sft
    if (args.sft is None and not os.path.exists(os.path.join(adapter, M.ID_VOCAB_FILE))) or args.sft == "none":
        adapter = None
    seed_everything(args.seed)
    model, tok, vocab = M.load_policy(args.model, adapter=adapter, levels=meta["levels"],
                                      codebook_size=meta["codebook_size"], device="cpu")
    if adapter is None:  # mean-initialised rows would make every ID token score the same: ties everywhere
        emb = model.model.embed_tokens
        with torch.no_grad():
            w = emb.weight.float()
            emb.new_rows.copy_(w.mean(0) + w.std(0) * torch.randn_like(emb.new_rows.float()))
    _, codes = formats.load_semantic_ids(meta["semantic_ids"])
    trie = ranking.IDTrie(codes.tolist(), meta["levels"])
    fmt = M.PromptFormat(tok, vocab)
    with open(os.path.join(data, "test_next.jsonl"), encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()][:args.prompts]
    return model, fmt, trie, [fmt.prompt(p) for p in prompts], adapter


def run_ours(args, model, fmt, trie, enc):
    pad = M.pad_id_of(fmt.tokenizer)

    def search(prompts):  # per batch, as evaluate.rank_with_model calls it
        out = []
        for s in tqdm(range(0, len(prompts), args.batch_size), desc="ours", disable=None, leave=False):
            out += ranking.beam_search(model, prompts[s:s + args.batch_size], fmt.vocab, args.beam_width, trie=trie,
                                       pad_id=pad, batch_size=args.batch_size, device="cpu")
        return out

    search(enc[:args.batch_size])  # warm-up
    t = time.perf_counter()
    res = search(enc)
    secs = time.perf_counter() - t
    return {"secs": secs, "results": [[[list(toks), score] for toks, score in r] for r in res]}


def run_hf(args, model, fmt, trie, enc):
    from transformers import GenerationConfig
    vocab, L, W = fmt.vocab, fmt.vocab.levels, args.beam_width
    pad = M.pad_id_of(fmt.tokenizer)
    prompt_len = [0]

    def allowed(batch_id, sent):  # the trie's children of the generated prefix, as level-t token ids
        gen = sent[prompt_len[0]:].tolist()
        codes = trie.allowed([vocab.level_code(x)[1] for x in gen])
        return (codes + vocab.token_id(len(gen), 0)).tolist()

    configs = {scores: GenerationConfig(num_beams=W, num_return_sequences=W, do_sample=False, max_new_tokens=L,
                                        length_penalty=1.0, early_stopping=False, pad_token_id=pad,
                                        eos_token_id=fmt.end_id, output_scores=scores, return_dict_in_generate=True)
               for scores in (False, True)}

    @torch.no_grad()
    def search(prompts, scores):
        out = []
        for s in tqdm(range(0, len(prompts), args.batch_size), desc="HF", disable=None, leave=False):
            ids, attn, _ = M.left_pad(prompts[s:s + args.batch_size], pad)
            prompt_len[0] = ids.shape[1]
            g = model.generate(input_ids=ids, attention_mask=attn, generation_config=configs[scores],
                               prefix_allowed_tokens_fn=allowed)
            seqs = g.sequences[:, ids.shape[1]:].view(ids.shape[0], W, -1)
            sc = (g.sequences_scores * L ** configs[True].length_penalty).view(ids.shape[0], W) if scores else None
            out += [[[seqs[b, j].tolist(), float(sc[b, j]) if scores else None] for j in range(W)]
                    for b in range(ids.shape[0])]
        return out

    model.eval()
    search(enc[:args.batch_size], False)  # warm-up
    t = time.perf_counter()
    timed = search(enc, False)
    secs = time.perf_counter() - t
    scored = search(enc, True)  # untimed: the same search, with the scores kept
    same = all([x[0] for x in a] == [x[0] for x in b] for a, b in zip(timed, scored))
    return {"secs": secs, "results": scored, "timed_equals_scored": same}


def compare(ours, peer):
    """Per prompt: same set of IDs, same order, order differences only between near-tied scores; max |score diff|."""
    same_set = same_order = tie_only = 0
    max_diff = 0.0
    for a, b in zip(ours, peer):
        ta, tb = [tuple(x[0]) for x in a], [tuple(x[0]) for x in b]
        same_set += set(ta) == set(tb)
        same_order += ta == tb
        sa, sb = {t: s for t, s in zip(ta, (x[1] for x in a))}, {t: s for t, s in zip(tb, (x[1] for x in b))}
        common = set(sa) & set(sb)
        if common:
            max_diff = max(max_diff, max(abs(sa[t] - sb[t]) for t in common))
        if ta != tb and set(ta) == set(tb):  # a swap of results whose scores are within TIE is a numerical tie
            tie_only += all(abs(sa[x] - sa[y]) < TIE for x, y in zip(ta, tb) if x != y)
    return {"prompts": len(ours), "same_set": same_set, "same_order": same_order,
            "order_differs_only_in_ties": tie_only, "max_score_diff": max_diff}


def main(argv=None):
    p = argparse.ArgumentParser(description="ranking.beam_search vs transformers generate(num_beams=...)")
    p.add_argument("--run", default=RUN, help="pipeline run folder with sft_data/ (and sft/adapter/)")
    p.add_argument("--sft", default=None,
                   help="SFT adapter (default RUN/sft/adapter if present; 'none': base + random ID rows)")
    p.add_argument("--model", default=MODEL, help="base model folder (the one the run's SFT adapter was trained on)")
    p.add_argument("--tiny", action="store_true", help="smoke test: a tiny random Llama with --model's tokenizer")
    p.add_argument("--prompts", type=int, default=PROMPTS,
                   help="test prompts decoded by each system: the first ones of RUN/sft_data/test_next.jsonl "
                        "(default %(default)s)")
    p.add_argument("--beam-width", type=int, default=BEAM_WIDTH,
                   help="beams kept, and results compared, per prompt (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="prompts per beam-search batch, the same for both systems (default %(default)s, "
                        "evaluate.py's default)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch / OpenMP / MKL threads of each system's process, the same for all so that they get the "
                        "same CPU (default: torch's default here, %(default)s)")
    p.add_argument("--seed", type=int, default=SEED,
                   help="seed of the random Semantic-ID rows used when there is no SFT adapter (default %(default)s)")
    p.add_argument("--out", default=None, help="JSON of the figures (default RUN/bench_beam.json)")
    harness.child_args(p)
    args = p.parse_args(argv)
    if args.tiny:
        args.model = harness.tiny_llama(os.path.join(harness.ROOT, "runs", "bench", "tiny-llama"), args.model)
        args.sft = args.sft or "none"  # the run's adapter belongs to another model: random rows instead

    harness.need_run(os.path.join(args.run, "sft_data", "test_next.jsonl"),
                     (args.run, f"{args.run}/sft_data/config.json"))
    if args.sft not in (None, "none"):
        need_file(os.path.join(args.sft, M.ID_VOCAB_FILE), "SFT adapter (id_vocab.json)")
    if args.child:
        torch.set_num_threads(args.threads)
        model, fmt, trie, enc, adapter = load(args)
        res = (run_ours if args.child == "ours" else run_hf)(args, model, fmt, trie, enc)
        res["adapter"], res["threads"] = adapter, torch.get_num_threads()
        harness.write_result(args.result, res)
        return

    base = list(argv if argv is not None else sys.argv[1:])
    if args.tiny:
        base += ["--model", args.model, "--sft", args.sft]
    v = harness.versions("torch", "transformers")
    print(f"{args.model}: {args.prompts} prompts, beam width {args.beam_width}, batches of {args.batch_size}, "
          f"{args.threads} threads; " + ", ".join(f"{k} {x}" for k, x in v.items()))
    rows, raw = [], {}
    for label, name in (("ours: ranking.beam_search", "ours"), ("HF generate + prefix_allowed_tokens_fn", "hf")):
        res, rss = harness.run_child(os.path.abspath(__file__), base, name, args.threads)
        rows.append({"system": label, "prompts_per_s": len(res["results"]) / res["secs"], "secs": res["secs"],
                     "peak_rss_mib": rss})
        raw[name] = res
    cmp = compare(raw["ours"]["results"], raw["hf"]["results"])
    harness.warn_threads(raw, args.threads)
    print(f"model: {raw['ours']['adapter'] or 'base + random Semantic-ID rows (no SFT adapter)'}")
    print(f"\n{'system':<40} {'prompts/s':>9} {'seconds':>8} {'peak RSS MiB':>12}")
    for r in rows:
        print(f"{r['system']:<40} {r['prompts_per_s']:>9.2f} {r['secs']:>8.2f} {r['peak_rss_mib']:>12.0f}")
    speed = rows[0]["prompts_per_s"] / rows[1]["prompts_per_s"]
    n = cmp["prompts"]
    print(f"\ntop-{args.beam_width} lists: same set {cmp['same_set']}/{n}, same order {cmp['same_order']}/{n} "
          f"(of the rest, {cmp['order_differs_only_in_ties']} differ only between scores within {TIE:g}); "
          f"max |score ours - HF score x L| = {cmp['max_score_diff']:.2e}; HF timed and scored passes agree: "
          f"{raw['hf']['timed_equals_scored']}")
    print(f"ours / HF: prompts/s x{speed:.2f} (target >= {TARGET}: {'met' if speed >= TARGET else 'NOT met'}), "
          f"peak RSS x{rows[0]['peak_rss_mib'] / rows[1]['peak_rss_mib']:.2f}")
    out = args.out or os.path.join(args.run, "bench_beam.json")
    write_json(out, {"config": {k: x for k, x in vars(args).items() if k not in ("child", "result")},
                     "versions": v, "adapter": raw["ours"]["adapter"], "rows": rows, "speed_ratio": speed,
                     "target": TARGET, "comparison": cmp})
    print(f"figures: {out}")


if __name__ == "__main__":
    run_main(main)
