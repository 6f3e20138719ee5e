"""Ranking the catalogue with a model: constrained beam search over the ID trie, and the exact top K.

An answer is a path in the trie of the catalogue's Semantic IDs. beam_search keeps the best `beam_width` prefixes
per level (fast, approximate: an ID whose first codes score poorly is never seen); exact_top_k scores every ID that
can still reach the top K, so its list is the model's true top K (evaluate.py uses it below EXACT_MAX_ITEMS tracks).
score_all_ids, which scores every ID, is the plain version exact_top_k is tested against.
"""
import heapq

import torch

import model as M

# ----------------------------------------------------------------------------- generation


class IDTrie:
    """Prefix trie of the catalogue's Semantic IDs: which code may follow a prefix.

    Per-position token sets are not enough: codes allowed at each level separately
    can combine into IDs that match no track. children[(c1, .., cl)] = sorted codes.
    """

    def __init__(self, ids, levels):
        self.levels = levels
        kids = {}
        for codes in ids:
            codes = tuple(int(c) for c in codes)
            if len(codes) != levels:
                raise ValueError(f"ID {codes} has {len(codes)} codes, expected {levels}")
            for l in range(levels):
                kids.setdefault(codes[:l], set()).add(codes[l])
        self.children = {p: torch.tensor(sorted(c)) for p, c in kids.items()}
        self.valid = {tuple(int(c) for c in codes) for codes in ids}

    def allowed(self, prefix):
        return self.children.get(tuple(prefix), torch.empty(0, dtype=torch.long))


def cut_at_end(toks, end_id):
    """toks up to and including the first end_id (a finished beam's padding dropped); all of them if none."""
    return toks[:toks.index(end_id) + 1] if end_id in toks else toks


@torch.no_grad()
def beam_search(model, prompts, vocab, beam_width, trie=None, end_id=None, pad_id=0, batch_size=8,
                device="cpu"):
    """Deterministic beam search with the KV cache, batched over prompts.

    With `trie`: L steps, each restricted to the current level's codes that the trie
    allows after the beam's prefix, so every result is a catalogue ID. Without: L + 1
    unconstrained steps over the whole vocabulary (to measure hallucination); a beam
    that emits `end_id` is finished there: its score stays the sum up to and including
    the end token, it is not expanded further, and it is returned cut after that token.
    Score = summed log-prob of the generated tokens (no length normalisation: all
    complete results have the same length, and a finished one scores at least as high
    as any continuation of it would). Beams are unique: each is a distinct
    (parent, token) pair. Returns per prompt a list of (tokens tuple, score), best first.
    """
    model.eval()
    device = torch.device(device)
    L = vocab.levels
    steps = L if trie is not None else L + 1
    results = []
    for s in range(0, len(prompts), batch_size):
        batch = prompts[s:s + batch_size]
        B = len(batch)
        ids, attn, pos = (t.to(device) for t in M.left_pad(batch, pad_id))
        with M.autocast(device):
            out = model.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        cache = out.cache
        logp = M.next_token_logps(model, out.last_hidden_state, ids)     # (B*nb, V'), nb = 1 at first
        scores = torch.zeros(B, 1, device=device)                    # (B, nb)
        seqs = torch.zeros(B, 1, 0, dtype=torch.long, device=device)  # (B, nb, t)
        next_pos = pos[:, -1:] + 1                                    # (B, 1)
        for t in range(steps):
            nb = scores.shape[1]
            if trie is not None:
                level_tok = vocab.level_tokens(t).to(device)                     # (K,)
                cand = logp[:, level_tok]                                         # (B*nb, K)
                mask = torch.zeros_like(cand, dtype=torch.bool)
                flat_seqs = seqs.reshape(B * nb, t)
                live = torch.isfinite(scores.reshape(-1))
                for r in range(B * nb):
                    if not live[r]:
                        continue
                    prefix = tuple(vocab.level_code(int(x))[1] for x in flat_seqs[r])
                    codes = trie.allowed(prefix)
                    if len(codes) == 0:
                        raise RuntimeError(f"no Semantic-ID token is allowed after prefix {prefix}")
                    mask[r, codes.to(device)] = True
                cand = cand.masked_fill(~mask, float("-inf"))
                tok_of = level_tok
            else:
                cand, tok_of = logp, None
                if end_id is not None and t > 0:
                    # a finished beam (its last token is the end token) gets one continuation, the end token again
                    # at log-prob 0: its score stays frozen and it holds one beam slot, not a slot per next token
                    done = (seqs[:, :, -1] == end_id).reshape(-1, 1)                      # (B*nb, 1)
                    frozen = torch.full_like(cand[:1], float("-inf"))                     # (1, V')
                    frozen[0, end_id] = 0.0
                    cand = torch.where(done, frozen, cand)
            C = cand.shape[1]
            total = (scores.reshape(-1, 1) + cand).view(B, nb * C)       # (B, nb*C)
            k = min(beam_width, nb * C)
            top_s, top_i = total.topk(k, dim=1)                             # (B, k); ties: lower index first
            parent, col = top_i // C, top_i % C
            tok = tok_of[col] if tok_of is not None else col               # (B, k)
            seqs = torch.cat([seqs.gather(1, parent[..., None].expand(-1, -1, t)), tok[..., None]], dim=2)
            scores = top_s
            if t == steps - 1:
                break
            rows = (torch.arange(B, device=device)[:, None] * nb + parent).reshape(-1)  # (B*k,)
            cache.reorder_cache(rows)          # each new beam continues its parent's KV cache
            attn = torch.cat([attn[rows], attn.new_ones(B * k, 1)], 1)   # (B*k, T + t + 1)
            next_pos = next_pos[rows]
            with M.autocast(device):
                out = model.model(input_ids=tok.reshape(-1, 1), attention_mask=attn, position_ids=next_pos,
                                  cache=cache, use_cache=True)
            logp = M.next_token_logps(model, out.last_hidden_state, seqs.reshape(B * k, t + 1))
            next_pos = next_pos + 1
        for b in range(B):
            res = [(cut_at_end(tuple(int(x) for x in seqs[b, j]), end_id), float(scores[b, j]))
                   for j in range(scores.shape[1]) if torch.isfinite(scores[b, j])]
            if trie is not None:
                for toks, _ in res:  # by construction; checked because a silent miss would be a bug
                    assert tuple(vocab.level_code(x)[1] for x in toks) in trie.valid, toks
            results.append(res)
    return results


