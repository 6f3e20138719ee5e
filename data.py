"""The data stage: `data.py sft` writes the SFT examples and test sets, `data.py prefs` the preference pairs.

    python data.py sft --catalog CATALOG --rvq RUN/rvq --logs LOG --out RUN/sft_data
    python data.py prefs --sft-data RUN/sft_data --out RUN/prefs

What each reads and writes is in the README ("What each stage reads and writes"); the file formats are formats.py's
and logfiles.py's, the prompts tasks.py's, sessions and dwell labels sessions.py's, the pairs
preferences.py's; fastlog.py does the log passes on numpy arrays (`--engine`).
"""
import argparse
import os
import time

import numpy as np

import fastlog
import fastprefs
from common import (UserError, atomic_open, atomic_path, fail, file_sha256, jsonl, read_json, run_main, save_config,
                    write_json)
from formats import ATTRIBUTE_ANSWERS, IDS_FILE, id_text, load_catalog, load_semantic_ids, read_rvq_meta, row_codes_of
from logfiles import ENGINE_HELP, ENGINES, format_ts, log_engine, skipped_note
from preferences import mine_prefs
from tasks import (CONTEXT_TEXT, CONTEXT_TEXTS, GROUNDING_TEMPLATES, NEXT_TEMPLATES, PROMPT_HISTORY,
                   TEST_REQUEST_TEMPLATES, TRAIN_REQUEST_TEMPLATES, attribute_masks, next_track_prompt,
                   relevant_rows, request_examples, track_text)
from sessions import (LABELS, LONG_LISTEN, MAX_SESSIONS, SESSION_GAP, SKIP, TEST_FRACTION, VAL_FRACTION, DwellRule,
                      flat_sequences, mine_logs, recorded_split, split_inputs, split_times)


