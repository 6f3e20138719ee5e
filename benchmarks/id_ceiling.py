"""How far rankers that read only Semantic IDs get on next tracks, preferences and requests (validation window).

    python benchmarks/id_ceiling.py --run runs/demo [--queries 1000] [--out runs/demo/id_ceiling.json]

A next-track prompt gives the SFT model the context track's genre word and Semantic ID, nothing else of it; the
genre is the ID's first code (genre purity 1.0 at level 1, rvq.py's quality sheet). Whatever it learns, it ranks
from what those codes say, learned from the training examples it is given (RUN/sft_data/train.jsonl's next_track
examples). Two rankers of that kind, fitted in seconds to the same examples, show how far reading the codes goes:

  ID n-gram        counts: sum over l of w_l P(a_1..a_l | c_1..c_l) P(t | a_1..a_l), the answer t's ID prefix a
                   given the context's prefix c, then popularity within the prefix; l = L is the context track's
                   own next plays (item memory). The weights w are chosen on other validation examples.
  ID factorised    softmax over the catalogue of <u(c), v(t)> + log popularity(t), u and v each a sum of one
                   learned vector per ID prefix (c_1, c_1 c_2, ..., the whole ID), trained by Adam on the training
                   examples; the epoch chosen on other validation examples. A neural model that reads the codes
                   and nothing else, trained to convergence. Where the prompts show earlier plays (data.py sft
                   --prompt-history), it reads them too: u = sum_j a_j u(p_j), weights a learned.

Beside them, on the same queries: genre popularity, item kNN and content x popularity (evaluate.py's, the
strongest next-track baseline of the test windows: the context's genre, then popularity times a Gaussian kernel
over the audio features, which the IDs hold only as codes), each ranker minus content x popularity paired.
If both stay below content x popularity, a model given the same prompt has to read its codes better than
both to pass it, however long it trains (they are two rankers, not a proof).

Preferences too (--pairs, default RUN/prefs/val.jsonl; `data.py prefs --max-val 3000 --out ELSEWHERE` writes more):
a held-out pair is won by the score that ranks its chosen track above its rejected one. The long-listen rate (the
strongest preference baseline, evaluate.py's) scores each track by its own training-window plays; ID logistic
scores it by its codes alone, P(long listen | c_1..c_L) = s(sum_l w_l[c_l] + b), a logistic regression of the same
plays on one 0/1 column per (level, code) (baselines.audio_logistic_from_plays with codes for features): how much of
a track's listening quality its ID carries, additively, as a policy's summed log-probs of the ID's tokens would.
"ID logistic (DPO's pairs)" is the same regression fitted on DPO's data alone (the training pairs its steps drew, a
chosen answer as a long listen, a rejected one as a skip): what those pairs teach a score of this form.
Attribute requests too (--attribute-queries, val_next.py's draw of validation requests, every track with the
requested attributes relevant): MiniLM, the strongest attribute baseline (evaluate.py's: it reads each track's
description, the genre and attribute phrases that hold for it), and two rankers that read a track's Semantic ID and
the request's attributes and nothing else (IDRequests: a product over the requested attributes of a learned score
of the ID's prefixes), fitted to what SFT is given: the training attribute examples, one answer each ("ID requests
(examples)"), or the same requests with every track that answers them ("ID requests (answer sets)"). How far the IDs
take a model that learns requests from those examples, beside the words MiniLM reads.
The --out JSON has val_next.py's layout: `val_next.py --pair FILE:"ID factorised" VAL.json:SFT` pairs a row with
an adapter's, on the same --run, --queries and --seed (and --pairs, for "ID logistic" against an adapter's accuracy).
"""
import argparse
import collections
import itertools
import json
import os

import numpy as np
import torch

import harness  # first: it puts the repository root on sys.path for the imports below
import baselines as B
import evaluate as E
import metrics
import rvq
import signals
import tasks
import val_next
from common import UserError, need_file, read_json, run_main, write_json

