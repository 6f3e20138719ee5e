"""Direct Preference Optimization from the SFT weights (Rafailov et al. 2023).

    L_DPO = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])   (eq. 7)

The policy starts from the SFT adapter (LoRA + Semantic-ID rows); the reference is that
same SFT model, frozen. Its log-probs are computed once, before training, and stored
with the run (ref_logps.safetensors), so no second model sits in memory.

    python dpo.py --pairs runs/demo/prefs --sft runs/demo/sft/adapter --out runs/demo/dpo

Reads train.jsonl / val.jsonl of (prompt, chosen, rejected) pairs written by
`data.py prefs`; writes adapter/ (same format as SFT), log.jsonl, ref_logps.safetensors,
checkpoint.pt (for --resume), config.json, summary.json.

    torchrun --standalone --nproc-per-node N -- dpo.py ...

trains data-parallel as sft.py does (ddp.py); the reference and held-out scoring is shared out too.
"""
import argparse
import hashlib
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

import ddp
import formats
import lora
import model as M
import sft
from common import UserError, atomic_dir, atomic_path, need_file, read_json, run_main, save_config, \
    seed_everything, write_json

# -----------------------------------------------------------------------------
MODEL: str = M.DEFAULT_MODEL
BETA: float = 0.1              # strength of the KL anchor to the reference (DPO paper: 0.1-0.5)
LOSS_TYPE: str = "sigmoid"     # sigmoid (DPO), cdpo (conservative, label smoothing), robust, ipo, hinge, sdpo
LABEL_SMOOTHING: float = 0.0   # eps of cdpo / robust: the share of labels assumed flipped
STEPS: int = 80                # optimizer steps
BATCH_SIZE: int = 8            # pairs per optimizer step (prompts per step with PAIRS_PER_PROMPT > 1)
# pairs of one prompt trained together: the pairs of a context (the same prompt, other users and sessions) share
# one forward of the prompt, ~90% of a pair's tokens, so a step of 4 prompts x up to 8 pairs takes the time of one of
# 8 pairs and learns from ~2.7x the pairs (EXPERIMENTS.md, "More pairs per DPO step"); 1: each step draws BATCH_SIZE pairs of
# any prompts (the seed's batches)
PAIRS_PER_PROMPT: int = 1
MICRO_BATCH_SIZE: int = 8      # pairs per forward (each forward holds 2x as many sequences)
LR: float = 5e-5               # peak LR of LoRA; 2e-4 already swung answer log-probs by 5-10 nats in 20 steps
ID_LR: float = 5e-4            # peak LR of the Semantic-ID rows, where per-track preferences live; 2e-3 and
                               # above pushed every answer's log-prob down (-10 -> -22: likelihood displacement)
ID_BIAS_LR: float = 0.0        # peak LR of the head's per-code ID bias (model.IDHead.id_bias); 0: not trained
# which levels' Semantic-ID rows DPO moves (1-based; "" = every level): the demo's IDs hold the long-listen rate in
# the last code alone (rvq.py --last-level-signals quality), and the rows are shared by every prompt's answers, so
# moving the first two codes' rows moves what attribute requests and next tracks are scored by as well
ID_LEVELS: str = ""
WARMUP_STEPS: int = 10
GRAD_CLIP: float = 1.0
EVAL_EVERY: int = 40           # steps between held-out evaluations (and checkpoints); each costs ~10 s
EVAL_PAIRS: int = 96           # validation pairs scored each time
SEED: int = 0
DEVICE: str = "auto"
# checkpoint choice on the held-out pairs: "accuracy" (log p(chosen) > log p(rejected), what evaluate.py reports;
# ties broken by the loss), "loss" (the DPO loss punishes a few confident mistakes more than it rewards ranking),
# or "last" (no choice: the final weights, to see what the training itself does)
SELECT: str = "accuracy"
# weight of an NLL term on the chosen answer (RPO, Pang et al. 2024); 0 = pure DPO, the seed's loss. 1 by default:
# pure DPO pushed the chosen answers' likelihood down with the rejected ones and cost next-track HR@10 (-0.075 and
# -0.095 against SFT on seeds 0 and 1, README: the ablation table); with the term DPO keeps SFT's ranking
RPO_ALPHA: float = 1.0
# SFT examples replayed each DPO step (--sft-replay), trained with the SFT run's own loss next to the preference
# loss (PPO-ptx, Ouyang et al. 2022, mixes pre-training gradients into RL the same way): DPO's pairs are next-track
# answers only, and without replay its steps cost attribute requests 0.03-0.05 precision@10; 0: off
SFT_REPLAY: int = 0
SFT_REPLAY_WEIGHT: float = 1.0
# weight of the validity term on every answer of a pair (validity_loss: -log p(each ID token is a code the catalogue
# has after its prefix)), for pure DPO, whose lowered rejected answers leak mass off the catalogue; 0: off, because
# on three validation windows it took pure DPO's preference gain away with its hallucinated IDs (EXPERIMENTS.md,
# "Pure DPO with a validity term")
VALID_ID_WEIGHT: float = 0.0
LOSS_TYPES = ("sigmoid", "cdpo", "robust", "ipo", "hinge", "sdpo")
# -----------------------------------------------------------------------------


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
             beta=BETA, loss_type=LOSS_TYPE, label_smoothing=LABEL_SMOOTHING, rpo_alpha=0.0,
             chosen_lengths=None, rejected_mask=None):
    """Per-pair preference losses and the implicit rewards.

    All inputs (B,) summed sequence log-probs. Delta = policy log-ratio - reference log-ratio:
      sigmoid: -log s(beta D)                                              (DPO eq. 7)
      cdpo:    -(1 - eps) log s(beta D) - eps log s(-beta D)               (conservative DPO)
      robust:  [-(1 - eps) log s(beta D) + eps log s(-beta D)] / (1 - 2 eps)   (Chowdhury et al. 2024)
      ipo:     (D - 1 / (2 beta))^2                                        (Azar et al. 2023, eq. 17)
      hinge:   relu(1 - beta D)                                            (SLiC, Zhao et al. 2023)
      sdpo:    -log s(-log sum_j exp(-beta D_j))                           (S-DPO, Chen et al. 2024)
    sdpo takes K rejected answers per chosen one: rejected log-probs (B, K), D_j the delta against the j-th,
    rejected_mask (B, K) True where a rejected answer exists (column 0 always); with K = 1 it is sigmoid.
    Example: one chosen, two rejected, beta D = (1, 2): -log s(-log(e^-1 + e^-2)) = log(1 + e^-1 + e^-2)
    = 0.4076, against DPO's 0.3133 and 0.1269 for the two pairs alone: every rejected answer adds to the sum.
    and with rpo_alpha > 0, every branch adds the chosen answer's NLL per token (RPO, Pang et al. 2024, eq. 3):
      + alpha * (-log pi(y_w|x) / |y_w|)       chosen_lengths (B,): answer tokens of each chosen answer
    which keeps the chosen answers likely where DPO alone lowers both (likelihood displacement).
    Returns losses (B,), chosen_rewards (B,), rejected_rewards (B,); rewards
    beta * (log pi - log ref) are detached (they are logged, not trained on); for sdpo the rejected
    reward is the first rejected answer's, the one every other loss type sees.
    """
    if label_smoothing and loss_type not in ("cdpo", "robust"):
        raise ValueError(f"label_smoothing applies to cdpo and robust only, not {loss_type!r}")
    if loss_type == "sdpo":
        return sdpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps, beta, rpo_alpha, chosen_lengths, rejected_mask)
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    d = pi_logratios - ref_logratios
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * d)
    elif loss_type == "cdpo":
        losses = -(1 - eps) * F.logsigmoid(beta * d) - eps * F.logsigmoid(-beta * d)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * d) + eps * F.logsigmoid(-beta * d)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        losses = (d - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * d)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; one of {LOSS_TYPES}")
    if rpo_alpha:
        if chosen_lengths is None:
            raise ValueError("rpo_alpha needs chosen_lengths (tokens of each chosen answer)")
        losses = losses + rpo_alpha * (-policy_chosen_logps / chosen_lengths)
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def sdpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
              beta=BETA, rpo_alpha=0.0, chosen_lengths=None, rejected_mask=None):
    """Softmax DPO (Chen et al. 2024): one chosen answer against K rejected ones for the same prompt.

    With implicit rewards r(y) = beta (log pi(y|x) - log ref(y|x)):
      loss = -log s(-log sum_j exp(r(l_j) - r(w)))
    chosen (B,), rejected (B, K); rejected_mask (B, K) bool, False where a context had fewer than K rejected
    answers (those columns drop out of the sum; column 0 must exist). K = 1 is DPO's sigmoid loss exactly.
    The sum is a soft maximum: the rejected answer the policy rates highest carries the most gradient.
    """
    if policy_rejected_logps.dim() == 1:   # plain pairs: K = 1
        policy_rejected_logps = policy_rejected_logps[:, None]
        reference_rejected_logps = reference_rejected_logps[:, None]
    if rejected_mask is None:
        rejected_mask = torch.ones_like(policy_rejected_logps, dtype=torch.bool)
    chosen_r = beta * (policy_chosen_logps - reference_chosen_logps)                    # (B,)
    rejected_r = beta * (policy_rejected_logps - reference_rejected_logps)              # (B, K)
    gaps = (rejected_r - chosen_r[:, None]).masked_fill(~rejected_mask, float("-inf"))  # absent: exp(-inf) = 0
    losses = -F.logsigmoid(-torch.logsumexp(gaps, dim=1))
    if rpo_alpha:
        if chosen_lengths is None:
            raise ValueError("rpo_alpha needs chosen_lengths (tokens of each chosen answer)")
        losses = losses + rpo_alpha * (-policy_chosen_logps / chosen_lengths)
    return losses, chosen_r.detach(), rejected_r[:, 0].detach()