def build_sft(args):
    """`data.py sft`: write train/val JSONL, the two test sets, listening statistics and meta.json."""
    rng = np.random.default_rng(args.seed)
    catalog, cat_report = load_catalog(args.catalog)
    ids_path = os.path.join(args.rvq, IDS_FILE)
    track_ids, codes = load_semantic_ids(ids_path)
    rvq_meta = read_rvq_meta(args.rvq)
    index = catalog.index()
    missing = [t for t in track_ids if t not in index]
    if missing:
        fail(ids_path, f"{len(missing)} track ids are not in {args.catalog} (first: {missing[0]}); "
                       "the ID table was built from another catalogue")
    row_codes = row_codes_of(catalog, track_ids, codes)
    masks = attribute_masks(catalog)
    examples = {"train": [], "val": []}   # their JSON lines
    counts = {s: dict.fromkeys(("attributes", "grounding", "next_track"), 0) for s in examples}
    answers = {r: id_text(c) for r, c in row_codes.items()}

    def add(split, prompt, row, task, **extra):
        examples[split].append(jsonl({"prompt": prompt, "answer": answers[row], "task": task,
                                      "track_id": catalog.track_id[row], **extra}))
        counts[split][task] += 1

    # 1. requests by attributes (train phrasings), validation on the same phrasings, test on held-out ones; each
    # example names its attributes, and attribute_answers.jsonl every track that answers them (sft.py's
    # --answer-targets group learns the whole set, of which the example's answer is one draw)
    request_sets = {}
    for split, n in (("train", args.attribute_examples), ("val", args.attribute_examples // 10)):
        for attrs, prompt, r in request_examples(catalog, row_codes, masks, n, TRAIN_REQUEST_TEMPLATES, rng):
            add(split, prompt, r, "attributes", attributes=[list(a) for a in attrs])
            request_sets.setdefault(tuple(attrs), None)
    # the test requests come from a stream of their own (the seed's second): they depend on the world and the seed
    # alone, so runs with other --attribute-examples are ranked on the same requests, and asking for more test
    # requests leaves every training example as it was
    tests_attr, seen = [], set()
    for attrs, prompt, r in request_examples(catalog, row_codes, masks, 20 * args.test_attributes,
                                             TEST_REQUEST_TEMPLATES, np.random.default_rng([args.seed, 1])):
        key = tuple(attrs)
        if key in seen or len(tests_attr) >= args.test_attributes:
            continue
        seen.add(key)
        rel = relevant_rows(catalog, masks, attrs, row_codes)
        tests_attr.append({"prompt": prompt, "task": "attributes", "attributes": [list(a) for a in attrs],
                           "relevant": [catalog.track_id[i] for i in rel]})
    # 2. grounding: name -> ID
    rows = sorted(row_codes)
    for r in rng.permutation(rows)[:args.grounding_examples]:
        add("train", GROUNDING_TEMPLATES[int(rng.integers(len(GROUNDING_TEMPLATES)))].format(
            track=track_text(catalog, int(r))), int(r), "grounding")
    # 3. next track from the logs, split by time
    split, mine = split_times, mine_logs
    if log_engine(args.engine, args.logs) == "numpy":   # fastlog: the same passes on numpy arrays, the same results
        split, mine = fastlog.split_times, fastlog.mine_logs
    t_passes = time.time()
    # the split is a whole pass over the log; `rvq.py train --logs` (the stage before, when the IDs read the
    # log) made it already, so it is reused when it came from the very same files and fractions
    inputs = split_inputs(args.logs, args.catalog, args.id_information, args.id_metadata, args.val_fraction,
                          args.test_fraction)
    recorded, why = recorded_split(args.rvq, inputs)
    if recorded:
        (t_val, t_test), passes = recorded, 1
        print(f"time split: reused ({why}): one pass over the log")
    else:
        print(f"time split: computed here ({why}): two passes over the log")
        t_val, t_test = split(args.logs, catalog, args.id_information, args.id_metadata,
                              args.val_fraction, args.test_fraction)
        passes = 2
    if rvq_meta.get("t_val") is not None and rvq_meta["t_val"] > t_val:
        raise UserError(f"{args.rvq}: its IDs read listening up to {format_ts(rvq_meta['t_val'])}, after this "
                        f"split's training window ends ({format_ts(t_val)}); use the same --val-fraction / "
                        "--test-fraction in rvq.py train and data.py sft")
    log_stats = {}
    caps = {"train": args.next_examples, "val": args.next_examples // 10, "test": args.test_next}
    chosen, n_trans, popularity, cooc, seqs = mine(args.logs, catalog, row_codes, t_val, t_test, caps, args.seed,
                                                   args.id_information, args.id_metadata, stats=log_stats,
                                                   max_sessions=args.max_sessions)
    t_passes = time.time() - t_passes
    n_hist = args.prompt_history
    # a next-track line joins two cached halves: the prompt's (examples with one context share it) and the
    # answer's (one per track). A JSON object is "{" + its members joined by ", " + "}", so the halves make the
    # very bytes add() would write, without building and encoding a dict per example.
    heads, tails = {}, {}   # (template, the plays the prompt shows) -> '{"prompt": ..., '; next row -> the rest
    for w in ("train", "val"):
        # one draw per example, as one array: numpy's Generator gives the same numbers as a call per example
        templates = rng.integers(len(NEXT_TEMPLATES), size=len(chosen[w])).tolist()
        for (user, hist, nxt), t in zip(chosen[w], templates):
            key = (t, hist[-n_hist:])
            if key not in heads:
                prompt = next_track_prompt(catalog, hist, row_codes, NEXT_TEMPLATES[t], n_hist, args.context_text)
                heads[key] = jsonl({"prompt": prompt})[:-len("}\n")] + ", "
            if nxt not in tails:
                tails[nxt] = jsonl({"answer": answers[nxt], "task": "next_track",
                                    "track_id": catalog.track_id[nxt]})[len("{"):]
            examples[w].append(heads[key] + tails[nxt])
        counts[w]["next_track"] += len(chosen[w])
    # `history`: the plays the prompt shows, all a baseline may read; `session`: the longer history, for reference
    tests_next = [{"prompt": next_track_prompt(catalog, hist, row_codes, NEXT_TEMPLATES[0], n_hist,
                                               args.context_text),
                   "task": "next_track", "context_track": catalog.track_id[hist[-1]],
                   "history": [catalog.track_id[r] for r in hist[-n_hist:]],
                   "session": [catalog.track_id[r] for r in hist],
                   "relevant": [catalog.track_id[nxt]], "user": user} for user, hist, nxt in chosen["test"]]
    for split in examples:  # mix the task families
        examples[split] = [examples[split][i] for i in rng.permutation(len(examples[split]))]
    if not examples["train"] or not examples["val"]:
        raise UserError("no SFT examples could be built: check the catalogue, the ID table and the logs")

    out = args.out
    os.makedirs(out, exist_ok=True)
    sets = ({"attributes": [list(a) for a in attrs],
             "answers": [answers[i] for i in relevant_rows(catalog, masks, attrs, row_codes)]}
            for attrs in request_sets)
    for name, lines in (("train.jsonl", examples["train"]), ("val.jsonl", examples["val"]),
                        ("test_next.jsonl", map(jsonl, tests_next)), ("test_attributes.jsonl", map(jsonl, tests_attr)),
                        (ATTRIBUTE_ANSWERS, map(jsonl, sets))):
        with atomic_open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.writelines(lines)
    if isinstance(cooc, dict):   # the loop's {(i, j): count}; fastlog gives the arrays, in the same order
        cooc = (np.array([k[0] for k in cooc], dtype=np.int64), np.array([k[1] for k in cooc], dtype=np.int64),
                np.array(list(cooc.values()), dtype=np.int64))
    ci, cj, cc = cooc
    with atomic_path(os.path.join(out, "listening_stats.npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, popularity=popularity, cooc_i=ci, cooc_j=cj, cooc_count=cc,
                     **{f"{w}_seq_{k}": a for w in ("train", "val") for k, a in zip(("items", "offsets"), (
                         seqs[w] if isinstance(seqs[w], tuple) else flat_sequences(seqs[w])))})   # fastlog: flat
    meta = {"catalog": os.path.abspath(args.catalog), "rvq": os.path.abspath(args.rvq),
            "semantic_ids": os.path.abspath(ids_path), "id_table_sha256": file_sha256(ids_path),
            "levels": int(rvq_meta["levels"]), "codebook_size": int(rvq_meta["codebook_size"]),
            "logs": os.path.abspath(args.logs),
            "id_information": args.id_information and os.path.abspath(args.id_information),
            "id_metadata": args.id_metadata and os.path.abspath(args.id_metadata),
            "prompt_history": n_hist, "context_text": args.context_text, "t_val": t_val, "t_test": t_test,
            "t_val_utc": format_ts(t_val),
            "t_test_utc": format_ts(t_test),
            "examples": counts, "test_next": len(tests_next), "test_attributes": len(tests_attr),
            "transitions": n_trans, "log": log_stats, "catalog_report": cat_report}
    write_json(os.path.join(out, "meta.json"), meta)
    save_config(out, args, name="config.json")
    print(f"SFT examples: train {counts['train']}, val {counts['val']}; test: {len(tests_next)} next-track, "
          f"{len(tests_attr)} attribute requests; split at {format_ts(t_val)} / {format_ts(t_test)} UTC; "
          f"log match rate {log_stats.get('match_rate', 0):.1%}; log passes: {passes}, {t_passes:.1f} s "
          f"({passes * log_stats.get('events_read', 0) / max(t_passes, 1e-9):,.0f} events/s)"
          f"{skipped_note(log_stats)}")
    return meta


def check_label_options(args):
    """One-line errors for thresholds that cannot label a play consistently."""
    for name in ("long_fraction", "skip_fraction"):
        x = getattr(args, name)
        if x is not None and not 0 < x <= 1:
            raise UserError(f"--{name.replace('_', '-')} {x:g}: a share of the track, between 0 (excluded) and 1")
    if args.skip > args.long_listen:
        raise UserError(f"--skip {args.skip:g} is above --long-listen {args.long_listen:g}: a play could be both a "
                        "skip and a long listen")
    if None not in (args.long_fraction, args.skip_fraction) and args.skip_fraction > args.long_fraction:
        raise UserError(f"--skip-fraction {args.skip_fraction:g} is above --long-fraction {args.long_fraction:g}: "
                        "a play could be both a skip and a long listen")
    if args.rejected_per_context < 1:
        raise UserError(f"--rejected-per-context {args.rejected_per_context}: at least 1 (the pair's own rejected)")
    if args.resolution < 0:
        raise UserError(f"--resolution {args.resolution}: seconds between clock ticks, or 0 to detect them")


def build_prefs(args):
    """`data.py prefs`: (instruction, chosen ID, rejected ID) pairs from the logs, split by time (mine_prefs or
    fastprefs.mine_prefs mine them), the per-track labels and the report."""
    check_label_options(args)
    meta = read_json(os.path.join(args.sft_data, "meta.json"), "SFT data meta.json")
    catalog, _ = load_catalog(meta["catalog"])
    track_ids, codes = load_semantic_ids(meta["semantic_ids"])
    row_codes = row_codes_of(catalog, track_ids, codes)
    log = args.logs or meta["logs"]
    t_val, t_test = meta["t_val"], meta["t_test"]
    n_hist = meta.get("prompt_history", 1)   # the prompts show what the SFT prompts show
    context_text = meta.get("context_text", "name")   # SFT data written before the option named the context
    stats, counts = {}, {}
    rule = DwellRule(args.long_listen, args.skip, args.long_fraction, args.skip_fraction)
    engine = log_engine(args.engine, log)   # fastlog: the same work on numpy arrays, the same files
    t0 = time.time()
    mine = mine_prefs
    if engine == "numpy":
        mine = fastprefs.mine_prefs
    got = mine(log, catalog, row_codes, rule, args, t_val, t_test, n_hist, context_text,
               args.id_information or meta["id_information"], args.id_metadata or meta["id_metadata"], stats, counts)
    plays, long, skips, n_sessions, unknown_duration = (got[k] for k in ("plays", "long", "skip", "sessions",
                                                                         "unknown_duration"))
    seconds = time.time() - t0
    caps = {"train": args.max_train, "val": args.max_val, "test": args.max_test}
    n_pairs = {w: min(got["seen"][w], caps[w]) if caps[w] else got["seen"][w] for w in caps}
    report = {"events_read": stats.get("events_read", 0), "matched": stats.get("matched", 0),
              "match_rate": stats.get("match_rate", 0.0), "users": stats.get("users", 0), "sessions": n_sessions,
              "labelled": {k: counts.get(k, 0) for k in LABELS},
              "timestamp_resolution_s": stats.get("resolution_s"),
              "timestamp_resolution": stats.get("resolution_source"),
              "labelled_by_rule": {rule.explain(k, stats.get("resolution_s", 1)): counts.get("reason: " + k, 0)
                                   for k in rule.reasons()},
              "plays_of_tracks_without_duration": unknown_duration,
              "pairs": n_pairs, "pairs_before_caps": got["seen"],
              "dropped": {k[len("dropped: "):]: v for k, v in counts.items() if k.startswith("dropped")},
              "contexts_with_candidates_cut_at_a_window_boundary": counts.get("candidates cut at a window boundary",
                                                                              0),
              "bad_rows": stats.get("bad_rows", 0), "bad_examples": stats.get("bad_examples", []), "seconds": seconds,
              "events_per_second": stats.get("events_read", 0) / max(got["mined"], 1e-9)}
    with atomic_path(os.path.join(args.out, "track_labels.npz")) as tmp:
        with open(tmp, "wb") as f:   # plays with a known dwell, long listens, skips: training window only
            np.savez(f, plays=plays, long=long, skip=skips)
    write_json(os.path.join(args.out, "report.json"), report)
    write_json(os.path.join(args.out, "meta.json"), {k: meta[k] for k in ("levels", "codebook_size",
                                                                          "id_table_sha256", "semantic_ids")})
    save_config(args.out, args, name="config.json")
    print(f"preference pairs: train {n_pairs['train']}, val {n_pairs['val']}, test {n_pairs['test']} "
          f"from {report['events_read']:,} events ({report['match_rate']:.1%} matched), {n_sessions:,} sessions; "
          f"labelled {report['labelled']}; {report['events_per_second']:,.0f} events/s{skipped_note(stats)}")
    return report


# ============================================================================================== CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Build the SFT examples and the preference pairs from real-format data.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sft", help="SFT examples (3 task families) + test sets + listening statistics")
    s.add_argument("--catalog", required=True, help="Spotify Tracks dataset.csv layout")
    s.add_argument("--rvq", required=True, help="rvq.py output folder (semantic_ids.tsv, rvq.safetensors)")
    s.add_argument("--logs", required=True, help="listening log (Onion, Music4All, Last.fm-1K; .bz2 too)")
    s.add_argument("--id-information", default=None, help="Music4All id_information (for Music4All ids)")
    s.add_argument("--id-metadata", default=None, help="Music4All id_metadata (join by spotify_id)")
    s.add_argument("--out", required=True,
                   help="output folder (train.jsonl, val.jsonl, test sets, listening statistics, meta.json)")
    s.add_argument("--attribute-examples", type=int, default=2000,
                   help="attribute requests for training (default %(default)s, the demo's until 2026-12-05; the demo "
                        "passes 32000 and trains each toward its answer set, sft.py --answer-targets group: one "
                        "answer each, 2,000 or 16,000 of them, ranked as genre popularity does; EXPERIMENTS.md, "
                        "'Attribute requests trained toward their answer sets')")
    s.add_argument("--grounding-examples", type=int, default=1000,
                   help="name -> ID examples (tracks sampled), so a track named in words maps to its ID "
                        "(default %(default)s)")
    s.add_argument("--next-examples", type=int, default=200_000,
                   help="next-track training examples, sampled uniformly (0: all, memory grows with the log; default "
                        "%(default)s)")
    s.add_argument("--test-next", type=int, default=1000,
                   help="next-track test queries (sampled; more: narrower intervals, a longer evaluation; default "
                        "%(default)s)")
    s.add_argument("--test-attributes", type=int, default=120,
                   help="attribute test requests, distinct attribute sets in held-out phrasings (40, the demo's until "
                        "2026-12-03, gave precision@10 intervals 0.23 wide; default %(default)s)")
    s.add_argument("--prompt-history", type=int, default=PROMPT_HISTORY,
                   help="plays a next-track prompt shows: the context track and up to N - 1 plays before it (as IDs; "
                        "default %(default)s: 5 ranked no better at this budget, README)")
    s.add_argument("--context-text", choices=CONTEXT_TEXTS, default=CONTEXT_TEXT,
                   help="what a next-track prompt shows of its context track: 'genre' its genre and Semantic ID "
                        "(the default: SFT steps ~10%% cheaper than with names), "
                        "'id' the ID alone (cheaper still; then no prompt puts a genre word beside an ID, and "
                        "attribute requests suffer), 'name' also its artist and title (the format before "
                        "2026-12-01), 'words' its genre and the attribute phrases that hold for it (the words of "
                        "attribute requests beside every context ID). The pairs of `data.py prefs` and ask.py "
                        "follow it")
    s.add_argument("--max-sessions", type=int, default=MAX_SESSIONS,
                   help="training / validation sessions kept for the SASRec baseline (uniform sample; 0: all; default "
                        "%(default)s)")
    s.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                   help="share of matched events in the validation window, just before the test window (the log "
                        "is split by time); use rvq.py train's value (default %(default)s)")
    s.add_argument("--test-fraction", type=float, default=TEST_FRACTION,
                   help="share of matched events in the final, held-out test window; use rvq.py train's value "
                        "(default %(default)s)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the sampled examples, test queries and sessions, the prompt phrasings and the "
                        "shuffle; the test queries draw from streams of their own, so other training caps leave "
                        "them as they were (default %(default)s)")
    s.add_argument("--engine", choices=ENGINES, default="auto", help=ENGINE_HELP)
    q = sub.add_parser("prefs", help="preference pairs from dwell times")
    q.add_argument("--sft-data", required=True, help="the `data.py sft` folder (catalogue, IDs, logs, split)")
    q.add_argument("--out", required=True,
                   help="output folder (train/val/test.jsonl, track_labels.npz, report.json, meta.json)")
    q.add_argument("--logs", default=None, help="listening log (default: the one the SFT data used)")
    q.add_argument("--id-information", default=None,
                   help="Music4All id_information (default: the one the SFT data used)")
    q.add_argument("--id-metadata", default=None, help="Music4All id_metadata (default: the one the SFT data used)")
    q.add_argument("--session-gap", type=int, default=SESSION_GAP,
                   help="seconds of silence that start a new session (default %(default)s)")
    q.add_argument("--long-listen", type=float, default=LONG_LISTEN,
                   help="chosen: dwell above this, in seconds (default %(default)s: the seed's rule)")
    q.add_argument("--skip", type=float, default=SKIP,
                   help="rejected: dwell below this, in seconds (default %(default)s: the seed's rule)")
    q.add_argument("--long-fraction", type=float, default=None,
                   help="also chosen: more than this share of the track heard (e.g. 0.8), so tracks shorter than "
                        "--long-listen can be chosen; default off (the seed's absolute rule)")
    q.add_argument("--skip-fraction", type=float, default=None,
                   help="rejected only if also less than this share of the track was heard (e.g. 0.5), so a full "
                        "play of a track shorter than --skip is no skip; default off (the seed's absolute rule)")
    q.add_argument("--resolution", type=int, default=0,
                   help="seconds between the log's clock ticks (60 for minute timestamps): a dwell is labelled "
                        "only where this uncertainty cannot move it across a threshold; 0 detects it from the file")
    q.add_argument("--window-plays", type=int, default=0,
                   help="plays after the context that may be its chosen or rejected answer (0: the rest of the "
                        "session; default %(default)s)")
    q.add_argument("--rejected-per-context", type=int, default=1,
                   help="skips kept per context: above 1, each pair also lists up to this many - 1 further skipped "
                        "tracks as more_rejected, which dpo.py --loss-type sdpo trains on (S-DPO); 1: plain pairs")
    q.add_argument("--max-train", type=int, default=0, help="cap on training pairs (0: all; default %(default)s)")
    q.add_argument("--max-val", type=int, default=0, help="cap on validation pairs (0: all; default %(default)s)")
    q.add_argument("--max-test", type=int, default=0, help="cap on test pairs (0: all; default %(default)s)")
    q.add_argument("--seed", type=int, default=0,
                   help="seed of the uniform samples the --max-* caps keep, a random stream per window so the test "
                        "pairs stay put when --max-train changes (default %(default)s)")
    q.add_argument("--engine", choices=ENGINES, default="auto", help=ENGINE_HELP)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.cmd == "sft":
        build_sft(args)
    else:
        build_prefs(args)


if __name__ == "__main__":
    run_main(main)
