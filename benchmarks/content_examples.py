"""Add next-track examples drawn from the audio features to a copy of the SFT data: does the model then read its
context track's ID?

    python benchmarks/content_examples.py --sft-data runs/demo/sft_data --out runs/levers/kernel/sft_data \\
        --examples 8000 --mode kernel
    python sft.py --data runs/levers/kernel/sft_data --out runs/levers/kernel/sft ...   # the demo's options
    python benchmarks/val_next.py --run runs/demo --swap-context --adapter SFT=runs/demo/sft/adapter \\
        --adapter kernel=runs/levers/kernel/sft/adapter

SFT ranks next tracks as genre popularity does, and keeps 94-96% of its top 10 when the prompt's context ID is
swapped for another track of the genre (`val_next.py --swap-context`): it reads the genre word, hardly the ID. The
logs' next plays, about 3 per track, may be too few to teach what an ID says; the catalogue's audio features say it
for every track. Each added example asks a next-track prompt of a context track (every track with an ID in turn)
and answers with another track of its primary genre, drawn:
  kernel   as content x popularity ranks (evaluate.py's strongest next-track baseline, the same information):
           P(j | c) proportional to (1 + plays_j) exp(-||x_j - x_c||^2 / tau) over the genre, in the prompts and
           phrasings of the next-track examples (tasks.NEXT_TEMPLATES); tau chosen on the validation window's next
           plays (baselines.select_tau), never the test's
  sounds   uniformly among its 10 nearest tracks of the genre in audio, in a prompt of its own ("Tracks that sound
           like (genre) <ID>"): the ID alone tells the answer, popularity does not
And whether a model learnt the `sounds` task (--check ADAPTER --sft-data RUN/sft_data): --check-tracks tracks drawn
at random, each asked in the sounds prompt, the model's exact top 10 (the context excluded) scored by the share of
the context's 10 nearest tracks of its genre in it, then the same with the context's ID swapped for another track of
the genre (val_next.swap_context) and the share of the top 10 that stays. A model that reads the ID finds the
neighbours and changes its list with the ID; 10 of a genre's 99 other tracks at random find 0.10.
The other files are copied as they are (meta.json, val.jsonl, the test sets), so val_next.py ranks the same
validation queries; the added examples are marked "task": "content" (EXPERIMENTS.md, "SFT reads the genre, not the ID").
"""
import argparse
import os
import shutil

import numpy as np

import harness  # noqa: F401  (first: it puts the repository root on sys.path for the imports below)
import baselines as B
import evaluate as E
import formats
import rvq
import signals
import tasks
from common import UserError, atomic_open, jsonl, need_file, read_json, run_main
from val_next import BASELINE_CHOICE, genre_rows_of

# -----------------------------------------------------------------------------
EXAMPLES: int = 8000     # added examples: 4 per track of a 2,000-track world, some 40% of the demo's training set
MODE: str = "kernel"     # how the answer is drawn (MODES)
NEIGHBOURS: int = 10     # sounds: the answer is one of this many nearest tracks of the genre
SEED: int = 0            # the draw of the answers and of the merged order
MODEL: str = "models/smollm2-135m-l15"   # --check: the base the adapter was trained on (the demo's)
CHECK_TRACKS: int = 120  # --check: sounds prompts asked
# -----------------------------------------------------------------------------
MODES = ("kernel", "sounds")
SOUNDS_TEMPLATE = "Tracks that sound like {track}"


def kernel_probs(x, popularity, ctx, candidates, tau):
    """P(j | ctx) over candidates, proportional to (1 + plays_j) exp(-||x_j - x_ctx||^2 / tau): (C,), summing to 1.

    content_popularity_scores' ranking as a distribution (its score is this log-probability plus a constant).
    x: (N, D) features; popularity: (N,); candidates: (C,) rows. Example: x [[0], [1], [2]], plays [0, 9, 99],
    context 0, candidates [1, 2], tau 4: weights 10 e^(-1/4) = 7.79 and 100 e^(-1) = 36.8 -> [0.175, 0.825].
    """
    s = np.log1p(popularity[candidates]) + B.content_knn_scores(x, ctx)[candidates] / tau
    p = np.exp(s - s.max())   # shifted so the largest weight is exp(0) = 1: no overflow at a small tau
    return p / p.sum()