def validity_loss(chosen_valid_logps, rejected_valid_logps, rejected_mask=None):
    """Per pair: -log of the probability that the pair's answers keep to IDs the catalogue has, (B,) >= 0.

    chosen_valid_logps (B,), rejected_valid_logps (B,) or (B, K): per answer, the sum over its L ID tokens of
    log sum_{v allowed after y_<l} pi(v | x, y_<l) (answers_logps with a trie; sft.valid_id_logps); rejected_mask
    (B, K) as in sdpo_loss, False where a slot holds no rejected answer. Returns -(chosen's + every rejected one's).
    Why: pure DPO lowers the rejected answers' log-probs and says nothing of where that mass goes; at the last
    code much of it goes to codes no track has under the answer's prefix, which an unconstrained decoder then
    answers (pure DPO on the demo's SFT: 9-20% of top-1 answers off the catalogue). This term puts the mass back on
    the codes that exist and asks nothing of their order: its gradient keeps the allowed codes' ratios, so it pulls
    toward no answer (the NLL term pulls toward the chosen one). Measured, it takes pure DPO's preference gain away
    with the hallucinations all the same (EXPERIMENTS.md, "Pure DPO with a validity term").
    Example: chosen log 0.9, rejected log 0.5: -(log 0.9 + log 0.5) = 0.1054 + 0.6931 = 0.7985.
    """
    if rejected_valid_logps.dim() == 1:
        rejected_valid_logps = rejected_valid_logps[:, None]
    if rejected_mask is None:
        rejected_mask = torch.ones_like(rejected_valid_logps, dtype=torch.bool)
    return -(chosen_valid_logps + (rejected_valid_logps * rejected_mask).sum(dim=1))


def pair_hits(chosen_scores, rejected_scores):
    """Per pair: 1 if the chosen answer's score is above the rejected one's, 1/2 on a tie, else 0. (N,) -> (N,)."""
    return (chosen_scores > rejected_scores).float() + 0.5 * (chosen_scores == rejected_scores).float()


def implicit_reward_hits(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps):
    """Per pair: 1 if DPO's implicit reward ranks the chosen answer above the rejected one, 1/2 on a tie, else 0.

    r(x, y) = beta log pi(y|x) / ref(y|x) (Rafailov et al. 2023, Eq. 5): the reward model DPO fits, which is not
    the policy's own log-prob (that also carries ref's ranking of the answers). beta > 0 scales both rewards, so it
    drops out. All four (N,) summed log-probs; returns (N,) float. Example: policy (-5, -6), reference (-4, -8):
    the policy prefers the chosen answer, but its reward is -1 against +2, so the pair is lost (0.0).
    """
    return pair_hits(policy_chosen_logps - reference_chosen_logps, policy_rejected_logps - reference_rejected_logps)