# -----------------------------------------------------------------------------
RUN: str = "runs/demo"       # a pipeline run folder: its sft_data, rvq and prefs
QUERIES: int = 1000          # validation next-track queries (val_next.py's draw: its first 200 are its 200)
SEED: int = 0                # the draw of the queries, the factorised model's initialisation, the bootstrap
K: int = 10                  # HR@K, NDCG@K
DIM: int = 32                # width of the factorised model's prefix vectors
EPOCHS: int = 20             # factorised model: epochs at most (the best on the held-out examples is kept)
LR: float = 3e-3             # factorised model: Adam's learning rate
BATCH: int = 256             # factorised model: training examples per step
SELECT: int = 500            # other validation examples the n-gram weights and the epoch are chosen on
HISTORY: int = 0             # plays the factorised model reads; 0: those the prompts show (sft_data meta)
COUNT_EDGES = (5, 10, 20)    # queries split by how often their context was a training context: 0-4, 5-9, 10-19, 20+
WEIGHT_GRID: int = 4         # n-gram weights: every (w_1..w_L) of multiples of 1 / WEIGHT_GRID summing to 1
ATTRIBUTE_QUERIES: int = 120  # validation attribute requests: val_next.py's draw of the same --seed and phrasings
                              # (120, as the test set of the README's run); 0: no attribute rows
ATTRIBUTE_PHRASINGS: str = "train"   # val_next.py's --attribute-phrasings: the draw pairs with its rows
REQUEST_EPOCHS: int = 60      # request rankers: epochs at most (the best P@10 on the other requests is kept)
REQUEST_LR: float = 1e-2      # request rankers: Adam's rate (2,000 examples: few steps an epoch, a higher rate)
REQUEST_BATCH: int = 64       # request rankers: requests per step
# -----------------------------------------------------------------------------


DPO_PAIRS = "ID logistic (DPO's pairs)"   # ID logistic fitted on the training pairs dpo.py drew, nothing else


def train_next_pairs(sft_data, code_row):
    """[(history rows, next row)] of the training examples' next_track task, as SFT sees them (context last)."""
    return [(h, r) for _, h, r in E.val_next_examples(sft_data, code_row, name="train.jsonl")]


def prefix_keys(codes):
    """(N, L) codes -> (N, L) int: column l numbers the distinct prefixes c_1..c_(l+1), 0.., in sorted order.

    >>> prefix_keys(np.array([[0, 1], [0, 2], [1, 1]])).tolist()
    [[0, 0], [0, 1], [1, 2]]
    """
    return np.stack([np.unique(codes[:, :l + 1], axis=0, return_inverse=True)[1].reshape(-1)
                     for l in range(codes.shape[1])], 1)


def ngram_tables(keys, popularity, pairs):
    """Per level l: (transition counts {context prefix key: (P_l,) counts of the answers' prefix keys},
    (N,) P(t | its prefix) = popularity share of t within its level-l prefix)."""
    out = []
    for l in range(keys.shape[1]):
        n_pre = keys[:, l].max() + 1
        counts = {}
        for h, t in pairs:
            c = keys[h[-1], l]
            counts.setdefault(c, np.zeros(n_pre))[keys[t, l]] += 1
        within = popularity / np.bincount(keys[:, l], weights=popularity, minlength=n_pre)[keys[:, l]]
        out.append((counts, within))
    return out


def ngram_scores(keys, tables, ctx, weights, prior):
    """(N,) log of sum_l w_l P(a_l | c_l) P(t | a_l) for context row ctx; a level whose context prefix no training
    example has gives no term (the others' weights renormalised); none at all: log prior, popularity alone."""
    p, used = np.zeros(len(keys)), 0.0
    for l, ((counts, within), w) in enumerate(zip(tables, weights)):
        row = counts.get(keys[ctx, l])
        if w > 0 and row is not None:
            p += w * (row / row.sum())[keys[:, l]] * within
            used += w
    return np.log(p / used + 1e-300) if used else np.log(prior / prior.sum())


def weight_grid(levels, steps=WEIGHT_GRID):
    """Every (w_1..w_L) of multiples of 1/steps summing to 1: levels 3, steps 4 -> 15 tuples."""
    return [tuple(c / steps for c in combo) for combo in itertools.product(range(steps + 1), repeat=levels)
            if sum(combo) == steps]


