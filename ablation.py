"""The ablation table: the pipeline's configurations side by side on the same world, one table.

    python ablation.py --out runs/ablation              # today's demo and one change at a time (about 2 hours)
    python ablation.py --out runs/ablation-seed1 --seed 1   # the same rows on another world
    python ablation.py --out runs/ablation --rows audio,default   # rows of the demo's history; --rows all: every row
    python ablation.py --out runs/ablation --table-only # rebuild the table from the runs already there

Each row is `make demo` with a few variables changed (the Makefile is the one list of the pipeline's commands),
in its own run folder under --out, from the same world (same seed); a row whose run already finished is not
run again (unless its options have changed since, as its stages' stamps say: then `make` reruns the stages whose
command lines differ), and a finished row of another world (another seed) is refused. A DPO row copies the SFT
stage of the row it builds on and retrains DPO only. The table (--out / ablation.md, and ablation.json) has, per row:
next-track HR@10 and NDCG@10, attribute precision@10 and held-out preference accuracy for SFT and DPO, each with
its 95% bootstrap interval, and the wall time of the row.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from common import UserError, atomic_open, run_main, write_json
from metrics import paired_bootstrap, same_query_values

# -----------------------------------------------------------------------------
# name -> (what changes, make variables, the row whose SFT it reuses or None)
# The rows before `layers15` ran with the demo's earlier options: the whole embedded model (30 layers), 240 SFT steps;
# before `default` SFT on the answer tokens alone, LoRA dropout 0.05 (every row before `dropout0`), and before that
# prompts that name the context track (CONTEXT_TEXT=name) and 120 SFT steps; they say so, so that each still reruns
# as it ran.
# Every row before `grouped` ran DPO as the demo did before 2026-12-02: 80 steps of 8 pairs from 640 training pairs,
# the weights of the best accuracy on the 96 validation pairs; every row before `beta` at beta 0.1.
EARLIER_DPO = {"TRAIN_PAIRS": "640", "DPO_BATCH": "8", "DPO_PAIRS_PER_PROMPT": "1", "DPO_SELECT": "accuracy",
               "DPO_BETA": "0.1"}
GROUPED_DPO = {"TRAIN_PAIRS": "0", "DPO_BATCH": "4", "DPO_PAIRS_PER_PROMPT": "8", "DPO_SELECT": "last"}
# every row before `colisten`: SFT toward each example's own answer; every row before today's demo: 2,000 attribute
# requests and the prompt's IDs at sft.py's weight 1 (their defaults until 2026-12-05), pinned so each reruns as it ran
EXAMPLE = {"SFT_TARGETS": "example", "ATTRIBUTE_EXAMPLES": "2000", "PROMPT_ID_WEIGHT": "1"}
WHOLE = {"LAYERS": "30", "SFT_STEPS": "240", **EARLIER_DPO, **EXAMPLE}
EARLIER_SFT = {**WHOLE, "SFT_ARGS": "--lora-dropout 0.05 --prompt-id-weight 0"}
NAMES = {**EARLIER_SFT, "CONTEXT_TEXT": "name", "SFT_STEPS": "120"}
QUALITY = {"SIGNALS": "audio,genre,collab,quality", "LAYERS": "15", "SFT_STEPS": "480", **EXAMPLE}   # `quality`'s SFT
ROWS = {
    "audio": ("Semantic IDs from the seed's 10 audio features only; prompts name the track, SFT 120 steps",
              {"SIGNALS": "audio", **NAMES, "EVAL_ARGS": "--ranking beam"}, None),
    "genre": ("+ a genre block", {"SIGNALS": "audio,genre", **NAMES}, None),
    "names": ("+ a co-listening block; DPO + NLL on the chosen answer (RPO, alpha 1): the demo's default before "
              "2026-12-01", {"SIGNALS": "audio,genre,collab", **NAMES}, None),
    "history": ("names + 4 earlier plays of the session in the prompt",
                {"SIGNALS": "audio,genre,collab", "HISTORY": "5", **NAMES}, None),
    "steps480": ("names, SFT 480 steps instead of 120 (4x the compute; about 24 more CPU minutes than the demo)",
                 {"SIGNALS": "audio,genre,collab", **NAMES, "SFT_STEPS": "480"}, None),
    "dpo": ("names, pure DPO (no NLL term: the seed's loss)",
            {"SIGNALS": "audio,genre,collab", **NAMES, "DPO_ARGS": "--rpo-alpha 0"}, "names"),
    "beta0.5": ("names, beta 0.5", {"SIGNALS": "audio,genre,collab", **NAMES, "DPO_ARGS": "--beta 0.5"}, "names"),
    "sdpo": ("names, S-DPO without the NLL term: each chosen answer against up to 3 skipped ones",
             {"SIGNALS": "audio,genre,collab", **NAMES, "PREFS_ARGS": "--rejected-per-context 3",
              "DPO_ARGS": "--loss-type sdpo --rpo-alpha 0"}, "names"),
    "ids": ("names, but prompts show the context track by its Semantic ID alone (shorter), and SFT 160 steps",
            {"SIGNALS": "audio,genre,collab", **EARLIER_SFT, "CONTEXT_TEXT": "id", "SFT_STEPS": "160"}, None),
    "genre160": ("names, but prompts show the context track by its genre and Semantic ID (shorter), and SFT 160 "
                 "steps: the demo's default before LoRA dropout was turned off",
                 {"SIGNALS": "audio,genre,collab", **EARLIER_SFT, "SFT_STEPS": "160"}, None),
    "dropout0": ("genre160, but LoRA dropout off (a step costs a quarter less) and SFT 240 steps: the demo's "
                 "default before the prompt's IDs were targets", {"SIGNALS": "audio,genre,collab", **WHOLE,
                                                                  "SFT_ARGS": "--prompt-id-weight 0"}, None),
    "default": ("dropout0, and the prompt's Semantic IDs are SFT targets too (weight 1): the demo's default before "
                "the model was cut to 15 layers", {"SIGNALS": "audio,genre,collab", **WHOLE}, None),
    "layers15": ("default, but the embedded model's first 15 of its 30 decoder layers, and SFT 480 steps (the same "
                 "SFT time; DPO and evaluation half theirs): the demo's default before 2026-12-02",
                 {"SIGNALS": "audio,genre,collab", "LAYERS": "15", "SFT_STEPS": "480", **EARLIER_DPO, **EXAMPLE},
                 None),
    "quality": ("layers15, and a fourth block in the Semantic IDs: each track's training-window long-listen rate "
                "(weight 0.25)", {**QUALITY, **EARLIER_DPO}, None),
    "grouped": ("quality, and DPO steps of 4 prompts x up to 8 pairs each, drawn from every training pair, to its "
                "final weights: the demo's default",
                {**QUALITY, **GROUPED_DPO, "DPO_BETA": "0.1"}, "quality"),
    "beta": ("grouped, DPO at beta 0.5 instead of 0.1 (more preference accuracy, less ranking: not the default)",
             {**QUALITY, **GROUPED_DPO, "DPO_BETA": "0.5"}, "grouped"),
    "colisten": ("grouped, SFT toward the answers of every example asked the same thing and a next track's co-listened "
                 "tracks (group targets: tried, not the default)",
                 {**QUALITY, **GROUPED_DPO, "DPO_BETA": "0.1", "SFT_TARGETS": "colisten"}, None),
}
# every row so far decoded 40 test prompts without constraints, the demo's number until 2026-12-03 (evaluate.py
# --hallucination-prompts): each keeps it, so that it reruns as it ran and its hallucinated@1 stays comparable
# and none replayed SFT examples in DPO (SFT_REPLAY, the demo's since its second change of 2026-12-05), and in each
# IDs every code read every block (LAST_LEVEL_SIGNALS, the demo's since 2026-12-06)
# The test window of every row: 200 next-track test queries, the demo's until the night of 2026-12-07 (1,000 since),
# so that the rows that ran stay finished and a row costs no more evaluation than it did; the rows below also decode
# all 320 test prompts freely (the demo since then: the first 200 next-track queries and the 120 attribute requests)
ABLATION_TEST = {"TEST_NEXT": "200", "HALLUCINATION_PROMPTS": "0"}
ROWS = {name: (what, {"HALLUCINATION_PROMPTS": "40", "SFT_REPLAY": "0", "LAST_LEVEL_SIGNALS": "",
                      "TEST_NEXT": ABLATION_TEST["TEST_NEXT"], **variables}, base)
        for name, (what, variables, base) in ROWS.items()}
# Today's demo's options spelt out, and one change at a time against them: the rows that say what each part of it
# buys (the rows above are the demo's history, each as it ran then). The `demo` row is `make demo` on ABLATION_TEST.
DEMO = {"SIGNALS": "audio,genre,collab,quality", "LAST_LEVEL_SIGNALS": "quality", "LAYERS": "15", "SFT_STEPS": "720",
        "HISTORY": "1", "CONTEXT_TEXT": "genre", "ATTRIBUTE_EXAMPLES": "32000", "SFT_TARGETS": "group",
        "PROMPT_ID_WEIGHT": "0.25", "SFT_ARGS": "", **GROUPED_DPO, "DPO_BETA": "0.5", "SFT_REPLAY": "8", "DPO_ARGS": "",
        "PREFS_ARGS": "", **ABLATION_TEST}
DEMO_1207 = {**DEMO, "SFT_STEPS": "480"}   # the demo's history since 2026-12-04 ran 480 SFT steps
ROWS.update({
    "demo": ("the demo's options since the evening of 2026-12-07 (make demo): IDs from audio, genre, co-listening "
             "and listening quality, the long-listen rate in the last code alone; 15 layers, SFT 720 steps, 32,000 "
             "of the examples attribute requests toward their answer sets, the prompt's IDs at weight 0.25; grouped "
             "DPO + NLL, beta 0.5, 8 SFT examples replayed a step; 200 next-track test queries, all 320 test "
             "prompts decoded freely", DEMO, None),
    # the demo's history since 2026-12-04, each as it ran
    "demo-1207": ("demo, but SFT 480 steps (make demo DEMO_OF=2026-12-07): the demo from 2026-12-06 to 2026-12-07",
                  DEMO_1207, None),
    "demo-1206": ("demo-1207, but every code reads the long-listen rate (make demo DEMO_OF=2026-12-06): the demo "
                  "from 2026-12-05 to 2026-12-06", {**DEMO_1207, "LAST_LEVEL_SIGNALS": ""}, None),
    "demo-1205": ("demo-1206's SFT, DPO as the demo ran it before SFT replay (make demo DEMO_OF=2026-12-05): beta 0.1, "
                  "no replay", {**DEMO_1207, "LAST_LEVEL_SIGNALS": "", "DPO_BETA": "0.1", "SFT_REPLAY": "0"},
                  "demo-1206"),
    "demo-1204": ("demo-1205, but the attribute requests of the demo of 2026-12-04 (make demo DEMO_OF=2026-12-04): "
                  "2,000 of them, each toward its one answer, the prompt's IDs at weight 1",
                  {**DEMO_1207, "LAST_LEVEL_SIGNALS": "", "DPO_BETA": "0.1", "SFT_REPLAY": "0",
                   "ATTRIBUTE_EXAMPLES": "2000", "SFT_TARGETS": "example", "PROMPT_ID_WEIGHT": "1"}, None),
    # (without the quality block there is no rate to keep for the last code)
    "demo-audio": ("demo, but Semantic IDs from the seed's 10 audio features only",
                   {**DEMO, "SIGNALS": "audio", "LAST_LEVEL_SIGNALS": "", "EVAL_ARGS": "--ranking beam"}, None),
    "demo-genre": ("demo, but IDs from audio and genre only",
                   {**DEMO, "SIGNALS": "audio,genre", "LAST_LEVEL_SIGNALS": ""}, None),
    "demo-collab": ("demo, but IDs from audio, genre and co-listening (no quality block)",
                    {**DEMO, "SIGNALS": "audio,genre,collab", "LAST_LEVEL_SIGNALS": ""}, None),
    "demo-history": ("demo, and 4 earlier plays of the session in every next-track prompt (longer prompts, the "
                     "same steps)", {**DEMO, "HISTORY": "5"}, None),
    "demo-dpo": ("demo's SFT, DPO as demo-1205 ran it (beta 0.1, no replay) but pure DPO (no NLL term: the seed's "
                 "loss)",
                 {**DEMO, "DPO_BETA": "0.1", "SFT_REPLAY": "0", "DPO_ARGS": "--rpo-alpha 0"}, "demo"),
    "demo-sdpo": ("demo's SFT, DPO as demo-1205 ran it (beta 0.1, no replay) but S-DPO without the NLL term: each "
                  "chosen answer against up to 3 skipped ones",
                  {**DEMO, "DPO_BETA": "0.1", "SFT_REPLAY": "0", "PREFS_ARGS": "--rejected-per-context 3",
                   "DPO_ARGS": "--loss-type sdpo --rpo-alpha 0"}, "demo"),
    "demo-seed": ("the seed notebook's configuration today (make demo SEED_CONFIG=1): audio IDs, the whole model, 240 "
                  "SFT steps, prompts that name the track, loss on the answers only, pure DPO as the demo of "
                  "2026-12-01 ran it",
                  {"SEED_CONFIG": "1", **ABLATION_TEST, "EVAL_ARGS": "--ranking beam"}, None),
})
# what `make ablation` runs: today's demo and one change at a time (about 2 hours on 2 cores); the rows of the demo's
# history (the others, each as it ran then) by name, or --rows all
TODAY = [n for n in ROWS if n == "demo" or n.startswith("demo-")]
OUT: str = "runs/ablation"
SEED: int = 0
PYTHON: str = sys.executable   # the interpreter every stage runs with (the venv's, when run as the README says)
# -----------------------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))


def check_world_seed(run, seed):
    """A finished row stands in the table only if its world is the one asked for: rows of two worlds never mix."""
    path = os.path.join(run, "world", "world_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            world_seed = json.load(f).get("seed")
        if world_seed is not None and world_seed != seed:
            raise UserError(f"{path}: this row's world has seed {world_seed}, not --seed {seed} (pass --seed "
                            f"{world_seed}, or another --out for another world)")


def make_command(name, run, seed, extra):
    """The row's `make demo` command line, run in the folder `run`."""
    variables = {**ROWS[name][1], **extra}
    return (["make", "-C", HERE, "demo", f"RUN={os.path.abspath(run)}", f"SEED={seed}", f"PY={PYTHON}",
             "VENV_STAMP="] + [f"{k}={v}" for k, v in variables.items()])