def preference_metrics(losses, chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps,
                       prefix=""):
    """The usual DPO log names (TRL / the reference trainer), as plain floats."""
    return {
        f"{prefix}loss": losses.mean().item(),
        f"{prefix}rewards/chosen": chosen_rewards.mean().item(),
        f"{prefix}rewards/rejected": rejected_rewards.mean().item(),
        f"{prefix}rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        f"{prefix}rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        f"{prefix}logps/chosen": policy_chosen_logps.detach().mean().item(),
        f"{prefix}logps/rejected": policy_rejected_logps.detach().mean().item(),
    }


def read_pairs(path, fmt):
    """[(prompt_ids, chosen_answer_ids, rejected_answer_ids)] from a pairs JSONL file."""
    need_file(path, "preference pairs")
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
                prompt, chosen, rejected = ex["prompt"], ex["chosen"], ex["rejected"]
            except (json.JSONDecodeError, KeyError) as e:
                raise UserError(f"{path}, line {i}: expected JSON with prompt, chosen, rejected ({e})") from None
            codes = [fmt.vocab.parse(chosen), fmt.vocab.parse(rejected)]
            if None in codes:
                raise UserError(f"{path}, line {i}: chosen/rejected must be Semantic IDs like "
                                f"{formats.id_text([0] * fmt.vocab.levels)}")
            out.append((fmt.prompt(prompt), fmt.answer(codes[0]), fmt.answer(codes[1])))
    if not out:
        raise UserError(f"{path}: no pairs")
    return out