class IDFactorised(torch.nn.Module):
    """score(t | plays) = <sum_j a_j u(p_j), v(t)> + b_t: u, v sums of one vector per ID prefix (levels 1..L).

    keys (N, L) prefix keys (prefix_keys); plays p_0 (the context) .. p_(H-1), most recent first, a_0 = 1 and the
    older plays' weights a_1.. learned (start 0.3: the context counts most). b starts at log popularity, so that
    step 0 ranks by popularity. history=1 reads the context alone.
    """

    def __init__(self, keys, log_popularity, dim, seed, history=1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("keys", torch.as_tensor(keys, dtype=torch.long))
        sizes = [int(keys[:, l].max()) + 1 for l in range(keys.shape[1])]
        # small random vectors: near-popularity ranking at the start, symmetric in the two roles otherwise
        self.u = torch.nn.ParameterList([torch.nn.Parameter(0.01 * torch.randn(s, dim, generator=g)) for s in sizes])
        self.v = torch.nn.ParameterList([torch.nn.Parameter(0.01 * torch.randn(s, dim, generator=g)) for s in sizes])
        self.b = torch.nn.Parameter(torch.as_tensor(log_popularity, dtype=torch.float32))
        self.older = torch.nn.Parameter(torch.full((history - 1,), 0.3))

    def embed(self, tables, rows):
        return sum(t[self.keys[rows, l]] for l, t in enumerate(tables))      # (..., dim)

    def forward(self, plays):
        """plays (B, H) rows, the context in column 0, older plays after it, -1 where a prompt has none ->
        (B, N) scores of every track."""
        a = torch.cat([torch.ones(1), self.older])[:plays.shape[1]] * (plays >= 0)       # (B, H)
        u = (a[..., None] * self.embed(self.u, plays.clamp(min=0))).sum(1)               # (B, dim)
        return u @ self.embed(self.v, torch.arange(len(self.keys))).T + self.b


def play_matrix(histories, history):
    """(B, history) long tensor of each history's last `history` plays, most recent first, -1 padded.

    >>> play_matrix([[4, 5, 6], [7]], 2).tolist()
    [[6, 5], [7, -1]]
    """
    out = torch.full((len(histories), history), -1, dtype=torch.long)
    for i, h in enumerate(histories):
        recent = list(reversed(h))[:history]
        out[i, :len(recent)] = torch.tensor(recent, dtype=torch.long)
    return out


def fit_factorised(keys, popularity, pairs, select_fn, dim=DIM, epochs=EPOCHS, lr=LR, batch=BATCH, seed=SEED,
                   history=1):
    """Train IDFactorised on (history, next) pairs by softmax cross-entropy; returns (model at the best epoch by
    select_fn(model) -> HR, {epoch: HR})."""
    torch.manual_seed(seed)
    m = IDFactorised(keys, np.log(popularity / popularity.sum()), dim, seed, history)
    plays = play_matrix([h for h, _ in pairs], history)
    nxt = torch.tensor([t for _, t in pairs])
    return fit_best_epoch(m, len(pairs), lambda i: torch.nn.functional.cross_entropy(m(plays[i]), nxt[i]),
                          select_fn, epochs, lr, batch, seed)


def fit_best_epoch(m, n, loss_fn, select_fn, epochs, lr, batch, seed):
    """Adam on loss_fn(batch indices) over n examples, reshuffled every epoch (seeded); returns (m at the epoch of
    the best select_fn(m), {epoch: select_fn's value}): the epoch is chosen on held-out examples, not these."""
    scores, states = B.fit_epochs(m, n, loss_fn, select_fn, epochs, lr, batch, seed)
    m.load_state_dict(states[max(scores, key=scores.get)], strict=False)     # ties: the first such epoch
    return m, scores


def code_onehot(codes):
    """(N, L) codes -> (N, L * K) 0/1 columns, K = the largest code + 1: column l * K + c is 1 where level l is c.

    >>> code_onehot(np.array([[0, 1], [1, 1]])).tolist()
    [[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]]
    """
    n, L = codes.shape
    K = int(codes.max()) + 1
    x = np.zeros((n, L * K))
    x[np.arange(n)[:, None], np.arange(L) * K + codes] = 1.0
    return x


def request_units(attrs):
    """A request's reading units, one per requested attribute: [["genre", "rock"], ["energy", "low"]] ->
    ['genre=rock', 'energy=low'] (a tempo: 'bpm=125'). An idealised reader of the request's words: it never
    mistakes a phrasing ("chill" and "low energy" are one unit)."""
    return [f"{a}={v}" for a, v in attrs]


def unit_matrix(requests, vocab):
    """(B, A) long tensor of the requests' unit numbers ({unit: number}), -1 padded; a unit that no training request
    had is left out too (-1): the ranker learned nothing of it.

    >>> unit_matrix([["genre=rock", "energy=low"], ["genre=jazz"], ["bpm=125"]], {"genre=rock": 0, "energy=low": 1,
    ...             "genre=jazz": 2}).tolist()
    [[0, 1], [2, -1], [-1, -1]]
    """
    out = torch.full((len(requests), max(1, max(len(r) for r in requests))), -1, dtype=torch.long)
    for i, units in enumerate(requests):
        known = [vocab[u] for u in units if u in vocab]
        out[i, :len(known)] = torch.tensor(known, dtype=torch.long)
    return out


class IDRequests(torch.nn.Module):
    """score(t | request) = sum over the request's units a of <q_a, v(t)> + b_t.

    v(t) a sum of one vector per ID prefix of t (as IDFactorised's), q_a one vector per unit (request_units). In a
    softmax over the catalogue the units multiply, p(t | rock, chill) ~ exp(<q_rock, v(t)>) exp(<q_chill, v(t)>)
    exp(b_t): a product of experts, so a track ranks high only where every requested attribute suits it, as a
    relevant track must. b starts at 0: a request's answer is drawn uniformly among the tracks that suit it, not by
    popularity (tasks.request_examples). units (B, A) from unit_matrix -> (B, N) scores of every track.
    """

    def __init__(self, keys, n_units, dim, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("keys", torch.as_tensor(keys, dtype=torch.long))
        sizes = [int(keys[:, l].max()) + 1 for l in range(keys.shape[1])]
        self.q = torch.nn.Parameter(0.01 * torch.randn(n_units, dim, generator=g))
        self.v = torch.nn.ParameterList([torch.nn.Parameter(0.01 * torch.randn(s, dim, generator=g)) for s in sizes])
        self.b = torch.nn.Parameter(torch.zeros(len(keys)))

    def forward(self, units):
        u = (self.q[units.clamp(min=0)] * (units >= 0)[..., None]).sum(1)                     # (B, dim)
        v = sum(t[self.keys[:, l]] for l, t in enumerate(self.v))                             # (N, dim)
        return u @ v.T + self.b


def fit_requests(keys, n_units, units, targets, select_fn, dim=DIM, epochs=REQUEST_EPOCHS, lr=REQUEST_LR,
                 batch=REQUEST_BATCH, seed=SEED):
    """Train IDRequests by cross-entropy against target distributions over the catalogue: units (B, A), targets
    (B, N) rows summing to 1 (one-hot: a training example's one answer; uniform over a set: every track that answers
    the request). Returns (model at the best epoch by select_fn(model), {epoch: select_fn's value})."""
    torch.manual_seed(seed)
    m = IDRequests(keys, n_units, dim, seed)
    return fit_best_epoch(m, len(units), lambda i: -(targets[i] * torch.log_softmax(m(units[i]), -1)).sum(-1).mean(),
                          select_fn, epochs, lr, batch, seed)


def attribute_examples(sft_data, name, index):
    """[(attributes, answer row)] of an SFT examples file's attribute requests (data.py sft writes both)."""
    path = os.path.join(sft_data, name)
    need_file(path, "SFT examples (data.py sft)")
    out = []
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        r = json.loads(line) if line.strip() else {}
        if r.get("task") == "attributes":
            if "attributes" not in r or r.get("track_id") not in index:
                raise UserError(f"{path}, line {n}: an attribute request without its attributes or a catalogue "
                                "track_id: rebuild the SFT data")
            out.append((r["attributes"], index[r["track_id"]]))
    return out


def precision_of(score_fn, queries):
    """Per request precision@K for queries [(relevant rows set, ...)], evaluate.py's rule (ties against the
    relevant tracks). score_fn(i) -> (N,) scores of request i."""
    ranked = [metrics.top_k_pessimistic(score_fn(i), q[0], K) for i, q in enumerate(queries)]
    return metrics.per_query(ranked, [q[0] for q in queries], ks=(K,))[f"precision@{K}"].tolist()


def llm_hits(spec, hits, attribute_draw=(0, ATTRIBUTE_PHRASINGS)):
    """The row ROW of an earlier `val_next.py --out` FILE ("FILE:ROW"): its per-query hits (and per-pair preference
    hits, and per-request attribute precision where that file drew the same number of requests in the same
    phrasings, attribute_draw), once the baselines' hits there, which depend on the queries alone, match these (the
    same --run, --queries, --seed, and --pairs for a preference row)."""
    path, sep, row = spec.rpartition(":")
    if not sep:
        raise UserError(f"--llm takes FILE:ROW, got {spec!r}")
    got = read_json(path, "val_next.py --out JSON")
    if row not in got.get("hits", {}):
        raise UserError(f"{path}: no row {row!r} (rows: {', '.join(got.get('hits', {}))})")
    same = val_next.same_queries(got["hits"], hits)
    if "preference" in got["hits"][row] and val_next.RATE in hits:
        same = same and got["hits"].get(val_next.RATE) == hits[val_next.RATE]
    if not same:
        raise UserError(f"{path} was not made on these validation queries (and pairs): run val_next.py with the same "
                        "--run, --queries, --seed (and --pairs)")
    keep = ("hit", "ndcg", "preference")
    if attribute_draw[0] and (got.get("attribute_queries"), got.get("attribute_phrasings", "train")) == attribute_draw:
        keep += ("precision",)
    return {m: v for m, v in got["hits"][row].items() if m in keep}


def hits_of(score_fn, queries):
    """Per query (hit@K, ndcg@K) lists for queries [(history rows, next row)], evaluate.py's rules (the context
    excluded, ties against the relevant track). score_fn(i, history) -> (N,) scores of query i."""
    ranked = [metrics.top_k_pessimistic(score_fn(i, h), {t}, K, exclude=[h[-1]]) for i, (h, t) in enumerate(queries)]
    m = metrics.per_query(ranked, [{t} for _, t in queries], ks=(K,))
    return {"hit": m[f"hit@{K}"].tolist(), "ndcg": m[f"ndcg@{K}"].tolist()}


def attribute_rows(args, sft_data, catalog, index, code_row, popularity, genres, keys):
    """P@K of the attribute rows on val_next.py's draw of validation requests: genre popularity (the genre the
    request names), MiniLM (the words of each track's description, evaluate.py's), and two request rankers that read
    the Semantic IDs and the request's attributes alone (IDRequests), fitted to what SFT is given: "ID requests
    (examples)" to the training attribute examples, one answer each (sft_data/train.jsonl); "ID requests (answer
    sets)" to the same requests with every track that answers them (attribute_answers.jsonl's sets, which sft.py
    --answer-targets group reads). Returns {"queries", "precision": {row: per-request P@K}, "epochs"}."""
    row_codes = {r: c for c, r in code_row.items()}
    masks = tasks.attribute_masks(catalog)

    def relevant(attrs):
        return set(tasks.relevant_rows(catalog, masks, [tuple(a) for a in attrs], row_codes))
    drawn = val_next.attribute_queries(catalog, row_codes, args.attribute_queries, args.seed,
                                       val_next.PHRASINGS[args.attribute_phrasings], with_attributes=True)
    queries = [(rel, [list(a) for a in attrs], prompt) for attrs, prompt, rel in drawn]
    train = attribute_examples(sft_data, "train.jsonl", index)
    select = [(relevant(a), a) for a, _ in attribute_examples(sft_data, "val.jsonl", index)]
    if not train or not select:
        raise UserError(f"{sft_data}: no attribute examples in train.jsonl or val.jsonl (data.py sft "
                        "--attribute-examples 0?); pass --attribute-queries 0")
    vocab = {u: i for i, u in enumerate(sorted({u for a, _ in train for u in request_units(a)}))}
    precision = {"genre popularity": precision_of(lambda i: B.genre_popularity_scores(
        popularity, genres.get(B.genre_in_request(queries[i][2], genres), np.zeros(len(catalog), bool))), queries)}
    if not args.no_minilm:
        enc = B.MiniLM()
        items = enc.embed([tasks.describe_track(catalog, i) for i in range(len(catalog))], desc="MiniLM tracks")
        sims = enc.embed([q[2] for q in queries], desc="MiniLM requests") @ items.T         # (Q, N) cosine
        precision["MiniLM"] = precision_of(lambda i: sims[i], queries)

    def targets_of(rows_lists):
        t = torch.zeros(len(rows_lists), len(catalog))
        for i, rows in enumerate(rows_lists):
            t[i, list(rows)] = 1.0 / len(rows)
        return t

    select_units = unit_matrix([request_units(a) for _, a in select], vocab)     # once, not every epoch

    def select_p(m):
        with torch.no_grad():
            S = m(select_units).numpy()
        return float(np.mean(precision_of(lambda i: S[i], select)))

    sets = {tuple(map(tuple, a)): a for a, _ in train}
    fits = {"ID requests (examples)": ([a for a, _ in train], [[r] for _, r in train]),
            "ID requests (answer sets)": (list(sets.values()), [relevant(a) for a in sets.values()])}
    epochs = {}
    for name, (reqs, rows) in fits.items():
        m, epochs[name] = fit_requests(keys, len(vocab), unit_matrix([request_units(a) for a in reqs], vocab),
                                       targets_of(rows), select_p, epochs=args.request_epochs, seed=args.seed)
        with torch.no_grad():
            S = m(unit_matrix([request_units(q[1]) for q in queries], vocab)).numpy()
        precision[name] = precision_of(lambda i: S[i], queries)
    return {"queries": queries, "precision": precision, "epochs": epochs}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=RUN, help="run folder whose sft_data, rvq and prefs to use")
    p.add_argument("--queries", type=int, default=QUERIES,
                   help="validation next-track queries (val_next.py's draw of the same --seed: its first 200 are "
                        "val_next.py --queries 200's)")
    p.add_argument("--select", type=int, default=SELECT,
                   help="validation examples not among the queries on which the n-gram weights, the factorised "
                        "model's epoch and content x popularity's kernel width are chosen")
    p.add_argument("--epochs", type=int, default=EPOCHS,
                   help="factorised model: epochs at most; the epoch of the best HR@10 on the --select examples is "
                        "kept (on the demo's worlds the best came at 6-13 of 20, then it overfits)")
    p.add_argument("--dim", type=int, default=DIM,
                   help="factorised model: width of the prefix vectors (a track's vector is the sum of its prefixes')")
    p.add_argument("--history", type=int, default=HISTORY,
                   help="plays of each prompt the factorised model reads, the context first (0: as many as the SFT "
                        "prompts show, sft_data's prompt_history: 1 in the demo, the context alone; the n-gram "
                        "always reads the context alone)")
    p.add_argument("--seed", type=int, default=SEED, help="draw of the queries, initialisation, bootstrap")
    p.add_argument("--pairs", default="",
                   help="validation preference pairs for the long-listen rate and ID logistic (default "
                        "RUN/prefs/val.jsonl, the demo's 96; 'none' skips them; more: `data.py prefs --max-val 3000`)")
    p.add_argument("--attribute-queries", type=int, default=ATTRIBUTE_QUERIES,
                   help="validation attribute requests (val_next.py's draw of the same --seed and phrasings, so its "
                        "adapters' P@10 pair with these rows); 0: none")
    p.add_argument("--attribute-phrasings", choices=tuple(val_next.PHRASINGS), default=ATTRIBUTE_PHRASINGS,
                   help="how they are phrased, as val_next.py's option (the request rankers read the attributes, "
                        "not the words; MiniLM reads the words)")
    p.add_argument("--request-epochs", type=int, default=REQUEST_EPOCHS,
                   help="request rankers: epochs at most; the epoch of the best P@10 on the validation window's "
                        "attribute examples (sft_data/val.jsonl, not the requests ranked here) is kept")
    p.add_argument("--no-minilm", action="store_true", help="leave out the MiniLM row of the attribute requests")
    p.add_argument("--llm", action="append", default=[], metavar="FILE:ROW",
                   help="an adapter's row of an earlier val_next.py --out on the same queries (and pairs), shown "
                        "beside the rankers, paired with content x popularity and split by context counts (repeat)")
    p.add_argument("--out", default=None, help="JSON of the per-query hits and the table (val_next.py's layout)")
    args = p.parse_args(argv)
    sft_data = os.path.join(args.run, "sft_data")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    need_file(meta["semantic_ids"], "Semantic-ID table")
    catalog, index, C, code_row = val_next.catalogue_codes(meta)
    n_items = len(catalog)
    if (C < 0).any():
        raise UserError(f"{meta['semantic_ids']}: {(C[:, 0] < 0).sum()} catalogue tracks without a Semantic ID")
    queries, others = val_next.val_queries(sft_data, args.queries, args.seed, code_row, rest=True)
    queries = [(h, r) for _, h, r in queries]
    select = [(h, r) for _, h, r in others[:args.select]]
    if not select:
        raise UserError(f"{sft_data}/val.jsonl: no validation examples left beside the {len(queries)} queries to "
                        "choose the rankers' parameters on; lower --queries")
    pairs = train_next_pairs(sft_data, code_row)
    history = args.history or meta.get("prompt_history", 1)
    popularity, cooc, labels = E.load_listening(sft_data, os.path.join(args.run, "prefs"), n_items)
    prior = popularity + 0.5      # every track a share, so that a log exists (popularity counts training plays)
    genres = B.genre_masks(catalog.genres)
    in_genre = [genres[g[0]] for g in catalog.genres]
    print(f"{len(pairs):,} training next-track examples, {len(queries)} validation queries, {len(select)} other "
          f"validation examples to choose parameters on")

    hits = {}
    hits["genre popularity"] = hits_of(lambda i, h: B.genre_popularity_scores(popularity, in_genre[h[-1]]), queries)
    hits["item kNN"] = hits_of(lambda i, h: B.item_knn_scores(cooc, popularity, h[-1]), queries)
    feats = signals.preprocess(catalog.features, rvq.load_rvq(meta["rvq"])["params"])
    tau, _ = B.select_tau(feats, popularity, [(h[-1], {r}) for h, r in select], lambda c: in_genre[c])
    cp = val_next.CONTENT_POP
    hits[cp] = hits_of(lambda i, h: B.content_popularity_scores(feats, h[-1], popularity, in_genre[h[-1]], tau),
                       queries)

    keys = prefix_keys(C)
    tables = ngram_tables(keys, prior, pairs)
    grid = {w: np.mean(hits_of(lambda i, h: ngram_scores(keys, tables, h[-1], w, prior), select)["hit"])
            for w in weight_grid(meta["levels"])}
    w_best = max(grid, key=grid.get)      # ties: the first in grid order
    hits["ID n-gram"] = hits_of(lambda i, h: ngram_scores(keys, tables, h[-1], w_best, prior), queries)

    def select_hr(m):
        with torch.no_grad():
            S = m(play_matrix([h for h, _ in select], history)).numpy()
        return float(np.mean(hits_of(lambda i, h: S[i], select)["hit"]))

    fact, hist = fit_factorised(keys, prior, pairs, select_hr, dim=args.dim, epochs=args.epochs, seed=args.seed,
                                history=history)
    with torch.no_grad():
        S = fact(play_matrix([h for h, _ in queries], history)).numpy()           # (Q, N)
    hits["ID factorised"] = hits_of(lambda i, h: S[i], queries)
    epoch = max(hist, key=hist.get)

    pairs_path = (os.path.join(args.run, "prefs", "val.jsonl") if args.pairs == "" else
                  None if args.pairs == "none" else args.pairs)
    if pairs_path:     # per-track scores from the training window's labelled plays, on held-out pairs
        pair_ch, pair_rj = E.pair_rows(pairs_path, index)
        hits[val_next.RATE] = {"preference": B.pair_accuracy(B.long_listen_rate(labels["long"], labels["skip"]),
                                                             pair_ch, pair_rj).tolist()}
        X = code_onehot(C)
        id_logit = B.audio_logistic_from_plays(X, labels["long"], labels["skip"])
        hits["ID logistic"] = {"preference": B.pair_accuracy(id_logit, pair_ch, pair_rj).tolist()}
        # the same regression on DPO's own data alone: the training pairs its steps drew (all of train.jsonl where
        # RUN/dpo/summary.json does not say), a chosen answer counted as a long listen, a rejected one as a skip
        tr_ch, tr_rj = E.pair_rows(os.path.join(args.run, "prefs", "train.jsonl"), index)
        drew = E.pairs_dpo_drew(os.path.join(args.run, "dpo"), len(tr_ch))
        id_logit_dpo = B.audio_logistic_from_plays(X, np.bincount(tr_ch[drew], minlength=len(C)),
                                                   np.bincount(tr_rj[drew], minlength=len(C)))
        hits[DPO_PAIRS] = {"preference": B.pair_accuracy(id_logit_dpo, pair_ch, pair_rj).tolist()}

    attr = {}
    if args.attribute_queries:
        attr = attribute_rows(args, sft_data, catalog, index, code_row, popularity, genres, keys)
        for name, precision in attr["precision"].items():
            hits.setdefault(name, {})["precision"] = precision

    llms = [spec.rpartition(":")[2] for spec in args.llm]
    for spec, name in zip(args.llm, llms):
        hits[name] = llm_hits(spec, hits, (len(attr.get("queries", [])), args.attribute_phrasings))

    table = {n: {f"{m}@{K}": metrics.bootstrap_ci(h[m], seed=args.seed) for m in ("hit", "ndcg", "precision")
                 if m in h} for n, h in hits.items()}
    for n, h in hits.items():
        if "preference" in h:
            table[n]["preference accuracy"] = metrics.bootstrap_ci(h["preference"], seed=args.seed)
    print(f"\n{'validation, ' + str(len(queries)) + ' queries':28s} {'HR@10':>22s} {'NDCG@10':>22s}")
    for n, t in table.items():
        if "hit@10" in t:
            print(f"{n:28s} " + " ".join(f"{t[m][0]:.3f} [{t[m][1]:.3f}, {t[m][2]:.3f}]"
                                         for m in ("hit@10", "ndcg@10")))
    print(f"  ({cp}: kernel width {tau:g}; ID n-gram: weights {w_best} of levels 1..{meta['levels']}; "
          f"ID factorised: {history} play(s), epoch {epoch} of {args.epochs}, HR@10 on the other examples by epoch "
          + ", ".join(f"{hist[e]:.3f}" for e in sorted(hist)) + ")")
    paired = {}
    print(f"\npaired against {cp} (95% interval)")
    for n in ("ID n-gram", "ID factorised", "item kNN", "genre popularity", *llms):
        for m in ("hit", "ndcg"):
            d = metrics.paired_bootstrap(hits[n][m], hits[cp][m], seed=args.seed)
            paired[f"{n} - {cp} ({m}@{K})"] = d
            print(f"  {n} - {cp} {m}@{K}: {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]")
    # where the ID rankers lose: by how many training examples had the query's context as theirs (what the
    # codes of a rarely played track can say is little; the audio kernel needs no plays)
    seen = collections.Counter(h[-1] for h, _ in pairs)
    buckets = val_next.count_bucket([seen[h[-1]] for h, _ in queries], COUNT_EDGES)
    by_count = {}
    print(f"\nby how often the context was a training example's (HR@{K}; ID factorised - {cp}, paired)")
    for b in dict.fromkeys(val_next.count_bucket(range(COUNT_EDGES[-1] + 1), COUNT_EDGES)):
        m = [i for i, x in enumerate(buckets) if x == b]
        if not m:
            continue
        h = {n: [hits[n]["hit"][i] for i in m] for n in ("ID n-gram", "ID factorised", *llms, cp)}
        d = metrics.paired_bootstrap(h["ID factorised"], h[cp], seed=args.seed)
        by_count[b] = {"queries": len(m), **{n: float(np.mean(v)) for n, v in h.items()}, "paired": d}
        print(f"  {b:>6s} times: {len(m):4d} queries, " + ", ".join(f"{n} {np.mean(v):.3f}" for n, v in h.items())
              + f"; {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]")
    if pairs_path:
        print(f"\n{len(pair_ch)} preference pairs from {pairs_path}: accuracy {val_next.RATE} "
              f"{np.mean(hits[val_next.RATE]['preference']):.3f}")
        for name in ("ID logistic", DPO_PAIRS):
            d = metrics.paired_bootstrap(hits[name]["preference"], hits[val_next.RATE]["preference"], seed=args.seed)
            paired[f"{name} - {val_next.RATE} (preference accuracy)"] = d
            print(f"  {name:28s} {np.mean(hits[name]['preference']):.3f} "
                  f"(- {val_next.RATE}: {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}])")
    if attr:
        # against the strongest attribute baseline, and against genre popularity, where the demo's SFT sits
        bars = ["MiniLM", "genre popularity"] if "MiniLM" in hits else ["genre popularity"]
        print(f"\n{len(attr['queries'])} validation attribute requests ({args.attribute_phrasings} phrasings): "
              f"P@{K}, and paired differences")
        for n, h in hits.items():
            if "precision" in h:
                diffs = ""
                for bar in [b for b in bars if b != n]:
                    d = metrics.paired_bootstrap(h["precision"], hits[bar]["precision"], seed=args.seed)
                    paired[f"{n} - {bar} (precision@{K})"] = d
                    diffs += f"  (- {bar} {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}])"
                print(f"  {n:28s} {np.mean(h['precision']):.3f}{diffs}")
        kept = [f"{n} epoch {max(e, key=e.get)} of {args.request_epochs}" for n, e in attr["epochs"].items()]
        print("  (request rankers: " + "; ".join(kept) + ")")
    if args.out:
        write_json(args.out, {"queries": len(queries), "attribute_queries": len(attr.get("queries", [])),
                              "attribute_phrasings": args.attribute_phrasings,
                              "request_epochs": attr.get("epochs", {}), "table": table, "paired": paired,
                              "hits": hits, "content_popularity_tau": tau, "ngram_weights": list(w_best),
                              "factorised_epoch": epoch, "factorised_select_hr": hist, "factorised_history": history,
                              "by_context_count": by_count,
                              "options": vars(args)})


if __name__ == "__main__":
    run_main(main)
