"""Supervised fine-tuning: teach a Llama model to answer music requests with Semantic IDs.

Reads the SFT examples written by `data.py sft` (train.jsonl, val.jsonl, meta.json) and a
base model folder; trains LoRA adapters (lora.py) plus the embedding rows of the new
Semantic-ID tokens, with the loss on the answer tokens and, weighted, on the Semantic-ID tokens of the
prompt (weighted_nll); validates on the answers alone; writes the best adapter.

    python sft.py --data runs/demo/sft_data --out runs/demo/sft [--model models/smollm2-135m]

Outputs in --out: adapter/ (PEFT-format LoRA + id_tokens.safetensors + id_vocab.json),
log.jsonl (one line per step / evaluation), checkpoint.pt (for --resume), config.json,
summary.json. Killing it and running it again with --resume continues where the last
checkpoint left off and ends with the same weights as an uninterrupted run.

    torchrun --standalone --nproc-per-node N -- sft.py ...

trains data-parallel (ddp.py): every process a disjoint share of each global batch of --batch-size, the
gradients summed, rank 0 alone writing; the steps, batches and learning rates are those of one process.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
from tqdm import tqdm

import ddp
import formats
import lora
import model as M
import ranking
import rvq
import tasks
from common import UserError, atomic_dir, atomic_path, need_file, read_json, run_main, save_config, \
    seed_everything, write_json

# -----------------------------------------------------------------------------
MODEL: str = M.DEFAULT_MODEL   # local Hugging Face Llama folder
STEPS: int = 240               # optimizer steps: about 8-13 minutes for the whole SmolLM2-135M on 2 cores; the demo
                               # runs 480 on its first 15 layers in that time (Makefile LAYERS, SFT_STEPS)
BATCH_SIZE: int = 16           # examples per optimizer step
MICRO_BATCH_SIZE: int = 16     # examples per forward at most (min with --batch-size); gradients accumulate
LR: float = 1e-3               # peak learning rate of the LoRA matrices (few steps: higher than the usual 2e-4)
ID_LR: float = 1e-2            # peak LR of the new ID rows: they start identical (the mean embedding) and must
                               # move to the scale of real embeddings (~0.14 per coordinate) within a few hundred steps
ID_BIAS_LR: float = 0.0        # peak LR of the head's per-code ID bias (model.IDHead.id_bias); 0: not trained
WEIGHT_DECAY: float = 0.0      # AdamW decay (LoRA rarely benefits; the new rows must move freely)
WARMUP_STEPS: int = 20         # linear warm-up, then cosine decay to MIN_LR_RATIO * LR
MIN_LR_RATIO: float = 0.1
GRAD_CLIP: float = 1.0         # max global gradient norm
EVAL_EVERY: int = 60           # steps between validations (and checkpoints)
EVAL_EXAMPLES: int = 128       # validation examples scored each time (fixed subset)
TRACK_VECTORS: bool = False    # a track's own vector after its ID in a prompt (model.TrackFeatures): measured, not
                               # the default (EXPERIMENTS.md, "The context track's own vector in the prompt")
ANSWER_VECTORS: bool = False   # the head scores an ID's codes by its tracks' vectors too (model.AnswerFeatures):
                               # the next play's likelihood up, HR@10 not (EXPERIMENTS.md, "The candidate's own
                               # vector in the head"): not the default
ANSWER_KERNEL: bool = False    # --answer-vectors plus a bias per ID prefix and the candidate's quadratic term (the
                               # learned kernel's b_t and -||A x_t||^2): ranked as --answer-vectors alone (EXPERIMENTS.md,
                               # "The learned kernel's terms in the head"): not the default
ID_INITS = ("mean", "descriptions", "codebook")
ID_INIT: str = "mean"          # where the new ID rows start (--id-init; "descriptions", "codebook" measured no better)
UNTIE_ID_ROWS: bool = False    # the head's ID rows apart from the prompt's (model.add_id_tokens): attribute requests
                               # +0.02-0.06 on validation, hallucinated@1 up to 10% (EXPERIMENTS.md): not the default
PROMPT_ID_WEIGHT: float = 1.0  # weight of the NLL of the prompt's own Semantic-ID tokens (0: answers only)
VALID_ID_WEIGHT: float = 0.0   # weight of -log p(some catalogue code) at each answer ID token (valid_id_logps):
                               # which codes exist under a prefix, asking nothing of their order; fewer hallucinated
                               # answers, at the attribute precision untying bought (EXPERIMENTS.md): 0, off
ANSWERS_PER_PROMPT: int = 1    # next-track answers sharing one prompt's forward (1: every example its own; more
                               # examples a second, no better ranking at the demo's budget: EXPERIMENTS.md)
ANSWER_TARGETS = ("example", "group", "colisten", "teacher")
ANSWER_TARGET: str = "example"  # what an answer's ID tokens are trained toward: the example's own answer (one-hot),
                               # the answers of every example asked the same thing (group_targets), or for next
                               # tracks also the context's co-listened tracks (colistened_answers), or the bar's
                               # distribution of the context's next track (teacher_answers)
TEACHER_WEIGHT: float = 1.0    # --answer-targets teacher: the teacher's mass beside the group's next plays, per play
                               # (measured at 1 and 4: EXPERIMENTS.md, "The bar as SFT's teacher")
INIT_ADAPTER: str = ""         # start LoRA and the ID rows from a trained adapter instead of fresh (a second stage
                               # on other examples, e.g. one task family after the mix); "": LoRA B = 0, rows at init
BUCKET: int = 8                # length bucketing: sort within windows of BUCKET batches
SEED: int = 0
DEVICE: str = "auto"           # cpu, cuda or auto
# -----------------------------------------------------------------------------


def read_jsonl(path, fields=("prompt", "answer")):
    need_file(path, "SFT examples")
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    ex = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}, line {i}: not valid JSON ({e.msg})") from None
                for k in fields:
                    if k not in ex:
                        raise UserError(f"{path}, line {i}: missing field '{k}'")
                out.append(ex)
    if not out:
        raise UserError(f"{path}: no examples")
    return out


def tokenize_examples(examples, fmt, path="examples"):
    """[(prompt_ids, answer_ids)], tokenized separately so the boundary is exact."""
    out = []
    for i, ex in enumerate(examples, 1):
        codes = fmt.vocab.parse(ex["answer"])
        if codes is None:
            raise UserError(f"{path}, line {i}: answer {ex['answer']!r} is not a Semantic ID of "
                            f"{fmt.vocab.levels} levels x {fmt.vocab.codebook_size} codes")
        out.append((fmt.prompt(ex["prompt"]), fmt.answer(codes)))
    return out


def collate(pairs, pad_id, vocab=None):
    """Right-padded batch. Returns ids, attention_mask, loss_mask (B, T): loss_mask is 1 on the answer tokens;
    given `vocab`, also PROMPT_ID (2) on the prompt's Semantic-ID tokens (the context tracks), else 0."""
    ids, attn, loss_mask = M.pad_batch([p + a for p, a in pairs], pad_id, [len(a) for _, a in pairs])
    if vocab is not None:
        for i, (p, _) in enumerate(pairs):
            for t in range(1, len(p)):          # position 0 is predicted by nothing
                if vocab.is_id_token(p[t]):
                    loss_mask[i, t] = PROMPT_ID
    return ids, attn, loss_mask


def batch_schedule(lengths, steps, batch_size, seed, bucket=BUCKET):
    """Example indices for every step, fixed by the seed (so a resumed run sees the same batches).

    Each epoch is a fresh permutation; within windows of `bucket` batches examples are
    sorted by length so a batch pads little, and the batches are then shuffled.
    Returns (steps, batch_size) int array.
    """
    rng = np.random.default_rng(seed)
    n = len(lengths)
    if n < batch_size:
        raise UserError(f"{n} training examples, fewer than one batch of {batch_size}")
    out = []
    while len(out) < steps:
        perm = rng.permutation(n)
        batches = []
        w = batch_size * bucket
        for s in range(0, n - batch_size + 1, w):
            win = perm[s:s + w]
            win = win[np.argsort([lengths[i] for i in win], kind="stable")]
            batches += [win[j:j + batch_size] for j in range(0, len(win) - batch_size + 1, batch_size)]
        rng.shuffle(batches)
        out += batches
    return np.stack(out[:steps])


