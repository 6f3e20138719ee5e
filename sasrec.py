"""SASRec: a self-attentive sequential recommender, the sequential baseline for next-track recommendation.

Kang & McAuley 2018, "Self-Attentive Sequential Recommendation" (ICDM), written out by hand: item and
position embeddings, causal self-attention blocks, a final LayerNorm, and item scores from the same item
embedding (tied output). Trained as gSASRec / Cornac reproductions do, with full-softmax cross-entropy over
the whole catalogue instead of the paper's one sampled negative per positive (sec. III-E), which makes
SASRec markedly stronger (Klenitskiy & Vasilev 2023; Petrov & Macdonald 2023, gSASRec).

Reads the listening sessions that `data.py sft` writes into SFT_DATA/listening_stats.npz (training window
for training, validation window for early stopping on HR@10).

    python sasrec.py --sft-data runs/demo/sft_data --out runs/demo/sasrec [--seed 0 --time-budget 120]

Outputs in --out: model.safetensors + sasrec_config.json (load them with `load`), log.jsonl (one line per
epoch), config.json (the resolved options), summary.json.
"""
import argparse
import copy
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from common import UserError, atomic_open, atomic_path, read_json, run_main, save_config, write_json

# -----------------------------------------------------------------------------
DIM: int = 64                # hidden size d (the paper uses 50; 64 keeps heads even and costs the same)
LAYERS: int = 2              # self-attention blocks b (the paper's choice)
HEADS: int = 1               # attention heads (the paper uses one; more did not help in its ablation)
MAX_LEN: int = 50            # n, the longest history read; sessions here rarely exceed it
DROPOUT: float = 0.2         # the paper's rate for dense data (0.5 for sparse); sessions reuse items a lot
LR: float = 2e-3             # Adam learning rate: twice the paper's; same plateau, reached in half the epochs
BATCH_SIZE: int = 128        # training windows per step, the paper's
MAX_EPOCHS: int = 200        # upper bound; early stopping or the time budget ends training first
TIME_BUDGET_S: float = 120.0  # wall seconds for training + validation (no epoch starts that would overrun it)
PATIENCE: int = 5            # epochs without a better validation HR@10 before stopping
SEED: int = 0                # model init, dropout and batch order
BUCKET: int = 8              # batches whose windows are sorted by length together: less padding, 2-4x faster
EVAL_BATCH: int = 512        # histories per forward when scoring (memory: EVAL_BATCH x N logits)
STATS_FILE: str = "listening_stats.npz"
STATS_ARRAYS: tuple = ("popularity", "train_seq_items", "train_seq_offsets", "val_seq_items", "val_seq_offsets")
# -----------------------------------------------------------------------------

PAD = 0  # token 0 is padding; catalogue row i is token i + 1


class Block(nn.Module):
    """One self-attention block (sec. III-B, III-C), pre-LayerNorm: x + Dropout(g(LN(x))) as in the paper.

    Self-attention: Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V with Q, K, V = LN(x) W^Q, W^K, W^V and
    causality (a position sees only itself and earlier ones). Point-wise feed-forward:
    FFN(s) = ReLU(s W1 + b1) W2 + b2, with d x d weights as in the paper.
    """

    def __init__(self, dim, heads, dropout):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} is not divisible by heads {heads}"
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, allowed):
        """x (B, T, D), allowed (B, 1, T, T) bool: query t may read key s. Returns (B, T, D)."""
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, D)))
        return x + self.drop(self.ff(self.ln2(x)))


