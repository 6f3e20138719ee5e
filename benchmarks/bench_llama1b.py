"""sft.py's training step on a model of Llama-3.2-1B's exact shape (random weights, built from the config).

    python benchmarks/bench_llama1b.py [--batch-size 8] [--prompt-tokens 36] [--steps 3] [--layers 16]

The model: LlamaForCausalLM(config) with Llama-3.2-1B's published config (hidden 2048, intermediate 8192,
16 layers, 32 heads, 8 KV heads, head_dim 64, vocab 128,256, rope llama3 scaling, tied embeddings; about
1.24 B parameters), never downloaded; then what sft.build_policy does: model.add_id_tokens (L x K new tokens,
the head kept tied), lora.inject_lora (all seven projections, r / alpha / dropout of lora.py), the new rows
trainable; sft.make_optimizer, and sft.train's step (sft.sft_loss under model.autocast, clipping, sft.lr_at).
The examples are synthetic token ids of real shape: --prompt-tokens prompt tokens then L Semantic-ID tokens and
the end token (the values do not change the cost).

CPU: seconds per step and the peak RSS of its own process at --batch-size (it must stay under 24 GiB).
GPU, when torch.cuda.is_available(): the same step as sft.py runs it there (fp32 weights, bf16 autocast;
--gpu-dtype bf16 casts the weights too), seconds per step at --batch-size, then the batch doubled until
out of memory: the largest batch that fits, its seconds per step and peak allocated memory.
"""
import argparse
import os
import sys
import time

import torch

import harness  # first: it puts the repository root on sys.path for the imports below
import lora
import model as M
import rvq
import sft
from common import UserError, run_main, seed_everything, write_json

# -----------------------------------------------------------------------------
LLAMA_3_2_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
                    max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=128000,
                    eos_token_id=128001, hidden_act="silu", attention_bias=False, mlp_bias=False,
                    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192})
RUN: str = "runs/demo"             # a pipeline run folder (make demo builds runs/demo)
BATCH_SIZE: int = 8             # examples per step (one micro-batch, as sft.py's default 16 / 16)
PROMPT_TOKENS: int = 36         # + L IDs + end token: about 40 tokens, a typical SFT example
LEVELS: int = rvq.LEVELS
CODEBOOK_SIZE: int = rvq.CODEBOOK_SIZE   # 3 x 256: the real-data ID vocabulary
STEPS: int = 3                  # timed steps (each batch size on the GPU)
WARMUP: int = 1
MAX_BATCH: int = 65536          # the doubling stops here even without running out of memory
CPU_LIMIT_GIB: float = 24.0
SEED: int = 0
# -----------------------------------------------------------------------------


def build(args, device, dtype=torch.float32):
    """Random Llama-3.2-1B-shaped model + ID tokens + LoRA, trainable as in sft.build_policy."""
    from transformers import LlamaConfig, LlamaForCausalLM
    seed_everything(args.seed)
    config = LlamaConfig(**{**LLAMA_3_2_1B, "num_hidden_layers": args.layers})
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    vocab = M.add_id_tokens(model, args.levels, args.codebook_size)
    lora.inject_lora(model, targets=tuple(args.lora_targets), r=args.lora_r, alpha=args.lora_alpha,
                     dropout=args.lora_dropout, use_rslora=args.use_rslora)
    for p in M.id_parameters(model):
        p.requires_grad_(True)
    model.to(device).train()
    return model, vocab


def examples(vocab, n, prompt_tokens, eos, seed):
    """n synthetic (prompt_ids, answer_ids) pairs: random text tokens, a random Semantic ID, the end token."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(0, vocab.offset - 256, (prompt_tokens,), generator=g).tolist()
        codes = torch.randint(0, vocab.codebook_size, (vocab.levels,), generator=g).tolist()
        out.append((prompt, vocab.ids(codes) + [eos]))
    return out


def step_time(model, opt, batch, steps, warmup, device, pad_id):
    """Seconds per sft.train step (loss, backward, clip, lr, AdamW) over `steps` timed steps."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n_tok = sum(len(a) for _, a in batch)
    t = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t = time.perf_counter()
        with M.autocast(device):
            loss = sft.sft_loss(model, batch, pad_id, n_tok, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], sft.GRAD_CLIP)
        mult = sft.lr_at(i, warmup + steps, 0)
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * mult
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    return (time.perf_counter() - t) / steps, loss.item()


def run_cpu(args):
    device = torch.device("cpu")
    t = time.perf_counter()
    model, vocab = build(args, device)
    build_s = time.perf_counter() - t
    opt = sft.make_optimizer(model, sft.LR, sft.ID_LR)
    batch = examples(vocab, args.batch_size, args.prompt_tokens, LLAMA_3_2_1B["eos_token_id"], args.seed)
    secs, loss = step_time(model, opt, batch, args.steps, args.warmup, device, LLAMA_3_2_1B["eos_token_id"])
    trainable, total = lora.count_parameters(model)
    return {"s_per_step": secs, "loss": loss, "build_s": build_s, "parameters": total, "trainable": trainable}


