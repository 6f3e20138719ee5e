"""How evaluate.py chooses the content baselines' width and power: HR@10 of every setting on the validation plays,
with each ranking sorted (the readable form) against counted (metrics.hit_at_k_pessimistic), in the same run.

    python benchmarks/bench_choice.py --run runs/demo [--plays 0]      # 0: every validation next play

content x co-listening's choice (baselines.select_tau_lambda: 6 widths x 6 powers) on RUN's validation next plays,
as evaluate.py makes it (E.baseline_choice_queries): once with best_on_validation's HR@10 from
hit_at_k(top_k_pessimistic(...)), a sort of the catalogue per play and setting, once with the counting form it uses
now. Prints the seconds of each, their ratio, and whether the two chose the same setting with the same HR@10 for
every setting (they must: tests/test_evaluate.py checks the two forms equal on random rankings with ties).
"""
import argparse
import json
import os
import time

import numpy as np

import harness  # first: it puts the repository root on sys.path for the imports below
import baselines as B
import evaluate as E
import formats
import metrics
import rvq
import signals
from common import read_json, run_main

# -----------------------------------------------------------------------------
RUN: str = "runs/demo"
PLAYS: int = 0                  # validation next plays (0: every one, as evaluate.py's --val-next 0)
# -----------------------------------------------------------------------------


def sorted_best_on_validation(score_fn, grid, queries, k=10):
    """baselines.best_on_validation as it was before the counting form: every ranking sorted."""
    hr = {}
    for param in grid:
        hr[param] = float(np.mean([metrics.hit_at_k(metrics.top_k_pessimistic(score_fn(param, c), rel, k, exclude=[c]),
                                                    rel, k) for c, rel in queries]))
    return max(grid, key=lambda p: hr[p]), hr


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=RUN, help="a run folder with sft_data and prefs (make demo's)")
    p.add_argument("--plays", type=int, default=PLAYS, help="validation next plays to choose on (0: every one)")
    args = p.parse_args(argv)
    sft_data = os.path.join(args.run, "sft_data")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    catalog, _ = formats.load_catalog(meta["catalog"])
    track_ids, codes = formats.load_semantic_ids(meta["semantic_ids"])
    index = catalog.index()
    code_row = {tuple(int(c) for c in cs): index[t] for t, cs in zip(track_ids, codes)}
    popularity, cooc, _ = E.load_listening(sft_data, os.path.join(args.run, "prefs"), len(catalog))
    feats = signals.preprocess(catalog.features, rvq.load_rvq(meta["rvq"])["params"])
    genres = B.genre_masks(catalog.genres)
    queries = E.baseline_choice_queries(sft_data, code_row, args.plays)

    def in_genre_of(c):
        return genres[catalog.genres[c][0]]

    t0 = time.time()
    counted = B.select_tau_lambda(feats, popularity, cooc, queries, in_genre_of)
    t_counted = time.time() - t0
    counting, B.best_on_validation = B.best_on_validation, sorted_best_on_validation
    try:
        t0 = time.time()
        sorted_ = B.select_tau_lambda(feats, popularity, cooc, queries, in_genre_of)
        t_sorted = time.time() - t0
    finally:
        B.best_on_validation = counting
    print(json.dumps({"run": args.run, "tracks": len(catalog), "plays": len(queries),
                      "settings": len(counted[1]), "sorted_s": round(t_sorted, 1), "counted_s": round(t_counted, 1),
                      "speedup": round(t_sorted / max(t_counted, 1e-9), 2), "same": sorted_ == counted,
                      "choice": list(counted[0])}))


if __name__ == "__main__":
    run_main(main)