class SASRec(nn.Module):
    """Item + position embeddings -> causal self-attention blocks -> LayerNorm (sec. III-A to III-D).

    Input sequences are left-padded with token 0, so the last position is always the most recent item.
    Positions count from the first real item (0 = the oldest item read), not from the padded window's edge
    as in the reference code: then the state at step t of a training window is exactly the state that
    scoring the history up to t computes (the reference code's positions would also tell a training step
    how many items are left in its window), and left padding changes nothing.
    Scores r_{i,t} = F_t . M_i (sec. III-D, shared item embedding).
    """

    def __init__(self, n_items, dim=DIM, layers=LAYERS, heads=HEADS, max_len=MAX_LEN, dropout=DROPOUT):
        super().__init__()
        self.config = {"n_items": n_items, "dim": dim, "layers": layers, "heads": heads, "max_len": max_len,
                       "dropout": dropout}
        self.n_items, self.max_len = n_items, max_len
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=PAD)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        # small normal init (as GPT-2 / nanoGPT); the tied item embedding then starts with near-uniform scores
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            nn.init.zeros_(m.weight[m.padding_idx])

    def forward(self, seqs):
        """seqs (B, T) long tokens, left-padded, T <= max_len. Returns hidden states F (B, T, D).

        E_t = M_{s_t} sqrt(d) + P_t (sec. III-A; the sqrt(d) scale is the reference code's).
        Padded positions are zeroed after every block (as the reference code does) and are never read.
        """
        T = seqs.shape[1]
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.max_len}")
        real = seqs != PAD                                                    # (B, T)
        position = (real.cumsum(1) - 1).clamp(min=0)                          # 0 at the first real item
        x = self.item_emb(seqs) * self.item_emb.embedding_dim ** 0.5 + self.pos_emb(position)
        x = self.drop(x) * real.unsqueeze(-1)
        causal = torch.ones(T, T, dtype=torch.bool, device=seqs.device).tril()
        # a query reads real keys at or before it; every query also reads itself, so a padded query's
        # softmax row is never empty (an all-masked row would be NaN and poison the gradients)
        allowed = causal & (real.unsqueeze(1) | torch.eye(T, dtype=torch.bool, device=seqs.device))
        allowed = allowed.unsqueeze(1)                                        # (B, 1, T, T) for the heads
        for block in self.blocks:
            x = block(x, allowed) * real.unsqueeze(-1)
        return self.ln_f(x)

    def logits(self, hidden):
        """hidden (..., D) -> scores over the catalogue (..., N): tied output, hidden @ M[1:]^T."""
        return hidden @ self.item_emb.weight[1:].T


def sequences(items, offsets, max_len):
    """Training windows of the sessions: inputs items[:-1], targets items[1:], as tokens (row + 1, 0 = pad).

    items (P,) catalogue rows, offsets (S + 1,): session s is items[offsets[s]:offsets[s+1]], oldest first.
    A session of L >= 2 plays has L - 1 transitions; they are cut into windows of at most max_len, counted
    from the end of the session (so the most recent transitions keep the longest context), and each window
    is left-padded to max_len. Returns (inputs, targets), both (W, max_len) int64.
    """
    inputs, targets = [], []
    for s in range(len(offsets) - 1):
        sess = np.asarray(items[offsets[s]:offsets[s + 1]], dtype=np.int64) + 1
        for end in range(len(sess) - 1, 0, -max_len):   # `end` = number of transitions up to this window
            start = max(0, end - max_len)
            row_in, row_tg = np.zeros(max_len, np.int64), np.zeros(max_len, np.int64)
            row_in[max_len - (end - start):] = sess[start:end]
            row_tg[max_len - (end - start):] = sess[start + 1:end + 1]
            inputs.append(row_in)
            targets.append(row_tg)
    if not inputs:
        return np.zeros((0, max_len), np.int64), np.zeros((0, max_len), np.int64)
    return np.stack(inputs), np.stack(targets)


def transitions(items, offsets, max_len):
    """Next-item queries of the sessions: for each session and position t >= 1, (items[t-max_len:t], items[t]).

    Returns (histories: list of lists of catalogue rows, oldest first; targets (Q,) int64).
    """
    histories, targets = [], []
    for s in range(len(offsets) - 1):
        sess = [int(i) for i in items[offsets[s]:offsets[s + 1]]]
        for t in range(1, len(sess)):
            histories.append(sess[max(0, t - max_len):t])
            targets.append(sess[t])
    return histories, np.array(targets, dtype=np.int64)


def trim(inputs, targets):
    """Drop the leading columns that are padding in every row: (B, T) -> (B, T'), T' = longest real part.

    Positions count from the first real item, so this changes no result, only the work.
    """
    first = int((inputs != PAD).any(0).float().argmax()) if inputs.numel() else 0
    return inputs[:, first:], targets[:, first:]


