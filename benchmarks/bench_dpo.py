"""dpo.py's training step against TRL's DPOTrainer + PEFT, from the same SFT adapter, pairs, batches and CPU.

    pip install -r requirements-bench.txt
    python benchmarks/bench_dpo.py [--run runs/demo] [--sft RUN/sft/adapter] [--steps 20] [--batch-size 8]

Both systems start from the SFT adapter (LoRA + Semantic-ID rows; dropout off) with the frozen SFT model as the
reference, and get the SAME batches in the same order (sft.batch_schedule over the pairs, as dpo.train draws them).
Ours: model.load_policy, the reference log-probs precomputed once per pair (dpo.score_pairs, what
dpo.reference_logps stores), then concatenated_logps + dpo_loss with dpo.train's micro-batching, clipping and
schedule. The peer: the same base model with the ID tokens added to its tokenizer and our new rows copied in, our
LoRA loaded into a PeftModel (`set_peft_model_state_dict`), the ID rows trainable through
`modules_to_save=["embed_tokens"]` + `ensure_weight_tying=True` (PEFT's `trainable_token_indices` crashes in TRL
1.16's fused LM head); DPOTrainer makes its own frozen "ref" copy of that adapter. Two peer rows: the reference
computed in every step (TRL's default) and `precompute_ref_log_probs=True` (once per pair, before training, like
ours). CPU best for both: bf16=False, gradient_checkpointing=False.

Measured: pairs per second of the training steps; pairs per second with the reference counted (for the
precomputing systems: training time + reference seconds per pair x pairs trained); peak RSS of each system's own
process; the loss of the first batch (ln 2 = 0.6931 for both: policy == reference) and of the last step.
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file
from tqdm import tqdm

import harness  # first: it puts the repository root on sys.path for the imports below
import dpo
import formats
import lora
import model as M
import sft
from common import UserError, read_json, run_main, seed_everything, write_json

# -----------------------------------------------------------------------------
RUN: str = "runs/demo"             # a pipeline run folder (make demo builds runs/demo)
MODEL: str = M.DEFAULT_MODEL
STEPS: int = 20                  # timed optimizer steps per system
WARMUP: int = 2                  # untimed steps first
BATCH_SIZE: int = dpo.BATCH_SIZE
MICRO_BATCH_SIZE: int = dpo.MICRO_BATCH_SIZE
LR: float = dpo.LR
LR_WARMUP: int = 0               # 0: HF's cosine_with_min_lr and sft.lr_at are then the same schedule
MAX_PAIRS: int = 0               # pool of training pairs the schedule draws from (0: all)
SEED: int = 0
TARGET: float = 1.5              # ours / peer pairs per second, at no more memory
# -----------------------------------------------------------------------------


def pair_rows(args):
    """The training pairs as JSON rows (the first --max-pairs)."""
    path = os.path.join(args.run, "prefs", "train.jsonl")
    harness.need_run(path, (args.run, f"{args.run}/prefs/config.json"))
    with open(path, encoding="utf-8") as f:
        rows = [line for line in f if line.strip()]
    return rows[:args.max_pairs] if args.max_pairs else rows


def our_pairs(rows, fmt):
    """dpo.read_pairs over exactly these rows."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        f.writelines(rows)
    try:
        return dpo.read_pairs(f.name, fmt)
    finally:
        os.remove(f.name)


def schedule(args, pairs):
    return sft.batch_schedule([len(p) + len(c) + len(r) for p, c, r in pairs], args.warmup + args.steps,
                              args.batch_size, args.seed)


# ----------------------------------------------------------------------------- ours

