"""sft.py's training step against TRL's SFTTrainer + PEFT LoRA, on the same model, examples, batches and CPU.

    pip install -r requirements-bench.txt
    python benchmarks/bench_sft.py [--run runs/demo] [--steps 20] [--warmup 2] [--batch-size 16]

Both systems get the SAME batches in the same order: the example indices of sft.batch_schedule (as sft.py
draws them), flattened into a dataset the Trainer reads sequentially. Ours: sft.build_policy, make_optimizer,
sft_loss, the same micro-batching, gradient clipping and sft.lr_at schedule as sft.train. The peer: SFTTrainer
on prompt-completion examples (the prompt rendered with the model's chat template, as PromptFormat does; loss on
the completion only), the Semantic-ID tokens added to its tokenizer as new tokens, LoraConfig with the same
targets / r / alpha / dropout, AdamW with the same rate, clipping and cosine-to-10% schedule. Its new-token rows
are trained through PEFT `modules_to_save=["embed_tokens"]` with `ensure_weight_tying=True` (the whole tied
embedding becomes trainable): PEFT's `trainable_token_indices`, the exact equivalent of our new rows, crashes in
TRL 1.16's fused LM head (`'TrainableTokensWrapper' object has no attribute 'bias'`), see --peer-id-rows.
Both start from the same function: new rows at the mean of the old ones, LoRA B = 0.

Rows: ours; TRL at its best on this CPU (bf16=False, gradient_checkpointing=False, no pinned memory, no
workers); ours with the whole tied embedding trainable too, the peer's trainable set, for a like-for-like loss;
TRL with its defaults (bf16 autocast and gradient checkpointing) for --defaults-steps timed steps only.
Measured: training tokens per second (real, non-pad tokens of prompt + answer), seconds per step, peak RSS of
each system's own process, and the training loss of the first and the last step. Warm-up steps are not timed.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from tqdm import tqdm

import harness  # first: it puts the repository root on sys.path for the imports below
import formats
import lora
import model as M
import sft
from common import UserError, read_json, run_main, seed_everything, write_json

# -----------------------------------------------------------------------------
RUN: str = "runs/demo"             # a pipeline run folder (make demo builds runs/demo)
MODEL: str = M.DEFAULT_MODEL
STEPS: int = 20                    # timed optimizer steps per system
WARMUP: int = 2                    # untimed steps first (allocator, lazy init)
BATCH_SIZE: int = sft.BATCH_SIZE
MICRO_BATCH_SIZE: int = sft.MICRO_BATCH_SIZE
LR: float = sft.LR                 # LoRA and ID rows alike: the peer has one rate (sft.py gives the rows --id-lr)
LR_WARMUP: int = 0                 # 0: HF's cosine_with_min_lr and sft.lr_at are then the same schedule
DEFAULTS_STEPS: int = 1            # timed steps of the TRL-defaults row (~150 s each on 2 cores); 0 skips it
MAX_EXAMPLES: int = 0              # pool of training examples the schedule draws from (0: all)
PEER_ID_ROWS: str = "modules_to_save"   # how the peer trains the new rows (see the module docstring)
SEED: int = 0
TARGET: float = 1.3                # ours / peer tokens per second
# -----------------------------------------------------------------------------


def load_examples(args):
    data = os.path.join(args.run, "sft_data")
    harness.need_run(os.path.join(data, "train.jsonl"), (args.run, f"{args.run}/sft_data/config.json"))
    meta = read_json(os.path.join(data, "meta.json"), "SFT data meta.json")
    examples = sft.read_jsonl(os.path.join(data, "train.jsonl"))
    if args.max_examples:
        examples = examples[:args.max_examples]
    return meta, examples


def prompt_format(args, meta):
    """Our PromptFormat without loading weights: ID tokens start right after the embedding rows."""
    from transformers import AutoConfig, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.model)
    rows = AutoConfig.from_pretrained(args.model).vocab_size
    return M.PromptFormat(tok, M.IDVocab(meta["levels"], meta["codebook_size"], rows)), rows


def schedule(args, pairs):
    """Example indices of every step (warm-up steps first), exactly as sft.train draws them: (steps, batch)."""
    return sft.batch_schedule([len(p) + len(a) for p, a in pairs], args.warmup + args.steps, args.batch_size,
                              args.seed)


# ----------------------------------------------------------------------------- ours

def run_ours(args, meta, pairs, sched, full_embedding=False):
    """pairs: sft.tokenize_examples of the examples (the loaded tokenizer and ID offset give the same ids).

    full_embedding: also train the whole (tied) base embedding, the peer's trainable set, so that the two
    losses can be compared like for like (sft.py itself never does this).
    """
    device = torch.device("cpu")
    seed_everything(args.seed)
    opts = argparse.Namespace(model=args.model, lora_targets=args.lora_targets, lora_r=args.lora_r,
                              lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, use_rslora=args.use_rslora)
    model, tokenizer, _ = sft.build_policy(opts, meta, device)
    pad_id = M.pad_id_of(tokenizer)
    if full_embedding:
        model.model.embed_tokens.weight.requires_grad_(True)   # tied: the head reads the same tensor
    opt = sft.make_optimizer(model, args.lr, args.lr)
    total = len(sched)
    model.train()
    losses, ends, tokens = [], [], []
    t0 = time.perf_counter()
    for step in tqdm(range(total), desc="ours: sft.py", disable=None):
        batch = [pairs[i] for i in sched[step]]
        n_tok = sum(len(a) for _, a in batch)
        loss_sum = 0.0
        for s in range(0, len(batch), args.micro_batch_size):
            with M.autocast(device):
                # the answers only (prompt_id_weight 0), as the peer's completion-only loss: sft.py's default also
                # scores the prompt's ID tokens, 3 more head positions per next-track example
                loss = sft.sft_loss(model, batch[s:s + args.micro_batch_size], pad_id, n_tok, device)
            loss.backward()
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], sft.GRAD_CLIP)
        mult = sft.lr_at(step, total, args.lr_warmup)
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * mult
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss_sum)
        ends.append(time.perf_counter())
        tokens.append(sum(len(p) + len(a) for p, a in batch))
    seqs = [[p + a, len(a)] for step in sched for p, a in (pairs[i] for i in step)]
    return {"losses": losses, "t0": t0, "ends": ends, "tokens": tokens, "sequences": seqs,
            "trainable": lora.count_parameters(model)[0]}


# ----------------------------------------------------------------------------- TRL

def peer_model(args, meta, rows):
    """HF model + tokenizer with the ID tokens added as new tokens; new rows at the mean of the old ones."""
    from transformers import AutoTokenizer, LlamaForCausalLM
    tok = AutoTokenizer.from_pretrained(args.model)
    if len(tok) != rows:
        raise UserError(f"{args.model}: tokenizer has {len(tok)} tokens but the model {rows} rows; the peer's new "
                        "token ids would not line up with ours")
    # in IDVocab's order (level-major), so each new token gets the very id ours has: rows + level * K + code
    tok.add_tokens([formats.id_token(l, c) for l in range(meta["levels"]) for c in range(meta["codebook_size"])])
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():  # same start as IDEmbedding: every new row the mean of the old ones
        w = model.get_input_embeddings().weight
        w[rows:] = w[:rows].mean(0)
    return model, tok


def peer_peft_config(args, rows, n_new):
    from peft import LoraConfig
    extra = {}
    if args.peer_id_rows == "modules_to_save":
        extra = {"modules_to_save": ["embed_tokens"], "ensure_weight_tying": True}
    elif args.peer_id_rows == "trainable_tokens":
        extra = {"trainable_token_indices": {"embed_tokens": list(range(rows, rows + n_new))}}
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=list(args.lora_targets), use_rslora=args.use_rslora, bias="none",
                      task_type="CAUSAL_LM", **extra)


def prompt_text(tok, text):
    """The prompt as PromptFormat renders it (chat template, empty system prompt), as one string."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "system", "content": M.SYSTEM_PROMPT},
                                        {"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return f"{tok.bos_token or ''}User: {text}\n\nAssistant: "


def run_trl(args, meta, examples, sched, rows, defaults):
    from datasets import Dataset
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer
    hf_logging.set_verbosity_error()
    seed_everything(args.seed)
    model, tok = peer_model(args, meta, rows)
    flat = [int(i) for step in sched for i in step]
    ds = Dataset.from_list([{"prompt": prompt_text(tok, examples[i]["prompt"]), "completion": examples[i]["answer"]}
                            for i in flat])
    cpu_best = {} if defaults else {"bf16": False, "gradient_checkpointing": False, "dataloader_pin_memory": False,
                                    "dataloader_num_workers": 0}
    out_dir = tempfile.mkdtemp(prefix="bench_sft_trl_")  # the Trainer wants one; nothing is saved there
    cfg = SFTConfig(output_dir=out_dir, per_device_train_batch_size=args.micro_batch_size,
                    gradient_accumulation_steps=args.batch_size // args.micro_batch_size, max_steps=len(sched),
                    learning_rate=args.lr, lr_scheduler_type="cosine_with_min_lr",
                    lr_scheduler_kwargs={"min_lr_rate": sft.MIN_LR_RATIO}, warmup_steps=args.lr_warmup,
                    weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=sft.GRAD_CLIP,
                    seed=args.seed, data_seed=args.seed, train_sampling_strategy="sequential",
                    completion_only_loss=True, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                    **cpu_best)
    clock = harness.trainer_clock()
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                         peft_config=peer_peft_config(args, rows, len(tok) - rows), callbacks=[clock])
    if len(trainer.train_dataset) != len(flat):
        raise RuntimeError(f"TRL dropped {len(flat) - len(trainer.train_dataset)} examples while preparing them")
    try:
        trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    ids, labels = trainer.train_dataset["input_ids"], trainer.train_dataset["labels"]
    b = args.batch_size
    tokens = [sum(len(x) for x in ids[s:s + b]) for s in range(0, len(ids), b)]
    seqs = [[list(x), sum(l != -100 for l in y)] for x, y in zip(ids, labels)]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"losses": clock.losses, "t0": clock.t0, "ends": clock.ends, "tokens": tokens, "sequences": seqs,
            "trainable": trainable, "bf16": cfg.bf16, "gradient_checkpointing": cfg.gradient_checkpointing,
            "optim": str(cfg.optim)}


