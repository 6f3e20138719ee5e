"""Preference pairs from dwell times: after a play, a long listen (chosen) against a skip (rejected).

mine_pairs turns one listener's sessions into pairs; mine_prefs is `data.py prefs`' readable loop over a whole log
(fastprefs.mine_prefs does the same on arrays and writes the same bytes).
"""
import contextlib
import json
import os
import shutil
import tempfile
import time

import numpy as np
from tqdm import tqdm

from common import atomic_open
from formats import id_text
from logfiles import format_ts, iter_user_plays
from tasks import next_track_prompt
from sessions import DwellRule, Reservoir, sessions_of, streams, window

# ============================================================================================== preference pairs


def mine_pairs(sessions, row_codes, rule=DwellRule(), window_plays=0, counts=None, windows=None, history=0,
               durations=None, resolution=1, rejected_per_context=1):
    """Preference pairs of one user's sessions: [(context_row, chosen_row, rejected_row, ts)].

    The context is a play; the candidates are the plays after it in the same session (the next
    `window_plays` of them, or the rest of the session when 0). The first candidate that rule.label calls
    chosen (by default: dwell > 90 s) is chosen and the first it calls rejected (dwell < 30 s) is rejected;
    plays without a known dwell (a session's last, or one sharing its timestamp with the next play) are
    unlabelled. Both must be catalogued tracks other than the context, so the prompt never names an answer.
    ts = the context's time, which decides the split. durations: (N,) track lengths in seconds, 0 = unknown
    (for the relative thresholds; None: all unknown). resolution: the log's clock step in seconds.
    windows = (t_val, t_test): candidates must lie in the context's time window, so no validation pair
    uses a test-window play and no training pair a later one.
    history > 0: each pair also carries the session's last `history` catalogued plays up to the context
    (a tuple of rows, oldest first), as the next-track prompts show them: (context, chosen, rejected, ts, hist).
    counts (a dict) gains, per play, its label and "reason: " + the reason of label() (the two unknown dwells
    told apart: "session end", "same timestamp"), and why pairs were dropped.
    rejected_per_context K > 1 (for S-DPO): each pair ends with a tuple of up to K - 1 further rejected tracks,
    the next distinct skips after the context in play order (may be empty), after hist when history > 0.
    Example: plays ctx, a (skip), b (long), c (skip), a (skip), d (skip) with K = 3 give
    (ctx, b, a, ts, (c, d)): a is the pair's rejected answer, c and d the further ones.
    """
    counts = {} if counts is None else counts

    def count(k):
        counts[k] = counts.get(k, 0) + 1

    out = []
    for sess in sessions:
        labels = []
        for i, (ts, row, dwell) in enumerate(sess):
            dur = float(durations[row]) if durations is not None and row >= 0 else 0.0
            label, reason = rule.label(dwell, dur, resolution)
            if reason == "unknown dwell":   # only a session's last play or a same-timestamp one has none
                reason = "session end" if i == len(sess) - 1 else "same timestamp"
            count(label)
            count("reason: " + reason)
            labels.append(label)
        for i, (ts, ctx, _) in enumerate(sess):
            if ctx < 0 or ctx not in row_codes:
                continue
            cands = range(i + 1, min(i + 1 + window_plays, len(sess)) if window_plays else len(sess))
            if windows is not None:
                w = window(ts, *windows)
                inside = [j for j in cands if window(sess[j][0], *windows) == w]
                if len(inside) < len(cands):
                    count("candidates cut at a window boundary")
                cands = inside

            def first(label):
                return next((sess[j][1] for j in cands if labels[j] == label and sess[j][1] >= 0
                             and sess[j][1] != ctx and sess[j][1] in row_codes), None)

            chosen, rejected = first("chosen"), first("rejected")
            if chosen is None or rejected is None:
                count("dropped: no chosen and rejected play after the context")
            elif chosen == rejected:
                count("dropped: chosen and rejected are the same track")
            else:
                pair = (ctx, chosen, rejected, ts)
                if history:
                    pair += (tuple([r for _, r, _ in sess[:i + 1] if r >= 0 and r in row_codes][-history:]),)
                if rejected_per_context > 1:
                    more = []
                    for j in cands:
                        r = sess[j][1]
                        if labels[j] == "rejected" and r >= 0 and r in row_codes \
                                and r not in (ctx, chosen, rejected) and r not in more:
                            more.append(r)
                    pair += (tuple(more[:rejected_per_context - 1]),)
                out.append(pair)
    return out


PARTITIONS: int = 64            # hash partitions of the pair stream: dedupe holds one partition in memory