def stamp_options(path):
    """A stamp's command line without its interpreter (`.venv/bin/python` in `make demo`, an absolute path here):
    which Python ran a stage is not an option of the row, so a `make demo` run copied in as a row still counts."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return re.sub(r"\S*python[0-9.]*(?=\s)", "python", f.read())


def changed_stages(name, run, seed, extra):
    """The stages of a finished row whose command lines differ from the row's today (a default or the row changed
    since it ran), read from the stamps `make` keeps in run/.stamps; [] for a run without stamps (made elsewhere)."""
    stamps = os.path.join(run, ".stamps")
    if not os.path.isdir(stamps):
        return []
    with tempfile.TemporaryDirectory() as tmp:   # `make -n` writes the stamps it expects, and runs nothing
        subprocess.run(make_command(name, tmp, seed, extra) + ["-n"], stdout=subprocess.DEVNULL, check=True)
        expected = os.path.join(tmp, ".stamps")
        return [stage for stage in sorted(os.listdir(expected))
                if stamp_options(os.path.join(stamps, stage)) != stamp_options(os.path.join(expected, stage))]


def run_row(name, out, seed, extra):
    """`make` the row's eval/report.md in out/name; returns wall seconds (None if it was already there)."""
    base = ROWS[name][2]
    run = os.path.join(out, name)
    report = os.path.join(run, "eval", "report.md")
    if os.path.exists(report):
        changed = changed_stages(name, run, seed, extra)
        if not changed:
            return None
        print(f"[{name}] ran with other options than the row has now ({', '.join(changed)}): running it again",
              flush=True)
    if base is not None:   # retrain DPO only: the base row's world, IDs, data and SFT, then DPO and evaluation
        src = os.path.join(out, base)
        if not os.path.exists(os.path.join(src, "sft", "summary.json")):
            raise UserError(f"row {name} reuses the SFT of row {base}: run that row first (--rows {base},{name})")
        if os.path.exists(run):
            shutil.rmtree(run)
        shutil.copytree(src, run, symlinks=True, ignore=shutil.ignore_patterns("dpo", "eval", ".stamps"))
    cmd = make_command(name, run, seed, extra)
    if base is not None:
        # The copied stages are this row's own (a DPO row changes no option before the pairs): `make -n` writes
        # the row's stamps, then the copied outputs are dated after them, so make reruns from the pairs on only
        # (the pairs themselves are rebuilt: their options may differ, and they take seconds).
        subprocess.run(cmd + ["-n"], stdout=subprocess.DEVNULL, check=True)
        now = time.time()
        for stage in ("world", "rvq", "sft_data", "sft", "sasrec"):
            for folder, _, files in os.walk(os.path.join(run, stage)):
                for f in files:
                    os.utime(os.path.join(folder, f), (now, now))
    print(f"[{name}] " + " ".join(cmd[3:]), flush=True)
    t0 = time.time()
    r = subprocess.run(cmd)
    if r.returncode != 0:
        raise UserError(f"row {name}: make exited with {r.returncode} (its output is above)")
    return time.time() - t0