# ----------------------------------------------------------------------------- exact ranking
# beam_search keeps beam_width prefixes per level, so an ID whose first codes score poorly is never seen, however
# well its last code scores: at width 21 the top 20 of demo prompts shared only ~2/3 of their items with scoring
# every ID. Scoring every ID does not cost L forwards per ID: the IDs form a trie, and one forward of a prefix's
# last token scores all of its children, so the whole catalogue costs 1 + n_1 + ... + n_{L-1} token forwards
# (n_l distinct prefixes of length l). And as every log-prob is <= 0, a prefix's score bounds the score of every
# ID below it: the top k only needs the prefixes that score at least some known k-th score.

def kv_of(cache):
    """Per-layer (keys, values) of a DynamicCache, each (B, kv_heads, T, head_dim)."""
    return [(k, v) for k, v, *_ in cache]


def cache_of(kv):
    """A new DynamicCache holding per-layer (keys, values) (B, kv_heads, T, head_dim); a forward appends to it.

    The tensors given are never written: DynamicLayer.update and reorder_cache replace a layer's tensors (torch.cat,
    index_select) instead of writing into them, so one prompt's keys and values can seed any number of caches.
    """
    from transformers import DynamicCache
    return DynamicCache(kv)


def rank_ids(codes, scores, k=None):
    """[(codes tuple, score)] best first: descending score, then ascending codes (deterministic).

    codes: N tuples; scores: (N,) tensor or floats. With k: the first k, plus every later ID whose score equals
    the k-th exactly, so that a caller can break ties its own way (evaluate.py: against the relevant items).
    """
    s = scores.tolist() if torch.is_tensor(scores) else [float(x) for x in scores]
    ranked = sorted(zip(codes, s), key=lambda cs: (-cs[1], cs[0]))
    if k is not None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n = min(k, len(ranked))
        while n < len(ranked) and ranked[n][1] == ranked[k - 1][1]:
            n += 1
        ranked = ranked[:n]
    return ranked