def read_more_rejected(path, fmt):
    """Per pair of `path`, the answer ids of its further rejected answers (S-DPO; [] where there are none)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            more = [fmt.vocab.parse(t) for t in json.loads(line).get("more_rejected", [])]
            if None in more:
                raise UserError(f"{path}, line {i}: more_rejected must list Semantic IDs")
            out.append([fmt.answer(codes) for codes in more])
    return out


def rejected_slots(pairs, more):
    """S-DPO's K rejected answers per pair, (N lists of K answers) and a (N, K) bool mask of the real ones.

    Column 0 is the pair's own rejected answer; a pair with fewer than K fills its slots with its chosen
    answer (any sequence would do: the mask takes it out of the loss)."""
    K = 1 + max((len(m) for m in more), default=0)
    slots = [[r] + m + [c] * (K - 1 - len(m)) for (_, c, r), m in zip(pairs, more)]
    mask = torch.tensor([[True] * (1 + len(m)) + [False] * (K - 1 - len(m)) for m in more]).view(len(pairs), K)
    return slots, mask


def concatenated_batch(pairs, pad_id):
    """Chosen and rejected sequences padded to one length and stacked: (2B, T) tensors.

    Rows [0, B) are prompt + chosen, rows [B, 2B) prompt + rejected, so one forward
    scores both (the reference trainer's concatenated_forward).
    """
    seqs = [p + c for p, c, _ in pairs] + [p + r for p, _, r in pairs]
    lens = [len(c) for _, c, _ in pairs] + [len(r) for _, _, r in pairs]
    return M.pad_batch(seqs, pad_id, lens)


def sequence_logps(model, input_ids, attention_mask, loss_mask):
    """SUM of the answer tokens' log-probs per sequence: (B,) fp32. DPO compares sequence log-likelihoods
    (eq. 7 of the paper), so a longer answer is not averaged down."""
    logps, row = sft.answer_logps(model, input_ids, attention_mask, loss_mask)
    return torch.zeros(input_ids.shape[0], device=logps.device).index_add(0, row, logps)


def concatenated_logps(model, pairs, pad_id, device, shared_prompt=True, vocab=None, trie=None):
    """(policy_chosen_logps (B,), policy_rejected_logps (B,)): summed answer log-probs of each pair's answers.

    shared_prompt False is the plain path: the stacked sequences of concatenated_batch in one forward. True, the
    default, gives the same numbers faster: each distinct prompt, about 90% of a pair's tokens, runs once for every
    answer of every pair that shares it, and an answer given twice to one prompt (a track chosen in two pairs of
    one context) runs once (answers_logps; tests/test_dpo.py checks the two against each other, values and
    gradients). With vocab and trie (shared path only), also the answers' validity log-probs:
    (policy_chosen_logps, policy_rejected_logps, chosen_valid_logps, rejected_valid_logps), as answers_logps.
    """
    if not shared_prompt:
        if trie is not None:
            raise ValueError("the validity log-probs come from the shared-prompt path (shared_prompt=True)")
        ids, attn, loss_mask = (t.to(device) for t in concatenated_batch(pairs, pad_id))
        return sequence_logps(model, ids, attn, loss_mask).split(len(pairs))
    prompt_index, answer_index = {}, {}

    def slot(prompt, answer):   # the row of (prompt, answer) among the distinct ones, added on first sight
        p = prompt_index.setdefault(tuple(prompt), len(prompt_index))
        return answer_index.setdefault((p, tuple(answer)), len(answer_index))

    chosen = [slot(p, c) for p, c, _ in pairs]
    rejected = [slot(p, r) for p, _, r in pairs]
    prompts = [list(p) for p in prompt_index]
    out = answers_logps(model, prompts, [list(a) for _, a in answer_index], [p for p, _ in answer_index],
                        pad_id, device, vocab, trie)
    c, r = torch.tensor(chosen, device=device), torch.tensor(rejected, device=device)
    if trie is None:
        return out[c], out[r]
    logps, valid = out
    return logps[c], logps[r], valid[c], valid[r]


def answer_set_logps(model, prompts, answer_sets, pad_id, device, vocab=None, trie=None):
    """Summed log-probs (S, B) of S answers to each of B prompts (answer_sets: S lists of B answers).

    answers_logps with the S x B answers set by set, answer n continuing prompt n mod B. S-DPO's forward: the
    chosen answer and K rejected ones of each prompt (S = 1 + K). With vocab and trie, (log-probs, validity
    log-probs), both (S, B), as answers_logps.
    """
    B, S = len(prompts), len(answer_sets)
    answers = [a for answer_set in answer_sets for a in answer_set]
    out = answers_logps(model, prompts, answers, list(range(B)) * S, pad_id, device, vocab, trie)
    return tuple(x.view(S, B) for x in out) if trie is not None else out.view(S, B)


def answer_token_lsm(model, prompts, answers, prompt_of, pad_id, device):
    """The log-softmax row at every answer token of N answers (answer n continuing prompt prompt_of[n]): (lsm (M, V)
    fp32, targets (M,) the tokens, mask (N, A) where they sit in the right-padded answers), M = the answers' tokens.
    lsm.gather(1, targets[:, None]) are their log pi(y_t | x, y_<t); answers_logps sums them per answer,
    benchmarks/pref_levels.py keeps them apart."""
    p_ids, *_, a_ids, a_mask, h = sft.prompt_answer_hidden(model, prompts, answers, prompt_of, pad_id, device)
    mask = a_mask.bool()
    prev = sft.answer_prev(model, p_ids, prompt_of, a_ids)   # what a head with answer features reads; else None
    logits = M.head_logits(model, h[mask], None if prev is None else prev[mask])    # fp32 head, whole vocabulary
    return torch.log_softmax(logits, -1), a_ids[mask], mask


def answers_logps(model, prompts, answers, prompt_of, pad_id, device, vocab=None, trie=None):
    """Summed log-probs (N,) of N answers, answer n continuing prompt prompt_of[n] (prompts: B token lists).

    The answers share their prompts, ~90% of a pair's tokens: sft.prompt_answer_hidden runs the B prompts once
    and the N answers on their KV cache (a prompt with several answers is repeated, and the gradient of every
    answer flows back into the one prompt computation).
    With vocab and trie (the catalogue's ID trie, sft.catalogue_trie), it returns (log-probs, validity log-probs):
    the second (N,) is, per answer, sum over its L ID tokens of log sum_{v allowed after y_<l} pi(v | x, y_<l)
    (sft.valid_id_logps), from the same log-softmax rows, for validity_loss.
    """
    lsm, targets, mask = answer_token_lsm(model, prompts, answers, prompt_of, pad_id, device)
    logps = lsm.gather(1, targets[:, None]).squeeze(1)
    row = torch.arange(len(answers), device=device)[:, None].expand_as(mask)[mask]
    summed = torch.zeros(len(answers), device=device).index_add(0, row, logps)      # summed, not averaged
    if trie is None:
        return summed
    # every token here is an answer's (kind 1): its L IDs, then the end token, which has no validity row
    where, ids, valid_mask = sft.validity_table(targets, torch.ones_like(targets), row, vocab, trie)
    valid = sft.valid_id_logps(lsm[where], ids, valid_mask)
    return summed, torch.zeros(len(answers), device=device).index_add(0, row[where], valid)


@torch.no_grad()
def score_pairs(model, pairs, pad_id, device, batch_size, desc="scoring"):
    """Summed log-probs of chosen and rejected answers for all pairs: two (N,) fp32 tensors, in the pairs' order.

    The pairs go through in order of their prompts, so that the pairs of one context land in one batch and share
    its prompt's forward (concatenated_logps). Under torchrun each rank scores every N-th batch and all of them get
    every batch's scores back.
    """
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
    out = []
    for s in tqdm(ddp.shard(range(0, len(pairs), batch_size)), desc=desc, disable=ddp.bar_off(), leave=False):
        with M.autocast(device):
            c, r = concatenated_logps(model, [pairs[i] for i in order[s:s + batch_size]], pad_id, device)
        out.append((c.float().cpu(), r.float().cpu()))
    chosen, rejected = (torch.cat(x) for x in zip(*ddp.gather(out)))
    back = torch.empty(len(pairs), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(pairs))   # position of each pair in the sorted order
    return chosen[back], rejected[back]


def replay_examples(sft_data, sft_adapter, fmt):
    """The SFT run's training examples and the loss options it trained them with, for --sft-replay.

    Returns (pairs [(prompt_ids, answer_ids)], soft targets per pair or None, prompt_id_weight, valid_id_weight,
    trie): the answer targets (`example`, or `group`: toward every answer of what was asked), the weight of the
    prompt's Semantic IDs and that of the validity term (with the catalogue's ID trie it needs, or None) are read
    from the SFT run's config.json beside its adapter, so replay trains the loss SFT minimised, not another one.
    """
    path = os.path.join(sft_data, "train.jsonl")
    examples = sft.read_jsonl(path)
    pairs = sft.tokenize_examples(examples, fmt, path)
    cfg = read_json(sft_run_config(sft_adapter), "the SFT run's config.json (sft.py writes it beside adapter/)")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    soft = sft.answer_targets(cfg.get("answer_targets", "example"), sft_data, meta, examples, pairs, fmt)
    valid_weight = cfg.get("valid_id_weight", 0.0)
    trie = sft.catalogue_trie(meta) if valid_weight else None
    return pairs, soft, cfg.get("prompt_id_weight", 0.0), valid_weight, trie


def sft_run_config(sft_adapter):
    """The SFT run's config.json, beside its adapter/ folder."""
    return os.path.join(os.path.dirname(os.path.normpath(sft_adapter)), "config.json")


def base_weights_sha256(folder):
    """One hash over the base model's weight files (*.safetensors, *.bin), in name order."""
    names = sorted(n for n in os.listdir(folder) if n.endswith((".safetensors", ".bin")))
    return hashlib.sha256("".join(n + M.file_sha256(os.path.join(folder, n)) for n in names).encode()).hexdigest()


def drawn_pairs(schedule):
    """The training pairs a run draws: the distinct indices of its schedule (a (steps, batch_size) array, or
    prompt_schedule's list of steps), ascending.

    Only they need reference log-probs. `data.py prefs --max-train 0` keeps every pair (~20k in the demo world)
    while 80 steps of 8 draw at most 640. Ascending, so that when every pair is drawn they are the whole file in its
    order, and the floats are those of scoring the whole file.
    """
    return np.unique(np.concatenate([np.asarray(s) for s in schedule]))


def prompt_schedule(pairs, steps, prompts_per_step, per_prompt, seed):
    """Pair indices of every step, drawn by prompt: `prompts_per_step` prompts a step, each with up to `per_prompt`
    of the training pairs that share it (a fresh random choice each time the prompt is drawn).

    Each epoch is a fresh permutation of the distinct prompts (a context's pairs, other users and sessions after
    the same track, share it); a last incomplete step of an epoch is dropped, as in sft.batch_schedule. Returns a
    list of `steps` int arrays, a prompt's pairs next to each other (their lengths vary: a prompt may have fewer
    than `per_prompt` pairs). Example: prompts A (pairs 0, 2, 5) and B (pair 1), 1 prompt a step, 2 pairs a prompt:
    steps like [2, 0], [1], [5, 2], ...
    """
    groups = {}
    for i, (prompt, _, _) in enumerate(pairs):
        groups.setdefault(tuple(prompt), []).append(i)
    groups = list(groups.values())
    if len(groups) < prompts_per_step:
        raise UserError(f"{len(groups)} distinct prompts among the training pairs, fewer than one step of "
                        f"{prompts_per_step}")
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < steps:
        perm = rng.permutation(len(groups))
        for s in range(0, len(perm) - prompts_per_step + 1, prompts_per_step):
            out.append(np.concatenate([rng.permutation(groups[g])[:per_prompt] for g in perm[s:s + prompts_per_step]]))
    return out[:steps]


def spread(values, index, n):
    """values (len(index),) at positions index of an (n,) tensor; NaN at the others (never read: the schedule
    draws only `index`, and a NaN loss would say so loudly)."""
    out = torch.full((n,), float("nan"), dtype=values.dtype)
    out[torch.as_tensor(index)] = values
    return out


def reference_logps(path, model, pairs_by_split, pad_id, device, batch_size, fingerprint):
    """Reference log-probs of every pair given, computed once with the frozen SFT model and cached.

    The cache is reused only if its fingerprint (SFT adapter, pair files, which pairs) matches.
    """
    if os.path.exists(path):
        with safe_open(path, "pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                return {k: f.get_tensor(k) for k in f.keys()}
    out = {}
    for split, pairs in pairs_by_split.items():
        out[f"{split}/chosen"], out[f"{split}/rejected"] = score_pairs(
            model, pairs, pad_id, device, batch_size, desc=f"reference log-probs ({split})")
    if ddp.is_main():
        with atomic_path(path) as tmp:
            save_file(out, tmp, metadata={"fingerprint": fingerprint})
    return out


@torch.no_grad()
def evaluate(model, pairs, ref, pad_id, device, args, prefix="eval/"):
    pc, pr = score_pairs(model, pairs, pad_id, device, args.micro_batch_size, desc="held-out")
    n_tok = torch.tensor([len(c) for _, c, _ in pairs], dtype=torch.float32)
    losses, cr, rr = dpo_loss(pc, pr, ref[0], ref[1], args.beta, args.loss_type, args.label_smoothing,
                              args.rpo_alpha, n_tok)
    m = preference_metrics(losses, cr, rr, pc, pr, prefix)
    m[f"{prefix}logp_accuracy"] = (pc > pr).float().mean().item()   # ranks chosen above rejected
    model.train()
    return m


def id_row_mask(levels, codebook_size, trained_levels):
    """(levels * codebook_size,) float: 1 for the rows of the trained levels, 0 for the rest.

    trained_levels are 1-based; the rows are level-major, as model.IDVocab lays out the tokens (V + level * K + code).
    E.g. levels=3, codebook_size=2, trained_levels=[3] -> [0, 0, 0, 0, 1, 1]. Multiplying the rows' gradient by it
    (a hook) freezes the other levels exactly: with no gradient, AdamW (no weight decay here) never moves a row.
    """
    mask = torch.zeros(levels, codebook_size)
    for level in trained_levels:
        if not 1 <= level <= levels:
            raise UserError(f"--id-levels {level}: the Semantic IDs have levels 1 to {levels}")
        mask[level - 1] = 1.0
    return mask.reshape(-1)


def parse_levels(text):
    """'2,3' -> [2, 3]; '' -> [] (every level)."""
    try:
        return sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UserError(f"--id-levels {text!r}: expected levels as comma-separated integers, e.g. 3 or 2,3")


def improves(rec, best, select):
    """True if held-out metrics `rec` beat the best so far under the --select rule."""
    if select == "last":
        return True
    if select == "loss":
        return rec["eval/loss"] < best["eval/loss"]
    return (rec["eval/logp_accuracy"], -rec["eval/loss"]) > (best["eval/logp_accuracy"], -best["eval/loss"])


def snapshot(model, rec, step):
    return {"eval/loss": rec["eval/loss"], "eval/logp_accuracy": rec["eval/logp_accuracy"], "step": step,
            "state": {k: v.cpu() for k, v in sft.trainable_state(model).items()}}


def train(args):
    device = ddp.setup(M.pick_device(args.device))   # under torchrun: join the other processes
    if args.batch_size % ddp.world_size():
        raise UserError(f"--batch-size {args.batch_size} does not split into {ddp.world_size()} equal shares")
    rates = {"--lr": args.lr, "--id-lr": args.id_lr, "--id-bias-lr": args.id_bias_lr}
    sft.check_rates(rates)
    if not any(rates.values()):
        raise UserError("--lr, --id-lr and --id-bias-lr are all 0: nothing would be trained")
    if args.valid_id_weight < 0:
        raise UserError(f"--valid-id-weight {args.valid_id_weight:g}: a weight is at least 0")
    adapter_dir = args.sft
    sft_vocab = os.path.join(adapter_dir, M.ID_VOCAB_FILE)
    need_file(sft_vocab, "SFT adapter (id_vocab.json)")
    with open(os.path.join(args.pairs, "meta.json")) as f:
        meta = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    if os.path.exists(ckpt_path) and not args.resume:
        raise UserError(f"{ckpt_path} exists: pass --resume to continue it, or remove {args.out}")
    seed_everything(args.seed)
    # dropout off: with it on, policy and reference would differ at step 0 through noise alone
    model, tokenizer, vocab = M.load_policy(args.model, adapter=adapter_dir,
                                            id_table_sha=meta["id_table_sha256"], device=device, dropout=0.0)
    fmt = M.PromptFormat(tokenizer, vocab)
    pad_id = M.pad_id_of(tokenizer)
    levels = parse_levels(args.id_levels)   # checked against the IDs before anything is written
    row_mask = id_row_mask(vocab.levels, vocab.codebook_size, levels).to(device) if levels else None
    trie = sft.catalogue_trie(meta) if args.valid_id_weight else None   # which codes exist, for validity_loss
    train_pairs = read_pairs(os.path.join(args.pairs, "train.jsonl"), fmt)
    val_all = read_pairs(os.path.join(args.pairs, "val.jsonl"), fmt)
    val_idx = np.sort(np.random.default_rng(args.seed).permutation(len(val_all))[:args.eval_pairs])
    val_pairs = [val_all[i] for i in val_idx]
    if ddp.is_main():
        save_config(args.out, args)

    # the pairs each step trains on, fixed by the seed; reference log-probs are needed for those only
    if args.pairs_per_prompt > 1:
        schedule = prompt_schedule(train_pairs, args.steps, args.batch_size, args.pairs_per_prompt, args.seed)
    else:
        schedule = sft.batch_schedule([len(p) + len(c) + len(r) for p, c, r in train_pairs], args.steps,
                                      args.batch_size, args.seed)
    drawn = drawn_pairs(schedule)
    if args.loss_type == "sdpo":   # K rejected answers per pair: the pair's own and its more_rejected
        slots, slot_mask = rejected_slots(train_pairs, read_more_rejected(os.path.join(args.pairs, "train.jsonl"),
                                                                          fmt))
        slot_mask = slot_mask.to(device)
    # what the cached reference log-probs depend on: the base weights (another base of the same shape gives
    # other values), the SFT adapter, the pairs (the files, and which training pairs are drawn), and where and in
    # what precision they were computed
    fingerprint = json.dumps({"base": base_weights_sha256(args.model), "device": str(device),
                              "dtype": str(next(model.parameters()).dtype),
                              "sft": M.file_sha256(os.path.join(adapter_dir, lora.ADAPTER_WEIGHTS)),
                              "train": M.file_sha256(os.path.join(args.pairs, "train.jsonl")),
                              "val": M.file_sha256(os.path.join(args.pairs, "val.jsonl")),
                              "eval_pairs": args.eval_pairs, "seed": args.seed,
                              "train_drawn": hashlib.sha256(drawn.tobytes()).hexdigest(),
                              "rejected_slots": slot_mask.shape[1] if args.loss_type == "sdpo" else 1})
    splits = {"train": [train_pairs[i] for i in drawn], "val": val_pairs}
    if args.loss_type == "sdpo":   # the further rejected answers' reference log-probs, scored as pairs of their own
        for k in range(1, slot_mask.shape[1]):
            splits[f"train_slot{k}"] = [(train_pairs[i][0], train_pairs[i][1], slots[i][k]) for i in drawn]
    ref = reference_logps(os.path.join(args.out, "ref_logps.safetensors"), model, splits, pad_id, device,
                          args.micro_batch_size, fingerprint)
    ref_train = tuple(spread(ref[f"train/{k}"], drawn, len(train_pairs)).to(device) for k in ("chosen", "rejected"))
    if args.loss_type == "sdpo":   # (N, K): the pair's rejected, then the further ones
        ref_train = (ref_train[0], torch.stack([ref_train[1]] + [
            spread(ref[f"train_slot{k}/rejected"], drawn, len(train_pairs)).to(device)
            for k in range(1, slot_mask.shape[1])], dim=1))
    ref_val = (ref["val/chosen"].to(device), ref["val/rejected"].to(device))

    # a rate of 0 freezes its tensors: no gradient, no backward pass through the model for them
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n and args.lr > 0)
    for p in M.id_parameters(model):
        p.requires_grad_(args.id_lr > 0)
    model.lm_head.id_bias.requires_grad_(args.id_bias_lr > 0)
    frozen = 0   # ID-row numbers that count as trainable but get no gradient (--id-levels)
    if row_mask is not None:   # the other levels' rows (and per-code biases) get no gradient
        for p in M.id_parameters(model) + [model.lm_head.id_bias]:
            if p.requires_grad:
                p.register_hook(lambda g: g * (row_mask if g.dim() == 1 else row_mask[:, None]).to(g.dtype))
                frozen += int((row_mask == 0).sum()) * (p.shape[1] if p.dim() == 2 else 1)
    if args.sft_replay:   # the SFT examples each step replays, drawn as sft.py draws its batches
        r_pairs, r_soft, r_weight, r_valid, r_trie = replay_examples(args.sft_data, adapter_dir, fmt)
        r_schedule = sft.batch_schedule([len(p) + len(a) for p, a in r_pairs], args.steps, args.sft_replay,
                                        args.seed)
        if ddp.is_main():
            print(f"SFT replay: {args.sft_replay} of {len(r_pairs):,} SFT examples a step at weight "
                  f"{args.sft_replay_weight} ({'group' if r_soft else 'example'} targets, the prompt's IDs at "
                  f"{r_weight}" + (f", the validity term at {r_valid}" if r_valid else "") + ")")
    trainable, total = lora.count_parameters(model)
    if ddp.is_main():
        n_prompts = len({tuple(p) for p, _, _ in train_pairs})   # what --pairs-per-prompt groups by
        print(f"trainable parameters: {trainable - frozen:,} of {total:,}"
              + (f" (the ID rows of level(s) {', '.join(map(str, levels))} alone)" if frozen else "")
              + f"; {len(train_pairs):,} train pairs with "
              f"{n_prompts:,} distinct prompts ({len(drawn):,} drawn by {args.steps} steps) / {len(val_pairs):,} "
              f"held-out pairs; "
              f"beta {args.beta}, loss {args.loss_type}"
              + (f", the validity term at {args.valid_id_weight:g}" if trie is not None else ""))
    opt = sft.make_optimizer(model, args.lr, args.id_lr, weight_decay=0.0, id_bias_lr=args.id_bias_lr)
    step, best, history = 0, None, []
    log_path = os.path.join(args.out, "log.jsonl")
    run_fp = sft.run_fingerprint(args, [os.path.join(args.pairs, n) for n in ("train.jsonl", "val.jsonl")]
                                 + [os.path.join(adapter_dir, lora.ADAPTER_WEIGHTS)]
                                 + ([os.path.join(args.sft_data, "train.jsonl"), sft_run_config(adapter_dir)]
                                    if args.sft_replay else []))
    if args.resume and sft.resumable(ckpt_path, run_fp):
        step, best, history = sft.load_checkpoint(ckpt_path, model, opt, device)
    else:
        # step 0: policy == reference, the held-out baseline every later step is compared with
        m0 = evaluate(model, val_pairs, ref_val, pad_id, device, args)
        best = snapshot(model, m0, 0)
        history = [{"step": 0, **m0}]
    if ddp.is_main():
        with atomic_path(log_path) as tmp:
            with open(tmp, "w") as f:
                f.writelines(json.dumps(h) + "\n" for h in history)
    model.train()
    params = [p for g in opt.param_groups for p in g["params"]]
    t0, done = time.time(), 0
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, desc="dpo", disable=ddp.bar_off())
    for step in bar:
        idx = schedule[step]
        mine = ddp.shard(idx)     # under torchrun: this rank's share of the batch; the loss still divides by len(idx)
        rec = {"step": step + 1}
        # forward (policy log-probs of both answers; the reference's were computed once, before training),
        # the preference loss, backward: micro-batch by micro-batch, the gradients accumulate over the batch
        parts, v_parts = [], []
        for s in range(0, len(mine), args.micro_batch_size):
            mb = mine[s:s + args.micro_batch_size]
            if args.loss_type == "sdpo":   # chosen and K rejected answers on one prompt computation
                with M.autocast(device):
                    out = answer_set_logps(model, [train_pairs[i][0] for i in mb], [[train_pairs[i][1] for i in mb]]
                                           + [[slots[i][k] for i in mb] for k in range(slot_mask.shape[1])],
                                           pad_id, device, vocab, trie)
                logps, valid = out if trie is not None else (out, None)
                pc, pr = logps[0], logps[1:].T                                     # (B,), (B, K)
                if trie is not None:
                    vc, vr = valid[0], valid[1:].T
            else:
                with M.autocast(device):
                    out = concatenated_logps(model, [train_pairs[i] for i in mb], pad_id, device,
                                             vocab=vocab, trie=trie)
                pc, pr = out[:2]
                if trie is not None:
                    vc, vr = out[2:]
            n_tok = torch.tensor([len(train_pairs[i][1]) for i in mb], device=pc.device)
            r_mask = slot_mask[mb] if args.loss_type == "sdpo" else None
            losses, cr, rr = dpo_loss(pc.float(), pr.float(), ref_train[0][mb], ref_train[1][mb],
                                      args.beta, args.loss_type, args.label_smoothing, args.rpo_alpha, n_tok,
                                      rejected_mask=r_mask)
            if trie is not None:   # + weight x the validity term: every answer's mass kept on the catalogue
                v_loss = validity_loss(vc.float(), vr.float(), r_mask)
                v_parts.append(v_loss.detach())
                losses = losses + args.valid_id_weight * v_loss
            (losses.sum() / len(idx)).backward()
            parts.append((losses.detach(), cr, rr, pc.detach(), pr.detach() if pr.dim() == 1 else pr[:, 0].detach()))
        if args.sft_replay:   # + weight x the SFT loss of this step's replayed examples, one micro-batch
            batch = [r_pairs[i] for i in r_schedule[step]]
            n_tok = sum(len(a) for _, a in batch)       # of the whole batch: every rank divides by it
            soft = ddp.shard([r_soft[i] for i in r_schedule[step]]) if r_soft else None
            with M.autocast(device):
                loss = sft.sft_loss(model, ddp.shard(batch), pad_id, n_tok, device, shared_prefix=len(fmt.prefix),
                                    vocab=vocab, prompt_id_weight=r_weight, soft=soft, valid_id_weight=r_valid,
                                    trie=r_trie)
            (args.sft_replay_weight * loss).backward()
            rec["sft_loss"] = ddp.sum_all([loss.item()])[0]
        ddp.sum_grads(params)     # the shares' gradients add up to the whole batch's
        if v_parts:   # per pair, of the loss logged below (which includes it at --valid-id-weight)
            rec["valid_loss"] = ddp.cat_all(torch.cat(v_parts)).mean().item()
        rec.update(preference_metrics(*[ddp.cat_all(torch.cat(x)) for x in zip(*parts)]))   # every rank's pairs
        # clip, then one optimizer step at this step's learning rate (linear warm-up, then cosine decay)
        rec["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, args.grad_clip).item()
        mult = sft.lr_at(step, args.steps, args.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * mult
        opt.step()
        opt.zero_grad(set_to_none=True)
        done += len(idx)
        rec["lr"] = args.lr * mult
        rec["pairs_per_s"] = done / (time.time() - t0)
        # every eval_every steps: score the held-out pairs, keep the checkpoint the --select rule prefers
        at_eval = (step + 1) % args.eval_every == 0 or step + 1 == args.steps
        if at_eval:
            rec.update(evaluate(model, val_pairs, ref_val, pad_id, device, args))
            if improves(rec, best, args.select):
                best = snapshot(model, rec, step + 1)
            if ddp.is_main():
                tqdm.write(f"step {step + 1}: loss {rec['loss']:.4f}, held-out loss {rec['eval/loss']:.4f}, "
                           f"preference accuracy {rec['eval/logp_accuracy']:.3f}, "
                           f"margin {rec['eval/rewards/margins']:.4f}")
        history.append(rec)
        if ddp.is_main():
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{rec['loss']:.4f}", acc=f"{rec['rewards/accuracies']:.2f}")
        if at_eval:
            sft.save_checkpoint(ckpt_path, model, opt, step + 1, best, history, run_fp)
    bar.close()
    final = [h for h in history if "eval/loss" in h]
    summary = {"best_step": best["step"], "eval/loss": best["eval/loss"],
               "eval/logp_accuracy": best["eval/logp_accuracy"], "select": args.select, "steps": args.steps,
               "train_pairs": len(train_pairs), "train_pairs_drawn": len(drawn), "held_out_pairs": len(val_pairs),
               # which lines of train.jsonl (0-based) the steps drew: evaluate.py fits its '(pairs)' baselines on them
               "train_pairs_drawn_index": drawn.tolist(),
               "step0": final[0], "best": next(h for h in final if h["step"] == best["step"])}
    if not ddp.is_main():
        return summary
    sft.restore_best(model, best)
    with atomic_dir(os.path.join(args.out, "adapter")) as tmp:
        M.save_policy(model, vocab, tmp, args.model, meta["id_table_sha256"])
    write_json(os.path.join(args.out, "summary.json"), summary)
    print(f"best held-out preference accuracy {best['eval/logp_accuracy']:.3f} (loss {best['eval/loss']:.4f}) at "
          f"step {best['step']} (step 0: {final[0]['eval/logp_accuracy']:.3f}, {final[0]['eval/loss']:.4f}); "
          f"adapter in {os.path.join(args.out, 'adapter')}")
    return summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", required=True, help="folder with train.jsonl, val.jsonl, meta.json")
    p.add_argument("--sft", required=True, help="SFT adapter folder (policy start and frozen reference)")
    p.add_argument("--out", required=True,
                   help="output folder (adapter/, log.jsonl, ref_logps.safetensors, checkpoint.pt, summary.json)")
    p.add_argument("--model", default=MODEL, help="the base model the SFT adapter was trained on")
    p.add_argument("--beta", type=float, default=BETA,
                   help="strength of the KL anchor to the reference, the SFT model (default %(default)s; the DPO "
                        "paper uses 0.1-0.5)")
    p.add_argument("--loss-type", choices=LOSS_TYPES, default=LOSS_TYPE,
                   help="preference loss: sigmoid (DPO), cdpo (conservative, label smoothing), robust, ipo, hinge "
                        "(SLiC), or sdpo (S-DPO: the chosen answer against the pair's rejected one and its "
                        "more_rejected, from data.py prefs --rejected-per-context); default %(default)s")
    p.add_argument("--label-smoothing", type=float, default=LABEL_SMOOTHING,
                   help="cdpo / robust: the share of preference labels assumed flipped")
    p.add_argument("--select", choices=("accuracy", "loss", "last"), default=SELECT,
                   help="what picks the saved checkpoint among the evaluations: the held-out preference accuracy, "
                        "the held-out loss, or last (the final weights); default %(default)s")
    p.add_argument("--rpo-alpha", type=float, default=RPO_ALPHA,
                   help="weight of the NLL term on the chosen answer, inside the loss (RPO); 0: pure DPO, as the seed")
    p.add_argument("--sft-replay", type=int, default=SFT_REPLAY,
                   help="SFT examples (of --sft-data) replayed each step with the SFT run's own loss, added at "
                        "--sft-replay-weight: DPO's pairs are next-track answers only, and without it DPO loses "
                        "some of what SFT learned for attribute requests; 0: off (default %(default)s)")
    p.add_argument("--sft-replay-weight", type=float, default=SFT_REPLAY_WEIGHT,
                   help="weight of the replayed examples' SFT loss (per answer token) beside the preference loss "
                        "(default %(default)s)")
    p.add_argument("--sft-data", default="",
                   help="the SFT data folder the adapter was trained on (data.py sft), for --sft-replay")
    p.add_argument("--valid-id-weight", type=float, default=VALID_ID_WEIGHT,
                   help="weight of the validity term on every answer of a pair: -log p(each ID token is a code the "
                        "catalogue has after its prefix), no pull toward any answer; for pure DPO (--rpo-alpha 0), "
                        "whose lowered rejected answers leak mass off the catalogue; 0: off (default %(default)s: "
                        "it took pure DPO's preference gain away with its hallucinated IDs, EXPERIMENTS.md)")
    p.add_argument("--steps", type=int, default=STEPS, help="optimizer steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="pairs per optimizer step, or prompts per step with --pairs-per-prompt above 1; under "
                        "torchrun, split evenly among the processes (default %(default)s)")
    p.add_argument("--pairs-per-prompt", type=int, default=PAIRS_PER_PROMPT,
                   help="train up to this many pairs of each drawn prompt together: the pairs of one context share "
                        "one forward of its prompt, ~90%% of a pair's tokens, so a step of 4 prompts x up to 8 pairs "
                        "takes the time of one of 8 pairs and learns from ~2.7x the pairs (needs pairs that share "
                        "prompts: data.py prefs --max-train 0 keeps them all); 1: batches of pairs of any prompts "
                        "(default %(default)s)")
    p.add_argument("--micro-batch-size", type=int, default=MICRO_BATCH_SIZE,
                   help="pairs per forward, each holding twice as many sequences; gradients accumulate up to "
                        "--batch-size; also the batch of reference and held-out scoring (default %(default)s)")
    p.add_argument("--lr", type=float, default=LR,
                   help="peak learning rate of the LoRA matrices (default %(default)s: 2e-4 already swung answer "
                        "log-probs by 5-10 nats in 20 steps)")
    p.add_argument("--id-lr", type=float, default=ID_LR,
                   help="peak learning rate of the Semantic-ID rows, where per-track preferences live (default "
                        "%(default)s: 2e-3 and above pushed every answer's log-prob down, likelihood displacement)")
    p.add_argument("--id-bias-lr", type=float, default=ID_BIAS_LR,
                   help="peak learning rate of the output head's bias over the Semantic-ID tokens, one number per "
                        "(level, code) added in every context: where a per-track preference the codes hold can be "
                        "learned from a pair or two a track (default %(default)s: off, the bias stays 0)")
    p.add_argument("--id-levels", default=ID_LEVELS,
                   help="which levels' Semantic-ID rows (and per-code biases) DPO trains, 1-based and "
                        "comma-separated, e.g. 3: the last code, which alone holds the long-listen rate in the "
                        "demo's IDs; the rows are shared by every prompt's answers, so the other levels' rows are "
                        "what attribute requests and next tracks are scored by too (default: every level)")
    p.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS,
                   help=f"steps of linear learning-rate warm-up, then cosine decay to {sft.MIN_LR_RATIO:g} x the "
                        "peak rates, as sft.py (default %(default)s)")
    p.add_argument("--grad-clip", type=float, default=GRAD_CLIP,
                   help="largest global gradient norm (LoRA and ID rows together); a larger one is scaled down "
                        "(default %(default)s)")
    p.add_argument("--eval-every", type=int, default=EVAL_EVERY,
                   help="steps between held-out evaluations and checkpoints (each costs ~10 s); the last step "
                        "always evaluates (default %(default)s)")
    p.add_argument("--eval-pairs", type=int, default=EVAL_PAIRS,
                   help="held-out pairs scored each time: a fixed subset of val.jsonl drawn by --seed "
                        "(default %(default)s)")
    p.add_argument("--seed", type=int, default=SEED,
                   help="seed of the batch order and the held-out subset (default %(default)s)")
    p.add_argument("--device", default=DEVICE,
                   help="cpu, cuda or auto (cuda when torch sees a GPU, else cpu; default %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --out/checkpoint.pt if it was made from the same inputs and options "
                        "(else start over)")
    args = p.parse_args(argv)
    if args.pairs_per_prompt < 1:
        p.error("--pairs-per-prompt must be at least 1")
    if args.pairs_per_prompt == 1 and args.batch_size % args.micro_batch_size:
        p.error("--batch-size must be a multiple of --micro-batch-size")
    if args.sft_replay < 0:
        p.error("--sft-replay must be 0 or more")
    try:   # the form now; whether the IDs have those levels once the adapter is read
        parse_levels(args.id_levels)
    except UserError as e:
        p.error(str(e))
    if args.sft_replay and not args.sft_data:
        p.error("--sft-replay needs --sft-data, the SFT data folder the adapter was trained on")
    if not 0 <= args.label_smoothing < 0.5:
        p.error("--label-smoothing must be in [0, 0.5)")
    if args.label_smoothing and args.loss_type not in ("cdpo", "robust"):
        p.error(f"--label-smoothing applies to --loss-type cdpo and robust, not {args.loss_type}")
    return args


def main(argv=None):
    train(parse_args(argv))
    ddp.cleanup()


if __name__ == "__main__":
    run_main(main)