def loss(model, inputs, targets):
    """Mean full-softmax cross-entropy over the real target positions. inputs, targets (B, T) long tokens."""
    inputs, targets = trim(inputs, targets)
    hidden = model(inputs)                                                    # (B, T, D)
    real = targets != PAD
    # the catalogue projection runs only at real targets (most of a batch is padding), so no ignore_index
    logits = model.logits(hidden[real])                                       # (P, N)
    return F.cross_entropy(logits, targets[real] - 1)                         # token - 1 = catalogue row


def left_pad(histories, max_len):
    """[[row, ...], ...] -> (Q, T) long tokens, each history's last max_len items, left-padded."""
    T = min(max_len, max(len(h) for h in histories))
    out = torch.zeros(len(histories), T, dtype=torch.long)
    for q, h in enumerate(histories):
        h = h[-T:]
        out[q, T - len(h):] = torch.as_tensor(h, dtype=torch.long) + 1
    return out


@torch.no_grad()
def score(model, histories, n_items):
    """Scores of every catalogue item as the next one after each history. Returns (Q, N) float32 numpy.

    histories: list of lists of catalogue rows, oldest first (longer ones are cut to the last max_len).
    """
    if n_items != model.n_items:
        raise ValueError(f"the model knows {model.n_items} items, not {n_items}")
    for q, h in enumerate(histories):
        if len(h) == 0:
            raise ValueError(f"history {q} is empty: SASRec needs at least one previous item to score from")
        if min(h) < 0 or max(h) >= n_items:
            raise ValueError(f"history {q} has an item outside the catalogue rows 0..{n_items - 1}")
    was_training = model.training
    model.eval()
    out = np.empty((len(histories), n_items), dtype=np.float32)
    order = np.argsort([len(h) for h in histories], kind="stable")  # similar lengths together: less padding
    for s in range(0, len(order), EVAL_BATCH):
        rows = order[s:s + EVAL_BATCH]
        hidden = model(left_pad([histories[q] for q in rows], model.max_len))[:, -1]   # last state (B, D)
        out[rows] = model.logits(hidden).numpy()
    model.train(was_training)
    return out


def validate(model, histories, targets, n_items, k=10):
    """HR@k of the targets among the whole catalogue, the history's last item excluded, and the full-softmax
    CE of the targets (which breaks ties between epochs of equal HR@k). Returns {"val/hit@10", "val/loss"}.

    Ties in score count against the target (pessimistic), so a constant model scores 0, not chance.
    """
    order = np.argsort([len(h) for h in histories], kind="stable")  # similar lengths share a batch
    histories, targets = [histories[q] for q in order], np.asarray(targets)[order]
    hits, nll = 0, 0.0
    for s in range(0, len(histories), EVAL_BATCH):
        scores = score(model, histories[s:s + EVAL_BATCH], n_items)
        last = np.array([h[-1] for h in histories[s:s + EVAL_BATCH]])
        tgt = targets[s:s + EVAL_BATCH]
        rows = np.arange(len(tgt))
        nll -= float(torch.log_softmax(torch.from_numpy(scores), 1)[rows, tgt].sum())
        t_score = scores[rows, tgt].copy()
        scores[rows, last] = -np.inf
        above = (scores >= t_score[:, None]).sum(1) - (last != tgt)   # items scored >= target, target excluded
        hits += int(((above < k) & (last != tgt)).sum())              # a target equal to the excluded item misses
    n = max(1, len(histories))
    return {f"val/hit@{k}": hits / n, "val/loss": nll / n}