@torch.no_grad()
def score_all_ids(model, prompt_ids, vocab, trie, device="cpu", chunk=64):
    """The exact score of every catalogue ID for one prompt, by a level-by-level walk over the ID trie.

    prompt_ids: token ids of one prompt (PromptFormat.prompt). An ID's score is beam_search's: the sum over its L
    tokens of log_softmax over the full vocabulary (base + ID tokens), teacher-forced after the prompt, in fp32.
    The prompt runs once. Then at each level the frontier (the n_l prefixes of length l) feeds its last tokens,
    one forward per prefix whatever its number of children, on top of the prompt's keys and values and the
    prefix's own earlier ID tokens; position ids continue after the prompt. Rows go through the model `chunk`
    at a time: a chunk's cache holds chunk x (prompt + l) positions, which bounds memory.

    Returns (codes, scores): codes, a list of the N catalogue IDs as tuples in ascending order; scores, (N,) fp32
    aligned with codes. rank_ids(codes, scores, k) ranks them.
    """
    model.eval()
    device = torch.device(device)
    L, T = vocab.levels, len(prompt_ids)
    with M.autocast(device):
        out = model.model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
    prompt_kv = kv_of(out.cache)                                        # per layer (1, h, T, d)
    prefixes = [()]                                                     # the frontier: the prefixes of length l
    scores = torch.zeros(1, device=device)                              # (n_l,) their summed log-probs
    # (n_l, K): log-probs of the next level's K codes after each prefix; the other columns are never needed
    logp = M.next_token_logps(model, out.last_hidden_state, torch.tensor([prompt_ids], device=device))
    logp = logp[:, vocab.level_tokens(0).to(device)]
    id_kv = None                                                        # per layer (n_l, h, l, d): the ID tokens
    for l in range(L):
        # every child of every frontier prefix, in trie order (children are sorted, so codes stay ascending)
        parent = [i for i, p in enumerate(prefixes) for _ in trie.allowed(p)]
        code = [c for p in prefixes for c in trie.allowed(p).tolist()]
        parent_t, code_t = torch.tensor(parent, device=device), torch.tensor(code, device=device)
        scores = scores[parent_t] + logp[parent_t, code_t]               # (n_{l+1},)
        prefixes = [prefixes[i] + (c,) for i, c in zip(parent, code)]
        if l == L - 1:
            break
        # one forward per new prefix: its last token, after the prompt and its parent's ID tokens
        tok = vocab.token_id(l, code_t)                                 # (n_{l+1},)
        logps, kvs = [], []
        for s in range(0, len(prefixes), chunk):
            rows = parent_t[s:s + chunk]
            n = len(rows)
            kv = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prompt_kv]
            if id_kv is not None:
                kv = [(torch.cat([k, ik[rows]], 2), torch.cat([v, iv[rows]], 2))
                      for (k, v), (ik, iv) in zip(kv, id_kv)]
            pos = torch.full((n, 1), T + l, device=device)
            with M.autocast(device):
                out = model.model(input_ids=tok[s:s + chunk, None], position_ids=pos, cache=cache_of(kv),
                                  use_cache=True)
            fed = torch.tensor([vocab.ids(p) for p in prefixes[s:s + chunk]], device=device)   # (n, l + 1)
            logps.append(M.next_token_logps(model, out.last_hidden_state, fed)[:, vocab.level_tokens(l + 1).to(device)])
            if l + 2 < L:   # deeper forwards continue these prefixes: keep their ID tokens (a copy, not the chunk)
                kvs.append([(k[:, :, T:].clone(), v[:, :, T:].clone()) for k, v in kv_of(out.cache)])
        logp = torch.cat(logps)
        id_kv = [(torch.cat([c[i][0] for c in kvs]), torch.cat([c[i][1] for c in kvs]))
                 for i in range(len(kvs[0]))] if kvs else None
    return prefixes, scores


