"""Paired differences between two evaluated runs of one world: system A of one run minus system B of another, on
the same test queries and pairs (evaluate.py keeps each query's values in results.json, "per_query").

    python benchmarks/pair_runs.py runs/words_demo_s0:SFT runs/demo:SFT      # another CONTEXT_TEXT against the demo
    python benchmarks/pair_runs.py runs/demo:DPO runs/demo:SFT               # = report.md's "DPO - SFT" rows

Two runs pair where they share the world, the seed and the test sets: their queries then ask the same (the same
context and relevant tracks, request texts and held-out pairs) even where the prompts differ in form (another
CONTEXT_TEXT, other Semantic IDs); evaluate.py names each set by a key, and a task whose keys differ is refused
with one line. Rows: next-track HR@10 and NDCG@10, attribute precision@10 and NDCG@10, held-out preference
accuracy and hallucinated@1 (unconstrained, top 1): each side's mean, the share of queries on which the two score
alike ("same"), then A - B with its 95% bootstrap interval (queries resampled jointly, as report.md's paired rows).

    python benchmarks/pair_runs.py runs/demo:SFT "runs/demo:genre popularity"  # one run's SFT against its baseline
"""
import argparse
import os

import harness  # noqa: F401  first: it puts the repository root on sys.path for the imports below
from common import UserError, read_json, run_main
from metrics import N_BOOT, paired_bootstrap, same_query_values

TASKS = (("next_track", "hit@10"), ("next_track", "ndcg@10"), ("attributes", "precision@10"),
         ("attributes", "ndcg@10"), ("preferences", None), ("hallucination", None))
LABELS = {"preferences": "preference accuracy", "hallucination": "hallucinated@1"}


def load_side(spec):
    """'RUN:SYSTEM' (RUN a run folder, its eval/results.json, or a results.json) -> (name, per_query dict)."""
    path, sep, system = spec.rpartition(":")
    if not sep or not path or not system:
        raise UserError(f"{spec!r}: expected RUN:SYSTEM, e.g. runs/demo:SFT")
    if os.path.isdir(path):
        path = os.path.join(path, "eval", "results.json")
    per_query = read_json(path, "evaluation results (evaluate.py)").get("per_query")
    if per_query is None:
        raise UserError(f"{path}: no per-query values (written by evaluate.py since 2026-12-02): evaluate the run "
                        "again")
    names = set().union(*(per_query.get(t, {}) for t, _ in TASKS))
    if system not in names:
        raise UserError(f"{path}: no system {system!r}; expected one of {', '.join(sorted(names))}")
    return f"{path}:{system}", system, per_query


def paired_rows(a, b, n_boot=N_BOOT):
    """[(task, metric, mean A, mean B, same, (mean, lo, hi) of A - B)] for every task both sides hold, on the same
    queries; same: the share of queries where A and B score alike (for HR@10, both hit or both miss), which tells two
    systems that rank alike from two that are right as often on different queries.

    a, b: (system, per_query) of each side. Raises UserError where a task's queries differ (its keys)."""
    (sys_a, pq_a), (sys_b, pq_b) = a, b
    rows = []
    for task, metric in TASKS:
        try:
            got = same_query_values(pq_a, sys_a, pq_b, sys_b, task, metric)
        except ValueError as e:
            raise UserError(f"{e}: pair only runs of one world, seed and test sets")
        if got is None:
            continue
        va, vb = got
        same = sum(x == y for x, y in zip(va, vb)) / len(va)
        rows.append((task, metric, sum(va) / len(va), sum(vb) / len(vb), same, paired_bootstrap(va, vb, n_boot)))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", metavar="RUN_A:SYSTEM", help="the minuend: a run folder (or results.json) and a system "
                                                     "(SFT, DPO, or a baseline's name as report.md writes it)")
    p.add_argument("b", metavar="RUN_B:SYSTEM", help="the subtrahend, on the same world and test sets")
    p.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples of the queries")
    args = p.parse_args(argv)
    name_a, sys_a, pq_a = load_side(args.a)
    name_b, sys_b, pq_b = load_side(args.b)
    rows = paired_rows((sys_a, pq_a), (sys_b, pq_b), args.n_boot)
    print(f"A = {name_a}\nB = {name_b}")
    print(f"{'task':<34} {'A':>7} {'B':>7} {'same':>6}   A - B, paired (95% interval)")
    for task, metric, ma, mb, same, (d, lo, hi) in rows:
        label = f"{task} {metric}" if metric else LABELS[task]
        print(f"{label:<34} {ma:7.3f} {mb:7.3f} {same:6.1%}   {d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    return rows


if __name__ == "__main__":
    run_main(main)