def batches(lengths, batch_size, rng, bucket=BUCKET):
    """One epoch's batches of window indices: a fresh permutation, sorted by length within groups of
    `bucket` batches (so a batch pads little), then the batches shuffled. Returns a list of int arrays."""
    perm = rng.permutation(len(lengths))
    out = []
    for s in range(0, len(perm), batch_size * bucket):
        group = perm[s:s + batch_size * bucket]
        group = group[np.argsort(lengths[group], kind="stable")]
        out += [group[j:j + batch_size] for j in range(0, len(group), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def train(train_items, train_offsets, val_items, val_offsets, n_items, *, dim=DIM, layers=LAYERS, heads=HEADS,
          max_len=MAX_LEN, dropout=DROPOUT, lr=LR, batch_size=BATCH_SIZE, max_epochs=MAX_EPOCHS,
          time_budget_s=TIME_BUDGET_S, patience=PATIENCE, seed=SEED):
    """Train SASRec with Adam and full-softmax CE; keep the epoch with the best validation HR@10.

    Deterministic given the seed, unless the time budget cuts training short (then it depends on speed).
    Returns (model at its best epoch, in eval mode; log: one dict per epoch, the best one with "best": True).
    """
    inputs, targets = sequences(train_items, train_offsets, max_len)
    val_hist, val_tgt = transitions(val_items, val_offsets, max_len)
    if len(inputs) == 0:
        raise ValueError("no training session has two or more plays")
    if len(val_hist) == 0:
        raise ValueError("no validation session has two or more plays")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SASRec(n_items, dim, layers, heads, max_len, dropout)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))  # the paper's betas
    lengths = (inputs != PAD).sum(1)
    inputs, targets = torch.from_numpy(inputs), torch.from_numpy(targets)
    best = {"key": (-1.0, -np.inf), "epoch": 0, "state": None}
    log, t0, epoch_s = [], time.time(), 0.0
    bar = tqdm(range(1, max_epochs + 1), desc="sasrec", unit="epoch", disable=None)
    for epoch in bar:
        if log and time.time() - t0 + epoch_s > time_budget_s:   # the next epoch would overrun the budget
            break
        t_epoch = time.time()
        model.train()
        total, n, spent = 0.0, 0, False
        for idx in batches(lengths, batch_size, rng):
            spent = bool(log) and time.time() - t0 > time_budget_s   # slower than the last (a busy machine)
            if spent:
                break
            idx = torch.from_numpy(idx)
            batch_loss = loss(model, inputs[idx], targets[idx])
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            n_targets = int((targets[idx] != PAD).sum())
            total, n = total + batch_loss.item() * n_targets, n + n_targets
        if spent:   # the partial epoch is dropped unvalidated; the best validated state is restored below
            break
        rec = {"epoch": epoch, "loss": total / n, **validate(model, val_hist, val_tgt, n_items, k=10)}
        epoch_s = time.time() - t_epoch
        rec["seconds"] = round(time.time() - t0, 2)
        log.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", hr10=f"{rec['val/hit@10']:.4f}")
        # better = higher HR@10, or equal HR@10 and lower validation CE (small sets plateau on HR@10)
        if (rec["val/hit@10"], -rec["val/loss"]) > best["key"]:
            best = {"key": (rec["val/hit@10"], -rec["val/loss"]), "epoch": epoch,
                    "state": copy.deepcopy(model.state_dict())}
        elif epoch - best["epoch"] >= patience:
            break
    bar.close()
    model.load_state_dict(best["state"])
    model.eval()
    log[best["epoch"] - 1]["best"] = True
    return model, log


def save(model, folder, config=None):
    """Write model.safetensors and sasrec_config.json ({"architecture": ..., "training": config}) atomically."""
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    with atomic_path(os.path.join(folder, "model.safetensors")) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    write_json(os.path.join(folder, "sasrec_config.json"), {"architecture": model.config, "training": config})


def load(folder):
    """The SASRec saved by `save` in folder, in eval mode."""
    from safetensors.torch import load_file
    cfg = read_json(os.path.join(folder, "sasrec_config.json"), "SASRec config")
    path = os.path.join(folder, "model.safetensors")
    if not os.path.exists(path):
        raise UserError(f"{path}: SASRec weights not found (run sasrec.py)")
    model = SASRec(**cfg["architecture"])
    model.load_state_dict(load_file(path))
    return model.eval()


