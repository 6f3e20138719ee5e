"""What this CPU gives the pipeline: matrix-product speed at the SFT step's shapes, and where an SFT step's time goes.

    python benchmarks/bench_cpu.py [--run runs/demo] [--steps 4] [--rows 352] [--no-step]

Why: `make demo`'s time follows the CPU (17 minutes on one 2-core machine, 26 on another). This prints, for the
shapes of one SFT micro-batch on the model (--rows tokens: 16 examples of about 22 tokens after the shared template
prefix; hidden and MLP sizes read from the model's config.json):
  - GFLOP/s of `x @ W^T` (torch.nn.functional.linear, as every projection runs) in fp32 and in bf16, with one thread
    and with all of torch's threads; bf16 is fast only where the CPU has bf16 instructions (AVX512-BF16, AMX), and
    much slower than fp32 where they are emulated, which is why model.autocast keeps the CPU in fp32;
  - then, unless --no-step, sft.py's training step (sft_loss forward and backward with the demo's options, AdamW)
    on --steps batches of RUN/sft_data/train.jsonl after 2 untimed ones: seconds per step; then the share of the
    CPU time of 2 more steps spent in matrix products (aten::mm, from torch.profiler, which slows the steps it
    watches). A large share, with the fp32 rate above near the CPU's peak, means the step is bound by the CPU's
    arithmetic: no change of Python code, threads or processes makes it much faster.
"""
import argparse
import os
import platform
import time

import torch

import harness  # first: it puts the repository root on sys.path for the imports below
import model as M
import sft
from common import read_json, run_main

# -----------------------------------------------------------------------------
RUN: str = "runs/demo"      # a run folder with sft_data/ (make demo builds runs/demo)
MODEL: str = M.DEFAULT_MODEL
ROWS: int = 352             # tokens per micro-batch: 16 examples x about 22 tokens after the shared prefix
STEPS: int = 4              # timed SFT steps (after 2 untimed)
REPEATS: int = 20           # timed matrix products per row (after 3 untimed)
# -----------------------------------------------------------------------------


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def linear_gflops(rows, d_in, d_out, dtype, threads, repeats=REPEATS):
    """GFLOP/s of F.linear((rows, d_in), (d_out, d_in)) in `dtype` on `threads` threads: 2 * rows * d_in * d_out
    flops per product, the best of `repeats` timed calls after 3 untimed ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d_in, generator=g).to(dtype)
    w = torch.randn(d_out, d_in, generator=g).to(dtype)
    for _ in range(3):
        torch.nn.functional.linear(x, w)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - t)
    torch.set_num_threads(before)
    return 2 * rows * d_in * d_out / best / 1e9


def sft_step_profile(args):
    """(seconds per step, share of CPU time in aten::mm) of sft.py's step on the run's training examples."""
    from torch.profiler import ProfilerActivity, profile
    data = os.path.join(args.run, "sft_data")
    harness.need_run(os.path.join(data, "meta.json"), (args.run, f"{args.run}/sft_data/config.json"))
    opts = sft.parse_args(["--data", data, "--out", os.devnull, "--model", args.model, "--device", "cpu"])
    meta = read_json(os.path.join(data, "meta.json"), "SFT data meta.json")
    torch.manual_seed(0)
    model, tokenizer, vocab = sft.build_policy(opts, meta, "cpu")
    fmt = M.PromptFormat(tokenizer, vocab)
    pad_id = M.pad_id_of(tokenizer)
    pairs = sft.tokenize_examples(sft.read_jsonl(os.path.join(data, "train.jsonl")), fmt)
    schedule = sft.batch_schedule([len(p) + len(a) for p, a in pairs], args.steps + 4, opts.batch_size, opts.seed)
    opt = sft.make_optimizer(model, opts.lr, opts.id_lr)

    def step(i):
        batch = [pairs[j] for j in schedule[i]]
        loss = sft.sft_loss(model, batch, pad_id, sum(len(a) for _, a in batch), "cpu",
                            shared_prefix=len(fmt.prefix), vocab=vocab, prompt_id_weight=opts.prompt_id_weight)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(2):                       # untimed: allocator and lazy initialisation
        step(i)
    t = time.perf_counter()
    for i in range(2, args.steps + 2):
        step(i)
    seconds = (time.perf_counter() - t) / args.steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:   # 2 more steps: the profiler slows what it watches
        for i in range(args.steps + 2, args.steps + 4):
            step(i)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key == "aten::mm")
    return seconds, mm / max(total, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=RUN, help="run folder with sft_data/ (default %(default)s)")
    p.add_argument("--model", default=MODEL, help="Llama folder whose sizes set the shapes (default %(default)s)")
    p.add_argument("--rows", type=int, default=ROWS,
                   help="tokens per matrix product: an SFT micro-batch's after the shared prefix "
                        "(default %(default)s)")
    p.add_argument("--steps", type=int, default=STEPS, help="timed SFT steps (default %(default)s)")
    p.add_argument("--no-step", action="store_true", help="only the matrix products; no model step")
    args = p.parse_args(argv)
    cfg = read_json(os.path.join(args.model, "config.json"), "model config.json")
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    threads = torch.get_num_threads()
    print(f"{cpu_name()}; torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{threads} threads")
    print(f"F.linear GFLOP/s at {args.rows} rows (one SFT micro-batch)")
    print(f"{'shape':>24} {'dtype':>6} {'1 thread':>9} {f'{threads} threads':>10}")
    for d_in, d_out, name in ((h, f, "gate/up"), (f, h, "down"), (h, h, "q/o")):
        for dtype in (torch.float32, torch.bfloat16):
            one = linear_gflops(args.rows, d_in, d_out, dtype, 1)
            many = linear_gflops(args.rows, d_in, d_out, dtype, threads)
            print(f"{f'{name} {d_in}x{d_out}':>24} {str(dtype)[6:]:>6} {one:9.1f} {many:10.1f}")
    if not args.no_step:
        seconds, share = sft_step_profile(args)
        print(f"sft.py step (batch 16, {args.run}/sft_data): {seconds:.2f} s a step, aten::mm {100 * share:.0f}% of "
              "its CPU time")


if __name__ == "__main__":
    run_main(main)
