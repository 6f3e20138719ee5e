"""sft.py's and dpo.py's training steps on a model of Llama-3.2-1B's exact shape (random weights, from its config).

    python benchmarks/bench_llama1b.py [--batch-size 8] [--prompt-tokens 36] [--steps 3] [--layers 16]
                                       [--stages sft dpo] [--tiny]

The model: LlamaForCausalLM(config) with Llama-3.2-1B's published config (hidden 2048, intermediate 8192,
16 layers, 32 heads, 8 KV heads, head_dim 64, vocab 128,256, rope llama3 scaling, tied embeddings; about
1.24 B parameters), never downloaded; then what sft.build_policy does: model.add_id_tokens (L x K new tokens,
the head kept tied), lora.inject_lora (all seven projections, r / alpha / dropout of lora.py), the new rows
trainable; sft.make_optimizer, and sft.train's step (sft.sft_loss under model.autocast, clipping, sft.lr_at).
The examples are synthetic token ids of real shape: --prompt-tokens prompt tokens then L Semantic-ID tokens and
the end token (the values do not change the cost).

--stages dpo adds dpo.train's step on the same model (LoRA dropout 0, as dpo.py loads the SFT adapter):
dpo.concatenated_logps under model.autocast (the prompt once, chosen and rejected answers on its cache),
dpo.dpo_loss against reference log-probs computed once before the timed steps (dpo.py caches them the same
way), clipping, sft.lr_at, AdamW at dpo.py's rates; a batch is --batch-size pairs in one forward.

CPU: seconds per step and the peak RSS of its own process at --batch-size (it must stay under 24 GiB).
GPU, when torch.cuda.is_available(): the same step as sft.py / dpo.py run it there (fp32 weights, bf16
autocast; --gpu-dtype bf16 casts the weights too), seconds per step and tokens per second at --batch-size,
then the batch doubled until out of memory: the largest batch that fits, its seconds per step and peak
allocated memory (torch.cuda.max_memory_allocated). Each system and stage runs in its own process.

--tiny swaps the model for a 2-layer, 64-wide one of the same structure (vocab 2,048): a smoke test of every
code path in seconds, on the CPU too (with --gpu-device cpu, the accelerator path runs on the CPU).
"""
import argparse
import os
import sys
import time

import torch

import harness  # first: it puts the repository root on sys.path for the imports below
import dpo
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
# --tiny: the same structure at toy size, for smoke tests of the code paths (not a measurement)
TINY = dict(LLAMA_3_2_1B, vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
            bos_token_id=1, eos_token_id=2,
            rope_parameters={**LLAMA_3_2_1B["rope_parameters"], "original_max_position_embeddings": 256})
RUN: str = "runs/demo"             # a pipeline run folder (make demo builds runs/demo)
BATCH_SIZE: int = 8             # examples (SFT) or pairs (DPO) per step (one micro-batch, as sft.py's 16 / 16)
PROMPT_TOKENS: int = 36         # + L IDs + end token: about 40 tokens, a typical SFT example
LEVELS: int = rvq.LEVELS
CODEBOOK_SIZE: int = rvq.CODEBOOK_SIZE   # 3 x 256: the real-data ID vocabulary
STEPS: int = 3                  # timed steps (each batch size on the GPU)
WARMUP: int = 1
STAGES = ("sft", "dpo")
MAX_BATCH: int = 65536          # the doubling stops here even without running out of memory
CPU_LIMIT_GIB: float = 24.0
SEED: int = 0
# -----------------------------------------------------------------------------


def model_config(args):
    base = TINY if args.tiny else LLAMA_3_2_1B
    return {**base, "num_hidden_layers": args.layers or base["num_hidden_layers"]}


def build(args, device, dtype=torch.float32, dropout=None):
    """Random Llama-3.2-1B-shaped model + ID tokens + LoRA, trainable as in sft.build_policy."""
    from transformers import LlamaConfig, LlamaForCausalLM
    seed_everything(args.seed)
    config = LlamaConfig(**model_config(args))
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    vocab = M.add_id_tokens(model, args.levels, args.codebook_size)
    lora.inject_lora(model, targets=tuple(args.lora_targets), r=args.lora_r, alpha=args.lora_alpha,
                     dropout=args.lora_dropout if dropout is None else dropout, use_rslora=args.use_rslora)
    for p in M.id_parameters(model):
        p.requires_grad_(True)
    model.to(device).train()
    return model, vocab


