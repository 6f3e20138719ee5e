"""How evaluate.py chooses the content baselines' width and power: HR@10 of every setting on the validation plays,
with each ranking sorted (the readable form) against counted (metrics.hit_at_k_pessimistic), in one run.

    python benchmarks/bench_choice.py --run runs/demo [--plays 0]      # 0: every validation next play

content x co-listening's choice (6 widths x 6 powers) on RUN's validation next plays, as evaluate.py makes it
(E.baseline_choice_queries), three ways: "sorted", best_on_validation's HR@10 from hit_at_k(top_k_pessimistic(...)),
one setting's scores and a sort of the catalogue per play and setting (the form until 2026-12-07); "counted", the
same with metrics.hit_at_k_pessimistic (no sort); "counted, settings together", baselines.select_tau_lambda as
evaluate.py runs it (a play's 36 settings scored at once, content_colisten_grid). Prints the seconds of each, the
speed-up over "sorted", and whether all three chose the same setting with the same HR@10 for every setting (they
must: tests/test_evaluate.py and tests/test_baselines.py check the forms equal). Then content x popularity's width
(6 settings) two ways: its own pass (baselines.select_tau, counted) and read off the settings-together table's lam-0
column (baselines.select_tau_from_grid, what evaluate.py runs since 2026-12-07): the seconds of each and whether
they agree.
"""
import argparse
import json
import os
import time

import numpy as np

import harness  # first: it puts the repository root on sys.path for the imports below
import baselines as B
import evaluate as E
import metrics
import rvq
import signals
import val_next as V
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
    catalog, _, _, code_row = V.catalogue_codes(meta)
    popularity, cooc, _ = E.load_listening(sft_data, os.path.join(args.run, "prefs"), len(catalog))
    feats = signals.preprocess(catalog.features, rvq.load_rvq(meta["rvq"])["params"])
    genres = B.genre_masks(catalog.genres)
    queries = E.baseline_choice_queries(sft_data, code_row, args.plays)

    def in_genre_of(c):
        return genres[catalog.genres[c][0]]

    grid = [(t, lam) for t in B.CONTENT_TAUS for lam in B.COLISTEN_LAMBDAS]

    def one_setting(p, c):   # the readable form: one setting's scores at a time
        return B.content_colisten_scores(feats, c, popularity, B.colisten_counts(cooc, c, len(catalog)),
                                         in_genre_of(c), *p)

    forms = {"sorted": lambda: sorted_best_on_validation(one_setting, grid, queries),
             "counted": lambda: B.best_on_validation(one_setting, grid, queries),
             "counted, settings together": lambda: B.select_tau_lambda(feats, popularity, cooc, queries, in_genre_of)}
    seconds, chosen = {}, {}
    for name, fn in forms.items():
        t0 = time.time()
        chosen[name] = fn()
        seconds[name] = round(time.time() - t0, 1)
    t0 = time.time()
    own = B.select_tau(feats, popularity, queries, in_genre_of)
    seconds["content x popularity, own pass"] = round(time.time() - t0, 1)
    t0 = time.time()
    from_grid = B.select_tau_from_grid(chosen["counted, settings together"][1])
    seconds["content x popularity, from the table"] = round(time.time() - t0, 1)
    print(json.dumps({"run": args.run, "tracks": len(catalog), "plays": len(queries), "settings": len(grid),
                      "seconds": seconds,
                      "speedup": {n: round(seconds["sorted"] / max(s, 1e-9), 2) for n, s in seconds.items()
                                  if not n.startswith("content x popularity")},
                      "same": all(c == chosen["sorted"] for c in chosen.values()),
                      "choice": list(chosen["sorted"][0]),
                      "content_popularity_same": own == from_grid, "content_popularity_tau": own[0]}))


if __name__ == "__main__":
    run_main(main)