def run_ours(args, rows):
    device = torch.device("cpu")
    seed_everything(args.seed)
    model, tokenizer, vocab = M.load_policy(args.model, adapter=args.sft, device=device, dropout=0.0)
    fmt = M.PromptFormat(tokenizer, vocab)
    pad_id = M.pad_id_of(tokenizer)
    pairs = our_pairs(rows, fmt)
    sched = schedule(args, pairs)
    flat = [int(i) for step in sched for i in step]
    t = time.perf_counter()  # the reference, once per pair trained on, as dpo.reference_logps does it
    ref_c, ref_r = dpo.score_pairs(model, [pairs[i] for i in flat], pad_id, device, args.micro_batch_size)
    ref_secs = time.perf_counter() - t
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    for p in M.id_parameters(model):
        p.requires_grad_(True)
    opt = sft.make_optimizer(model, args.lr, args.lr, weight_decay=0.0)
    model.train()
    losses, ends = [], []
    t0 = time.perf_counter()
    for step in tqdm(range(len(sched)), desc="ours: dpo.py", disable=None):
        idx = sched[step]
        base = step * args.batch_size  # position of this step's pairs in `flat` (and in ref_c / ref_r)
        parts = []
        for s in range(0, len(idx), args.micro_batch_size):
            mb = idx[s:s + args.micro_batch_size]
            ref = slice(base + s, base + s + len(mb))
            with M.autocast(device):
                pc, pr = dpo.concatenated_logps(model, [pairs[i] for i in mb], pad_id, device)
            losses_mb, _, _ = dpo.dpo_loss(pc.float(), pr.float(), ref_c[ref], ref_r[ref], dpo.BETA)
            (losses_mb.sum() / len(idx)).backward()
            parts.append(losses_mb.detach())
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], dpo.GRAD_CLIP)
        mult = sft.lr_at(step, len(sched), args.lr_warmup)
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * mult
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(torch.cat(parts).mean().item())
        ends.append(time.perf_counter())
    seqs = [[pairs[i][0] + pairs[i][1], pairs[i][0] + pairs[i][2]] for i in flat]
    return {"losses": losses, "t0": t0, "ends": ends, "ref_secs": ref_secs, "ref_pairs": len(flat),
            "sequences": seqs, "trainable": lora.count_parameters(model)[0], "reference": "precomputed once"}


# ----------------------------------------------------------------------------- TRL