def examples(vocab, n, prompt_tokens, eos, seed):
    """n synthetic (prompt_ids, answer_ids) pairs: random text tokens, a random Semantic ID, the end token."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(0, max(1, vocab.offset - 256), (prompt_tokens,), generator=g).tolist()
        codes = torch.randint(0, vocab.codebook_size, (vocab.levels,), generator=g).tolist()
        out.append((prompt, vocab.ids(codes) + [eos]))
    return out


def preference_pairs(vocab, n, prompt_tokens, eos, seed):
    """n synthetic (prompt_ids, chosen_ids, rejected_ids): two random Semantic IDs, each with the end token."""
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for prompt, chosen in examples(vocab, n, prompt_tokens, eos, seed):
        codes = torch.randint(0, vocab.codebook_size, (vocab.levels,), generator=g).tolist()
        out.append((prompt, chosen, vocab.ids(codes) + [eos]))
    return out


def _sync(device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _update(opt, i, total):
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], sft.GRAD_CLIP)
    mult = sft.lr_at(i, total, 0)
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * mult
    opt.step()
    opt.zero_grad(set_to_none=True)


def step_time(model, opt, batch, steps, warmup, device, pad_id):
    """Seconds per sft.train step (loss, backward, clip, lr, AdamW) over `steps` timed steps; the first loss."""
    sync = _sync(device)
    n_tok = sum(len(a) for _, a in batch)
    t, first = 0.0, None
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t = time.perf_counter()
        with M.autocast(device):
            loss = sft.sft_loss(model, batch, pad_id, n_tok, device)
        loss.backward()
        _update(opt, i, warmup + steps)
        if first is None:
            first = loss.item()
    sync()
    return (time.perf_counter() - t) / steps, first


def dpo_step_time(model, opt, pairs, steps, warmup, device, pad_id):
    """Seconds per dpo.train step (concatenated_logps, dpo_loss, backward, clip, lr, AdamW); the first loss.

    The reference log-probs come first, once, from the untrained policy under no_grad (dpo.py computes them once
    with the frozen SFT model, which is the policy at step 0): so the first loss is ln 2.
    """
    sync = _sync(device)
    model.eval()
    with torch.no_grad(), M.autocast(device):
        ref_c, ref_r = dpo.concatenated_logps(model, pairs, pad_id, device)
    model.train()
    ref_c, ref_r = ref_c.float(), ref_r.float()
    n_tok = torch.tensor([len(c) for _, c, _ in pairs], dtype=torch.float32, device=ref_c.device)
    t, first = 0.0, None
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t = time.perf_counter()
        with M.autocast(device):
            pc, pr = dpo.concatenated_logps(model, pairs, pad_id, device)
        losses, _, _ = dpo.dpo_loss(pc.float(), pr.float(), ref_c, ref_r, beta=dpo.BETA, loss_type=dpo.LOSS_TYPE,
                                    label_smoothing=dpo.LABEL_SMOOTHING, rpo_alpha=dpo.RPO_ALPHA,
                                    chosen_lengths=n_tok)
        loss = losses.sum() / len(pairs)
        loss.backward()
        _update(opt, i, warmup + steps)
        if first is None:
            first = loss.item()
    sync()
    return (time.perf_counter() - t) / steps, first


def make_stage(args, stage, device, dtype):
    """(model, vocab, optimizer, batch_of(n), timer, tokens per item) for one stage."""
    if stage == "sft":
        model, vocab = build(args, device, dtype)
        opt = sft.make_optimizer(model, sft.LR, sft.ID_LR)
    else:
        model, vocab = build(args, device, dtype, dropout=0.0)   # dpo.py: dropout off, policy == reference at 0
        opt = sft.make_optimizer(model, dpo.LR, dpo.ID_LR, weight_decay=0.0)
    eos = model_config(args)["eos_token_id"]
    answer = vocab.levels + 1
    if stage == "sft":
        return (model, vocab, opt, lambda n: examples(vocab, n, args.prompt_tokens, eos, args.seed),
                step_time, args.prompt_tokens + answer)
    # a pair runs its prompt once and both answers on its cache
    return (model, vocab, opt, lambda n: preference_pairs(vocab, n, args.prompt_tokens, eos, args.seed),
            dpo_step_time, args.prompt_tokens + 2 * answer)


def run_cpu(args, stage):
    device = torch.device("cpu")
    t = time.perf_counter()
    model, vocab, opt, batch_of, timer, per_item = make_stage(args, stage, device, torch.float32)
    build_s = time.perf_counter() - t
    secs, loss = timer(model, opt, batch_of(args.batch_size), args.steps, args.warmup, device,
                       model_config(args)["eos_token_id"])
    trainable, total = lora.count_parameters(model)
    return {"s_per_step": secs, "items_per_s": args.batch_size / secs,
            "tokens_per_s": args.batch_size * per_item / secs, "first_loss": loss, "build_s": build_s,
            "parameters": total, "trainable": trainable}


def run_gpu(args, stage):
    device = torch.device(args.gpu_device)
    dtype = torch.bfloat16 if args.gpu_dtype == "bf16" else torch.float32
    cuda = device.type == "cuda"
    t = time.perf_counter()
    model, vocab, opt, batch_of, timer, per_item = make_stage(args, stage, device, dtype)
    build_s = time.perf_counter() - t
    eos = model_config(args)["eos_token_id"]
    out, b = [], args.batch_size
    while b <= args.max_batch:
        batch = batch_of(b)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        try:
            secs, loss = timer(model, opt, batch, args.steps, args.warmup, device, eos)
        except torch.cuda.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.empty_cache()
            out.append({"batch": b, "oom": True})
            break
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else None
        out.append({"batch": b, "s_per_step": secs, "items_per_s": b / secs, "tokens_per_s": b * per_item / secs,
                    "peak_gib": peak, "first_loss": loss})
        print(f"{stage} batch {b}: {secs:.3f} s/step" + (f", peak {peak:.1f} GiB allocated" if cuda else ""),
              flush=True)
        b *= 2
    name = torch.cuda.get_device_name(device) if cuda else str(device)
    trainable, total = lora.count_parameters(model)
    return {"device": name, "dtype": args.gpu_dtype, "build_s": build_s, "parameters": total,
            "trainable": trainable, "tokens_per_item": per_item, "batches": out}


def count(n):
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


UNIT = {"sft": ("examples", "example"), "dpo": ("pairs", "pair")}


def main(argv=None):
    p = argparse.ArgumentParser(description="sft.py / dpo.py steps on a random Llama-3.2-1B-shaped model")
    p.add_argument("--run", default=RUN, help="where the figures go (RUN/bench_llama1b.json)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=["sft"],
                   help="which training steps to measure (default sft; gpu_check.sh measures sft dpo)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="examples (sft) or pairs (dpo) per step")
    p.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS,
                   help="prompt tokens of a synthetic example, followed by L IDs and the end token (default "
                        "%(default)s: about 40 tokens in all, a typical SFT example)")
    p.add_argument("--levels", type=int, default=LEVELS,
                   help="Semantic-ID levels L (default %(default)s, rvq.py's)")
    p.add_argument("--codebook-size", type=int, default=CODEBOOK_SIZE,
                   help="codes per level (default %(default)s, rvq.py's: the real-data ID vocabulary)")
    p.add_argument("--layers", type=int, default=None,
                   help=f"fewer for a smoke test (default {LLAMA_3_2_1B['num_hidden_layers']})")
    p.add_argument("--tiny", action="store_true", help="a toy model of the same structure: a smoke test, not a figure")
    p.add_argument("--steps", type=int, default=STEPS,
                   help="timed steps; on the GPU, at each batch size (default %(default)s)")
    p.add_argument("--warmup", type=int, default=WARMUP, help="untimed steps before them (default %(default)s)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch / OpenMP / MKL threads of each measured process (default: torch's default here, "
                        "%(default)s)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU measurement")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU measurement")
    p.add_argument("--gpu-device", default="cuda", help="device of the accelerator run (cpu: a smoke test of it)")
    p.add_argument("--gpu-dtype", choices=("autocast", "bf16"), default="autocast",
                   help="autocast: fp32 weights + bf16 autocast, as sft.py; bf16: bf16 weights too")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH,
                   help="the GPU's batch doubling stops here even without running out of memory "
                        "(default %(default)s)")
    p.add_argument("--seed", type=int, default=SEED,
                   help="seed of the random weights, the LoRA init and the synthetic examples (default %(default)s)")
    p.add_argument("--out", default=None, help="JSON of the figures (default RUN/bench_llama1b.json)")
    sft.add_lora_args(p)
    harness.child_args(p)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error("--steps and --batch-size must be >= 1, --warmup >= 0")
    if args.layers is not None and args.layers < 1:
        p.error("--layers must be >= 1")

    if args.child:
        torch.set_num_threads(args.threads)
        where, stage = args.child.split("_")
        harness.write_result(args.result, run_cpu(args, stage) if where == "cpu" else run_gpu(args, stage))
        return

    base = list(argv if argv is not None else sys.argv[1:])
    script = os.path.abspath(__file__)
    gpu = not args.no_gpu and (torch.cuda.is_available() or args.gpu_device == "cpu")
    cfg = model_config(args)
    v = harness.versions("torch", "transformers")
    print(f"{'TINY smoke-test model (not Llama-3.2-1B)' if args.tiny else 'Llama-3.2-1B shape'}, "
          f"{cfg['num_hidden_layers']} layers, random weights; {args.levels} x {args.codebook_size} ID tokens; "
          f"LoRA r={args.lora_r} on {', '.join(args.lora_targets)}; batch {args.batch_size} x "
          f"{args.prompt_tokens + args.levels + 1} tokens (a DPO pair: {args.prompt_tokens} + 2 x "
          f"{args.levels + 1}); stages {', '.join(args.stages)}; " + ", ".join(f"{k} {x}" for k, x in v.items()))
    result = {"config": {k: x for k, x in vars(args).items() if k not in ("child", "result")}, "model": cfg,
              "versions": v}
    failed = []
    for stage in args.stages:
        items, item = UNIT[stage]
        result[stage] = {}
        if not args.no_cpu:
            res, rss = harness.run_child(script, base, f"cpu_{stage}", args.threads)
            fits = rss / 1024 < CPU_LIMIT_GIB
            result[stage]["cpu"] = {**res, "peak_rss_gib": rss / 1024, "fits": fits}
            print(f"\n{stage.upper()} step, CPU ({args.threads} threads): {count(res['parameters'])} parameters "
                  f"({res['trainable']:,} trainable), built in {res['build_s']:.0f} s; batch {args.batch_size} "
                  f"{items}: {res['s_per_step']:.2f} s/step, {res['tokens_per_s']:,.0f} tokens/s, first loss "
                  f"{res['first_loss']:.4f}, peak RSS {rss / 1024:.1f} GiB "
                  f"({'fits' if fits else 'does NOT fit'} in {CPU_LIMIT_GIB:g} GiB)")
        if gpu:
            res, _ = harness.run_child(script, base, f"gpu_{stage}", args.threads)
            result[stage]["gpu"] = res
            ok = [b for b in res["batches"] if not b.get("oom")]
            print(f"\n{stage.upper()} step, GPU {res['device']} ({res['dtype']}): {count(res['parameters'])} parameters "
                  f"({res['trainable']:,} trainable), built in {res['build_s']:.1f} s; {res['tokens_per_item']} tokens "
                  f"per {item}:")
            print(f"{items:>9} {'s/step':>8} {items + '/s':>11} {'tokens/s':>10} {'peak GiB':>9} {'first loss':>10}")
            for b in ok:
                peak = f"{b['peak_gib']:.1f}" if b["peak_gib"] is not None else "-"
                print(f"{b['batch']:>9} {b['s_per_step']:>8.3f} {b['items_per_s']:>11,.1f} {b['tokens_per_s']:>10,.0f} "
                      f"{peak:>9} {b['first_loss']:>10.4f}")
            if ok:
                stop = "out of memory at batch " + str(res["batches"][-1]["batch"]) if res["batches"][-1].get("oom") \
                    else f"--max-batch {args.max_batch} reached"
                print(f"largest batch that fits: {ok[-1]['batch']} ({stop})")
            else:
                failed.append(f"{stage}: batch {args.batch_size} does not fit on {res['device']}")
    if not gpu and not args.no_gpu:
        print("no GPU visible to torch: GPU measurement skipped")
    out = args.out or os.path.join(args.run, "bench_llama1b.json")
    write_json(out, result)
    print(f"figures: {out}")
    if failed:
        raise UserError("; ".join(failed))


if __name__ == "__main__":
    run_main(main)