def read_stats(path):
    """The session arrays of listening_stats.npz, checked. Returns dict of numpy arrays."""
    fix = "rebuild it with data.py sft"
    if not os.path.exists(path):
        raise UserError(f"{path}: listening statistics not found; {fix}")
    try:
        with np.load(path) as z:
            missing = [k for k in STATS_ARRAYS if k not in z.files]
            if missing:
                raise UserError(f"{path}: no array {', '.join(missing)} (written by an older data.py); {fix}")
            stats = {k: z[k] for k in STATS_ARRAYS}
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable .npz file ({e}); {fix}") from None
    n = len(stats["popularity"])
    for w in ("train", "val"):
        items, off = stats[f"{w}_seq_items"], stats[f"{w}_seq_offsets"]
        if (len(off) == 0 or off[0] != 0 or off[-1] != len(items) or np.any(np.diff(off) < 0)
                or (len(items) and (items.min() < 0 or items.max() >= n))):
            raise UserError(f"{path}: {w}_seq_items / {w}_seq_offsets are inconsistent with each other or "
                            f"with the {n} catalogue rows; {fix}")
    return stats


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sft-data", required=True, help=f"folder with {STATS_FILE} (written by data.py sft)")
    p.add_argument("--out", required=True, help="output folder (model.safetensors, its config and training log)")
    p.add_argument("--dim", type=int, default=DIM,
                   help="hidden size d (the paper uses 50; 64 keeps heads even; default %(default)s)")
    p.add_argument("--layers", type=int, default=LAYERS,
                   help="self-attention blocks b (the paper's choice; default %(default)s)")
    p.add_argument("--heads", type=int, default=HEADS, help="attention heads (must divide --dim)")
    p.add_argument("--max-len", type=int, default=MAX_LEN, help="longest history read, in items")
    p.add_argument("--dropout", type=float, default=DROPOUT,
                   help="dropout rate (the paper's for dense data; default %(default)s)")
    p.add_argument("--lr", type=float, default=LR, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="training windows per step")
    p.add_argument("--max-epochs", type=int, default=MAX_EPOCHS, help="upper bound on epochs")
    p.add_argument("--time-budget", type=float, default=TIME_BUDGET_S,
                   help="wall seconds for training; no epoch starts that would overrun it")
    p.add_argument("--patience", type=int, default=PATIENCE,
                   help="epochs without a better validation HR@10 before stopping")
    p.add_argument("--seed", type=int, default=SEED, help="seed of init, dropout and batch order")
    args = p.parse_args(argv)
    for name in ("dim", "layers", "heads", "max_len", "batch_size", "max_epochs", "patience"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.dim % args.heads:
        p.error(f"--heads {args.heads} does not divide --dim {args.dim}")
    if not 0 <= args.dropout < 1:
        p.error("--dropout must be in [0, 1)")
    return args


def main(argv=None):
    args = parse_args(argv)
    path = os.path.join(args.sft_data, STATS_FILE)
    stats = read_stats(path)
    n_items = len(stats["popularity"])
    n_train = len(sequences(stats["train_seq_items"], stats["train_seq_offsets"], args.max_len)[0])
    if n_train == 0:
        raise UserError(f"{path}: no training session has two or more plays; nothing to train on")
    if not np.any(np.diff(stats["val_seq_offsets"]) >= 2):
        raise UserError(f"{path}: no validation session has two or more plays; nothing to stop early on")
    os.makedirs(args.out, exist_ok=True)
    save_config(args.out, args)
    t0 = time.time()
    model, log = train(stats["train_seq_items"], stats["train_seq_offsets"], stats["val_seq_items"],
                       stats["val_seq_offsets"], n_items, dim=args.dim, layers=args.layers, heads=args.heads,
                       max_len=args.max_len, dropout=args.dropout, lr=args.lr, batch_size=args.batch_size,
                       max_epochs=args.max_epochs, time_budget_s=args.time_budget, patience=args.patience,
                       seed=args.seed)
    seconds = time.time() - t0
    best = next(r for r in log if r.get("best"))
    save(model, args.out, {k: v for k, v in vars(args).items() if k not in ("sft_data", "out")})
    with atomic_open(os.path.join(args.out, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in log)
    summary = {"best_epoch": best["epoch"], "val/hit@10": best["val/hit@10"], "val/loss": best["val/loss"],
               "epochs": len(log),
               "seconds": round(seconds, 1), "train_sequences": n_train, "n_items": n_items}
    write_json(os.path.join(args.out, "summary.json"), summary)
    print(f"SASRec: best validation HR@10 {best['val/hit@10']:.4f} at epoch {best['epoch']} of {len(log)} "
          f"({seconds:.0f} s, {n_train:,} training sequences); model in {args.out}")
    return summary


if __name__ == "__main__":
    run_main(main)
