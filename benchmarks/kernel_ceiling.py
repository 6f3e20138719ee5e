"""What learned rankers of the content baselines' own forms reach on next tracks, fitted to the training window's next
plays by likelihood, as SFT is fitted (validation window).

    python benchmarks/kernel_ceiling.py --run runs/demo [--queries 1000] [--out runs/demo/kernel_ceiling.json]

content x popularity, the strongest next-track baseline but one of the test windows (evaluate.py), ranks every
track t after a context c by

    s(c, t) = G [genre t = genre c] + log(1 + plays_t) - ||x_t - x_c||^2 / tau,     G -> infinity        (1)

with one number learned from the logs: the width tau, chosen on validation HR@10. A model that reads the context's
features (`sft.py --track-vectors`) and is trained on the same next plays has what (1) reads. Here is (1) with all of
its numbers learned, the way SFT learns, by softmax cross-entropy over the catalogue on the training window's next
plays (RUN/sft_data/train.jsonl's next_track examples, each (context, next) once):

    s(c, t) = g [genre t = genre c] + b_t - ||A (x_t - x_c)||^2,   softmax over t                        (2)

g a number, b (N,) one bias per track, A (D, D) a metric of the features (kernel_scores), started at (1) itself
(A = I / sqrt(tau), b = log(1 + plays), g = START_GENRE: before its first step it ranks as content x popularity) and
trained by Adam. And a second form that reads the same features another way, by how near t is among the context's
genre rather than how far:

    s(c, t) = g [genre t = genre c] + b_t + w[r_c(t)],   softmax over t                                  (3)

r_c(t) the rank of t among the other tracks of c's genre by ||x_t - x_c|| (1 the nearest), every rank past 40
one bucket and every other genre one more; w[1] .. w[42] learned, 0 at the start (then (3) ranks as genre
popularity), b and g as in (2) (baselines.NeighbourRanks). And (3) with the context's co-listening,
lam log(1 + n_ct), n_ct the training window's co-listens of t with c, as content x co-listening adds it to (1) (its
width and power chosen on the same --select plays); evaluate.py ranks the test queries by (4) too (baselines.
fit_neighbour_ranks: its row "neighbour ranks x co-listening", one epoch kept by the validation likelihood):

    s(c, t) = g [genre t = genre c] + b_t + w[r_c(t)] + lam log(1 + n_ct)                                 (4)

lam learned, 0 at the start. For each form two of its epochs are kept, both chosen on --select validation
plays that are not among the queries: "best likelihood" (the lowest cross-entropy there: sft.py's rule, which keeps
the weights of its best validation loss) and "best HR@10" (what content x popularity's tau is chosen by). The
--queries are val_next.py's draw (its first 200 are val_next.py --queries 200's), so `--llm FILE:ROW` pairs an
adapter's row of an earlier `val_next.py --out` with these.

What it tells: whether the next plays of the training window teach a model of the baseline's form, with every number
free and trained by SFT's objective to convergence, to rank better than the baseline's one chosen number does; and
(3), whether a form nearer the world's own (world.py draws 55% of next plays from the context's 20 nearest audio
neighbours in its genre, popularity-weighted) gets further from the same plays. Each is one ranker, not a proof.
On the demo's three worlds (1,000 queries each; EXPERIMENTS.md, "What the logs teach a ranker of the baseline's own
form"): (2) ties content x popularity on HR@10, (4) ties content x co-listening on HR@10 and passes it on NDCG@10.
"""
import argparse
import os

import numpy as np
import torch

import harness  # noqa: F401  first: it puts the repository root on sys.path for the imports below
import baselines as B
import evaluate as E
import metrics
import rvq
import signals
import sft
import val_next
from baselines import NeighbourRanks, fit_epochs, next_loss
from common import UserError, read_json, run_main, write_json
from id_ceiling import hits_of, llm_hits, train_next_pairs

