"""Which code of the Semantic ID holds a model's preference: validation pair accuracy of each ID token's log-prob.

    python benchmarks/pref_levels.py --run runs/demo --adapter SFT=runs/demo/sft/adapter \\
        --adapter DPO=runs/demo/dpo/adapter [--pairs runs/demo/prefs/val.jsonl] [--reference SFT] [--out F.json]

evaluate.py scores a preference pair by the summed log-probs of the two answers, log pi(y | x) = sum_l log pi(c_l |
x, c_<l) (+ the end token): one number that must also rank the next track. The Semantic IDs put genre, sound and
co-listening in the first codes and the long-listen rate in the last (rvq.py --last-level-signals quality), so the
sum's terms answer different questions: c_1 and c_2 "is this what follows the context", c_3 "which of the tracks
there". This script splits the score by term, per adapter, on the same pairs:

    score_l(x, y) = log pi(c_l | x, c_<l)          each level alone                                      (1)
    score_{>=l}(x, y) = sum_{m >= l} log pi(c_m | x, c_<m) + log pi(end | x, c)   the sum from level l on   (2)

and the accuracy of each (chosen above rejected; a tie 1/2, evaluate.py's rule) over all pairs and within the pairs
whose two tracks share their first code, or their first two (there those codes' terms are the same number in both
answers, and with the first two shared, (1) at the last level compares two entries of one softmax). With --reference
NAME (the SFT adapter a DPO adapter started from), every other adapter also gets the same rows of its implicit
reward per level, log pi - log ref (dpo.implicit_reward_hits' reward, split by token). Beside them the long-listen
rate on the same pairs; each row's paired difference to it, and to its adapter's summed log-prob (evaluate.py's
score; 95% bootstrap intervals). A diagnostic, not
evaluate.py's score: it says where in the ID the model's preference lives, not what one number ranking next tracks
and pairs can reach (benchmarks/pref_frontier.py).
"""
import argparse
import os

import numpy as np
import torch
from tqdm import tqdm

import harness  # first: it puts the repository root on sys.path for the imports below
import baselines as B
import dpo
import evaluate as E
import lora
import metrics
import model as M
from common import UserError, need_file, read_json, run_main, write_json
from val_next import MODEL, SEED, catalogue_codes

# -----------------------------------------------------------------------------
BATCH_SIZE: int = 32      # pairs per forward (two answers each, one prompt run)
SUM = "sum (evaluate.py)"   # the row of evaluate.py's score, the summed log-prob of the whole answer
# -----------------------------------------------------------------------------


@torch.no_grad()
def answer_token_logps(model, pairs, pad_id, device, batch_size=BATCH_SIZE, desc=None):
    """Per-token log-probs of each pair's two answers: chosen (N, A), rejected (N, A) fp32, 0 past an answer's end.

    pairs: dpo.read_pairs' [(prompt, chosen, rejected)]. Token t of an answer is log pi(y_t | x, y_<t); their row
    sum is dpo.score_pairs' summed log-prob (tests/test_pref_levels.py checks it). One prompt run per pair, its two
    answers on its KV cache (dpo.answer_token_lsm, the rows dpo.answers_logps sums). desc: a progress bar's label."""
    model.eval()
    width = max(max(len(c), len(r)) for _, c, r in pairs)
    chosen, rejected = torch.zeros(len(pairs), width), torch.zeros(len(pairs), width)
    for s in tqdm(range(0, len(pairs), batch_size), desc=desc, disable=desc is None, leave=False):
        batch = pairs[s:s + batch_size]
        b = len(batch)
        answers = [c for _, c, _ in batch] + [r for _, _, r in batch]
        with M.autocast(device):
            lsm, targets, mask = dpo.answer_token_lsm(model, [p for p, _, _ in batch], answers, list(range(b)) * 2,
                                                      pad_id, device)
        tok = torch.zeros(mask.shape, device=lsm.device)
        tok[mask] = lsm.gather(1, targets[:, None]).squeeze(1)
        tok = tok.cpu()
        chosen[s:s + b, :tok.shape[1]], rejected[s:s + b, :tok.shape[1]] = tok[:b], tok[b:]
    return chosen, rejected


def level_scores(chosen, rejected, levels):
    """{row name: (chosen (N,), rejected (N,))} of eqs. (1) and (2) and evaluate.py's sum, from per-token log-probs
    (N, A) whose first `levels` columns are the ID's codes (the end token after them).

    'levels >= l' is the sum without the terms of the levels before l (the end token kept); 'levels >= L' is not a
    row: it is 'level L' and the end token, whose log-prob after a whole ID is near 0 (on the demo's runs the two
    ranked the pairs alike to the third decimal). Example, levels 3, one pair: chosen [[-1, -2, -3, -0.1]], rejected
    [[-0.5, -3, -2, -0.1]]: 'sum' -6.1 vs -5.6 (rejected ahead), 'level 1' -1 vs -0.5 (rejected), 'level 2' -2 vs
    -3 (chosen), 'level 3' -3 vs -2 (rejected), 'levels >= 2' -5.1 vs -5.1 (a tie)."""
    out = {SUM: (chosen.sum(1), rejected.sum(1))}
    for l in range(levels):
        out[f"level {l + 1}"] = (chosen[:, l], rejected[:, l])
    for l in range(1, levels - 1):
        out[f"levels >= {l + 1}"] = (chosen[:, l:].sum(1), rejected[:, l:].sum(1))
    return out