# ----------------------------------------------------------------------------- report

def summarise(name, res, rss, warmup):
    ends, tokens = res["ends"], res["tokens"]
    start = ends[warmup - 1] if warmup else res["t0"]
    secs = ends[-1] - start
    timed = len(ends) - warmup
    return {"system": name, "tokens_per_s": sum(tokens[warmup:]) / secs, "s_per_step": secs / timed,
            "timed_steps": timed, "peak_rss_mib": rss, "loss_first": res["losses"][0],
            "loss_last": res["losses"][-1], "loss_step": len(res["losses"]), "losses": res["losses"],
            "trainable_parameters": res["trainable"],
            **{k: res[k] for k in ("bf16", "gradient_checkpointing", "optim") if k in res}}


def compare_tokens(a, b):
    """How many sequences differ in token ids or in the number of supervised tokens."""
    n = min(len(a), len(b))
    return sum(x != y for x, y in zip(a[:n], b[:n])) + abs(len(a) - len(b)), n


def main(argv=None):
    p = argparse.ArgumentParser(description="sft.py step vs TRL SFTTrainer + PEFT")
    p.add_argument("--run", default=RUN, help="pipeline run folder with sft_data/")
    p.add_argument("--model", default=MODEL, help="base model folder both systems load")
    p.add_argument("--tiny", action="store_true", help="smoke test: a tiny random Llama with --model's tokenizer")
    p.add_argument("--steps", type=int, default=STEPS, help="timed optimizer steps per system (default %(default)s)")
    p.add_argument("--warmup", type=int, default=WARMUP,
                   help="untimed steps before them, for the allocator and lazy init (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="examples per optimizer step (default %(default)s, sft.py's default)")
    p.add_argument("--micro-batch-size", type=int, default=MICRO_BATCH_SIZE,
                   help="examples per forward; gradients accumulate up to --batch-size (default %(default)s, "
                        "sft.py's cap)")
    p.add_argument("--lr", type=float, default=LR,
                   help="peak learning rate of LoRA and ID rows alike, since the peer has one rate; sft.py gives "
                        "the rows --id-lr (default %(default)s, sft.py's --lr)")
    p.add_argument("--lr-warmup", type=int, default=LR_WARMUP,
                   help="learning-rate warm-up steps (default %(default)s: with 0, HF's cosine_with_min_lr and "
                        "sft.lr_at are the same schedule)")
    p.add_argument("--defaults-steps", type=int, default=DEFAULTS_STEPS,
                   help="timed steps of the TRL-defaults row, ~150 s each on 2 cores; 0 skips the row "
                        "(default %(default)s)")
    p.add_argument("--max-examples", type=int, default=MAX_EXAMPLES,
                   help="pool of training examples the schedule draws from: the first ones of "
                        "RUN/sft_data/train.jsonl (0: all; default %(default)s)")
    p.add_argument("--peer-id-rows", choices=("modules_to_save", "trainable_tokens", "frozen"), default=PEER_ID_ROWS,
                   help="how the peer trains the new ID rows: modules_to_save (the whole tied embedding), "
                        "trainable_tokens (the exact equivalent of ours; crashes in TRL 1.16's fused LM head) or "
                        "frozen (default %(default)s)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch / OpenMP / MKL threads of each system's process, the same for all so that they get the "
                        "same CPU (default: torch's default here, %(default)s)")
    p.add_argument("--seed", type=int, default=SEED,
                   help="seed of the batch schedule and of each system's random generators (default %(default)s)")
    p.add_argument("--out", default=None, help="JSON of the figures (default RUN/bench_sft.json)")
    sft.add_lora_args(p)
    harness.child_args(p)
    args = p.parse_args(argv)
    if args.batch_size % args.micro_batch_size:
        p.error("--batch-size must be a multiple of --micro-batch-size")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.tiny:
        args.model = harness.tiny_llama(os.path.join(harness.ROOT, "runs", "bench", "tiny-llama"), args.model)
    meta, examples = load_examples(args)

    if args.child:
        torch.set_num_threads(args.threads)
        fmt, rows = prompt_format(args, meta)
        pairs = sft.tokenize_examples(examples, fmt)
        sched = schedule(args, pairs)
        if args.child in ("ours", "ours-full"):
            res = run_ours(args, meta, pairs, sched, full_embedding=args.child == "ours-full")
        else:
            res = run_trl(args, meta, examples, sched, rows, defaults=args.child == "trl-defaults")
        res["threads"] = torch.get_num_threads()  # after training: a library could have changed it
        harness.write_result(args.result, res)
        return

    harness.need_peers("trl", "peft", "datasets")
    base = list(argv if argv is not None else sys.argv[1:])
    if args.tiny:
        base += ["--model", args.model]
    script = os.path.abspath(__file__)
    v = harness.versions("torch", "transformers", "peft", "trl")
    print(f"{args.model}: {args.warmup} warm-up + {args.steps} timed steps of {args.batch_size} examples "
          f"(micro-batch {args.micro_batch_size}), {args.threads} threads; "
          + ", ".join(f"{k} {x}" for k, x in v.items()))
    runs = [("ours: sft.py", "ours", []), ("TRL SFTTrainer, CPU best", "trl", []),
            ("ours + whole embedding", "ours-full", [])]
    if args.defaults_steps:
        runs.append(("TRL SFTTrainer, TRL defaults", "trl-defaults",
                     ["--steps", str(args.defaults_steps), "--warmup", "0"]))
    rows, raw = [], {}
    for label, name, extra in runs:
        res, rss = harness.run_child(script, base + extra, name, args.threads)
        warm = 0 if name == "trl-defaults" else args.warmup
        rows.append(summarise(label, res, rss, warm))
        raw[name] = res
    diff, n = compare_tokens(raw["ours"]["sequences"], raw["trl"]["sequences"])
    harness.warn_threads(raw, args.threads)

    print(f"\n{'system':<30} {'tokens/s':>9} {'s/step':>7} {'peak RSS MiB':>12} {'loss step 1':>11} "
          f"{'loss last':>10} {'trainable':>11} {'bf16':>5} {'grad ckpt':>9}")
    for r in rows:
        print(f"{r['system']:<30} {r['tokens_per_s']:>9.1f} {r['s_per_step']:>7.2f} {r['peak_rss_mib']:>12.0f} "
              f"{r['loss_first']:>11.4f} {r['loss_last']:>10.4f} {r['trainable_parameters']:>11,} "
              f"{str(r.get('bf16', False)):>5} {str(r.get('gradient_checkpointing', False)):>9}")
    ours, peer = rows[0], rows[1]
    speed = ours["tokens_per_s"] / peer["tokens_per_s"]
    k = min(5, args.steps)
    tail = [float(np.mean(r["losses"][-k:])) for r in (ours, peer)]
    print(f"\nsame token ids and loss masks in {n - diff} of {n} sequences")
    print(f"ours / TRL (CPU best): tokens/s x{speed:.2f} "
          f"(target >= {TARGET}: {'met' if speed >= TARGET else 'NOT met'}), "
          f"peak RSS x{ours['peak_rss_mib'] / peer['peak_rss_mib']:.2f}; loss at step {ours['loss_step']}: "
          f"{ours['loss_last']:.4f} vs {peer['loss_last']:.4f} (mean of the last {k}: {tail[0]:.4f} vs {tail[1]:.4f})")
    full = rows[2]
    full_tail = float(np.mean(full["losses"][-k:]))
    print(f"like for like (ours with the peer's trainable set, {full['trainable_parameters']:,} parameters): "
          f"tokens/s x{full['tokens_per_s'] / peer['tokens_per_s']:.2f}, loss at step {full['loss_step']}: "
          f"{full['loss_last']:.4f} vs {peer['loss_last']:.4f} (mean of the last {k}: {full_tail:.4f} vs "
          f"{tail[1]:.4f}), largest per-step loss difference "
          f"{max(abs(a - b) for a, b in zip(full['losses'], peer['losses'])):.4f}")
    if len(rows) > 3:
        print(f"ours / TRL (defaults): tokens/s x{ours['tokens_per_s'] / rows[3]['tokens_per_s']:.1f}")
    out = args.out or os.path.join(args.run, "bench_sft.json")
    write_json(out, {"config": {k: x for k, x in vars(args).items() if k not in ("child", "result")},
                     "versions": v, "rows": rows, "speed_ratio": speed, "target": TARGET,
                     "same_sequences": n - diff, "compared_sequences": n})
    print(f"figures: {out}")


if __name__ == "__main__":
    run_main(main)
