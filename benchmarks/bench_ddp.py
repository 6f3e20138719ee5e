"""sft.py's steps per second in 1 and in 2 processes (torchrun, gloo, ddp.py) on this CPU, at one global batch.

    python benchmarks/bench_ddp.py [--run runs/demo] [--steps 12] [--warmup 2] [--rows 1,2,1x1] [--batch-size 16]

Each row runs sft.py on the run's SFT examples with the demo's model and options (LoRA dropout 0, so the rows'
losses can be compared) in N processes (plain `python sft.py` for N = 1, torchrun above), each with cores / N torch
threads (OMP_NUM_THREADS), so every row has the same CPU; a row written NxT gives each process T threads instead
(1x1: one process on one core, the control for a machine whose other work stalls multi-threaded matmuls).

The clock is outside: rank 0 appends a line to log.jsonl as each step ends, and this script notes when each line
appears; steps per second count from the end of the --warmup-th step to the end of the second-to-last (the last
one also validates). Start-up (imports, loading the model) is not timed. Also printed: the load average before each
row, since other work on the cores distorts it.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import harness  # first: it puts the repository root on sys.path for the imports below
import model as M
from common import UserError, run_main

# -----------------------------------------------------------------------------
RUN: str = "runs/demo"          # a pipeline run folder with sft_data/ (make demo builds runs/demo)
MODEL: str = M.DEFAULT_MODEL
STEPS: int = 12                 # optimizer steps per row
WARMUP: int = 2                 # steps not timed (allocator, lazy init)
BATCH_SIZE: int = 16            # the global batch, the same in every row (sft.py's default)
ROWS: str = "1,2,1x1"           # process counts (x threads each; default cores / processes), one row each
# -----------------------------------------------------------------------------


def run_row(args, nproc, threads, out):
    """sft.py in `nproc` processes of `threads` threads; returns (steps per second, loss of each step)."""
    sft_args = ["sft.py", "--data", os.path.join(args.run, "sft_data"), "--out", out, "--model", args.model,
                "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--eval-every", str(10 ** 6),
                "--eval-examples", str(args.batch_size), "--lora-dropout", "0", "--device", "cpu"]
    launch = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "--"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    log = os.path.join(out, "log.jsonl")
    ends = []                   # when line k of the log appeared: the end of step k
    proc = subprocess.Popen(launch + sft_args, cwd=harness.ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if os.path.exists(log):
            with open(log) as f:
                n = sum(1 for _ in f)
            ends += [time.perf_counter()] * (n - len(ends))
        time.sleep(0.02)
    if proc.returncode != 0:
        raise UserError(f"sft.py in {nproc} processes failed:\n{proc.stderr.read()[-3000:]}")
    losses = [json.loads(line)["loss"] for line in open(log)]
    first, last = args.warmup, args.steps - 1          # steps warmup + 1 .. steps - 1 timed
    return (last - first) / (ends[last - 1] - ends[first - 1]), losses


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=RUN,
                   help="pipeline run folder with sft_data/ (default %(default)s, which `make demo` builds)")
    p.add_argument("--model", default=MODEL, help="base model folder sft.py trains on")
    p.add_argument("--steps", type=int, default=STEPS, help="sft.py optimizer steps per row (default %(default)s)")
    p.add_argument("--warmup", type=int, default=WARMUP,
                   help="first steps left out of the timing (allocator, lazy init); the last step is left out too, "
                        "as it also validates (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="the global batch, the same in every row so that the rows do the same work "
                        "(default %(default)s, sft.py's default)")
    p.add_argument("--rows", default=ROWS, help="comma-separated process counts, N or NxT (T threads each)")
    args = p.parse_args(argv)
    if not 1 <= args.warmup <= args.steps - 3:
        p.error("need 1 <= --warmup <= --steps - 3 (at least two timed steps before the last)")
    harness.need_run(os.path.join(args.run, "sft_data", "train.jsonl"),
                     (args.run, f"{args.run}/sft_data/config.json"))
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench_ddp_")
    try:
        for i, row in enumerate(args.rows.split(",")):
            n, _, t = row.partition("x")
            n, t = int(n), int(t or max(1, os.cpu_count() // int(n)))
            load = os.getloadavg()[0]
            print(f"{n} process(es) x {t} thread(s); load average before: {load:.2f}", flush=True)
            rate, losses = run_row(args, n, t, os.path.join(tmp, f"row{i}"))
            rows.append((n, t, rate, losses, load))
    finally:
        shutil.rmtree(tmp)
    base = rows[0]
    print(f"\nsft.py, {args.model}, global batch {args.batch_size}, {os.cpu_count()} cores; steps "
          f"{args.warmup + 1}-{args.steps - 1} timed")
    print(f"{'processes':>9} {'threads':>8} {'steps/s':>9} {'vs first':>9} {'load before':>12}  "
          f"loss at steps 1 / {args.steps}")
    for n, t, rate, losses, load in rows:
        print(f"{n:>9} {t:>8} {rate:>9.3f} {rate / base[2]:>8.2f}x {load:>12.2f}  {losses[0]:.4f} / {losses[-1]:.4f}")
    busy = [load for *_, load in rows if load > 0.5 * os.cpu_count()]
    if busy:
        print(f"\nthe cores were busy with other work (load average up to {max(busy):.1f} on {os.cpu_count()} "
              "cores): read the ratio, not the absolute rates")


if __name__ == "__main__":
    run_main(main)