def shared_prefix(chosen_codes, rejected_codes):
    """How many leading codes the two answers of each pair share: (N,) int. Example: (1, 2, 3) vs (1, 5, 3): 1."""
    c, r = np.asarray(chosen_codes), np.asarray(rejected_codes)
    same = np.cumprod(c == r, axis=1)
    return same.sum(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder whose sft_data (meta.json, listening statistics) to use")
    p.add_argument("--model", default=MODEL,
                   help="base model folder of the adapters (default %(default)s; the demo's are on its first 15 "
                        "layers, models/smollm2-135m-l15)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=FOLDER",
                   help="an adapter whose per-level preference to measure (repeat)")
    p.add_argument("--pairs", default="",
                   help="preference pairs (default RUN/prefs/val.jsonl; more: `data.py prefs --max-val 3000` into "
                        "another folder)")
    p.add_argument("--reference", default=None, metavar="NAME",
                   help="the --adapter that is DPO's reference (its SFT adapter): every other adapter also gets the "
                        "rows of its implicit reward per level, log pi - log ref")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="pairs per forward")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=SEED, help="the bootstrap's seed")
    p.add_argument("--out", default=None, help="JSON of the per-pair hits and the table (optional)")
    args = p.parse_args(argv)
    adapters = [a.split("=", 1) for a in args.adapter]
    if not adapters or any(len(a) != 2 for a in adapters):
        raise UserError("give at least one --adapter NAME=FOLDER")
    if args.reference and args.reference not in [a[0] for a in adapters]:
        raise UserError(f"--reference {args.reference}: no --adapter of that name")
    device = M.pick_device(args.device)
    sft_data = os.path.join(args.run, "sft_data")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    catalog, index, C, _ = catalogue_codes(meta)
    pairs_path = args.pairs or os.path.join(args.run, "prefs", "val.jsonl")
    need_file(pairs_path, "preference pairs (data.py prefs)")
    ch_rows, rj_rows = E.pair_rows(pairs_path, index)
    _, _, labels = E.load_listening(sft_data, os.path.join(args.run, "prefs"), len(catalog))
    rate_hits = B.pair_accuracy(B.long_listen_rate(labels["long"], labels["skip"]), ch_rows, rj_rows)
    prefix = shared_prefix(C[ch_rows], C[rj_rows])
    groups = {"all": np.ones(len(prefix), bool)}
    groups.update({f"first {k} shared": prefix >= k for k in range(1, meta["levels"])})
    print(f"{len(prefix)} pairs from {pairs_path}; " + ", ".join(
        f"{g}: {m.sum()}" for g, m in groups.items() if g != "all"))
    hits, token_logps = {"long-listen rate": rate_hits}, {}
    sum_of = {}   # row -> its adapter's evaluate.py row, which each row is also paired against
    for name, folder in adapters:
        model, tok, vocab = M.load_policy(args.model, adapter=folder, id_table_sha=meta["id_table_sha256"])
        lora.merge_lora(model)   # as evaluate.py
        fmt = M.PromptFormat(tok, vocab)
        token_logps[name] = answer_token_logps(model, dpo.read_pairs(pairs_path, fmt), M.pad_id_of(tok), device,
                                               args.batch_size, desc=f"{name}: pairs")
        for row, (c, r) in level_scores(*token_logps[name], meta["levels"]).items():
            hits[f"{name} {row}"] = dpo.pair_hits(c, r).numpy()
            sum_of[f"{name} {row}"] = f"{name} {SUM}"
        del model
    if args.reference:
        ref_c, ref_r = token_logps[args.reference]
        for name, (c, r) in token_logps.items():
            if name != args.reference:
                for row, (a, b) in level_scores(c - ref_c, r - ref_r, meta["levels"]).items():
                    hits[f"{name} reward {row}"] = dpo.pair_hits(a, b).numpy()
                    sum_of[f"{name} reward {row}"] = f"{name} {SUM}"
    print(f"{'score':34s}" + "".join(f"{g:>20s}" for g in groups) + f"{'all - long-listen rate':>27s}"
          + f"{'all - its log-prob sum':>27s}")
    table = {}
    for row, h in hits.items():
        d = metrics.paired_bootstrap(h, rate_hits, seed=args.seed)
        ds = (metrics.paired_bootstrap(h, hits[sum_of[row]], seed=args.seed)
              if row in sum_of and sum_of[row] != row else None)
        table[row] = {"accuracy": {g: float(np.mean(h[m])) for g, m in groups.items() if m.any()},
                      "minus_rate": d, "minus_sum": ds}
        print(f"{row:34s}" + "".join(f"{np.mean(h[m]):20.3f}" if m.any() else f"{'-':>20s}" for m in groups.values())
              + "".join(f"{'':>3s}{x[0]:+.3f} [{x[1]:+.3f}, {x[2]:+.3f}]" if x else f"{'':>27s}" for x in (d, ds)))
    if args.out:
        write_json(args.out, {"config": vars(args), "groups": {g: int(m.sum()) for g, m in groups.items()},
                              "table": table, "hits": {k: np.asarray(v).tolist() for k, v in hits.items()}})


if __name__ == "__main__":
    run_main(main)
