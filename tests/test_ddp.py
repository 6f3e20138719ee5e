"""Data parallelism (ddp.py) on this CPU with gloo: 2 processes reach what 1 process reaches.

SFT and DPO run under torchrun as the Makefile runs them (NPROC=2) and must give the losses and the adapter of one
process at the same global batch, within float tolerance: the shares' gradients are summed in another order, which
changes the last bits. The first step, from the same weights, agrees to float precision; after it Adam amplifies
those bits where a gradient is near 0 (its update there is about lr x the sign), so later steps drift apart by as
much as a 1-process run with another --micro-batch-size drifts (measured: 1e-5 on the loss, 1e-4 on the adapter
at lr 1e-2, both ways). LoRA dropout is 0 here: with dropout each rank draws its own masks, and no 2-process run
can equal a 1-process one.
A run killed under 1 process resumes under 2, is killed again and resumes under 1: the same adapter. evaluate.py's
sharded ranking, hallucination and preference scoring return exactly what one process returns.
"""
import itertools
import json
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import ddp
import dpo
import evaluate as E
import formats
import model as M
import ranking
import sft
from tests.conftest import ROOT, adapter_tensors, write_pairs, write_sft_data

pytestmark = pytest.mark.slow   # about 2.5 minutes on 2 busy cores: 5 launches of 2 processes

# 6 steps of 8 examples, 4 per rank in micro-batches of 2; validation: 8 examples in 4 batches, 2 per rank
SFT_ARGV = ["--steps", "6", "--batch-size", "8", "--micro-batch-size", "2", "--eval-every", "2",
            "--eval-examples", "8", "--lr", "1e-2", "--id-lr", "1e-2", "--warmup-steps", "2", "--lora-r", "4",
            "--lora-dropout", "0"]
TIMING = ("tokens_per_s", "examples_per_s", "pairs_per_s")   # wall-clock rates: the only log fields that may differ


def torchrun(script, argv, nproc=2):
    """`python -m torch.distributed.run --standalone --nproc-per-node 2 script argv`, the Makefile's NPROC=2."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "--",
           script, *argv]
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _spawned(rank, world, port, fn, args):
    """What torchrun would set for each process, then fn(*args)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    fn(*args)