# -----------------------------------------------------------------------------
RUN: str = "runs/demo"        # a pipeline run folder: its sft_data, rvq and prefs
QUERIES: int = 1000           # validation next-track queries (val_next.py's draw: its first 200 are its 200)
SELECT: int = 500             # other validation plays the width, the two epochs are chosen on
SEED: int = 0                 # the draw of the queries, the shuffling of the examples, the bootstrap
K: int = 10                   # HR@K, NDCG@K
EPOCHS: int = 30              # epochs of Adam at most (on the demo's three worlds the best likelihood came at
                              # epochs 20-23 for the kernel, 5-6 for the neighbour ranks)
LR: float = 0.02              # Adam's rate (a few thousand numbers, 65 steps an epoch)
BATCH: int = 256              # training plays per step
START_GENRE: float = B.RANKER_START_GENRE   # g at the start: the genre first, as (1) ranks (20: no in-genre
                                            # score falls 20 below)
FEATURES: str = "audio"       # audio: content x popularity's features; vectors: the quantiser's (--track-vectors')
# the rows of the forms: "learned FORM (best likelihood)", "learned FORM (best HR@10)"
FORMS = ("kernel", "neighbour ranks", "neighbour ranks x co-listening")
# -----------------------------------------------------------------------------


def kernel_scores(z, ctx, bias, genre_gain, same_genre):
    """Eq. (2) for a batch of contexts: (B, N) scores g [same genre] + b_t - ||z_t - z_c||^2.

    z (N, r) the features after the metric, z = x A^T; ctx (B,) context rows; bias (N,); genre_gain a 0-dim tensor;
    same_genre (B, N) 0/1, the context's genre row. Example: z [[0], [1], [3]], context 0, b [0, 0, 2], g 1, every
    track one genre: [1 - 0, 1 - 1, 1 + 2 - 9] = [1, 0, -6].
    """
    d = ((z[None, :, :] - z[ctx][:, None, :]) ** 2).sum(-1)             # (B, N) squared distances
    return genre_gain * same_genre + bias[None, :] - d


class LearnedKernel(torch.nn.Module):
    """content x popularity with its numbers learned: eq. (2), started at eq. (1) (module docstring)."""

    def __init__(self, x, popularity, in_genre, tau, start_genre=START_GENRE):
        super().__init__()
        self.register_buffer("x", torch.as_tensor(x, dtype=torch.float32))                   # (N, D)
        self.register_buffer("in_genre", torch.as_tensor(in_genre, dtype=torch.float32))     # (N, N) row c: c's genre
        D = self.x.shape[1]
        self.A = torch.nn.Parameter(torch.eye(D) / tau ** 0.5)        # ||A (x_t - x_c)||^2 = ||x_t - x_c||^2 / tau
        self.b = torch.nn.Parameter(torch.as_tensor(np.log1p(popularity), dtype=torch.float32))
        self.g = torch.nn.Parameter(torch.tensor(float(start_genre)))

    def forward(self, ctx):
        """ctx (B,) context rows -> (B, N) scores; the context itself is left in (the rankers exclude it)."""
        return kernel_scores(self.x @ self.A.T, ctx, self.b, self.g, self.in_genre[ctx])