class TrieScorer:
    """Scores of ID prefixes for a batch of prompts, each (prompt, prefix) forwarded at most once.

    score_all_ids' walk, reorganised for exact_top_k: prefixes can be asked for in any order (a beam first, then
    whatever the bound leaves) without one being forwarded twice, and the prompts of a batch share forwards (rows
    of different prompts go through the model together, left-padded as in beam_search).

    score[(b, prefix)]: the summed log-prob of prefix after prompt b (a Python float holding the fp32 value), known
    once its parent is expanded; expand(keys) forwards prefixes to score their children; id_scores[b]: the scores
    of the complete IDs of prompt b scored so far; forwards[b]: token forwards spent on prompt b (its prompt
    counts one).
    """

    @torch.no_grad()
    def __init__(self, model, prompts, vocab, trie, pad_id=0, device="cpu", chunk=64):
        self.model, self.vocab, self.trie, self.chunk = model, vocab, trie, chunk
        self.device = torch.device(device)
        ids, attn, pos = (t.to(self.device) for t in M.left_pad(prompts, pad_id))
        with M.autocast(self.device):
            out = model.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        self.prompt_kv = kv_of(out.cache)            # per layer (B, h, T, d), T the longest prompt
        self.attn, self.first_pos = attn, pos[:, -1] + 1   # (B, T); (B,) position of the first ID token
        self.T = ids.shape[1]
        self.forwards = [1] * len(prompts)
        self.score, self.expanded, self.id_scores = {}, set(), [[] for _ in prompts]
        self.id_kv = {}    # level l -> per layer (keys, values) (rows, h, l, d) of expanded prefixes' ID tokens
        self.id_row = {}   # (b, prefix) -> its row in id_kv[len(prefix)]
        logp = M.next_token_logps(model, out.last_hidden_state, ids)
        self._add_children([(b, ()) for b in range(len(prompts))], logp)

    def _add_children(self, keys, logp):
        """Scores of the children of keys[i] = (b, prefix) from logp[i] (V',): prefix's score + log p(code)."""
        rows, toks, kids = [], [], []
        for i, (b, p) in enumerate(keys):
            for c in self.trie.allowed(p).tolist():
                rows.append(i)
                toks.append(self.vocab.token_id(len(p), c))
                kids.append((b, p + (c,)))
        parent = torch.tensor([self.score[keys[i]] if keys[i][1] else 0.0 for i in rows], device=logp.device)
        scores = parent + logp[torch.tensor(rows, device=logp.device), torch.tensor(toks, device=logp.device)]
        scores = scores.tolist()
        self.score.update(zip(kids, scores))
        self.expanded.update(keys)
        for (b, p), s in zip(kids, scores):
            if len(p) == self.vocab.levels:
                self.id_scores[b].append(s)

    @torch.no_grad()
    def expand(self, keys):
        """Forward every (b, prefix) of keys not yet expanded (prefixes of length >= 1, parents expanded)."""
        todo = list(dict.fromkeys(k for k in keys if k not in self.expanded))
        for l in sorted({len(p) for _, p in todo}):
            level = [k for k in todo if len(k[1]) == l]
            for s in range(0, len(level), self.chunk):
                self._forward(level[s:s + self.chunk], l)

    def _forward(self, keys, l):
        """One forward of a chunk of prefixes of length l: each feeds its last token after its parent's."""
        dev, T, n = self.device, self.T, len(keys)
        b = torch.tensor([k[0] for k in keys], device=dev)
        kv = [(k[b], v[b]) for k, v in self.prompt_kv]                       # (n, h, T, d)
        if l > 1:
            rows = torch.tensor([self.id_row[(bb, p[:-1])] for bb, p in keys], device=dev)
            kv = [(torch.cat([k, ik[rows]], 2), torch.cat([v, iv[rows]], 2))
                  for (k, v), (ik, iv) in zip(kv, self.id_kv[l - 1])]
        attn = torch.cat([self.attn[b], self.attn.new_ones(n, l)], 1)        # (n, T + l)
        pos = (self.first_pos[b] + l - 1)[:, None]                           # (n, 1)
        tok = torch.tensor([[self.vocab.token_id(l - 1, p[-1])] for _, p in keys], device=dev)
        with M.autocast(dev):
            out = self.model.model(input_ids=tok, attention_mask=attn, position_ids=pos, cache=cache_of(kv),
                                   use_cache=True)
        fed = torch.tensor([self.vocab.ids(p) for _, p in keys], device=dev)    # (n, l): the prefixes' ID tokens
        self._add_children(keys, M.next_token_logps(self.model, out.last_hidden_state, fed))
        for bb, _ in keys:
            self.forwards[bb] += 1
        if l + 1 < self.vocab.levels:   # deeper forwards will continue these prefixes: keep their ID tokens
            new = [(k[:, :, T:].clone(), v[:, :, T:].clone()) for k, v in kv_of(out.cache)]  # (n, h, l, d)
            old = self.id_kv.get(l)
            start = 0 if old is None else old[0][0].shape[0]
            self.id_kv[l] = new if old is None else [(torch.cat([ok, k]), torch.cat([ov, v]))
                                                     for (ok, ov), (k, v) in zip(old, new)]
            self.id_row.update((key, start + i) for i, key in enumerate(keys))

    def children(self, b, prefixes, at_least=float("-inf")):
        """Every child of the (expanded) prefixes of prompt b whose score is >= at_least, in trie order."""
        return [p + (c,) for p in prefixes for c in self.trie.allowed(p).tolist()
                if self.score[(b, p + (c,))] >= at_least]