def prompt_groups(examples, pairs, vocab):
    """Indices of the examples that may share a prompt: the next-track examples with the same Semantic IDs in
    their prompts (the same context plays, whatever the phrasing) form one group; every other example (an
    attribute request, a track by name) is a group of its own. examples: the JSON rows (their "task"); pairs:
    their (prompt, answer) token lists. Groups in order of first appearance."""
    groups = {}
    for i, (ex, (prompt, _)) in enumerate(zip(examples, pairs)):
        if ex.get("task") == "next_track":
            key = ("next_track", tuple(t for t in prompt if vocab.is_id_token(t)))
        else:
            key = ("own", i)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def chunk_schedule(groups, steps, prompts_per_step, per_prompt, seed):
    """Example indices of every step as chunks: `prompts_per_step` chunks a step, each up to `per_prompt`
    examples of one group, asked with the prompt of the chunk's first example (grouped_loss).

    Each epoch every group's examples are shuffled and cut into chunks of up to per_prompt, so every example is
    seen once an epoch, and the chunks are shuffled; a last incomplete step is dropped, as in batch_schedule.
    Returns a list of `steps` lists of int arrays. Example: groups [0, 2, 5] and [1], 2 chunks a step, up to 2
    examples a chunk: chunks like [5, 0], [2], [1] -> steps [[5, 0], [1]], then the next epoch's.
    """
    if sum(-(-len(g) // per_prompt) for g in groups) < prompts_per_step:
        raise UserError(f"{len(groups)} groups of training examples, fewer chunks than one step of "
                        f"{prompts_per_step}")
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < steps:
        chunks = []
        for g in groups:
            order = rng.permutation(np.asarray(g))
            chunks += [order[s:s + per_prompt] for s in range(0, len(order), per_prompt)]
        perm = rng.permutation(len(chunks))
        for s in range(0, len(perm) - prompts_per_step + 1, prompts_per_step):
            out.append([chunks[c] for c in perm[s:s + prompts_per_step]])
    return out[:steps]


def prefix_targets(answer, group, weights=None):
    """The soft targets of one answer's ID tokens under teacher forcing: at level l, how the l-th token is
    distributed among the group's answers that share this answer's first l tokens (the prefix the model is fed).

    answer: L token ids; group: (N, L) int array, the answers of every example asked the same thing (repeats count;
    the answer is one of them); weights (N,): each answer's weight (default 1). Returns [(ids (S_l,), probs (S_l,))]
    for l = 0 .. L-1. Worked example: answer (1, 5), group [(1, 5), (1, 6), (2, 7), (1, 5)] -> level 0: ids [1, 2],
    probs [0.75, 0.25]; level 1 (after 1): ids [5, 6], probs [2/3, 1/3]. The product along a path is the group's
    share of that answer, q(a) q(b | a) q(c | a, b) = q(a, b, c), so the expected loss over the group's answers is
    the usual NLL of each answer, averaged with the group's weights, taken exactly at level 0 and along the fed
    prefix below it.
    """
    group = np.asarray(group)
    weights = np.ones(len(group)) if weights is None else np.asarray(weights, np.float64)
    out, match = [], np.ones(len(group), bool)
    for level, tok in enumerate(answer):
        ids, where = np.unique(group[match, level], return_inverse=True)
        mass = np.bincount(where.ravel(), weights=weights[match], minlength=len(ids))
        out.append((ids, mass / mass.sum()))
        match &= group[:, level] == tok
    return out


def group_targets(examples, pairs, vocab, request_answers, neighbours=None, near_weight=None):
    """For every example, the soft targets of its answer's ID tokens (prefix_targets), or None (the one-hot answer).

    What an example is asked fixes the answers it may have; SFT draws one of them. A next-track example's group is
    every training example after the same context (prompt_groups: the same Semantic IDs in the prompt), so its
    targets are that context's next plays in the training window; an attribute request's group is every track that
    answers it (request_answers: {attributes: [answer token lists]}, data.py's attribute_answers.jsonl); a track
    asked by name has one answer (None). Trained toward these, each step carries what a whole epoch of one-hot
    examples would say about its prompt: the same expected loss, less noise (EXPERIMENTS.md, "Group targets").
    neighbours ({context ID tokens: (answers (N, L), weights (N,))}, colistened_answers): a next-track group is then
    also every track listened near its context track in the training window, weighted by how often; with
    near_weight w, the neighbours' weights (a distribution, teacher_answers) scaled to w times the group's size.
    """
    L = vocab.levels
    out = [None] * len(examples)
    for g in prompt_groups(examples, pairs, vocab):
        if examples[g[0]].get("task") != "next_track":
            continue
        near = neighbours.get(tuple(t for t in pairs[g[0]][0] if vocab.is_id_token(t))[-L:]) if neighbours else None
        if len(g) == 1 and near is None:     # one answer: its own one-hot target
            continue
        answers, weights = np.array([pairs[i][1][:L] for i in g]), np.ones(len(g))
        if near is not None:
            w = near[1] if near_weight is None else near[1] * near_weight * len(g)
            answers, weights = np.concatenate([answers, near[0]]), np.concatenate([weights, w])
        cache = {}
        for i, a in zip(g, answers):
            key = tuple(a)
            if key not in cache:
                cache[key] = prefix_targets(a, answers, weights)
            out[i] = cache[key]
    for i, ex in enumerate(examples):
        if ex.get("task") == "attributes":
            key = attributes_key(ex.get("attributes"))
            if key not in request_answers:
                raise UserError(f"example {i + 1} (an attribute request): its attributes {ex.get('attributes')} "
                                f"are not in {formats.ATTRIBUTE_ANSWERS}; write the SFT data again with data.py sft")
            out[i] = prefix_targets(pairs[i][1][:L], request_answers[key])
    return out


def answer_targets(kind, sft_data, meta, examples, pairs, fmt, teacher=None, teacher_weight=TEACHER_WEIGHT):
    """The soft targets --answer-targets `kind` trains toward, one per example (group_targets), or None for
    `example` (each answer one-hot). Reads sft_data's attribute_answers.jsonl, listening_stats.npz for colisten,
    the npz `teacher` for teacher."""
    if kind == "example":
        return None
    request_answers = read_request_answers(os.path.join(sft_data, formats.ATTRIBUTE_ANSWERS), fmt)
    if kind == "teacher":
        near = teacher_answers(teacher, meta, fmt.vocab)
        return group_targets(examples, pairs, fmt.vocab, request_answers, near, near_weight=teacher_weight)
    near = colistened_answers(sft_data, meta, fmt.vocab) if kind == "colisten" else None
    return group_targets(examples, pairs, fmt.vocab, request_answers, near)


def teacher_answers(path, meta, vocab):
    """{a track's ID tokens: (answers (K, L), probs (K,))}: the distribution of its next track under the bar
    (benchmarks/teacher_targets.py's npz: rows and probs per catalogue row, -1 past a short genre's end)."""
    need_file(path, "teacher targets (benchmarks/teacher_targets.py)")
    try:
        t = np.load(path)
        t = {"rows": t["rows"], "probs": t["probs"]}
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: not the npz of benchmarks/teacher_targets.py (rows, probs): {e}") from None
    cat, _ = formats.load_catalog(meta["catalog"])
    if len(t["rows"]) != len(cat):
        raise UserError(f"{path}: {len(t['rows'])} context tracks, the catalogue has {len(cat)}; write it again")
    row_codes = formats.row_codes_of(cat, *formats.load_semantic_ids(meta["semantic_ids"]))
    tokens = {r: tuple(vocab.ids(c)) for r, c in row_codes.items()}
    out = {}
    for c, (rows, probs) in enumerate(zip(t["rows"].tolist(), t["probs"].tolist())):
        keep = [(tokens[r], p) for r, p in zip(rows, probs) if r >= 0 and r in tokens]
        if c in tokens and keep:
            out[tokens[c]] = (np.array([a for a, _ in keep]), np.array([p for _, p in keep], np.float64))
    return out


def attributes_key(attrs):
    return tuple(tuple(a) for a in attrs) if attrs else None


def colistened_answers(sft_data, meta, vocab):
    """{a track's ID tokens: (answers (N, L), counts (N,))}: the tracks played within three plays of it in the
    training window's sessions and how often (listening_stats.npz, the counts item kNN ranks by), as ID tokens."""
    path = os.path.join(sft_data, "listening_stats.npz")
    need_file(path, "listening statistics (data.py sft)")
    stats = np.load(path)
    cat, _ = formats.load_catalog(meta["catalog"])
    row_codes = formats.row_codes_of(cat, *formats.load_semantic_ids(meta["semantic_ids"]))
    tokens = {r: tuple(vocab.ids(c)) for r, c in row_codes.items()}
    near = {}
    for i, j, c in zip(stats["cooc_i"].tolist(), stats["cooc_j"].tolist(), stats["cooc_count"].tolist()):
        if i in tokens and j in tokens:
            near.setdefault(tokens[i], ([], []))
            near[tokens[i]][0].append(tokens[j])
            near[tokens[i]][1].append(c)
    return {k: (np.array(a), np.array(w, np.float64)) for k, (a, w) in near.items()}


def read_request_answers(path, fmt):
    """data.py's attribute_answers.jsonl -> {attributes key: (N, L) int array of the answers' ID tokens}."""
    need_file(path, "answers of the attribute requests (data.py sft)")
    out = {}
    for i, ex in enumerate(read_jsonl(path, fields=("attributes", "answers")), 1):
        codes = [fmt.vocab.parse(a) for a in ex["answers"]]
        if not codes or any(c is None for c in codes):
            raise UserError(f"{path}, line {i}: 'answers' must be a non-empty list of Semantic IDs")
        out[attributes_key(ex["attributes"])] = np.array([fmt.vocab.ids(c) for c in codes])
    return out


def lr_at(step, steps, warmup, min_ratio=MIN_LR_RATIO):
    """Multiplier of the peak rate: linear warm-up, then cosine decay to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------- the loss

PROMPT_ID = 2   # loss_mask value of a prompt's Semantic-ID token (answer tokens are 1)


def weighted_nll(logps, kinds, prompt_id_weight, n_tokens):
    """The SFT loss from the log-probs of the supervised tokens.

    logps (M,) fp32: log p(token | everything before it) at each supervised token; kinds (M,): 1 for an answer
    token, PROMPT_ID for a Semantic-ID token of the prompt; n_tokens: the answer-token count of the whole batch.

        L = -( sum_answer log p  +  w * sum_prompt-ID log p ) / n_answer_tokens

    With w = 0 it is the usual answer-only SFT loss. With w > 0 the context tracks' IDs are targets too: each is
    predicted from the words and plays before it (`(rock) <a_27>` teaches that rock lives under a_27, `<a_27><b_1>`
    then `<c_17>` that this ID exists), supervision the forward has already paid for. The divisor stays the answer
    tokens, so w = 1 adds the prompt's IDs at the weight of the answer's. Worked example: logps [-1, -2, -3],
    kinds [1, 2, 1], w 0.5, n 2 -> (1 + 3 + 0.5 * 2) / 2 = 2.5.
    """
    w = torch.where(kinds == PROMPT_ID, prompt_id_weight, 1.0).to(logps.dtype)
    return -(w * logps).sum() / n_tokens


def expected_logps(logps, target_ids, target_probs):
    """sum_s q_s log p(v_s): the log-prob of each supervised token, expected under its target distribution.

    logps (M, V') fp32 log-softmax rows; target_ids, target_probs (M, S): row m's target tokens and their
    probabilities (padding: probability 0). A one-hot row (the token itself, probability 1) gives the plain
    log-prob, so -sum of this is the usual NLL, and with soft rows the cross-entropy H(q, p) of group_targets.
    Worked example: logps row log [0.5, 0.25, 0.25], ids [0, 1], probs [0.75, 0.25] -> 0.75 log 0.5 + 0.25 log 0.25.
    """
    return (logps.gather(1, target_ids) * target_probs).sum(1)


def valid_id_logps(logps, valid_ids, valid_mask):
    """log sum_{v in valid} p(v): the log-probability that the token at each position is one the catalogue allows.

    logps (Q, V') fp32 log-softmax rows at Q answer ID tokens; valid_ids (Q, S) the token ids of the codes the ID trie
    allows after each position's fed prefix (ranking.IDTrie.allowed), valid_mask (Q, S) False on padding. Every row
    holds at least the answer's own token, so every value is finite and <= that token's log-prob. Its gradient on
    a logit is p_v - [v valid] p_v / P_valid: every invalid token is pushed down by its probability, every valid one
    up in proportion to its own, so the valid codes keep their ratios (their order, the ranking) while the mass off
    the trie, which is what an unconstrained decoder hallucinates from, goes to them.
    Worked example: one row log [0.5, 0.3, 0.2], valid ids [0, 2] -> log 0.7.
    """
    return torch.logsumexp(logps.gather(1, valid_ids).masked_fill(~valid_mask, float("-inf")), dim=1)


def validity_table(targets, kinds, row, vocab, trie):
    """The positions of the answers' ID tokens and the codes allowed there, for valid_id_logps.

    targets, kinds, row (M,): each supervised token, its kind (1 answer, PROMPT_ID) and row, in the order
    answer_logits gathers them (a row's answer tokens consecutive: its L IDs, then the end token); trie: the
    catalogue's ranking.IDTrie (catalogue_trie). Returns where (Q,) indices into M, ids
    and mask (Q, S): at the l-th ID of an answer, the level-l tokens of the codes allowed after its first l codes.
    Example (L 2, K 4, tracks (0, 1), (0, 3), (2, 0)): an answer (0, 3) -> at its first token the tokens of codes
    [0, 2] of level 0, at its second those of [1, 3] of level 1; the end token none.
    """
    L, K = vocab.levels, vocab.codebook_size
    where, allowed, first = [], [], {}
    for m, (k, r) in enumerate(zip(kinds.tolist(), row.tolist())):
        if k == 1:
            first.setdefault(r, m)
    toks = targets.tolist()
    for r, m0 in first.items():
        codes = tuple(vocab.level_code(t)[1] for t in toks[m0:m0 + L])
        for l in range(L):
            kids = trie.allowed(codes[:l])
            if not len(kids):
                raise UserError(f"an answer's Semantic ID {codes} is not in the catalogue's ID table")
            where.append(m0 + l)
            allowed.append(vocab.offset + l * K + kids)
    S = max(len(a) for a in allowed)
    ids = torch.zeros(len(allowed), S, dtype=torch.long)
    mask = torch.zeros(len(allowed), S, dtype=torch.bool)
    for q, a in enumerate(allowed):
        ids[q, :len(a)], mask[q, :len(a)] = a, True
    dev = targets.device
    return torch.tensor(where, dtype=torch.long, device=dev), ids.to(dev), mask.to(dev)


def catalogue_trie(meta):
    """The ranking's ID trie of the catalogue's Semantic IDs (meta's semantic_ids table), for the validity term."""
    if "semantic_ids" not in meta:
        raise UserError("the data's meta.json names no semantic_ids table (data.py writes it): the validity term "
                        "needs the catalogue's Semantic IDs")
    return ranking.IDTrie(formats.load_semantic_ids(meta["semantic_ids"])[1].tolist(), meta["levels"])


def target_table(targets, kinds, row, soft):
    """The (M, S) target ids and probabilities of the M supervised tokens for expected_logps: one-hot (the token
    itself) everywhere, except the answer's first tokens of the rows with soft targets.

    targets, kinds, row (M,): each supervised token, its kind (1 answer, PROMPT_ID) and its row, in the order
    answer_logits gathers them (row by row, left to right); soft: per row, None or [(ids, probs)] for its answer's
    first tokens (group_targets). Each soft distribution must hold the token itself (the answer is one of its group).
    """
    items = [((t,), (1.0,)) for t in targets.tolist()]
    first = {}                                      # row -> index of its first answer token
    for m, (k, r) in enumerate(zip(kinds.tolist(), row.tolist())):
        if k == 1:
            first.setdefault(r, m)
    for r, m0 in first.items():
        for j, (ids, probs) in enumerate(soft[r] or ()):
            assert targets[m0 + j].item() in ids, "a soft target without the answer's own token"
            items[m0 + j] = (ids, probs)
    S = max(len(ids) for ids, _ in items)
    target_ids = torch.zeros(len(items), S, dtype=torch.long)
    target_probs = torch.zeros(len(items), S)
    for m, (ids, probs) in enumerate(items):
        target_ids[m, :len(ids)] = torch.as_tensor(ids)
        target_probs[m, :len(ids)] = torch.as_tensor(probs, dtype=torch.float32)
    return target_ids.to(targets.device), target_probs.to(targets.device)


def answer_logits(model, input_ids, attention_mask, loss_mask):
    """fp32 logits at the positions that predict a supervised token, and those tokens.

    input_ids, attention_mask, loss_mask: (B, T); loss_mask is nonzero on the supervised tokens (the answer's; and
    the prompt's Semantic IDs when sft_loss weights them). Returns logits (M, V'), targets (M,) and row (M,), the
    sequence each belongs to; M = loss_mask[:, 1:].bool().sum().
    """
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state   # (B, T, H)
    return logits_at_answers(model, hidden, input_ids, loss_mask)


def logits_at_answers(model, hidden, input_ids, loss_mask):
    """hidden (B, T, H) of input_ids (B, T) -> logits (M, V'), targets (M,), row (M,) at the answer tokens."""
    target_mask = loss_mask[:, 1:].bool()   # the shifted mask: position t predicts token t + 1      (B, T-1)
    # the vocabulary projection (49k-128k columns, the dominant cost of short answers) runs on the M answer
    # positions only, not on all B * T; in fp32, because a log-softmax over 49k+ classes in bf16 is too coarse
    prev = M.head_prev(model, input_ids[:, :-1])    # the tokens up to each position: the ID prefix it continues
    logits = M.head_logits(model, hidden[:, :-1][target_mask], None if prev is None else prev[target_mask])  # (M, V')
    targets = input_ids[:, 1:][target_mask]                                                      # (M,)
    row = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(target_mask)[target_mask]
    return logits, targets, row


def token_logps(logits, targets, table=None):
    """(M,) log p of each target token from its fp32 logits row (M, V'), or with table (target_table's (M, S) ids and
    probabilities) the expected log-prob under those targets (expected_logps)."""
    logps = torch.log_softmax(logits, dim=-1)
    return logps.gather(1, targets[:, None]).squeeze(1) if table is None else expected_logps(logps, *table)


def answer_logps(model, input_ids, attention_mask, loss_mask, table=None):
    """Log-probabilities of the answer tokens: log p(y_t | x, y_<t), (M,) fp32, and row (M,); with table (the
    (M, S) ids and probabilities of target_table), their expectation under those targets (expected_logps)."""
    logits, targets, row = answer_logits(model, input_ids, attention_mask, loss_mask)
    return token_logps(logits, targets, table), row


def answer_logps_shared_prefix(model, input_ids, attention_mask, loss_mask, shared_prefix, table=None):
    """answer_logps, faster when the first `shared_prefix` = P tokens are the same in every row (the chat
    template's opening) and unsupervised: they run once, as a batch of one, and the rows continue from that KV
    cache, which carries the gradient back to it. The same values (tests/test_sft.py)."""
    logits, targets, row = answer_logits_shared_prefix(model, input_ids, attention_mask, loss_mask, shared_prefix)
    return token_logps(logits, targets, table), row


def answer_logits_shared_prefix(model, input_ids, attention_mask, loss_mask, shared_prefix):
    """answer_logits, the shared prefix run once (answer_logps_shared_prefix)."""
    P, B = shared_prefix, input_ids.shape[0]
    cache = model.model(input_ids=input_ids[:1, :P], use_cache=True).cache
    cache.reorder_cache(torch.zeros(B, dtype=torch.long, device=input_ids.device))   # one prefix, B rows
    pos = torch.arange(P, input_ids.shape[1], device=input_ids.device).expand(B, -1)
    hidden = model.model(input_ids=input_ids[:, P:], attention_mask=attention_mask, position_ids=pos,
                         cache=cache, use_cache=True).last_hidden_state                      # (B, T-P, H)
    return logits_at_answers(model, hidden, input_ids[:, P:], loss_mask[:, P:])


def prompt_answer_hidden(model, prompts, answers, prompt_of, pad_id, device, shared_prefix=0):
    """One forward of B prompts, a second of N answers continuing them from the prompts' KV cache.

    prompts: B token lists; answers: N token lists, answer n continuing prompt prompt_of[n]. A prompt with several
    answers runs once (its cache rows are repeated for them, and every answer's gradient flows back into that one
    prompt computation). shared_prefix = P > 0: the prompts' first P tokens are the same (the chat template's
    opening) and run once, as a batch of one, the prompts continuing from its cache (answer_logps_shared_prefix).
    Returns the prompts after the prefix, left-padded (ids, mask: (B, Tp)), the right-padded answers (ids, mask:
    (N, A)) and the hidden states that predict them, p_h (B, Tp, H) and a_h (N, A, H): x_h[n, j] predicts
    x_ids[n, j]. p_mask is 0 where nothing predicts the token (padding; a prompt's first token without a prefix).
    """
    P, B = shared_prefix, len(prompts)
    ids, attn, pos = (t.to(device) for t in M.left_pad([p[P:] for p in prompts], pad_id))       # (B, Tp)
    cache, seen = None, attn                     # seen: the attention mask over everything in the cache so far
    if P:
        pre = model.model(input_ids=torch.tensor([prompts[0][:P]], device=device), use_cache=True)
        cache = pre.cache
        cache.reorder_cache(torch.zeros(B, dtype=torch.long, device=device))           # one prefix, B rows
        seen, pos = torch.cat([torch.ones_like(attn[:, :1]).expand(B, P), attn], dim=1), pos + P
    out = model.model(input_ids=ids, attention_mask=seen, position_ids=pos, cache=cache, use_cache=True)
    h = out.last_hidden_state                                                                    # (B, Tp, H)
    # prompt token j is predicted by position j - 1; a prompt's first real token by the prefix's last position
    first = attn.bool() & ~torch.cat([torch.zeros_like(attn[:, :1]), attn[:, :-1]], dim=1).bool()   # (B, Tp)
    before = pre.last_hidden_state[:, -1:].expand(B, 1, -1) if P else torch.zeros_like(h[:, :1])
    p_h = torch.where(first[..., None], before, torch.cat([before, h[:, :-1]], dim=1))
    p_mask = attn if P else attn * ~first
    a_ids, a_mask, _ = (t.to(device) for t in M.pad_batch(answers, pad_id))                    # (N, A)
    rows = torch.as_tensor(prompt_of, device=device)                                             # (N,)
    cache = out.cache
    cache.reorder_cache(rows)                                                        # rows: each answer's prompt
    h_ans = model.model(input_ids=a_ids, attention_mask=torch.cat([seen[rows], a_mask], dim=1),
                        position_ids=pos[rows, -1:] + 1 + torch.arange(a_ids.shape[1], device=device),
                        cache=cache, use_cache=True).last_hidden_state              # (N, A, H)
    a_h = torch.cat([h[rows, -1:], h_ans[:, :-1]], dim=1)   # the prompt's last position predicts answer token 0
    return ids, p_mask, p_h, a_ids, a_mask, a_h


def answer_prev(model, p_ids, prompt_of, a_ids):
    """head_prev of prompt_answer_hidden's answer positions: a_h[n, j] sits on the token before a_ids[n, j] (the
    prompt's last for j = 0) -> (N, A, L-1), or None for the plain head."""
    seq = torch.cat([p_ids[torch.as_tensor(prompt_of, device=p_ids.device)], a_ids[:, :-1]], 1)
    prev = M.head_prev(model, seq)
    return None if prev is None else prev[:, p_ids.shape[1] - 1:]


def prompt_prev(model, p_ids):
    """head_prev of prompt_answer_hidden's prompt positions: p_h[b, j] sits on p_ids[b, j - 1] -> (B, Tp, L-1)."""
    return M.head_prev(model, torch.cat([torch.full_like(p_ids[:, :1], -1), p_ids[:, :-1]], 1))


def grouped_loss(model, chunks, pad_id, n_tokens, device, vocab=None, prompt_id_weight=0.0, shared_prefix=0):
    """sft_loss of examples that share prompts, each prompt run once (--answers-per-prompt).

    chunks: [(prompt, [answer, ...])], a prompt and the answers of the examples asked with it (a context track's
    next plays, other sessions and listeners). Equal to sft_loss over the expanded examples [(prompt, answer),
    ...] (tests/test_sft.py): every answer token once, and the prompt's Semantic-ID tokens, which the plain path
    scores once per example, once here at k times the weight for a prompt with k answers. The prompt is ~85% of
    an example's tokens, so a chunk of k answers costs about what 1 + k / 5 examples cost. shared_prefix: as in
    sft_loss, the chat template's opening run once for the whole batch.
    """
    prompts = [p for p, _ in chunks]
    answers = [a for _, ans in chunks for a in ans]
    prompt_of = [i for i, (_, ans) in enumerate(chunks) for _ in ans]
    p_ids, p_mask, p_h, a_ids, a_mask, a_h = prompt_answer_hidden(model, prompts, answers, prompt_of, pad_id,
                                                                  device, shared_prefix)
    mask = a_mask.bool()
    prev = answer_prev(model, p_ids, prompt_of, a_ids)
    logits = M.head_logits(model, a_h[mask], None if prev is None else prev[mask])               # (M, V') fp32
    nll = -torch.log_softmax(logits, -1).gather(1, a_ids[mask][:, None]).sum()
    if prompt_id_weight and vocab is not None:   # the prompt's own Semantic-ID tokens, where something predicts them
        target = vocab.is_id_token(p_ids) & p_mask.bool()                                        # (B, Tp)
        prev = prompt_prev(model, p_ids)
        logits = M.head_logits(model, p_h[target], None if prev is None else prev[target])
        logps = torch.log_softmax(logits, -1).gather(1, p_ids[target][:, None]).squeeze(1)
        k = torch.tensor([len(ans) for _, ans in chunks], device=p_ids.device)[:, None].expand_as(target)[target]
        nll = nll - prompt_id_weight * (k.to(logps.dtype) * logps).sum()
    return nll / n_tokens


def sft_loss(model, pairs, pad_id, n_tokens, device, shared_prefix=0, vocab=None, prompt_id_weight=0.0, soft=None,
             valid_id_weight=0.0, trie=None):
    """weighted_nll of `pairs`: the answer tokens' NLL, plus prompt_id_weight x that of the prompts' Semantic-ID
    tokens (`vocab` says which they are), divided by `n_tokens`, the answer-token count of the whole accumulated
    batch, so micro-batching does not change the gradient.

    shared_prefix: length of the chat template's opening that every prompt starts with; > 0 computes it once per
    batch instead of once per example (answer_logps_shared_prefix), 0 runs the plain answer_logps.
    soft: per pair, None or the soft targets of its answer's ID tokens (group_targets); the loss then takes those
    tokens' cross-entropy with them instead of their NLL (expected_logps).
    valid_id_weight > 0 (with `vocab` and `trie`, the catalogue's ranking.IDTrie): minus that weight times the sum of
    valid_id_logps at the answers' ID tokens is added, over the same divisor.
    """
    ids, attn, loss_mask = (t.to(device) for t in collate(pairs, pad_id, vocab if prompt_id_weight else None))
    shifted = loss_mask[:, 1:]   # the targets, their kinds and rows, in the order the log-probs are gathered
    kinds = shifted[shifted.bool()]
    targets = ids[:, 1:][shifted.bool()]
    row = torch.arange(len(pairs), device=ids.device)[:, None].expand_as(shifted)[shifted.bool()]
    table = target_table(targets, kinds, row, soft) if soft is not None and any(x is not None for x in soft) \
        else None
    if shared_prefix:
        logits, _, _ = answer_logits_shared_prefix(model, ids, attn, loss_mask, shared_prefix)
    else:
        logits, _, _ = answer_logits(model, ids, attn, loss_mask)
    loss = weighted_nll(token_logps(logits, targets, table), kinds, prompt_id_weight, n_tokens)
    if valid_id_weight:
        where, valid_ids, valid_mask = validity_table(targets, kinds, row, vocab, trie)
        valid = valid_id_logps(torch.log_softmax(logits[where], -1), valid_ids, valid_mask)
        loss = loss - valid_id_weight * valid.sum() / n_tokens
    return loss


@torch.no_grad()
def evaluate(model, pairs, pad_id, vocab, device, batch_size):
    """Validation loss per answer token and ID accuracy (all L ID tokens argmax-correct, teacher forced)."""
    model.eval()
    nll, n_tok, correct = 0.0, 0, 0
    L = vocab.levels
    for s in ddp.shard(range(0, len(pairs), batch_size)):   # under torchrun: this rank's batches
        chunk = pairs[s:s + batch_size]
        ids, attn, loss_mask = (t.to(device) for t in collate(chunk, pad_id))
        logits, targets, _ = answer_logits(model, ids, attn, loss_mask)          # (M, V') fp32, (M,)
        logps = token_logps(logits, targets)
        nll -= logps.sum().item()
        n_tok += len(targets)
        hit = (logits.argmax(-1) == targets).view(len(chunk), L + 1)[:, :L]     # answers are L IDs + end
        correct += hit.all(1).sum().item()
    nll, n_tok, correct = ddp.sum_all([nll, n_tok, correct])
    model.train()
    return {"val/loss": nll / n_tok, "val/id_accuracy": correct / len(pairs)}


def trainable_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def description_rows(model, tokenizer, meta):
    """(L * K, H) starting ID rows from the words of each code's tracks (model.id_rows_from_descriptions)."""
    cat, _ = formats.load_catalog(meta["catalog"])
    track_ids, codes = formats.load_semantic_ids(meta["semantic_ids"])
    index = cat.index()
    missing = [t for t in track_ids if t not in index]
    if missing:
        raise UserError(f"{meta['semantic_ids']}: track {missing[0]} is not in {meta['catalog']} "
                        f"({len(missing)} such): --id-init descriptions needs every ID's track in the catalogue")
    # a leading space: the words as they occur inside a request ("Play something rock"), not at a line's start
    words = [" " + tasks.track_words(cat, index[t]) for t in track_ids]
    track_tokens = tokenizer(words, add_special_tokens=False)["input_ids"]
    return M.id_rows_from_descriptions(model.get_input_embeddings().weight, track_tokens, codes,
                                       meta["codebook_size"])


def track_vectors_of(meta):
    """(vectors (N, D), codes (N, L)): rvq.py's track vectors and the Semantic IDs of the same tracks."""
    _, codes = formats.load_semantic_ids(meta["semantic_ids"])
    return rvq.load_track_vectors(meta["rvq"], len(codes)), codes


def build_policy(args, meta, device, id_init="mean", init_adapter="", track=None):
    """Base model + ID tokens + LoRA; only LoRA and the new rows are trainable.

    id_init "mean": every ID row starts at the mean embedding; "descriptions": at the words of its tracks
    (description_rows; needs meta's catalog and semantic_ids); "codebook": at the mean embedding plus its RVQ
    codebook vector, rotated into the embedding space (model.id_rows_from_codebooks; needs meta's rvq).
    args.track_vectors: the track-vector token (model.TrackFeatures), its vectors `track` = (vectors, codes), else
    track_vectors_of(meta); args.answer_vectors: the head's answer features (model.AnswerFeatures) of the same.
    """
    if init_adapter:
        return policy_from_adapter(args, meta, device, init_adapter, id_init, track)
    model, tokenizer, vocab = M.load_policy(args.model, levels=meta["levels"], codebook_size=meta["codebook_size"],
                                            device=device, untie=args.untie_id_rows)
    if id_init == "descriptions":
        M.set_id_rows(model, description_rows(model, tokenizer, meta))
    elif id_init == "codebook":
        books = rvq.load_rvq(meta["rvq"])["codebooks"]
        M.set_id_rows(model, M.id_rows_from_codebooks(model.get_input_embeddings().weight, books, seed=args.seed))
    lora.inject_lora(model, targets=tuple(args.lora_targets), r=args.lora_r, alpha=args.lora_alpha,
                     dropout=args.lora_dropout, use_rslora=args.use_rslora)
    if args.track_vectors:
        M.add_track_features(model, vocab, *(track or track_vectors_of(meta)))
    if args.answer_vectors:
        M.add_answer_features(model, *(track or track_vectors_of(meta)), kernel=args.answer_kernel)
    for p in M.id_parameters(model) + M.track_feature_parameters(model) + M.answer_kernel_parameters(model):
        p.requires_grad_(True)
    model.to(device)
    return model, tokenizer, vocab


def policy_from_adapter(args, meta, device, init_adapter, id_init="mean", track=None):
    """build_policy's model started from a trained adapter (--init-adapter): its LoRA matrices, ID rows and ID bias,
    trained again (the bias where --id-bias-lr asks). The adapter must be of this ID table and base model
    (load_policy checks) and of the LoRA shape asked for (--lora-r, --lora-alpha, --lora-targets, --use-rslora), so
    that the adapter this run writes says what it is; --lora-dropout may differ (it is not a weight)."""
    if id_init != "mean":
        raise UserError(f"--id-init {id_init} and --init-adapter: the ID rows start at the adapter's; pass one")
    config = lora.read_adapter_config(init_adapter)
    asked = {"r": args.lora_r, "lora_alpha": args.lora_alpha, "target_modules": sorted(args.lora_targets),
             "use_rslora": args.use_rslora}
    got = {"r": config["r"], "lora_alpha": config["lora_alpha"], "target_modules": sorted(config["target_modules"]),
           "use_rslora": config.get("use_rslora", False)}
    if asked != got:
        diff = ", ".join(f"{k} {got[k]} (asked {asked[k]})" for k in asked if asked[k] != got[k])
        raise UserError(f"--init-adapter {init_adapter}: trained with LoRA {diff}; pass its options")
    # the examples' ID table (load_policy refuses an adapter of another one, so levels and codes match too)
    model, tokenizer, vocab = M.load_policy(args.model, adapter=init_adapter, id_table_sha=meta["id_table_sha256"],
                                            device=device, dropout=args.lora_dropout, untie=args.untie_id_rows)
    if args.track_vectors and model.get_input_embeddings().track_features is None:   # an adapter without the token
        M.add_track_features(model, vocab, *(track or track_vectors_of(meta)))
    if args.answer_vectors and model.lm_head.answer_features is None:   # an adapter trained without them
        M.add_answer_features(model, *(track or track_vectors_of(meta)), kernel=args.answer_kernel).to(device)
    if args.answer_kernel and not model.lm_head.answer_features.kernel:
        raise UserError(f"--init-adapter {init_adapter}: its answer features have no kernel terms; drop "
                        "--answer-kernel or start without the adapter")
    for p in M.id_parameters(model) + M.track_feature_parameters(model) + M.answer_kernel_parameters(model):
        p.requires_grad_(True)
    return model, tokenizer, vocab


def check_rates(rates):
    """{option: learning rate}: one line naming the first negative one (0 is allowed: it freezes what it moves)."""
    for flag, rate in rates.items():
        if rate < 0:
            raise UserError(f"{flag} {rate:g}: a learning rate is at least 0")


def make_optimizer(model, lr, id_lr, weight_decay=WEIGHT_DECAY, id_bias_lr=0.0, track_lr=None):
    """AdamW over the LoRA matrices and the new ID rows, each group with its own peak rate (and the head's per-code
    ID bias, a group of its own, where id_bias_lr > 0: dpo.py trains it; and the track-vector projection, at
    track_lr, None: the LoRA's rate)."""
    bias = model.lm_head.id_bias
    track = M.track_feature_parameters(model)
    kernel = M.answer_kernel_parameters(model)
    own = {id(p) for p in M.id_parameters(model) + track + kernel} | {id(bias)}
    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad and id(p) not in own], "lr": lr},
        # optimizer state exists only for these rows, never for the full embedding; the answer kernel's numbers
        # start at 0 and must move as far as the rows do
        {"params": [p for p in M.id_parameters(model) + kernel if p.requires_grad], "lr": id_lr},
        {"params": [p for p in track if p.requires_grad], "lr": lr if track_lr is None else track_lr},
    ]
    if id_bias_lr > 0:   # one number per code moves at a rate no (L*K, H) row could take
        groups.append({"params": [bias], "lr": id_bias_lr})
    groups = [g for g in groups if g["params"]]   # dpo.py freezes what a rate of 0 would never move
    for g in groups:
        g["initial_lr"] = g["lr"]
    return torch.optim.AdamW(groups, weight_decay=weight_decay, betas=(0.9, 0.999))


def load_checkpoint(path, model, opt, device):
    """Restore trainable tensors, optimizer and RNG; returns (step, best, history)."""
    # on the CPU first: the RNG states must stay CPU ByteTensors; copy_ and the optimizer move the rest
    ck = torch.load(path, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in ck["trainable"].items():
            params[n].copy_(t)
    opt.load_state_dict(ck["optimizer"])
    if ddp.is_main():
        torch.set_rng_state(ck["torch_rng"])  # dropout masks continue as if never interrupted
        if ck.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])   # dropout on a GPU draws from the CUDA generators
        print(f"resumed from step {ck['step']}")
    elif ddp.rank() < len(ck.get("rank_rngs", [])):   # under torchrun, each rank its own generators
        cpu_rng, cuda_rng = ck["rank_rngs"][ddp.rank()]
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng)
    # (a rank the saving run did not have keeps the stream its seed started: see train)
    return ck["step"], ck["best"], ck["history"]


def restore_best(model, best):
    """Copy the best validation state back into the model; one clear line if no validation was ever finite."""
    if best.get("state") is None:
        raise UserError("no finite validation loss in the whole run (every one was NaN or inf): no adapter "
                        "to save; lower --lr / --id-lr or check the data")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in best["state"].items():
            params[n].copy_(t)


def save_checkpoint(path, model, opt, step, best, history, fingerprint):
    """Rank 0 writes; under torchrun every rank must call it, to hand over its RNG states."""
    extra = {}
    if ddp.world_size() > 1:     # each rank's generators (its dropout masks), so a resume continues them all
        extra["rank_rngs"] = ddp.gather([(torch.get_rng_state(), torch.cuda.get_rng_state()
                                          if torch.cuda.is_initialized() else None)])
    if not ddp.is_main():
        return
    with atomic_path(path) as tmp:
        torch.save({"step": step, "trainable": trainable_state(model), "optimizer": opt.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "best": best, "history": history,
                    "fingerprint": fingerprint, **extra}, tmp)


def run_fingerprint(args, files, ignore=("resume", "device", "out")):
    """What a checkpoint must have been made with to be resumed: input files and options."""
    opts = {k: v for k, v in sorted(vars(args).items()) if k not in ignore}
    return json.dumps({"files": {os.path.basename(f): M.file_sha256(f) for f in files}, "options": opts},
                      sort_keys=True)


def resumable(path, fingerprint):
    """True if `path` is a checkpoint of this very run; a stale one (other inputs) is set aside."""
    if not os.path.exists(path):
        return False
    ck = torch.load(path, map_location="cpu", weights_only=False)
    ddp.barrier()       # every rank has read it before rank 0 may set it aside
    if ck.get("fingerprint") == fingerprint:
        return True
    if ddp.is_main():
        print(f"{path} was made from other inputs or options: starting over")
        os.replace(path, path + ".stale")
    return False


def train(args):
    device = ddp.setup(M.pick_device(args.device))   # under torchrun: join the other processes
    if args.batch_size % ddp.world_size():
        raise UserError(f"--batch-size {args.batch_size} does not split into {ddp.world_size()} equal shares")
    check_rates({"--lr": args.lr, "--id-lr": args.id_lr, "--id-bias-lr": args.id_bias_lr,
                 "--track-lr": args.track_lr or 0.0})
    meta = read_json(os.path.join(args.data, "meta.json"), "SFT data meta.json")
    # a missing file stops before any work
    track = track_vectors_of(meta) if args.track_vectors or args.answer_vectors else None
    train_ex = read_jsonl(os.path.join(args.data, "train.jsonl"))
    val_ex = read_jsonl(os.path.join(args.data, "val.jsonl"))
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    if os.path.exists(ckpt_path) and not args.resume:
        raise UserError(f"{ckpt_path} exists: pass --resume to continue it, or remove {args.out}")
    seed_everything(args.seed + ddp.rank())   # rank 0 draws what one process draws; the others their own masks
    model, tokenizer, vocab = build_policy(args, meta, device, id_init=args.id_init, init_adapter=args.init_adapter,
                                           track=track)
    ddp.broadcast_([p for p in model.parameters() if p.requires_grad])   # one start: rank 0's LoRA init
    fmt = M.PromptFormat(tokenizer, vocab)
    pad_id = M.pad_id_of(tokenizer)
    train_pairs = tokenize_examples(train_ex, fmt, os.path.join(args.data, "train.jsonl"))
    rng = np.random.default_rng(args.seed)
    val_idx = rng.permutation(len(val_ex))[:args.eval_examples]
    val_pairs = [tokenize_examples([val_ex[i]], fmt)[0] for i in sorted(val_idx)]
    trainable, total = lora.count_parameters(model)
    if ddp.is_main():
        print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%); "
              f"{len(train_pairs):,} train / {len(val_pairs):,} val examples; device {device}"
              + (f" x {ddp.world_size()} processes" if ddp.world_size() > 1 else ""))
        save_config(args.out, args, meta=meta, trainable_parameters=trainable)

    soft = answer_targets(args.answer_targets, args.data, meta, train_ex, train_pairs, fmt, args.teacher,
                          args.teacher_weight)
    if soft is not None:   # each answer token trained toward its group's answers (group_targets)
        if ddp.is_main():
            print(f"group targets: {sum(x is not None for x in soft):,} of {len(soft):,} examples trained toward the "
                  "answers of every example asked the same thing")
    grouped = args.answers_per_prompt > 1
    if args.valid_id_weight < 0:
        raise UserError(f"--valid-id-weight {args.valid_id_weight:g}: a weight is at least 0")
    if args.valid_id_weight and grouped:
        raise UserError("--valid-id-weight and --answers-per-prompt > 1: the grouped loss has no validity term; "
                        "pass one of them")
    trie = catalogue_trie(meta) if args.valid_id_weight else None   # which codes may follow each prefix
    if grouped:   # a step: --batch-size prompts, each with up to --answers-per-prompt answers (grouped_loss)
        groups = prompt_groups(train_ex, train_pairs, vocab)
        schedule = chunk_schedule(groups, args.steps, args.batch_size, args.answers_per_prompt, args.seed)
        if ddp.is_main():
            print(f"{len(groups):,} groups of examples that share a prompt's context; up to "
                  f"{args.answers_per_prompt} answers a prompt")
    else:
        schedule = batch_schedule([len(p) + len(a) for p, a in train_pairs], args.steps, args.batch_size,
                                  args.seed)
    model.lm_head.id_bias.requires_grad_(args.id_bias_lr > 0)
    opt = make_optimizer(model, args.lr, args.id_lr, args.weight_decay, args.id_bias_lr, args.track_lr)
    step, best, history = 0, {"val/loss": float("inf"), "step": -1, "state": None}, []
    inputs = ("train.jsonl", "val.jsonl", "meta.json") + ((formats.ATTRIBUTE_ANSWERS,) if soft is not None else ()) \
        + (("listening_stats.npz",) if args.answer_targets == "colisten" else ())
    starts = [os.path.join(args.init_adapter, n) for n in (lora.ADAPTER_WEIGHTS, M.ID_TOKENS_FILE)] \
        if args.init_adapter else []   # a checkpoint resumes only the run that started from these very weights
    teacher = [args.teacher] if args.answer_targets == "teacher" else []
    fingerprint = run_fingerprint(args, [os.path.join(args.data, n) for n in inputs] + starts + teacher)
    if args.resume and resumable(ckpt_path, fingerprint):
        step, best, history = load_checkpoint(ckpt_path, model, opt, device)
    log_path = os.path.join(args.out, "log.jsonl")
    if ddp.is_main():
        with atomic_path(log_path) as tmp:  # the log holds exactly the checkpoint's history
            with open(tmp, "w") as f:
                f.writelines(json.dumps(h) + "\n" for h in history)
    model.train()
    params = [p for g in opt.param_groups for p in g["params"]]
    n_train_tok = n_seen = 0
    t0 = time.time()
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, desc="sft", disable=ddp.bar_off())
    for step in bar:
        if grouped:   # (prompt, [answers]): the chunk's first example asks, every example of it answers
            batch = [(train_pairs[c[0]][0], [train_pairs[i][1] for i in c]) for c in schedule[step]]
            n_tok = sum(len(a) for _, answers in batch for a in answers)
        else:
            batch = [train_pairs[i] for i in schedule[step]]
            n_tok = sum(len(a) for _, a in batch)   # of the whole batch: every rank divides by it
        mine = ddp.shard(batch)                 # under torchrun: this rank's share of the batch
        mine_soft = ddp.shard([soft[i] for i in schedule[step]]) if soft is not None else None
        # forward and backward, micro-batch by micro-batch: the gradients accumulate over the whole batch
        loss_sum = 0.0
        for s in range(0, len(mine), args.micro_batch_size):
            with M.autocast(device):
                if grouped:
                    loss = grouped_loss(model, mine[s:s + args.micro_batch_size], pad_id, n_tok, device,
                                        vocab=vocab, prompt_id_weight=args.prompt_id_weight,
                                        shared_prefix=len(fmt.prefix))
                else:
                    loss = sft_loss(model, mine[s:s + args.micro_batch_size], pad_id, n_tok, device,
                                    shared_prefix=len(fmt.prefix), vocab=vocab,
                                    prompt_id_weight=args.prompt_id_weight,
                                    soft=mine_soft and mine_soft[s:s + args.micro_batch_size],
                                    valid_id_weight=args.valid_id_weight, trie=trie)
            loss.backward()
            loss_sum += loss.item()
        ddp.sum_grads(params)                   # the shares' gradients add up to the whole batch's
        loss_sum = ddp.sum_all([loss_sum])[0]
        # clip, then one optimizer step at this step's learning rate (linear warm-up, then cosine decay)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip).item()
        mult = lr_at(step, args.steps, args.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * mult
        opt.step()
        opt.zero_grad(set_to_none=True)
        if grouped:   # the tokens the forwards ran: a prompt once, then its answers
            n_train_tok += sum(len(p) + sum(len(a) for a in answers) for p, answers in batch)
            n_seen += sum(len(answers) for _, answers in batch)
        else:
            n_train_tok += sum(len(p) + len(a) for p, a in batch)
            n_seen += len(batch)
        rec = {"step": step + 1, "loss": loss_sum, "grad_norm": grad_norm, "lr": args.lr * mult,
               "tokens_per_s": n_train_tok / (time.time() - t0), "examples_per_s": n_seen / (time.time() - t0)}
        # every eval_every steps: validate, keep the best weights so far, write a checkpoint to resume from
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            rec.update(evaluate(model, val_pairs, pad_id, vocab, device, args.micro_batch_size))
            if rec["val/loss"] < best["val/loss"]:
                best = {"val/loss": rec["val/loss"], "val/id_accuracy": rec["val/id_accuracy"],
                        "step": step + 1, "state": {k: v.cpu() for k, v in trainable_state(model).items()}}
            if ddp.is_main():
                tqdm.write(f"step {step + 1}: loss {loss_sum:.3f}, val loss {rec['val/loss']:.3f}, "
                           f"val ID accuracy {rec['val/id_accuracy']:.3f}")
        history.append(rec)
        if ddp.is_main():
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{loss_sum:.3f}")
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            save_checkpoint(ckpt_path, model, opt, step + 1, best, history, fingerprint)
    bar.close()
    summary = {"best_step": best["step"], "val/loss": best["val/loss"],
               "val/id_accuracy": best.get("val/id_accuracy"), "steps": args.steps,
               "train_examples": len(train_pairs), "answers_per_prompt": args.answers_per_prompt,
               "examples_seen": int(sum(len(c) for st in schedule for c in st)) if grouped
               else int(args.steps * args.batch_size)}
    if not ddp.is_main():
        return summary
    restore_best(model, best)  # the best validation state becomes the adapter
    with atomic_dir(os.path.join(args.out, "adapter")) as tmp:
        M.save_policy(model, vocab, tmp, args.model, meta["id_table_sha256"])
    write_json(os.path.join(args.out, "summary.json"), summary)
    print(f"best validation loss {best['val/loss']:.4f} at step {best['step']}; "
          f"adapter in {os.path.join(args.out, 'adapter')}")
    return summary


def add_lora_args(p):
    p.add_argument("--lora-r", type=int, default=lora.LORA_R,
                   help="rank r of the LoRA update B @ A (default %(default)s)")
    p.add_argument("--lora-alpha", type=float, default=lora.LORA_ALPHA,
                   help="LoRA scaling numerator: the update is (alpha / r) * B @ A, or (alpha / sqrt(r)) * B @ A with "
                        "--use-rslora (default %(default)s)")
    p.add_argument("--lora-dropout", type=float, default=lora.LORA_DROPOUT,
                   help="dropout on the LoRA branch's input only; the frozen path sees clean inputs. Off by "
                        "default: a short run sees each example about once, and the masks cost a quarter of a "
                        "CPU step (default %(default)s)")
    p.add_argument("--use-rslora", action="store_true", default=lora.USE_RSLORA,
                   help="scale the update by alpha / sqrt(r) (rsLoRA), which keeps its size stable as r grows")
    p.add_argument("--lora-targets", nargs="+", default=list(lora.LORA_TARGETS),
                   help="Llama projections that get LoRA adapters (default %(default)s; PEFT's own default would be "
                        "q_proj and v_proj only)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder with train.jsonl, val.jsonl, meta.json")
    p.add_argument("--out", required=True, help="output folder (adapter/, log.jsonl, checkpoint.pt, summary.json)")
    p.add_argument("--model", default=MODEL, help="local Hugging Face Llama folder")
    p.add_argument("--steps", type=int, default=STEPS,
                   help="optimizer steps (default %(default)s: about 7 minutes for SmolLM2-135M on 2 cores)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="examples per optimizer step; under torchrun, split evenly among the processes "
                        "(default %(default)s)")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help=f"examples per forward (default: the batch size, at most {MICRO_BATCH_SIZE}); "
                        "gradients are accumulated up to --batch-size")
    p.add_argument("--answers-per-prompt", type=int, default=ANSWERS_PER_PROMPT,
                   help="above 1: a step is --batch-size prompts (--micro-batch-size counts prompts too), each "
                        "with up to this many answers of the next-track examples after the same context track, the "
                        "prompt run once for all of them (grouped_loss: the prompt is ~85%% of an example's tokens, "
                        "so 2.4x the examples a CPU second, but in the same time it ranked no better: EXPERIMENTS.md, "
                        "'Several answers per SFT prompt'); 1: --batch-size examples, each with its own prompt "
                        "(default %(default)s)")
    p.add_argument("--answer-targets", choices=ANSWER_TARGETS, default=ANSWER_TARGET,
                   help="what each answer's Semantic-ID tokens are trained toward: 'example', the example's own "
                        "answer (the usual one-hot SFT); 'group', the answers of every training example asked the "
                        "same thing, level by level along the answer's prefix: a context track's next plays in the "
                        "training window, every track that answers an attribute request (data.py's "
                        f"{formats.ATTRIBUTE_ANSWERS}). The same expected loss with less noise per step; "
                        "'colisten': 'group', and a next-track answer also toward every track listened within three "
                        "plays of the context track in the training window, by count (listening_stats.npz, what "
                        "item kNN ranks by) (EXPERIMENTS.md, 'Group targets'; default %(default)s; the demo passes "
                        "'group', which with 32,000 attribute requests raised their precision@10 by 0.13-0.22 on "
                        "the test windows); 'teacher': 'group', and a next-track answer also toward the bar's "
                        "distribution of the context's next track (--teacher; EXPERIMENTS.md, 'The bar as SFT's "
                        "teacher': next tracks +0.000 to +0.045 on three validation windows, not the default)")
    p.add_argument("--teacher", default="",
                   help="with --answer-targets teacher: the npz of benchmarks/teacher_targets.py, content x "
                        "co-listening's top tracks after each context track, as probabilities")
    p.add_argument("--teacher-weight", type=float, default=TEACHER_WEIGHT,
                   help="with --answer-targets teacher: the teacher's mass beside the context's next plays, per play "
                        "(default %(default)s: half the target is the plays, half the teacher)")
    p.add_argument("--lr", type=float, default=LR,
                   help="peak learning rate of the LoRA matrices (default %(default)s: higher than the usual 2e-4, "
                        "since the run has few steps)")
    p.add_argument("--id-lr", type=float, default=ID_LR,
                   help="peak learning rate of the new Semantic-ID embedding rows (default %(default)s): they start "
                        "identical (the mean embedding) and must reach the scale of real embeddings within a few "
                        "hundred steps")
    p.add_argument("--id-bias-lr", type=float, default=ID_BIAS_LR,
                   help="peak learning rate of the output head's bias over the Semantic-ID tokens, one number per "
                        "(level, code) in every context: how often each code is answered, learned apart from the "
                        "rows (default %(default)s: off, the bias stays 0)")
    p.add_argument("--untie-id-rows", action="store_true", default=UNTIE_ID_ROWS,
                   help="give the head's ID rows their own parameters, apart from the rows a prompt's ID reads as "
                        "(tied, the head's gradient shapes both); the adapter then carries both")
    p.add_argument("--track-vectors", action="store_true", default=TRACK_VECTORS,
                   help="after each Semantic ID of a prompt, a token that reads that track's own vector (rvq.py's "
                        "track_vectors.safetensors: audio, genre, co-listening, long-listen rate), through a "
                        "projection trained with the LoRA (zero at the start): the ID's three codes say where a track "
                        "lies only to their centroids' precision, next-track baselines read the exact features. "
                        "Off: in the demo's 480 steps it ranked next tracks no better and hallucinated more; on the "
                        "next plays alone for 1,440 steps it added 0.015-0.080 HR@10 on three worlds (EXPERIMENTS.md, "
                        "'The context track's own vector in the prompt')")
    p.add_argument("--answer-vectors", action="store_true", default=ANSWER_VECTORS,
                   help="the head scores each Semantic-ID code after its prefix also by the vectors of the tracks "
                        "it leads to (at the last code the track's own; model.AnswerFeatures: h . W_l xbar, W_l "
                        "zero at the start, trained as --track-vectors' projection): a candidate rarely answered in "
                        "training is scored by its features, not only by rows learned from its few answers. Off: on "
                        "the next plays alone for 1,440 steps it lowered the validation loss on three worlds but "
                        "ranked next tracks no better (HR@10 -0.025 to +0.035, intervals across 0; EXPERIMENTS.md, "
                        "'The candidate's own vector in the head')")
    p.add_argument("--answer-kernel", action="store_true", default=ANSWER_KERNEL,
                   help="with --answer-vectors: each code's logit also gets a bias of its ID prefix (at the last code "
                        "one per track) minus a learned quadratic form of the prefix's mean vector, both zero at the "
                        "start and trained at --id-lr: with h . W xbar the terms of a learned Gaussian kernel between "
                        "the context's vector and the candidate's (model.AnswerFeatures), which on the model's own "
                        "vectors ranked 0.028-0.056 HR@10 above it (benchmarks/kernel_ceiling.py --features vectors). "
                        "Off: on the next plays alone for 1,440 steps it ranked as --answer-vectors alone, HR@10 "
                        "+0.003 [-0.012, +0.016] (seed 0, 1,000 validation queries; EXPERIMENTS.md, 'The learned "
                        "kernel's terms in the head')")
    p.add_argument("--track-lr", type=float, default=None,
                   help="peak learning rate of the track-vector projection and of --answer-vectors' W (default: "
                        "--lr's, as the LoRA matrices, which they resemble: matrices that start at zero)")
    p.add_argument("--id-init", choices=ID_INITS, default=ID_INIT,
                   help="where the new Semantic-ID rows start: 'mean' (all at the mean embedding, identical) or "
                        "'descriptions' (each at the mean embedding of the words of the tracks that carry it: their "
                        "genre and attribute phrases, so SFT need not first tell the rows apart; at the demo's budget it "
                        "ranked no better: EXPERIMENTS.md, 'Tried on validation, not kept') or 'codebook' (the mean "
                        "embedding plus the code's RVQ codebook vector, rotated into the embedding space: codes near "
                        "in the quantiser's space start near in the model's; ranked next tracks no better on seed 0's "
                        "validation window: EXPERIMENTS.md, 'What the world allows'; default %(default)s)")
    p.add_argument("--init-adapter", default=INIT_ADAPTER,
                   help="start from this trained adapter's LoRA and ID rows instead of fresh ones (a second stage on "
                        "other examples: a curriculum across task families); its LoRA options must be the ones "
                        "passed")
    p.add_argument("--prompt-id-weight", type=float, default=PROMPT_ID_WEIGHT,
                   help="weight of the NLL of the Semantic-ID tokens in the prompt (the context tracks), beside the "
                        "answer's: free supervision of which IDs exist and which a genre's listeners play, since the "
                        "forward scores those positions anyway; 0 trains on the answers only (default %(default)s; "
                        "the demo passes 0.25: with the attribute requests as most of the examples, weight 1 crowds "
                        "their answer sets out, and 0 lets hallucinated@1 rise to 4.5%%)")
    p.add_argument("--valid-id-weight", type=float, default=VALID_ID_WEIGHT,
                   help="weight of -log p(a code the catalogue allows after the fed prefix) at each answer ID token, "
                        "beside the answer's own loss: what an unconstrained decoder needs to know to emit only real "
                        "tracks; its gradient asks nothing of the allowed codes' order (valid_id_logps). On seed 1's "
                        "validation window, at 1 with --untie-id-rows, hallucinated@1 10%% -> 1%% and the untying's "
                        "attribute gain gone (EXPERIMENTS.md; default %(default)s: off)")
    p.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY,
                   help="AdamW weight decay (default %(default)s: LoRA rarely benefits, and the new ID rows must "
                        "move freely)")
    p.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS,
                   help=f"steps of linear learning-rate warm-up, then cosine decay to {MIN_LR_RATIO:g} x the peak "
                        "rates (default %(default)s)")
    p.add_argument("--grad-clip", type=float, default=GRAD_CLIP,
                   help="largest global gradient norm (LoRA and ID rows together); a larger one is scaled down "
                        "(default %(default)s)")
    p.add_argument("--eval-every", type=int, default=EVAL_EVERY,
                   help="steps between validations and checkpoints; the last step always validates "
                        "(default %(default)s)")
    p.add_argument("--eval-examples", type=int, default=EVAL_EXAMPLES,
                   help="validation examples scored each time: a fixed subset drawn by --seed, so the scores "
                        "compare across steps (default %(default)s)")
    p.add_argument("--seed", type=int, default=SEED,
                   help="seed of the LoRA init, dropout, batch order and validation subset (default %(default)s)")
    p.add_argument("--device", default=DEVICE,
                   help="cpu, cuda or auto (cuda when torch sees a GPU, else cpu; default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt if present")
    add_lora_args(p)
    args = p.parse_args(argv)
    if args.micro_batch_size is None:
        args.micro_batch_size = min(args.batch_size, MICRO_BATCH_SIZE)
    if args.batch_size % args.micro_batch_size:
        p.error("--batch-size must be a multiple of --micro-batch-size")
    if args.answer_targets == "teacher" and not args.teacher:
        p.error("--answer-targets teacher needs --teacher, the npz of benchmarks/teacher_targets.py")
    if args.answer_targets != "example" and args.answers_per_prompt > 1:
        p.error(f"--answer-targets {args.answer_targets} trains each example toward its group's answers; "
                "--answers-per-prompt runs the group's examples under one prompt: use one or the other")
    if args.answers_per_prompt < 1:
        p.error(f"--answers-per-prompt {args.answers_per_prompt}: at least 1 (1: every example its own prompt)")
    if args.answer_kernel and not args.answer_vectors:
        p.error("--answer-kernel adds terms to --answer-vectors' head: pass both")
    return args


def main(argv=None):
    train(parse_args(argv))
    ddp.cleanup()


if __name__ == "__main__":
    run_main(main)