def nearest_in_genre(x, ctx, candidates, k):
    """The k candidates nearest to ctx in feature space, nearest first (ties by row): (min(k, C),) rows."""
    d2 = -B.content_knn_scores(x, ctx)[candidates]
    return candidates[np.lexsort((candidates, d2))[:k]]


def content_examples(catalog, row_codes, x, popularity, n, mode, tau=None, k=NEIGHBOURS, context_text="genre",
                     seed=SEED):
    """n examples as JSON lines: context tracks in turn (every track with an ID, by row), each answered by another
    track of its primary genre drawn by `mode` (kernel_probs with tau, or uniform among nearest_in_genre's k).
    A context alone in its genre is passed over. Returns a list of str."""
    rng = np.random.default_rng([seed, 3])
    genre_rows = genre_rows_of(catalog, row_codes)
    contexts = [r for r in sorted(row_codes) if len(genre_rows[catalog.genres[r][0]]) > 1]
    if not contexts:
        raise UserError("no genre holds two tracks with IDs: no content example can be drawn")
    out = []
    for i in range(n):
        c = contexts[i % len(contexts)]
        cand = np.array([r for r in genre_rows[catalog.genres[c][0]] if r != c])
        if mode == "kernel":
            a = int(rng.choice(cand, p=kernel_probs(x, popularity, c, cand, tau)))
            template = tasks.NEXT_TEMPLATES[int(rng.integers(len(tasks.NEXT_TEMPLATES)))]
            prompt = tasks.next_track_prompt(catalog, [c], row_codes, template, 1, context_text)
        else:
            a = int(rng.choice(nearest_in_genre(x, c, cand, k)))
            prompt = SOUNDS_TEMPLATE.format(track=f"({catalog.genres[c][0]}) {formats.id_text(row_codes[c])}")
        out.append(jsonl({"prompt": prompt, "answer": formats.id_text(row_codes[a]), "task": "content",
                          "track_id": catalog.track_id[a]}))
    return out