def mine_prefs(log, catalog, row_codes, rule, args, t_val, t_test, n_hist, context_text, id_information,
               id_metadata, stats, counts):
    """`data.py prefs`' mining, one user at a time: pairs, deduplicated, capped, written to OUT/{train,val,test}.jsonl.

    Bounded memory at any log size: pairs stream into PARTITIONS temporary files by a hash of
    (context, chosen, rejected); each partition is then deduplicated on its own, and capped splits keep a
    uniform reservoir sample. Memory holds one user's plays, one partition and the caps, never the log.
    Returns the training-window labels per track (plays, long, skip), sessions, plays of tracks without a
    duration, pairs seen per window before the caps, and the mining's seconds; stats and counts are filled in.
    fastprefs.mine_prefs does the same on arrays and writes the same bytes.
    """
    n = len(catalog)
    durations = (catalog.duration_ms / 1000.0).tolist()   # seconds, 0 = unknown
    # training-window labelled plays per track, for the preference baselines of evaluate.py
    plays, long, skips = (np.zeros(n, dtype=np.int64) for _ in range(3))
    n_sessions = unknown_duration = 0
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".partitions.", dir=args.out)
    try:
        parts = [open(os.path.join(tmp_dir, f"{b}.tsv"), "w", encoding="utf-8") for b in range(PARTITIONS)]
        plays_iter = iter_user_plays(log, catalog, id_information=id_information, id_metadata=id_metadata,
                                     stats=stats, resolution=args.resolution or None)
        for user, user_plays in tqdm(plays_iter, desc="mining pairs", unit=" users", disable=None):
            resolution = stats["resolution_s"]   # known before the first user arrives
            sess = sessions_of(user_plays, catalog, args.session_gap, resolution)
            n_sessions += len(sess)
            for ts, row, dwell in (p for ss in sess for p in ss):   # per-track labels of the training window
                unknown_duration += row >= 0 and durations[row] == 0
                if row >= 0 and dwell is not None and ts < t_val:
                    label = rule.label(dwell, durations[row], resolution)[0]
                    plays[row] += 1
                    long[row] += label == "chosen"
                    skips[row] += label == "rejected"
            for ctx, ch, rj, ts, hist, *more in mine_pairs(sess, row_codes, rule, args.window_plays, counts,
                                                           windows=(t_val, t_test), history=n_hist,
                                                           durations=durations, resolution=resolution,
                                                           rejected_per_context=args.rejected_per_context):
                key = (ctx * n + ch) * n + rj
                pair = {"prompt": next_track_prompt(catalog, hist, row_codes, n_history=n_hist,
                                                    context_text=context_text),
                        "chosen": id_text(row_codes[ch]), "rejected": id_text(row_codes[rj]),
                        "context_track": catalog.track_id[ctx], "chosen_track": catalog.track_id[ch],
                        "rejected_track": catalog.track_id[rj], "user": user, "time": format_ts(ts)}
                if more:   # S-DPO's further rejected answers; "rejected" stays the one pairwise accuracy uses
                    pair["more_rejected"] = [id_text(row_codes[r]) for r in more[0]]
                line = json.dumps(pair, ensure_ascii=False)
                parts[key % PARTITIONS].write(f"{key}\t{window(ts, t_val, t_test)}\t{line}\n")
        for f in parts:
            f.close()
        mined = time.time() - t0
        caps = {"train": args.max_train, "val": args.max_val, "test": args.max_test}
        rngs = streams(args.seed, 3, caps)   # a stream per window: the test pairs stay put when --max-train changes
        keep = {w: Reservoir(caps[w], rngs[w]) for w in caps}
        with contextlib.ExitStack() as stack:
            outs = {w: stack.enter_context(atomic_open(os.path.join(args.out, f"{w}.jsonl"), "w", encoding="utf-8"))
                    for w in caps}
            for b in range(PARTITIONS):   # the first occurrence of each (context, chosen, rejected) is kept
                seen = set()
                with open(os.path.join(tmp_dir, f"{b}.tsv"), encoding="utf-8") as f:
                    for line in f:
                        key, w, js = line.split("\t", 2)
                        if key in seen:
                            counts["dropped: duplicate pair"] = counts.get("dropped: duplicate pair", 0) + 1
                            continue
                        seen.add(key)
                        if caps[w]:
                            keep[w].add(js)
                        else:
                            keep[w].seen += 1
                            outs[w].write(js)
            for w in caps:
                if caps[w]:
                    outs[w].writelines(keep[w].sample())
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return {"plays": plays, "long": long, "skip": skips, "sessions": n_sessions, "unknown_duration": unknown_duration,
            "seen": {w: keep[w].seen for w in caps}, "mined": mined}
