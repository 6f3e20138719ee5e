"""Killed and resumed: sft.py and dpo.py, killed mid-run, end with the weights of an uninterrupted run.

Whole (tiny) training runs, twice each: slow, so marked (`pytest -m "not slow" tests` leaves them out). The
pipeline's own kill test (SIGKILL of a real `make demo` stage) is in test_pipeline.py.
"""
import json
import math
import os

import pytest
import torch

import dpo
import model as M
import sft
from tests.conftest import adapter_tensors, run_tiny_sft, tiny_dpo_argv, write_sft_data

pytestmark = pytest.mark.slow


class Killed(Exception):
    pass


def test_sft_runs_learns_and_resume_equals_uninterrupted(tiny_smol, tmp_path, monkeypatch):
    data = write_sft_data(tmp_path / "data")
    run_tiny_sft(data, str(tmp_path / "full"), tiny_smol)
    log = [json.loads(l) for l in open(tmp_path / "full" / "log.jsonl")]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert log[-1]["loss"] < log[0]["loss"]                 # it learns
    assert "val/loss" in log[1] and "val/id_accuracy" in log[1] and "val/loss" not in log[0]
    summary = json.load(open(tmp_path / "full" / "summary.json"))
    assert summary["val/loss"] == min(r["val/loss"] for r in log if "val/loss" in r)

    # kill in the middle of step 5 (after checkpoint 4, with log lines past it), then resume
    calls = {"n": 0}
    real = sft.sft_loss

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 9:        # 2 micro-batches a step: call 9 is step 5's first
            raise Killed()
        return real(*a, **k)
    monkeypatch.setattr(sft, "sft_loss", dying)
    with pytest.raises(Killed):
        run_tiny_sft(data, str(tmp_path / "killed"), tiny_smol)
    monkeypatch.setattr(sft, "sft_loss", real)
    assert not os.path.exists(tmp_path / "killed" / "adapter")
    with pytest.raises(M.UserError, match="--resume"):
        run_tiny_sft(data, str(tmp_path / "killed"), tiny_smol)
    run_tiny_sft(data, str(tmp_path / "killed"), tiny_smol, ["--resume"])
    a, b = adapter_tensors(tmp_path / "full" / "adapter"), adapter_tensors(tmp_path / "killed" / "adapter")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert open(tmp_path / "full" / "log.jsonl").read().count("\n") == \
        open(tmp_path / "killed" / "log.jsonl").read().count("\n") == 6


def test_dpo_end_to_end_and_resume(tiny_smol, tmp_path, monkeypatch):
    argv = tiny_dpo_argv(tiny_smol, tmp_path, steps=4)
    dpo.main(argv + ["--out", str(tmp_path / "full")])
    log = [json.loads(l) for l in open(tmp_path / "full" / "log.jsonl")]
    # step 0: the policy is the reference, so the DPO part is log 2; the NLL term (RPO, on by default) adds the
    # chosen answers' NLL per token (4 tokens each: 3 IDs + end)
    nll = -log[0]["eval/logps/chosen"] / 4
    assert dpo.RPO_ALPHA > 0 and nll > 1
    assert log[0]["step"] == 0 and log[0]["eval/loss"] == pytest.approx(math.log(2) + dpo.RPO_ALPHA * nll, abs=1e-5)
    assert log[0]["eval/rewards/margins"] == 0.0
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4]
    assert log[-1]["eval/rewards/margins"] > 0          # it moves toward the chosen answers
    from safetensors import safe_open
    with safe_open(str(tmp_path / "full" / "ref_logps.safetensors"), "pt") as f:
        fp = json.loads(f.metadata()["fingerprint"])
    assert fp["base"] == dpo.base_weights_sha256(tiny_smol) and fp["device"] == "cpu" and fp["dtype"] == "torch.float32"
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected"):
        assert key in log[1]

    real = dpo.concatenated_logps
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += torch.is_grad_enabled()   # count training forwards only, 2 a step
        if calls["n"] == 5:     # step 3's first micro-batch (after the step-2 checkpoint)
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(dpo, "concatenated_logps", dying)
    with pytest.raises(KeyboardInterrupt):
        dpo.main(argv + ["--out", str(tmp_path / "killed")])
    monkeypatch.setattr(dpo, "concatenated_logps", real)
    dpo.main(argv + ["--out", str(tmp_path / "killed"), "--resume"])
    a, b = adapter_tensors(tmp_path / "full" / "adapter"), adapter_tensors(tmp_path / "killed" / "adapter")
    assert all(torch.equal(a[k], b[k]) for k in a)