def check(args, catalog, row_codes, x, meta):
    """--check: the sounds prompts' P@10 of the nearest tracks, with the true and a swapped context ID."""
    import torch

    import lora
    import model as M
    import ranking
    from val_next import swap_context, top_overlap
    code_row = {tuple(int(c) for c in cs): r for r, cs in row_codes.items()}
    genre_rows = genre_rows_of(catalog, row_codes)
    rng = np.random.default_rng([args.seed, 5])
    ctxs = [int(r) for r in rng.choice(sorted(row_codes), min(args.check_tracks, len(row_codes)), replace=False)]
    prompts = [SOUNDS_TEMPLATE.format(track=f"({catalog.genres[c][0]}) {formats.id_text(row_codes[c])}") for c in ctxs]
    swapped, swapped_rows = swap_context(prompts, ctxs, row_codes, genre_rows, lambda r: catalog.genres[r][0],
                                         args.seed)
    model, tok, vocab = M.load_policy(args.model, adapter=args.check, id_table_sha=meta["id_table_sha256"])
    lora.merge_lora(model)
    fmt, trie = M.PromptFormat(tok, vocab), ranking.IDTrie(list(code_row), meta["levels"])
    with torch.no_grad():
        tops = [ranking.exact_top_k(model, [fmt.prompt(p) for p in ps], vocab, trie, args.neighbours + 2)
                for ps in (prompts, swapped)]
    found, found_swapped, kept = [], [], []
    for i, (c, o) in enumerate(zip(ctxs, swapped_rows)):
        cand = np.array([r for r in genre_rows[catalog.genres[c][0]] if r != c])
        near = set(nearest_in_genre(x, c, cand, args.neighbours).tolist())
        a, b = ([code_row[cs] for cs, _ in t[i] if code_row[cs] not in (c, o)][:args.neighbours] for t in tops)
        found.append(len(near & set(a)) / args.neighbours)
        found_swapped.append(len(near & set(b)) / args.neighbours)
        kept.append(top_overlap(a, b, args.neighbours))
    print(f"{args.check}: sounds prompts of {len(ctxs)} tracks: the {args.neighbours} nearest of the genre in its top "
          f"{args.neighbours} {np.mean(found):.3f}; with the context ID swapped {np.mean(found_swapped):.3f}; top "
          f"{args.neighbours} kept {np.mean(kept):.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sft-data", required=True, help="the `data.py sft` folder to copy")
    p.add_argument("--out", default=None, help="the new SFT data folder (must not exist)")
    p.add_argument("--examples", type=int, default=EXAMPLES, help="examples to add (4 per track by default)")
    p.add_argument("--mode", choices=MODES, default=MODE,
                   help="kernel: answers drawn as content x popularity ranks, in next-track prompts; sounds: one of "
                        "the nearest tracks in audio, in a prompt of its own")
    p.add_argument("--neighbours", type=int, default=NEIGHBOURS, help="sounds: how many nearest tracks to draw from")
    p.add_argument("--seed", type=int, default=SEED, help="draw of the answers and of the merged order")
    p.add_argument("--check", default=None, metavar="ADAPTER",
                   help="instead of writing examples: how well this adapter answers the sounds prompts (see above)")
    p.add_argument("--model", default=MODEL, help="--check: the base model the adapter was trained on")
    p.add_argument("--check-tracks", type=int, default=CHECK_TRACKS, help="--check: sounds prompts asked")
    args = p.parse_args(argv)
    if args.check is None and args.out is None:
        raise UserError("--out is required (or --check ADAPTER)")
    if args.out and os.path.exists(args.out):
        raise UserError(f"{args.out} exists: give a new folder")
    if args.examples < 1 or args.neighbours < 1:
        raise UserError("--examples and --neighbours must be at least 1")
    meta = read_json(os.path.join(args.sft_data, "meta.json"), "SFT data meta.json")
    catalog, _ = formats.load_catalog(meta["catalog"])
    track_ids, codes = formats.load_semantic_ids(meta["semantic_ids"])
    row_codes = formats.row_codes_of(catalog, track_ids, codes)
    stats = os.path.join(args.sft_data, "listening_stats.npz")
    need_file(stats, "listening statistics (data.py sft)")
    popularity = np.load(stats)["popularity"].astype(np.float64)
    x = signals.preprocess(catalog.features, rvq.load_rvq(meta["rvq"])["params"])
    if args.check:
        return check(args, catalog, row_codes, x, meta)
    tau = None
    if args.mode == "kernel":   # content x popularity's choice of the width, on the validation window's next plays
        code_row = {tuple(int(c) for c in cs): r for r, cs in row_codes.items()}
        genres = B.genre_masks(catalog.genres)
        # the first 500, as evaluate.py chose until 2026-12-06, so that EXPERIMENTS.md's figures reproduce
        val_q = E.baseline_choice_queries(args.sft_data, code_row, BASELINE_CHOICE)
        tau, _ = B.select_tau(x, popularity, val_q, lambda c: genres[catalog.genres[c][0]])
    added = content_examples(catalog, row_codes, x, popularity, args.examples, args.mode, tau, args.neighbours,
                             meta.get("context_text", "genre"), args.seed)
    train = open(os.path.join(args.sft_data, "train.jsonl"), encoding="utf-8").readlines()
    merged = train + added
    order = np.random.default_rng([args.seed, 4]).permutation(len(merged))   # mix the families, as data.py does
    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(args.sft_data, tmp)
    with atomic_open(os.path.join(tmp, "train.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(merged[i] for i in order)
    os.replace(tmp, args.out)   # the folder appears whole, or not at all
    print(f"{args.out}: {len(train):,} training examples + {len(added):,} {args.mode} examples"
          + (f" (kernel width {tau:g}, chosen on the validation window)" if tau is not None else ""))


if __name__ == "__main__":
    run_main(main)