def run_gpu(args):
    device = torch.device(args.gpu_device)
    dtype = torch.bfloat16 if args.gpu_dtype == "bf16" else torch.float32
    model, vocab = build(args, device, dtype)
    opt = sft.make_optimizer(model, sft.LR, sft.ID_LR)
    eos = LLAMA_3_2_1B["eos_token_id"]
    cuda = device.type == "cuda"
    out, b = [], args.batch_size
    while b <= args.max_batch:
        batch = examples(vocab, b, args.prompt_tokens, eos, args.seed)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        try:
            secs, loss = step_time(model, opt, batch, args.steps, args.warmup, device, eos)
        except torch.cuda.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            out.append({"batch": b, "oom": True})
            break
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else None
        out.append({"batch": b, "s_per_step": secs, "tokens_per_s": b * (args.prompt_tokens + vocab.levels + 1) / secs,
                    "peak_gib": peak, "loss": loss})
        print(f"batch {b}: {secs:.3f} s/step" + (f", peak {peak:.1f} GiB allocated" if cuda else ""), flush=True)
        b *= 2
    name = torch.cuda.get_device_name(device) if cuda else str(device)
    return {"device": name, "dtype": args.gpu_dtype, "batches": out}


def main(argv=None):
    p = argparse.ArgumentParser(description="sft.py step on a random Llama-3.2-1B-shaped model")
    p.add_argument("--run", default=RUN, help="where the figures go (RUN/bench_llama1b.json)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS)
    p.add_argument("--levels", type=int, default=LEVELS)
    p.add_argument("--codebook-size", type=int, default=CODEBOOK_SIZE)
    p.add_argument("--layers", type=int, default=LLAMA_3_2_1B["num_hidden_layers"], help="fewer for a smoke test")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--warmup", type=int, default=WARMUP)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU measurement")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU measurement")
    p.add_argument("--gpu-device", default="cuda", help="device of the accelerator run")
    p.add_argument("--gpu-dtype", choices=("autocast", "bf16"), default="autocast",
                   help="autocast: fp32 weights + bf16 autocast, as sft.py; bf16: bf16 weights too")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out", default=None, help="JSON of the figures (default RUN/bench_llama1b.json)")
    sft.add_lora_args(p)
    harness.child_args(p)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error("--steps and --batch-size must be >= 1, --warmup >= 0")

    if args.child:
        torch.set_num_threads(args.threads)
        harness.write_result(args.result, run_cpu(args) if args.child == "cpu" else run_gpu(args))
        return

    base = list(argv if argv is not None else sys.argv[1:])
    script = os.path.abspath(__file__)
    gpu = not args.no_gpu and (torch.cuda.is_available() or args.gpu_device == "cpu")
    v = harness.versions("torch", "transformers")
    print(f"Llama-3.2-1B shape, {args.layers} layers, random weights; {args.levels} x {args.codebook_size} ID tokens; "
          f"LoRA r={args.lora_r} on {', '.join(args.lora_targets)}; batch {args.batch_size} x "
          f"{args.prompt_tokens + args.levels + 1} tokens; " + ", ".join(f"{k} {x}" for k, x in v.items()))
    result = {"config": {k: x for k, x in vars(args).items() if k not in ("child", "result")}, "versions": v}
    if not args.no_cpu:
        res, rss = harness.run_child(script, base, "cpu", args.threads)
        fits = rss / 1024 < CPU_LIMIT_GIB
        result["cpu"] = {**res, "peak_rss_gib": rss / 1024, "fits": fits}
        print(f"\nCPU ({args.threads} threads): {res['parameters'] / 1e9:.3f} B parameters ({res['trainable']:,} "
              f"trainable), built in {res['build_s']:.0f} s; batch {args.batch_size}: {res['s_per_step']:.2f} s/step, "
              f"peak RSS {rss / 1024:.1f} GiB ({'fits' if fits else 'does NOT fit'} in {CPU_LIMIT_GIB:g} GiB)")
    if gpu:
        res, _ = harness.run_child(script, base, "gpu", args.threads)
        result["gpu"] = res
        ok = [b for b in res["batches"] if not b.get("oom")]
        print(f"\nGPU {res['device']} ({res['dtype']}):")
        print(f"{'batch':>7} {'s/step':>8} {'tokens/s':>10} {'peak GiB':>9}")
        for b in ok:
            peak = f"{b['peak_gib']:.1f}" if b["peak_gib"] is not None else "-"
            print(f"{b['batch']:>7} {b['s_per_step']:>8.3f} {b['tokens_per_s']:>10,.0f} {peak:>9}")
        if ok:
            stop = "out of memory at batch " + str(res["batches"][-1]["batch"]) if res["batches"][-1].get("oom") \
                else f"--max-batch {args.max_batch} reached"
            print(f"largest batch that fits: {ok[-1]['batch']} ({stop})")
        else:
            raise UserError(f"batch {args.batch_size} does not fit on {res['device']}")
    elif not args.no_gpu:
        print("no GPU visible to torch: GPU measurement skipped")
    out = args.out or os.path.join(args.run, "bench_llama1b.json")
    write_json(out, result)
    print(f"figures: {out}")


if __name__ == "__main__":
    run_main(main)