def peer_model(args):
    """Base model + ID tokens as new tokens (our trained rows copied in) + our LoRA as a trainable PeftModel."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM
    ids = read_json(os.path.join(args.sft, M.ID_VOCAB_FILE), "SFT adapter id_vocab.json")
    cfg = lora.read_adapter_config(args.sft)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) != rows or ids["offset"] != rows:
        raise UserError(f"{args.model}: tokenizer has {len(tok)} tokens, the model {rows} rows, the adapter's IDs "
                        f"start at {ids['offset']}; the peer's new token ids would not line up with ours")
    tok.add_tokens([formats.id_token(l, c) for l in range(ids["levels"]) for c in range(ids["codebook_size"])])
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    new_rows = load_file(os.path.join(args.sft, M.ID_TOKENS_FILE))
    if "lm_head.new_rows" in new_rows:
        raise UserError(f"{args.sft}: an untied head; this comparison assumes tied embeddings (SmolLM2, Llama-3.2)")
    with torch.no_grad():
        model.get_input_embeddings().weight[rows:] = new_rows["embed_tokens.new_rows"]
    peft_cfg = LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg.get("lora_dropout", 0.0),
                          target_modules=cfg["target_modules"], use_rslora=cfg.get("use_rslora", False), bias="none",
                          task_type="CAUSAL_LM", modules_to_save=["embed_tokens"], ensure_weight_tying=True)
    peft_model = get_peft_model(model, peft_cfg)
    params = dict(peft_model.named_parameters())
    state = load_file(os.path.join(args.sft, lora.ADAPTER_WEIGHTS))  # PEFT's file keys: no adapter name
    targets = {k.replace(".weight", ".default.weight"): t for k, t in state.items()}
    if set(targets) != {n for n in params if ".lora_" in n}:
        raise RuntimeError(f"{args.sft}: our adapter's keys do not match PEFT's LoRA parameters")
    with torch.no_grad():
        for n, t in targets.items():
            params[n].copy_(t)
    return peft_model, tok


def run_trl(args, rows, precompute):
    from datasets import Dataset
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig, DPOTrainer
    hf_logging.set_verbosity_error()
    seed_everything(args.seed)
    model, tok = peer_model(args)
    # our tokenization only to draw the same schedule (it sorts by length)
    ids = read_json(os.path.join(args.sft, M.ID_VOCAB_FILE), "SFT adapter id_vocab.json")
    vocab = M.IDVocab(ids["levels"], ids["codebook_size"], ids["offset"])
    pairs = our_pairs(rows, M.PromptFormat(tok, vocab))
    sched = schedule(args, pairs)
    flat = [int(i) for step in sched for i in step]
    ex = [json.loads(rows[i]) for i in flat]
    ds = Dataset.from_list([{"prompt": prompt_text(tok, e["prompt"]), "chosen": e["chosen"], "rejected": e["rejected"]}
                            for e in ex])
    out_dir = tempfile.mkdtemp(prefix="bench_dpo_trl_")  # the Trainer wants one; nothing is saved there
    cfg = DPOConfig(output_dir=out_dir, per_device_train_batch_size=args.micro_batch_size,
                    gradient_accumulation_steps=args.batch_size // args.micro_batch_size, max_steps=len(sched),
                    learning_rate=args.lr, lr_scheduler_type="cosine_with_min_lr",
                    lr_scheduler_kwargs={"min_lr_rate": sft.MIN_LR_RATIO}, warmup_steps=args.lr_warmup,
                    weight_decay=0.0, max_grad_norm=dpo.GRAD_CLIP, beta=dpo.BETA, loss_type=["sigmoid"],
                    precompute_ref_log_probs=precompute, precompute_ref_batch_size=args.micro_batch_size,
                    seed=args.seed, data_seed=args.seed, train_sampling_strategy="sequential", logging_steps=1,
                    save_strategy="no", report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False,
                    dataloader_pin_memory=False, dataloader_num_workers=0)
    clock, ref_secs = harness.trainer_clock(), [0.0]

    class TimedDPOTrainer(DPOTrainer):
        def _precompute_ref_logps(self, *a, **k):  # runs inside __init__; timed as the reference's cost
            t = time.perf_counter()
            out = super()._precompute_ref_logps(*a, **k)
            ref_secs[0] += time.perf_counter() - t
            return out

    trainer = TimedDPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[clock])
    if len(trainer.train_dataset) != len(flat):
        raise RuntimeError(f"TRL dropped {len(flat) - len(trainer.train_dataset)} pairs while preparing them")
    try:
        trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    d = trainer.train_dataset
    seqs = [[p + c, p + r] for p, c, r in zip(d["prompt_ids"], d["chosen_ids"], d["rejected_ids"])]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"losses": clock.losses, "t0": clock.t0, "ends": clock.ends,
            "ref_secs": ref_secs[0] if precompute else None, "ref_pairs": len(flat), "sequences": seqs, "trainable": trainable,
            "reference": "precompute_ref_log_probs" if precompute else "every step (ref adapter)"}


def prompt_text(tok, text):
    """The prompt as PromptFormat renders it (chat template, empty system prompt), as one string."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "system", "content": M.SYSTEM_PROMPT},
                                        {"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return f"{tok.bos_token or ''}User: {text}\n\nAssistant: "


# ----------------------------------------------------------------------------- report

def summarise(name, res, rss, warmup, batch):
    ends = res["ends"]
    secs = ends[-1] - (ends[warmup - 1] if warmup else res["t0"])
    n = (len(ends) - warmup) * batch
    with_ref = n / (secs + res["ref_secs"] / res["ref_pairs"] * n) if res["ref_secs"] is not None else n / secs
    return {"system": name, "pairs_per_s": n / secs, "pairs_per_s_with_reference": with_ref,
            "reference": res["reference"], "reference_s_per_pair": (res["ref_secs"] / res["ref_pairs"]
                                                                    if res["ref_secs"] is not None else None),
            "s_per_step": secs / (len(ends) - warmup), "peak_rss_mib": rss, "loss_first": res["losses"][0],
            "loss_last": res["losses"][-1], "loss_step": len(res["losses"]), "losses": res["losses"],
            "trainable_parameters": res["trainable"]}


def main(argv=None):
    p = argparse.ArgumentParser(description="dpo.py step vs TRL DPOTrainer + PEFT")
    p.add_argument("--run", default=RUN, help="pipeline run folder with prefs/ and sft/adapter/")
    p.add_argument("--sft", default=None, help="SFT adapter (default RUN/sft/adapter)")
    p.add_argument("--model", default=MODEL, help="the base model the SFT adapter was trained on")
    p.add_argument("--steps", type=int, default=STEPS, help="timed optimizer steps per system (default %(default)s)")
    p.add_argument("--warmup", type=int, default=WARMUP,
                   help="untimed steps before them, for the allocator and lazy init (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="pairs per optimizer step (default %(default)s, dpo.py's default)")
    p.add_argument("--micro-batch-size", type=int, default=MICRO_BATCH_SIZE,
                   help="pairs per forward; gradients accumulate up to --batch-size (default %(default)s, dpo.py's "
                        "default)")
    p.add_argument("--lr", type=float, default=LR,
                   help="peak learning rate of LoRA and ID rows alike, since the peer has one rate; dpo.py gives "
                        "the rows --id-lr (default %(default)s, dpo.py's --lr)")
    p.add_argument("--lr-warmup", type=int, default=LR_WARMUP,
                   help="learning-rate warm-up steps (default %(default)s: with 0, HF's cosine_with_min_lr and "
                        "sft.lr_at are the same schedule)")
    p.add_argument("--max-pairs", type=int, default=MAX_PAIRS,
                   help="pool of training pairs the schedule draws from: the first ones of RUN/prefs/train.jsonl "
                        "(0: all; default %(default)s)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch / OpenMP / MKL threads of each system's process, the same for all so that they get the "
                        "same CPU (default: torch's default here, %(default)s)")
    p.add_argument("--seed", type=int, default=SEED,
                   help="seed of the batch schedule and of each system's random generators (default %(default)s)")
    p.add_argument("--out", default=None, help="JSON of the figures (default RUN/bench_dpo.json)")
    harness.child_args(p)
    args = p.parse_args(argv)
    if args.batch_size % args.micro_batch_size:
        p.error("--batch-size must be a multiple of --micro-batch-size")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    args.sft = args.sft or os.path.join(args.run, "sft", "adapter")
    harness.need_run(os.path.join(args.sft, M.ID_VOCAB_FILE), (args.run, f"{args.run}/sft/summary.json"))
    rows = pair_rows(args)

    if args.child:
        torch.set_num_threads(args.threads)
        res = run_ours(args, rows) if args.child == "ours" else run_trl(args, rows, args.child == "trl-precompute")
        res["threads"] = torch.get_num_threads()  # after training: a library could have changed it
        harness.write_result(args.result, res)
        return

    harness.need_peers("trl", "peft", "datasets")
    base = list(argv if argv is not None else sys.argv[1:])
    v = harness.versions("torch", "transformers", "peft", "trl")
    print(f"{args.model} + {args.sft}: {args.warmup} warm-up + {args.steps} timed steps of {args.batch_size} pairs "
          f"(micro-batch {args.micro_batch_size}), {args.threads} threads; "
          + ", ".join(f"{k} {x}" for k, x in v.items()))
    out_rows, raw = [], {}
    for label, name in (("ours: dpo.py", "ours"), ("TRL DPOTrainer, ref every step", "trl"),
                        ("TRL DPOTrainer, precomputed ref", "trl-precompute")):
        res, rss = harness.run_child(os.path.abspath(__file__), base, name, args.threads)
        out_rows.append(summarise(label, res, rss, args.warmup, args.batch_size))
        raw[name] = res
    same = sum(a == b for a, b in zip(raw["ours"]["sequences"], raw["trl"]["sequences"]))
    harness.warn_threads(raw, args.threads)

    print(f"\n{'system':<32} {'pairs/s':>8} {'incl. ref':>9} {'ref s/pair':>10} {'s/step':>7} {'peak RSS MiB':>12} "
          f"{'loss step 1':>11} {'loss last':>10} {'trainable':>11}")
    for r in out_rows:
        ref = f"{r['reference_s_per_pair']:.4f}" if r["reference_s_per_pair"] is not None else "in step"
        print(f"{r['system']:<32} {r['pairs_per_s']:>8.2f} {r['pairs_per_s_with_reference']:>9.2f} {ref:>10} "
              f"{r['s_per_step']:>7.2f} {r['peak_rss_mib']:>12.0f} {r['loss_first']:>11.4f} {r['loss_last']:>10.4f} "
              f"{r['trainable_parameters']:>11,}")
    ours = out_rows[0]
    best = max(out_rows[1:], key=lambda r: r["pairs_per_s_with_reference"])
    speed = ours["pairs_per_s_with_reference"] / best["pairs_per_s_with_reference"]
    mem = ours["peak_rss_mib"] / best["peak_rss_mib"]
    met = speed >= TARGET and mem <= 1.0
    print(f"\nsame token ids in {same} of {len(raw['ours']['sequences'])} pairs; ln 2 = {math.log(2):.4f}")
    print(f"ours / fastest TRL row ({best['system']}), reference counted: pairs/s x{speed:.2f}, peak RSS x{mem:.2f} "
          f"(target >= {TARGET}x at no more memory: {'met' if met else 'NOT met'}); training steps alone: "
          f"x{ours['pairs_per_s'] / best['pairs_per_s']:.2f}")
    out = args.out or os.path.join(args.run, "bench_dpo.json")
    write_json(out, {"config": {k: x for k, x in vars(args).items() if k not in ("child", "result")},
                     "versions": v, "rows": out_rows, "speed_ratio": speed, "rss_ratio": mem, "target": TARGET,
                     "same_sequences": same, "compared_pairs": len(raw["ours"]["sequences"])})
    print(f"figures: {out}")


if __name__ == "__main__":
    run_main(main)
