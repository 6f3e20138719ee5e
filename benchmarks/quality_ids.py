"""What the Semantic IDs' codes alone say about listening preferences and next tracks, per weight of the quality block.

    python benchmarks/quality_ids.py --run runs/demo --pairs runs/x/prefs/val.jsonl [--weights 0,0.1,0.25,0.5]

For each weight w (0: no quality block), `rvq.py train` is run on the run's catalogue and log with its own options
(rvq/rvq_config.json) and the signals audio, genre, collab (weight 1 each, the defaults) plus quality at weight w,
into a temporary folder. Then, without any language model:
  genre purity        of the ID prefixes, level 1 (rvq_report.json): attribute requests name genres
  rate explained      share of the long-listen rate's logit the first two codes explain (rvq_report.json)
  prefix HR@10        val_next.py's "ID prefix popularity" on the validation next-track queries: what the
                      prefixes say about the next track
  code logistic       a weight per code of each level (3 x K one-hots of chosen minus rejected), fitted by
                      L2-regularised logistic regression on the run's DPO training pairs (prefs/train.jsonl), and its
                      accuracy on --pairs: how far a preference learnt per code, not per track, carries to tracks
                      and pairs it never saw; the long-listen rate's accuracy on the same pairs beside it
This chose the quality block's default weight (rvq.BLOCK_WEIGHTS) on validation pairs, not on the test window.
"""
import argparse
import contextlib
import os
import tempfile

import numpy as np

import harness  # first: it puts the repository root on sys.path for the imports below
import baselines as B
import evaluate as E
import formats
import metrics
import rvq
import val_next
from common import UserError, need_file, read_json, run_main

# -----------------------------------------------------------------------------
WEIGHTS: str = "0,0.1,0.25,0.5"   # quality block weights to compare (0: the IDs without it)
QUERIES: int = 1000               # validation next-track queries for the prefix row (5x val_next's: small effects)
L2: float = 1.0                   # ridge of the code logistic regression (a few hundred pairs, 3 x K weights)
# -----------------------------------------------------------------------------


def code_onehots(codes, rows, k):
    """(P, L * K) one-hots of the codes of catalogue rows: level l's code c at column l * K + c."""
    codes = np.asarray(codes)[rows]
    out = np.zeros((len(rows), codes.shape[1] * k))
    for level in range(codes.shape[1]):
        out[np.arange(len(rows)), level * k + codes[:, level]] = 1.0
    return out


def code_logistic_accuracy(codes, k, train_pairs, test_pairs, l2=L2):
    """Per test pair 1 / 0.5 / 0: a weight per code fitted to prefer the chosen answer's codes on train_pairs.

    train_pairs, test_pairs: ((P,) chosen rows, (P,) rejected rows). Each training pair enters twice, as
    (chosen - rejected, 1) and (rejected - chosen, 0), so no intercept is needed and the fit is symmetric.
    """
    ch, rj = train_pairs
    d = code_onehots(codes, ch, k) - code_onehots(codes, rj, k)
    w, _ = B.fit_logistic(np.vstack([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))], l2=l2, intercept=False)
    score = code_onehots(codes, test_pairs[0], k) @ w - code_onehots(codes, test_pairs[1], k) @ w
    return (score > 0) + 0.5 * (score == 0)


def prefix_hits(codes, popularity, queries, k=val_next.K):
    """Per query 1.0 if "ID prefix popularity" ranks the next track in its top k: val_next.py's row, its rules
    (the context track excluded, ties broken against the relevant track)."""
    return [float(relevant in metrics.top_k_pessimistic(val_next.prefix_popularity_scores(codes, popularity, hist[-1]),
                                                        {relevant}, k, exclude=[hist[-1]]))
            for _, hist, relevant in queries]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=val_next.RUN, help="run folder: its rvq options, sft_data and prefs")
    p.add_argument("--pairs", required=True,
                   help="validation preference pairs to score (e.g. `data.py prefs --max-val 3000`'s val.jsonl)")
    p.add_argument("--weights", default=WEIGHTS, help="quality block weights to compare, comma-separated")
    p.add_argument("--queries", type=int, default=QUERIES, help="validation next-track queries (prefix HR@10)")
    args = p.parse_args(argv)
    weights = [float(w) for w in args.weights.split(",")]
    cfg = read_json(os.path.join(args.run, "rvq", "rvq_config.json"), "rvq.py config")
    if not cfg.get("logs"):
        raise UserError(f"{args.run}/rvq was trained without --logs: the quality block needs the listening log")
    sft_data = os.path.join(args.run, "sft_data")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    catalog, _ = formats.load_catalog(meta["catalog"])
    index, n, k = catalog.index(), len(catalog), cfg["codebook_size"]
    track_ids, run_codes = formats.load_semantic_ids(meta["semantic_ids"])
    code_row = {tuple(int(c) for c in cs): index[t] for t, cs in zip(track_ids, run_codes)}
    queries = val_next.val_queries(sft_data, args.queries, val_next.SEED, code_row)
    popularity, _, labels = E.load_listening(sft_data, os.path.join(args.run, "prefs"), n)
    train_pairs = E.pair_rows(os.path.join(args.run, "prefs", "train.jsonl"), index)
    need_file(args.pairs, "validation preference pairs")
    test_pairs = E.pair_rows(args.pairs, index)
    rate = B.pair_accuracy(B.long_listen_rate(labels["long"], labels["skip"]), *test_pairs).mean()
    print(f"{len(train_pairs[0])} training pairs, {len(test_pairs[0])} validation pairs (long-listen rate "
          f"{rate:.3f}), {len(queries)} validation next-track queries")
    print(f"{'quality weight':>14}  {'genre purity':>12}  {'rate explained':>14}  {'prefix HR@10':>12}  "
          f"{'code logistic':>13}")
    options = ["--catalog", cfg["catalog"], "--levels", str(cfg["levels"]), "--codebook-size", str(k),
               "--seed", str(cfg["seed"]), "--logs", cfg["logs"]]
    options += [a for key in ("id_information", "id_metadata") if cfg.get(key)
                for a in (f"--{key.replace('_', '-')}", cfg[key])]
    for w in weights:
        signals = "audio,genre,collab" + (",quality" if w > 0 else "")
        with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            rvq.main(["train", "--out", tmp, "--signals", signals,
                      "--weights", "1,1,1" + (f",{w:g}" if w > 0 else "")] + options)
            rep = read_json(os.path.join(tmp, rvq.REPORT_FILE), "rvq report")
            ids, codes = formats.load_semantic_ids(os.path.join(tmp, formats.IDS_FILE))
        C = np.full((n, codes.shape[1]), -1, dtype=np.int64)
        C[[index[t] for t in ids]] = codes
        hits = prefix_hits(C, popularity, queries)
        acc = code_logistic_accuracy(C, k, train_pairs, test_pairs).mean()
        explained = f"{rep['rate_explained_per_level'][1]:.3f}" if w > 0 else "-"
        print(f"{w:>14g}  {rep['genre_purity']['per_level'][0]:>12.3f}  {explained:>14}  "
              f"{np.mean(hits):>12.3f}  {acc:>13.3f}", flush=True)


if __name__ == "__main__":
    run_main(main)