@torch.no_grad()
def exact_top_k(model, prompts, vocab, trie, k, device="cpu", batch_size=8, pad_id=0, chunk=64, stats=None):
    """Per prompt, the exact top k catalogue IDs by score (score_all_ids' score): [(codes tuple, score)], best first.

    Also returned: every ID tied exactly with the k-th score, so a caller can break ties its own way; equal scores
    come in ascending codes (rank_ids). All IDs when k >= their number.

    A pruned walk: (1) a beam search of width k gives k real IDs with real scores, so the true k-th best score is at
    least theta, the lowest of them; (2) every log-prob is <= 0 (in floats too: rounding is monotonic), so a prefix
    scoring below theta has no ID >= theta below it, and the walk expands only the prefixes scoring >= theta. Every
    ID in the true top k (ties included) scores >= theta, so all of them are found. (3) The last level of forwards,
    most of the walk, goes best prefix first (raise_theta_best_first). The beam and the walk share one TrieScorer:
    a prefix is forwarded once, and the beam's scores are the walk's floats, so theta needs no margin.
    Prompts go `batch_size` at a time through shared forwards; `chunk` rows per forward. stats: a dict, if given,
    gets stats["forwards"] += the token forwards of each prompt (its prompt counts one; the full walk costs
    len(trie.children)).
    """
    model.eval()
    L = vocab.levels
    results = []
    for s in range(0, len(prompts), batch_size):
        batch = prompts[s:s + batch_size]
        sc = TrieScorer(model, batch, vocab, trie, pad_id=pad_id, device=device, chunk=chunk)
        B = range(len(batch))
        beams = [[()] for _ in B]                     # (1) beam search of width k
        for l in range(L):
            beams = [sorted(sc.children(b, beams[b]), key=lambda p, b=b: (-sc.score[(b, p)], p))[:k] for b in B]
            if l < L - 1:
                sc.expand([(b, p) for b in B for p in beams[b]])
        theta = [min(sc.score[(b, p)] for p in beams[b]) for b in B]
        frontier = [[()] for _ in B]                  # (2) the walk over every prefix scoring >= theta
        for l in range(L - 1):
            frontier = [sc.children(b, frontier[b], theta[b]) for b in B]
            if l < L - 2:
                sc.expand([(b, p) for b in B for p in frontier[b]])
            else:                                     # (3) the last forwards, best first
                raise_theta_best_first(sc, frontier, theta, k)
        ids = [sc.children(b, [p for p in frontier[b] if (b, p) in sc.expanded], theta[b]) for b in B]
        results += [rank_ids(ids[b], [sc.score[(b, p)] for p in ids[b]], k) for b in B]
        if stats is not None:
            stats.setdefault("forwards", []).extend(sc.forwards)
    return results


def raise_theta_best_first(sc, frontier, theta, k):
    """Forward the prefixes of frontier[b] (the last level needing forwards) best first, raising theta[b] as IDs come.

    In rounds of sc.chunk rows shared by the prompts: after each round theta[b] becomes the k-th best score of the
    IDs scored so far when that is higher (they are real IDs: the bound stays sound), and the prefixes now below it
    are dropped unforwarded. The beam's theta lies below the true k-th score; best first, the best IDs come early
    and lift theta towards it, so fewer of the level's prefixes are forwarded than with the beam's theta alone.
    frontier: per prompt, prefixes of length L - 1; theta: per prompt, updated in place.
    """
    def kth(b):
        return heapq.nlargest(k, sc.id_scores[b])[-1] if len(sc.id_scores[b]) >= k else float("-inf")

    per = max(1, sc.chunk // len(frontier))
    todo = [sorted((p for p in f if (b, p) not in sc.expanded), key=lambda p, b=b: -sc.score[(b, p)])
            for b, f in enumerate(frontier)]
    while True:
        for b in range(len(todo)):
            theta[b] = max(theta[b], kth(b))
            todo[b] = [p for p in todo[b] if sc.score[(b, p)] >= theta[b]]
        batch = [(b, p) for b, t in enumerate(todo) for p in t[:per]]
        if not batch:
            return
        todo = [t[per:] for t in todo]
        sc.expand(batch)