def features_of(kind, catalog, meta, code_row):
    """(N, D) float features of every catalogue row: content x popularity's (audio) or the quantiser's input
    vectors that `sft.py --track-vectors` feeds the model (vectors)."""
    if kind == "audio":
        return signals.preprocess(catalog.features, rvq.load_rvq(meta["rvq"])["params"])
    vectors, codes = sft.track_vectors_of(meta)
    x = np.zeros((len(catalog), vectors.shape[1]), dtype=np.float64)
    for v, cs in zip(vectors, codes.tolist()):
        x[code_row[tuple(cs)]] = v
    return x


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=RUN, help="run folder whose sft_data, rvq and prefs to use")
    p.add_argument("--queries", type=int, default=QUERIES,
                   help="validation next-track queries (val_next.py's draw of the same --seed: its first 200 are "
                        "val_next.py --queries 200's); 1,000 by default, as 200 leave intervals of +-0.05")
    p.add_argument("--select", type=int, default=SELECT,
                   help="validation plays not among the queries on which the widths, the power and the kept epochs "
                        "are chosen (default %(default)s, as val_next.py's baselines)")
    p.add_argument("--features", choices=("audio", "vectors"), default=FEATURES,
                   help="the features the forms read: audio, content x popularity's own (so that (2) starts at it); "
                        "vectors, the quantiser's input (audio, genre, co-listening, long-listen rate) that "
                        "`sft.py --track-vectors` feeds the model, its width chosen the same way (default %(default)s)")
    p.add_argument("--epochs", type=int, default=EPOCHS,
                   help="epochs of Adam, every one kept to choose from (default %(default)s: the kernel's likelihood "
                        "levels off by 20-23 on the demo's worlds)")
    p.add_argument("--lr", type=float, default=LR,
                   help="Adam's learning rate (default %(default)s: a few thousand numbers, 65 steps an epoch)")
    p.add_argument("--seed", type=int, default=SEED, help="draw of the queries, order of the examples, bootstrap")
    p.add_argument("--llm", action="append", default=[], metavar="FILE:ROW",
                   help="an adapter's row of an earlier val_next.py --out on the same --run, --queries and --seed, "
                        "checked before any fitting, shown beside the rankers and paired with both content rankers "
                        "(repeat)")
    p.add_argument("--out", default=None, help="JSON of the per-query hits, the table and the epochs' trace")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.select < 1:
        raise UserError("--epochs and --select must be at least 1")
    torch.manual_seed(args.seed)
    sft_data = os.path.join(args.run, "sft_data")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    catalog, index, C, code_row = val_next.catalogue_codes(meta)
    n_items = len(catalog)
    queries, others = val_next.val_queries(sft_data, args.queries, args.seed, code_row, rest=True)
    queries = [(h, r) for _, h, r in queries]
    select = [(h, r) for _, h, r in others[:args.select]]
    if not select:
        raise UserError(f"{sft_data}/val.jsonl: no validation plays left beside the {len(queries)} queries to choose "
                        "on; lower --queries")
    pairs = train_next_pairs(sft_data, code_row)
    popularity, cooc, _ = E.load_listening(sft_data, os.path.join(args.run, "prefs"), n_items)
    genres = B.genre_masks(catalog.genres)
    in_genre = np.stack([genres[g[0]] for g in catalog.genres])                 # (N, N)
    x = features_of(args.features, catalog, meta, code_row)
    print(f"{len(pairs):,} training next plays, {len(queries)} validation queries, {len(select)} other validation "
          f"plays to choose on; {args.features} features of {x.shape[1]} dimensions")

    # the two rows that read no features (val_next.py's: --llm checks its file's queries by them)
    hits = {"genre popularity": hits_of(lambda i, h: B.genre_popularity_scores(popularity, in_genre[h[-1]]), queries),
            "item kNN": hits_of(lambda i, h: B.item_knn_scores(cooc, popularity, h[-1]), queries)}
    tau, _ = B.select_tau(x, popularity, [(h[-1], {r}) for h, r in select], lambda c: in_genre[c])
    cp = val_next.CONTENT_POP if args.features == "audio" else f"{val_next.CONTENT_POP} (vectors)"
    hits[cp] = hits_of(lambda i, h: B.content_popularity_scores(x, h[-1], popularity, in_genre[h[-1]], tau), queries)
    colisten = np.stack([B.colisten_counts(cooc, c, n_items) for c in range(n_items)])     # (N, N) n_ct
    (tau_co, lam), _ = B.select_tau_lambda(x, popularity, cooc, [(h[-1], {r}) for h, r in select],
                                           lambda c: in_genre[c])
    co = val_next.CONTENT_CO if args.features == "audio" else f"{val_next.CONTENT_CO} (vectors)"
    hits[co] = hits_of(lambda i, h: B.content_colisten_scores(x, h[-1], popularity, colisten[h[-1]], in_genre[h[-1]],
                                                              tau_co, lam), queries)

    # the adapters' rows now, before minutes of fitting: a file of other queries stops here (checked by the two rows
    # above that read no features)
    llm_rows = {spec.rpartition(":")[2]: llm_hits(spec, hits) for spec in args.llm}
    llms = list(llm_rows)
    ctx = torch.tensor([h[-1] for h, _ in pairs])
    nxt = torch.tensor([r for _, r in pairs])
    sel_ctx = torch.tensor([h[-1] for h, _ in select])
    sel_nxt = torch.tensor([r for _, r in select])
    q_ctx = torch.tensor([h[-1] for h, _ in queries])

    @torch.no_grad()
    def on_select(model):    # each epoch: (HR@K, cross-entropy) of the other validation plays
        s = model(sel_ctx)                  # once for both measures
        hr = float(np.mean(hits_of(lambda i, h: s[i].double().numpy(), select)["hit"]))
        return hr, float(next_loss(s, sel_ctx, sel_nxt))

    start, trace, kept, rows = {}, {}, {}, []
    build = (lambda: LearnedKernel(x, popularity, in_genre, tau), lambda: NeighbourRanks(x, popularity, in_genre),
             lambda: NeighbourRanks(x, popularity, in_genre, colisten=colisten))
    for form, make in zip(FORMS, build):     # one model at a time: each holds (N, N) tables
        m = make()
        start[form] = on_select(m)
        trace[form], states = fit_epochs(m, len(pairs), lambda i: next_loss(m(ctx[i]), ctx[i], nxt[i]), on_select,
                                         args.epochs, args.lr, BATCH, args.seed)
        for rule, key in (("best likelihood", lambda e: -trace[form][e][1]),
                          ("best HR@10", lambda e: trace[form][e][0])):
            best = max(trace[form], key=key)                         # ties: the first such epoch
            m.load_state_dict(states[best], strict=False)
            name = f"learned {form} ({rule})"
            kept[name] = {"epoch": best, "select_hit": trace[form][best][0], "select_loss": trace[form][best][1],
                          "genre_gain": float(m.g.detach())}
            with torch.no_grad():
                S = m(q_ctx).double().numpy()
            hits[name] = hits_of(lambda i, h: S[i], queries)
            rows.append(name)
    hits.update(llm_rows)                   # after the rankers: the table's order

    print(f"\nthe other {len(select)} validation plays by epoch (HR@{K}, cross-entropy); epoch 0 is the start: "
          f"{cp} for the kernel (width {tau:g}, g {START_GENRE:g}), genre popularity for the ranks")
    for form, t in trace.items():
        print(f"  {form}: 0 {start[form][0]:.3f}, {start[form][1]:.3f}; "
              + "; ".join(f"{e} {v[0]:.3f}, {v[1]:.3f}" for e, v in t.items()))
    for name, k in kept.items():
        print(f"  {name}: epoch {k['epoch']}, HR@{K} {k['select_hit']:.3f}, cross-entropy {k['select_loss']:.3f}, "
              f"g {k['genre_gain']:.2f}")
    table = {n: {f"{met}@{K}": metrics.bootstrap_ci(h[met], seed=args.seed) for met in ("hit", "ndcg")}
             for n, h in hits.items()}
    print(f"\n{'validation, ' + str(len(queries)) + ' queries':57s} {'HR@10':>22s} {'NDCG@10':>22s}")
    for n, t in table.items():
        print(f"{n:57s} " + " ".join(f"{t[met][0]:.3f} [{t[met][1]:.3f}, {t[met][2]:.3f}]"
                                     for met in (f"hit@{K}", f"ndcg@{K}")))
    paired = {}
    print(f"\npaired against the two content rankers (95% interval)")
    for n in (*rows, *llms):
        for bar in (cp, co):
            d = {met: metrics.paired_bootstrap(hits[n][met], hits[bar][met], seed=args.seed) for met in ("hit", "ndcg")}
            for met, v in d.items():
                paired[f"{n} - {bar} ({met}@{K})"] = v
            cells = [f"{'HR' if met == 'hit' else 'NDCG'}@{K} {v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"
                     for met, v in d.items()]
            print(f"  {n} - {bar}: " + ", ".join(cells))
    if args.out:
        write_json(args.out, {"queries": len(queries), "select": len(select), "seed": args.seed, "options": vars(args),
                              "width": tau, "colisten_width_power": [tau_co, lam], "start": start, "trace": trace,
                              "kept": kept, "hits": hits, "table": table, "paired": paired})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