def spawn(fn, *args, world=2):
    """fn(*args) in `world` gloo processes (for what a torchrun'd script cannot do: a test's own kill)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_spawned, args=(world, port, fn, args), nprocs=world)


def read_log(folder):
    return [json.loads(line) for line in open(os.path.join(folder, "log.jsonl"))]


def assert_same_run(dir_a, dir_b, what, first=1):
    """The logs and adapters of two runs of the same steps agree: step `first` (the same weights, the whole batch's
    gradient) to float precision, the others within the float noise Adam amplifies (see above)."""
    log_a, log_b = read_log(dir_a), read_log(dir_b)
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b]
    diff = {}
    for a, b in zip(log_a, log_b):
        assert a.keys() == b.keys()
        for k in sorted(a.keys() - {"step", *TIMING}):
            diff[k] = max(diff.get(k, 0.0), abs(a[k] - b[k]))
            tight = a["step"] <= first and k != "lr"
            assert a[k] == pytest.approx(b[k], rel=1e-6 if tight else 1e-4, abs=1e-6 if tight else 1e-5) or \
                (k == "grad_norm" and a[k] == pytest.approx(b[k], rel=2e-3)), (what, a["step"], k, a[k], b[k])
    x, y = adapter_tensors(os.path.join(dir_a, "adapter")), adapter_tensors(os.path.join(dir_b, "adapter"))
    assert x.keys() == y.keys()
    worst = max((x[k] - y[k]).abs().max().item() for k in x)
    print(f"\n{what}: largest |difference| of each log field over {len(log_a)} steps:",
          ", ".join(f"{k} {v:.1e}" for k, v in diff.items()),
          f"; adapter {worst:.1e} (largest |value| {max(t.abs().max().item() for t in x.values()):.2f})")
    assert worst <= 5e-4


@pytest.fixture(scope="module")
def sft_one(tiny_smol, tmp_path_factory):
    """The 1-process SFT run every 2-process run is compared with."""
    tmp = tmp_path_factory.mktemp("ddp_sft")
    data = write_sft_data(tmp / "data")
    sft.main(["--data", data, "--out", str(tmp / "one"), "--model", tiny_smol, *SFT_ARGV])
    return tmp, data


def test_shard_and_gather_in_one_process():
    assert ddp.world_size() == 1 and ddp.is_main() and ddp.bar_off() is None
    assert ddp.shard([3, 1, 2]) == [3, 1, 2] and ddp.gather([3, 1, 2]) == [3, 1, 2]
    assert ddp.sum_all([1.5, 2]) == [1.5, 2]


def test_sft_two_processes_equal_one(sft_one, tiny_smol):
    tmp, data = sft_one
    r = torchrun("sft.py", ["--data", data, "--out", str(tmp / "two"), "--model", tiny_smol, *SFT_ARGV])
    assert r.stdout.count("trainable parameters") == 1 and "x 2 processes" in r.stdout   # rank 0 alone prints
    one = read_log(tmp / "one")
    assert len(read_log(tmp / "two")) == 6                   # rank 0 alone writes: one line per step
    assert one[-1]["loss"] < one[0]["loss"]                  # it learns, so the comparison means something
    assert_same_run(tmp / "one", tmp / "two", "SFT, 1 vs 2 processes")
    s1, s2 = (json.load(open(tmp / d / "summary.json")) for d in ("one", "two"))
    assert s1["best_step"] == s2["best_step"] and s1["val/loss"] == pytest.approx(s2["val/loss"], rel=1e-5)


class Killed(Exception):
    pass


def _sft_killed_at_step_5(argv):
    """sft.main under 2 processes that dies in step 5, after the step-4 checkpoint (both ranks, so none waits)."""
    real, calls = sft.sft_loss, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:   # resumed at step 2: steps 3 and 4 take 2 micro-batches each on each rank
            ddp.barrier()     # rank 0 has written the checkpoint
            raise Killed()
        return real(*a, **k)
    sft.sft_loss = dying
    sft.main(argv)


def test_resume_under_any_number_of_processes(sft_one, tiny_smol, monkeypatch):
    """Killed under 1 process in step 3, resumed under 2 and killed in step 5, resumed under 1: the same run."""
    tmp, data = sft_one
    argv = ["--data", data, "--out", str(tmp / "killed"), "--model", tiny_smol, *SFT_ARGV]
    real, calls = sft.sft_loss, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 9:   # 4 micro-batches a step: step 3's first
            raise Killed()
        return real(*a, **k)
    monkeypatch.setattr(sft, "sft_loss", dying)
    with pytest.raises(Killed):
        sft.main(argv)
    monkeypatch.setattr(sft, "sft_loss", real)
    assert torch.load(tmp / "killed" / "checkpoint.pt", weights_only=False)["step"] == 2
    with pytest.raises(Exception, match="Killed"):
        spawn(_sft_killed_at_step_5, argv + ["--resume"])
    ck = torch.load(tmp / "killed" / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 4 and len(ck["rank_rngs"]) == 2      # written by the 2-process run, every rank's RNG
    assert len(read_log(tmp / "killed")) == 4
    sft.main(argv + ["--resume"])
    assert_same_run(tmp / "one", tmp / "killed", "SFT, 1 process vs killed and resumed 1 -> 2 -> 1", first=2)


@pytest.mark.parametrize("loss_type", ["sigmoid", "sdpo", "grouped"])
def test_dpo_two_processes_equal_one(sft_one, tiny_smol, tmp_path, loss_type):
    """grouped: steps of 2 prompts x up to 4 pairs (the demo's --pairs-per-prompt), 16 pairs on 5 prompts, so a
    step holds 6 or 7 pairs and the two processes' shares differ in length."""
    tmp, _ = sft_one
    pairs = write_pairs(tmp_path / "prefs")
    grouped = loss_type == "grouped"
    if grouped:
        loss_type = "sigmoid"
        rows = [json.loads(line) for line in open(os.path.join(pairs, "train.jsonl"))]
        for i, r in enumerate(rows):
            r["prompt"] = f"More like <a_{i % 5 % 4}><b_{i % 5 // 4}><c_2>, please"
        with open(os.path.join(pairs, "train.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    if loss_type == "sdpo":   # S-DPO: two further rejected answers for even pairs, none for odd ones
        rows = [json.loads(line) for line in open(os.path.join(pairs, "train.jsonl"))]
        for i, r in enumerate(rows):
            r["more_rejected"] = [formats.id_text(((i + 2) % 4, 0, 1)), formats.id_text(((i + 3) % 4, 3, 3))] \
                if i % 2 == 0 else []
        with open(os.path.join(pairs, "train.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    argv = ["--pairs", pairs, "--sft", str(tmp / "one" / "adapter"), "--model", tiny_smol, "--steps", "4",
            "--batch-size", "4", "--micro-batch-size", "2", "--eval-every", "2", "--lr", "1e-2",
            "--warmup-steps", "1", "--loss-type", loss_type]
    if grouped:   # 2 prompts a step, a step's pairs in one forward
        argv[argv.index("--batch-size") + 1] = "2"
        argv[argv.index("--micro-batch-size") + 1] = "8"
        argv += ["--pairs-per-prompt", "4"]
    dpo.main(argv + ["--out", str(tmp_path / "one")])
    torchrun("dpo.py", argv + ["--out", str(tmp_path / "two")])
    assert [r["step"] for r in read_log(tmp_path / "two")] == [0, 1, 2, 3, 4]
    assert_same_run(tmp_path / "one", tmp_path / "two", f"DPO ({loss_type}, {grouped=}), 1 vs 2 processes")
    if grouped:
        drawn = json.load(open(tmp_path / "one" / "summary.json"))["train_pairs_drawn_index"]
        assert len(drawn) > 8 and json.load(open(tmp_path / "two" / "summary.json"))["train_pairs_drawn_index"] == drawn
    from safetensors.torch import load_file          # the reference pass, shared out batch by batch
    a, b = (load_file(str(tmp_path / d / "ref_logps.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def eval_results(tiny, pairs):
    """evaluate.py's model work on a tiny random policy: uneven shares (7 prompts in batches of 2, 8 pairs in 3s)."""
    model, tok, vocab = M.load_policy(tiny, levels=3, codebook_size=4)
    torch.manual_seed(0)
    with torch.no_grad():
        model.model.embed_tokens.new_rows.normal_(std=1.0)     # distinct ID tokens, so scores differ
    fmt = M.PromptFormat(tok, vocab)
    ids = [c for c in itertools.product(range(4), repeat=3) if sum(c) % 3]       # 42 of the 64 codes are tracks
    trie, id_to_row = ranking.IDTrie(ids, 3), {c: i for i, c in enumerate(ids)}
    prompts = [f"something like <a_{i % 4}><b_{i % 3}><c_1>, request {i}" for i in range(7)]
    args = E.parse_args(["--run", "unused", "--batch-size", "2", "--score-batch-size", "3", "--device", "cpu"])
    out = {}
    for how in ("exact", "beam"):
        args.ranking = how
        out[how] = E.rank_with_model(model, fmt, prompts, trie, id_to_row, [{i} for i in range(7)],
                                     [[] for _ in prompts], args, how)
    out["hallucination"] = E.hallucination(model, fmt, prompts, trie, args, "unconstrained")
    out["preferences"] = E.preference_accuracy(model, fmt, os.path.join(pairs, "val.jsonl"), args)
    out["logps"] = dpo.score_pairs(model, dpo.read_pairs(os.path.join(pairs, "val.jsonl"), fmt),
                                   M.pad_id_of(tok), "cpu", 3)
    out["gather"] = ddp.gather(ddp.shard(list(range(11))))
    return out


def _eval_sharded(tiny, pairs, path):
    assert ddp.world_size() == 1      # ddp.setup joins the group, as evaluate.evaluate does
    ddp.setup(torch.device("cpu"))
    out = eval_results(tiny, pairs)
    if ddp.is_main():
        with open(path, "wb") as f:
            pickle.dump(out, f)
    ddp.cleanup()


def test_sharded_evaluation_equals_one_process(tiny_smol, tmp_path):
    pairs = write_pairs(tmp_path / "prefs")
    one = eval_results(tiny_smol, pairs)
    spawn(_eval_sharded, tiny_smol, pairs, str(tmp_path / "two.pkl"))
    with open(tmp_path / "two.pkl", "rb") as f:
        two = pickle.load(f)
    assert two["gather"] == list(range(11))
    assert one["exact"] == two["exact"] and one["beam"] == two["beam"] and len(one["exact"]) == 7
    assert one["hallucination"] == two["hallucination"]
    assert np.array_equal(one["preferences"], two["preferences"]) and len(one["preferences"]) == 8
    worst = max((a - b).abs().max().item() for a, b in zip(one["logps"], two["logps"]))
    print(f"preference log-probs, 1 vs 2 processes: largest difference {worst:.2e}")
    assert worst <= 1e-5
