"""What every benchmark here needs: one child process per system, its peak RSS, a tiny model for smoke tests.

A benchmark script runs itself again with `--child NAME --result PATH` for each system; the child measures
and writes a JSON, the parent reads it and takes the child's own peak RSS from os.wait4 (ru_maxrss), so each
system's memory is its own and not the maximum over everything the parent started.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from common import UserError  # noqa: E402

PEERS_HINT = "pip install -r requirements-bench.txt"


def need_peers(*modules):
    """One-line error if a peer package is missing."""
    import importlib.util
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"{', '.join(missing)} not installed: {PEERS_HINT}")


def need_run(path, make_target):
    """Stop with the make command that builds a missing pipeline artifact."""
    if not os.path.exists(path):
        raise UserError(f"{path} not found: build it first with `make RUN={make_target[0]} {make_target[1]}`")
    return path


def child_args(p):
    """The options a parent passes to a child (hidden from --help)."""
    import argparse
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)


def run_measured(cmd, name, threads=None):
    """Run a command to its end; returns (wall seconds, peak RSS of that process in MiB).

    With `threads`, torch / OpenMP / MKL threads are pinned so every system gets the same CPU.
    """
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the maximum over all children
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise UserError(f"{name} failed (exit code {code}); its output is above")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def run_child(script, argv, name, threads):
    """Run `script argv --child name` in a fresh interpreter; returns (result dict, peak RSS in MiB)."""
    fd, result = tempfile.mkstemp(prefix=f"bench_{name}_", suffix=".json")
    os.close(fd)
    try:
        _, rss = run_measured([sys.executable, script, *argv, "--child", name, "--result", result],
                              f"system '{name}'", threads)
        with open(result, encoding="utf-8") as f:
            out = json.load(f)
    finally:
        os.remove(result)
    return out, rss


def write_result(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def tiny_llama(folder, base_model, hidden=64, layers=2, seed=0):
    """A random LlamaForCausalLM with `base_model`'s tokenizer and vocabulary, saved once as a model folder.

    For smoke tests only: every code path of the real model (tied head, chat template, pad token) in seconds.
    """
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    src = AutoConfig.from_pretrained(base_model)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=src.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, bos_token_id=src.bos_token_id, eos_token_id=src.eos_token_id,
                         pad_token_id=getattr(src, "pad_token_id", None))
    model = LlamaForCausalLM(config)
    tmp = folder.rstrip("/") + ".tmp"
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


def versions(*packages):
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def trainer_clock():
    """A transformers TrainerCallback that records when training starts (t0), when every optimizer step ends
    (ends) and every logged training loss (losses): the peer's side of the figures ours records inline."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.t0, self.ends, self.losses = 0.0, [], []

        def on_train_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

        def on_log(self, _args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return Clock()


def warn_threads(raw, threads):
    """Say when a system's child ended with another torch thread count than asked (a library changed it)."""
    for name, res in raw.items():
        if res["threads"] != threads:
            print(f"warning: {name} ended with {res['threads']} torch threads, not {threads}")