def ci(s):
    return f"{s['mean']:.3f} [{s['lo']:.2f}, {s['hi']:.2f}]"


def signed(s):
    """'+0.015 [-0.020, +0.050]' for a paired difference; '-' when the results hold none."""
    return f"{s['mean']:+.3f} [{s['lo']:+.3f}, {s['hi']:+.3f}]" if s else "-"


def table(out, names, seconds):
    """Markdown table and JSON rows from each row's eval/results.json."""
    rows, lines = [], [
        "| row | what changes | SFT next HR@10 | SFT next NDCG@10 | DPO next HR@10 | DPO - SFT next HR@10 (paired) "
        "| SFT attr P@10 | SFT pref acc | DPO pref acc | hallucinated@1 SFT / DPO "
        "| strongest next-track baseline HR@10 | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        path = os.path.join(out, name, "eval", "results.json")
        if not os.path.exists(path):
            continue
        r = json.load(open(path))
        nxt, att, pref = r["ranking"]["next_track"], r["ranking"]["attributes"], r["preference_accuracy"]
        best = r["strongest_baseline"]["next_track"]["name"]
        what = ROWS[name][0]
        if r.get("ranking_method") == "beam":   # the seed's flat IDs make exact ranking many times slower
            width = json.load(open(os.path.join(out, name, "eval", "config.json")))["beam_width"]
            what += f" (LLMs ranked by beam search of width {width}, not exactly)"
        row = {"row": name, "what": what, "sft_hit@10": nxt["SFT"]["hit@10"],
               "sft_ndcg@10": nxt["SFT"]["ndcg@10"], "dpo_hit@10": nxt["DPO"]["hit@10"],
               "dpo_minus_sft_hit@10": r.get("paired", {}).get("next_track: DPO - SFT (hit@10)"),
               "sft_attr_precision@10": att["SFT"]["precision@10"], "sft_pref": pref["SFT"], "dpo_pref": pref["DPO"],
               "sft_hallucinated@1": r["hallucination"]["SFT"]["hallucinated@1"],
               "dpo_hallucinated@1": r["hallucination"]["DPO"]["hallucinated@1"],
               "best_baseline": best, "best_baseline_hit@10": nxt[best]["hit@10"], "seconds": seconds.get(name)}
        rows.append(row)
        minutes = f"{row['seconds'] / 60:.1f}" if row["seconds"] else "-"
        lines.append(f"| {name} | {row['what']} | {ci(row['sft_hit@10'])} | {ci(row['sft_ndcg@10'])} | "
                     f"{ci(row['dpo_hit@10'])} | {signed(row['dpo_minus_sft_hit@10'])} | "
                     f"{ci(row['sft_attr_precision@10'])} | {ci(row['sft_pref'])} | {ci(row['dpo_pref'])} | "
                     f"{row['sft_hallucinated@1']:.1%} / {row['dpo_hallucinated@1']:.1%} | "
                     f"{best} {ci(row['best_baseline_hit@10'])} | {minutes} |")
    return "\n".join(lines) + "\n", rows


# the paired table: each `demo-*` row minus the `demo` row, on the same test queries (evaluate.py's per-query
# values); (task, metric or None, system) per column
PAIRED_COLUMNS = (("next_track", "hit@10", "SFT"), ("next_track", "hit@10", "DPO"), ("next_track", "ndcg@10", "SFT"),
                  ("attributes", "precision@10", "SFT"), ("preferences", None, "DPO"))


def paired_against(out, names, reference="demo"):
    """Markdown table of each `reference-*` row minus the reference row, paired on the same queries, and JSON rows.

    A cell is '-' where either run lacks the values or the two were asked other queries (evaluate.py's keys differ:
    a row whose prompts carry other plays, say, has other next-track contexts). Empty when no row pairs."""
    def per_query(name):
        path = os.path.join(out, name, "eval", "results.json")
        return json.load(open(path)).get("per_query") if os.path.exists(path) else None

    ref = per_query(reference)
    runs = {n: per_query(n) for n in names if n.startswith(reference + "-")}
    runs = {n: pq for n, pq in runs.items() if pq}
    if ref is None or not runs:
        return "", []
    head = " | ".join(f"{system} {metric or 'accuracy'} {task.replace('_', '-')}" for task, metric, system in
                      PAIRED_COLUMNS)
    lines = [f"| row - {reference}, paired | {head} |", "|---" * (len(PAIRED_COLUMNS) + 1) + "|"]
    rows = []
    for name, pq in runs.items():
        cells, row = [], {"row": name}
        for task, metric, system in PAIRED_COLUMNS:
            try:
                got = same_query_values(pq, system, ref, system, task, metric)
            except ValueError:   # other queries: no paired difference
                got = None
            d = got and dict(zip(("mean", "lo", "hi"), paired_bootstrap(*got)))
            row[f"{system} {task} {metric or 'accuracy'}"] = d
            cells.append(signed(d))
        rows.append(row)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=OUT, help="folder holding one run folder per row, and the table")
    p.add_argument("--rows", default=",".join(TODAY),
                   help="comma-separated rows (default: today's demo and one change at a time; 'all': every row), "
                        f"of: {', '.join(ROWS)}")
    p.add_argument("--seed", type=int, default=SEED, help="the world's and every stage's seed (try 1 as well)")
    p.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                   help="a make variable for every row, e.g. --set SFT_STEPS=60 for a quicker table")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from finished rows")
    args = p.parse_args(argv)
    names = list(ROWS) if args.rows == "all" else [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise UserError(f"--rows: unknown row(s) {', '.join(unknown)}; rows: {', '.join(ROWS)}")
    extra = dict(kv.split("=", 1) for kv in args.set if "=" in kv)
    if len(extra) != len(args.set):
        raise UserError("--set takes VAR=VALUE")
    os.makedirs(args.out, exist_ok=True)
    for name in names:   # before any row runs: finished rows of another world would mix into this one's table
        if os.path.exists(os.path.join(args.out, name, "eval", "report.md")):
            check_world_seed(os.path.join(args.out, name), args.seed)
            changed = args.table_only and changed_stages(name, os.path.join(args.out, name), args.seed, extra)
            if changed:   # its figures are not the row's any more
                raise UserError(f"{os.path.join(args.out, name)}: ran with other options than row {name} has now "
                                f"(stages {', '.join(changed)}); run it again without --table-only")
    times_path = os.path.join(args.out, "seconds.json")
    seconds = json.load(open(times_path)) if os.path.exists(times_path) else {}
    if not args.table_only:
        for name in names:
            took = run_row(name, args.out, args.seed, extra)
            if took is not None:
                seconds[name] = took
                write_json(times_path, seconds)
    md, rows = table(args.out, names, seconds)
    paired_md, paired = paired_against(args.out, names)
    if paired_md:
        md += f"\nEach row minus the `demo` row on the same test queries and pairs (95% intervals):\n\n{paired_md}"
    with atomic_open(os.path.join(args.out, "ablation.md"), "w", encoding="utf-8") as f:
        f.write(md)
    write_json(os.path.join(args.out, "ablation.json"), rows)
    if paired:
        write_json(os.path.join(args.out, "ablation_paired.json"), paired)
    print(md)
    print(f"table: {os.path.join(args.out, 'ablation.md')}")


if __name__ == "__main__":
    run_main(main)
