"""Whole (tiny) training runs: sft.py and dpo.py killed mid-run end with the weights of an uninterrupted run; dpo.py
scores the reference only for the pairs it draws; S-DPO trains on the further rejected answers.

Each runs a stage two or three times: slow, so marked (`pytest -m "not slow" tests` leaves them out). The
pipeline's own kill test (SIGKILL of a real `make demo` stage) is in test_pipeline.py.
"""
import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

import dpo
import formats
import model as M
import sft
from tests.conftest import adapter_tensors, run_tiny_sft, tiny_dpo_argv, write_pairs, write_sft_data

pytestmark = pytest.mark.slow


class Killed(Exception):
    pass


def killed_at(monkeypatch, name, call, run):
    """run() with sft.<name> raising Killed at its call-th call, as a process killed there; then sft.<name> again.
    With 2 micro-batches a step, call 9 is step 5's first: after checkpoint 4, with log lines past it."""
    calls = {"n": 0}
    real = getattr(sft, name)

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == call:
            raise Killed()
        return real(*a, **k)
    monkeypatch.setattr(sft, name, dying)
    with pytest.raises(Killed):
        run()
    monkeypatch.setattr(sft, name, real)


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
    killed_at(monkeypatch, "sft_loss", 9, lambda: run_tiny_sft(data, str(tmp_path / "killed"), tiny_smol))
    assert not os.path.exists(tmp_path / "killed" / "adapter")
    with pytest.raises(M.UserError, match="--resume"):
        run_tiny_sft(data, str(tmp_path / "killed"), tiny_smol)
    run_tiny_sft(data, str(tmp_path / "killed"), tiny_smol, ["--resume"])
    a, b = adapter_tensors(tmp_path / "full" / "adapter"), adapter_tensors(tmp_path / "killed" / "adapter")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert open(tmp_path / "full" / "log.jsonl").read().count("\n") == \
        open(tmp_path / "killed" / "log.jsonl").read().count("\n") == 6


def test_grouped_sft_learns_sees_more_examples_and_resumes(tiny_smol, tmp_path, monkeypatch):
    """--answers-per-prompt: a step of 4 prompts with up to 3 answers each (next-track examples after the same
    context share a prompt); it learns, sees more examples than 4 a step, and a killed run resumes exactly."""
    data = write_sft_data(tmp_path / "data")
    rows = [json.loads(l) for l in open(os.path.join(data, "train.jsonl"))]
    for i, r in enumerate(rows[:18]):   # 6 contexts x 3 next plays; the other 6 stay attribute requests
        r.update(task="next_track", prompt=f"More like {formats.id_text((i % 3, i % 6 // 3, 1))}, please")
    with open(os.path.join(data, "train.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    grouped = ["--answers-per-prompt", "3"]
    run_tiny_sft(data, str(tmp_path / "full"), tiny_smol, grouped)
    val = [r["val/loss"] for r in map(json.loads, open(tmp_path / "full" / "log.jsonl")) if "val/loss" in r]
    assert val == sorted(val, reverse=True) and val[-1] < val[0]      # it learns (steps mix 1-3 answers a prompt)
    summary = json.load(open(tmp_path / "full" / "summary.json"))
    assert summary["answers_per_prompt"] == 3 and 6 * 4 < summary["examples_seen"] <= 6 * 4 * 3

    killed_at(monkeypatch, "grouped_loss", 9, lambda: run_tiny_sft(data, str(tmp_path / "killed"), tiny_smol, grouped))
    run_tiny_sft(data, str(tmp_path / "killed"), tiny_smol, grouped + ["--resume"])
    a, b = adapter_tensors(tmp_path / "full" / "adapter"), adapter_tensors(tmp_path / "killed" / "adapter")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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


def test_reference_only_for_the_pairs_drawn(tiny_smol, tmp_path, monkeypatch):
    """Reference log-probs are computed for the training pairs the schedule draws, not the whole file (2 steps of 4
    draw 8 of 16), and the run is the same as one that scores every pair."""
    data = write_sft_data(tmp_path / "sft_data")
    sft.main(["--data", data, "--out", str(tmp_path / "sft"), "--model", tiny_smol, "--steps", "2",
              "--batch-size", "4", "--micro-batch-size", "4", "--eval-every", "2", "--lora-r", "4"])
    pairs = write_pairs(tmp_path / "prefs", n_train=16)
    argv = ["--pairs", pairs, "--sft", str(tmp_path / "sft" / "adapter"), "--model", tiny_smol,
            "--steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--eval-every", "2", "--lr", "1e-2",
            "--warmup-steps", "1"]
    real = dpo.score_pairs
    scored = []

    def counting(model, pairs, *a, desc="", **k):
        if desc.startswith("reference log-probs (train"):
            scored.append(len(pairs))
        return real(model, pairs, *a, desc=desc, **k)
    monkeypatch.setattr(dpo, "score_pairs", counting)
    real_drawn, schedules = dpo.drawn_pairs, []
    monkeypatch.setattr(dpo, "drawn_pairs", lambda schedule: schedules.append(schedule) or real_drawn(schedule))
    dpo.main(argv + ["--out", str(tmp_path / "drawn")])
    drawn = sorted(set(schedules[0].flatten().tolist()))  # the pairs the 2 steps train on
    assert schedules[0].shape == (2, 4) and len(drawn) == 8
    assert scored == [8]                                  # one reference score per drawn pair, none for the rest
    with safe_open(str(tmp_path / "drawn" / "ref_logps.safetensors"), "pt") as f:
        assert f.get_tensor("train/chosen").shape == (8,) and f.get_tensor("val/chosen").shape == (8,)
    assert json.load(open(tmp_path / "drawn" / "summary.json"))["train_pairs_drawn"] == 8

    # the old way, every pair scored: the same reference values for the drawn pairs, the same training
    monkeypatch.setattr(dpo, "drawn_pairs", lambda schedule: np.arange(16))
    scored.clear()
    dpo.main(argv + ["--out", str(tmp_path / "all")])
    assert scored == [16]
    with safe_open(str(tmp_path / "drawn" / "ref_logps.safetensors"), "pt") as a, \
            safe_open(str(tmp_path / "all" / "ref_logps.safetensors"), "pt") as b:
        idx = torch.as_tensor(drawn)
        for k in ("train/chosen", "train/rejected"):
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)[idx])
        assert torch.equal(a.get_tensor("val/chosen"), b.get_tensor("val/chosen"))
        fps = [json.loads(f.metadata()["fingerprint"]) for f in (a, b)]
        assert fps[0]["train_drawn"] != fps[1]["train_drawn"]   # which pairs were scored is part of the cache key
    x, y = adapter_tensors(tmp_path / "drawn" / "adapter"), adapter_tensors(tmp_path / "all" / "adapter")
    assert all(torch.equal(x[k], y[k]) for k in x)
    logs = [[{k: v for k, v in json.loads(l).items() if k != "pairs_per_s"} for l in open(tmp_path / d / "log.jsonl")]
            for d in ("drawn", "all")]
    assert logs[0] == logs[1]


def test_sdpo_run_uses_more_rejected(tiny_smol, tmp_path):
    """dpo.py --loss-type sdpo: without more_rejected it trains exactly as sigmoid DPO; with them the reference
    cache holds one column per rejected slot and the run trains on them."""
    argv = tiny_dpo_argv(tiny_smol, tmp_path, steps=2)
    pairs = argv[1]
    dpo.main(argv + ["--out", str(tmp_path / "sigmoid")])
    dpo.main(argv + ["--out", str(tmp_path / "sdpo1"), "--loss-type", "sdpo"])
    a, b = adapter_tensors(tmp_path / "sigmoid" / "adapter"), adapter_tensors(tmp_path / "sdpo1" / "adapter")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    rows = [json.loads(l) for l in open(os.path.join(pairs, "train.jsonl"))]
    for i, r in enumerate(rows):   # two further rejected answers for even pairs, none for odd ones
        more = [formats.id_text(((i + 2) % 4, 0, 1)), formats.id_text(((i + 3) % 4, 3, 3))]
        r["more_rejected"] = more if i % 2 == 0 else []
    with open(os.path.join(pairs, "train.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    dpo.main(argv + ["--out", str(tmp_path / "sdpo3"), "--loss-type", "sdpo"])
    with safe_open(str(tmp_path / "sdpo3" / "ref_logps.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["fingerprint"])["rejected_slots"] == 3
        assert {"train_slot1/rejected", "train_slot2/rejected"} <= set(f.keys())
    c = adapter_tensors(tmp_path / "sdpo3" / "adapter")
    assert any(not torch.allclose(b[k], c[k], atol=1e-6) for k in b)   # the further rejected answers count
    log = [json.loads(l) for l in open(tmp_path / "sdpo3" / "log.jsonl")]
    assert all(math.isfinite(r["loss"]) for r in log[1:])


def test_dpo_pairs_per_prompt_trains_whole_prompts(tiny_smol, tmp_path, monkeypatch):
    """--pairs-per-prompt 2 with 2 prompts a step: each step holds 2 prompts and at most 2 pairs of each; the
    reference is scored for the drawn pairs only, and summary.json lists them for evaluate.py's '(pairs)' rows."""
    import evaluate
    argv = tiny_dpo_argv(tiny_smol, tmp_path, steps=2)
    sizes = [3, 3, 1, 5]                          # pairs of each of 4 prompts, 12 in all, the prompts interleaved
    prompt_of = [g for k in range(max(sizes)) for g in range(4) if k < sizes[g]]
    with open(tmp_path / "prefs" / "train.jsonl", "w") as f:
        for i, g in enumerate(prompt_of):
            f.write(json.dumps({"prompt": f"something like <a_{g}><b_1><c_2>", "chosen": formats.id_text((g, 1, 3)),
                                "rejected": formats.id_text(((g + 1) % 4, 2, i % 4))}) + "\n")
    real_drawn, schedules = dpo.drawn_pairs, []
    monkeypatch.setattr(dpo, "drawn_pairs", lambda schedule: schedules.append(schedule) or real_drawn(schedule))
    out = tmp_path / "grouped"
    dpo.main(argv + ["--out", str(out), "--batch-size", "2", "--pairs-per-prompt", "2"])
    steps = schedules[0]
    assert len(steps) == 2
    for s in steps:
        groups = [prompt_of[i] for i in s.tolist()]
        assert len(set(groups)) == 2 and all(groups.count(g) == min(2, sizes[g]) for g in set(groups))
    drawn = sorted(set(i for s in steps for i in s.tolist()))
    summary = json.load(open(out / "summary.json"))
    assert summary["train_pairs_drawn_index"] == drawn and summary["train_pairs_drawn"] == len(drawn)
    with safe_open(str(out / "ref_logps.safetensors"), "pt") as f:
        assert f.get_tensor("train/chosen").shape == (len(drawn),)
    assert evaluate.pairs_dpo_drew(str(out), 12).tolist() == drawn
    assert evaluate.pairs_dpo_drew(str(out), 13).tolist() == list(range(13))       # another file: every pair
    assert evaluate.pairs_dpo_drew(str(tmp_path / "nowhere"), 3).tolist() == [0, 1, 2]


def test_dpo_trains_the_id_bias_alone_and_it_ranks_chosen_codes_above_rejected(tiny_smol, tmp_path):
    """dpo.py --lr 0 --id-lr 0 --id-bias-lr: LoRA and the ID rows stay the SFT adapter's, only the head's 12 biases
    move. write_pairs' chosen answers are (g, 1, 3) and its rejected ones (g + 1, 2, 0): pure DPO on the bias alone
    is a logistic regression on the codes, so codes 1 and 3 end above 2 and 0 at levels 2 and 3."""
    argv = tiny_dpo_argv(tiny_smol, tmp_path, steps=4)
    dpo.main(argv + ["--out", str(tmp_path / "bias"), "--lr", "0", "--id-lr", "0", "--id-bias-lr", "0.1",
                     "--rpo-alpha", "0"])
    sft_t, got = adapter_tensors(tmp_path / "sft" / "adapter"), adapter_tensors(tmp_path / "bias" / "adapter")
    assert set(got) == set(sft_t) | {"lm_head.id_bias"}
    assert all(torch.equal(got[k], sft_t[k]) for k in sft_t)
    b = got["lm_head.id_bias"].view(3, 4)
    assert b[1, 1] > 0 > b[1, 2] and b[2, 3] > 0 > b[2, 0]


def test_dpo_id_levels_trains_only_those_rows(tiny_smol, tmp_path):
    """dpo.py --id-levels 3: the rows of levels 1 and 2 stay the SFT adapter's bit for bit, level 3's move (and so
    does the LoRA); the mask itself by hand; a level the IDs lack is refused in one line."""
    assert dpo.id_row_mask(3, 2, [3]).tolist() == [0, 0, 0, 0, 1, 1]
    assert dpo.id_row_mask(3, 2, [1, 3]).tolist() == [1, 1, 0, 0, 1, 1]
    assert dpo.parse_levels(" 3, 2,3") == [2, 3] and dpo.parse_levels("") == []
    with pytest.raises(M.UserError, match="levels 1 to 3"):
        dpo.id_row_mask(3, 2, [4])
    with pytest.raises(M.UserError, match="comma-separated integers"):
        dpo.parse_levels("last")
    argv = tiny_dpo_argv(tiny_smol, tmp_path, steps=4)
    with pytest.raises(M.UserError, match="levels 1 to 3"):        # checked against the IDs, before any file
        dpo.main(argv + ["--out", str(tmp_path / "l4"), "--id-levels", "4"])
    assert not (tmp_path / "l4" / "config.json").exists()
    with pytest.raises(SystemExit):                                 # the form: an argparse error
        dpo.main(argv + ["--out", str(tmp_path / "lx"), "--id-levels", "last"])
    dpo.main(argv + ["--out", str(tmp_path / "l3"), "--id-levels", "3", "--rpo-alpha", "0"])
    sft_t, got = adapter_tensors(tmp_path / "sft" / "adapter"), adapter_tensors(tmp_path / "l3" / "adapter")
    rows, start = got["embed_tokens.new_rows"], sft_t["embed_tokens.new_rows"]
    assert rows.shape[0] == 12                                     # 3 levels x 4 codes, level-major
    assert torch.equal(rows[:8], start[:8]) and not torch.equal(rows[8:], start[8:])
    assert any(not torch.equal(got[k], sft_t[k]) for k in sft_t if "lora_" in k)


def test_sft_trains_the_id_bias_where_asked(tiny_smol, tmp_path):
    """sft.py --id-bias-lr: the head's per-code bias is trained and saved; write_sft_data's answers start with
    codes 0-2, never 3, so the NLL pushes level 1's code 3 down at every step and it ends the lowest."""
    data = write_sft_data(tmp_path / "data")
    run_tiny_sft(data, str(tmp_path / "bias"), tiny_smol, ["--id-bias-lr", "0.1"])
    b = adapter_tensors(tmp_path / "bias" / "adapter")["lm_head.id_bias"].view(3, 4)
    assert b[0, 3] < 0 and b[0, 3] == b[0].min()


def test_sft_starts_from_an_adapter(tiny_smol, tmp_path):
    """sft.py --init-adapter: the run starts at the adapter's LoRA and ID rows (at rate 0 it writes them back bit for
    bit) and trains on from them (its first loss below a fresh run's); other LoRA options, or another ID init, are
    refused in one line."""
    data = write_sft_data(tmp_path / "data")
    run_tiny_sft(data, str(tmp_path / "first"), tiny_smol)
    start = str(tmp_path / "first" / "adapter")
    run_tiny_sft(data, str(tmp_path / "frozen"), tiny_smol, ["--init-adapter", start, "--lr", "0", "--id-lr", "0"])
    a, b = adapter_tensors(start), adapter_tensors(tmp_path / "frozen" / "adapter")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run_tiny_sft(data, str(tmp_path / "second"), tiny_smol, ["--init-adapter", start])
    first, second = ([json.loads(l) for l in open(tmp_path / name / "log.jsonl")] for name in ("first", "second"))
    assert second[0]["loss"] < first[0]["loss"]
    c = adapter_tensors(tmp_path / "second" / "adapter")
    assert any(not torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(M.UserError, match=r"trained with LoRA r 4 \(asked 8\); pass its options"):
        run_tiny_sft(data, str(tmp_path / "r8"), tiny_smol, ["--init-adapter", start, "--lora-r", "8"])
    with pytest.raises(M.UserError, match="--id-init codebook and --init-adapter"):
        run_tiny_sft(data, str(tmp_path / "cb"), tiny_smol, ["--init-adapter", start, "--id-init", "codebook"])


def test_dpo_refuses_rates_that_train_nothing_or_are_negative(tmp_path):
    from common import UserError
    argv = ["--pairs", str(tmp_path), "--sft", str(tmp_path), "--out", str(tmp_path / "out")]
    with pytest.raises(UserError, match="all 0: nothing would be trained"):
        dpo.main(argv + ["--lr", "0", "--id-lr", "0"])   # the bias is off by default
    with pytest.raises(UserError, match="--id-bias-lr -0.1: a learning rate is at least 0"):
        dpo.main(argv + ["--id-bias-lr", "-0.1"])
    with pytest.raises(UserError, match="--id-bias-lr -0.1: a learning rate is at least 0"):
        sft.main(["--data", str(tmp_path), "--out", str(tmp_path / "sft"), "--id-bias-lr", "-0.1"])
    with pytest.raises(UserError, match="--valid-id-weight -1: a weight is at least 0"):
        dpo.main(argv + ["--valid-id-weight", "-1"])
    with pytest.raises(UserError, match="names no semantic_ids table"):
        sft.catalogue_trie({"levels": 3, "codebook_size": 4})          # pairs written before the table was named


def test_dpo_validity_term_adds_its_loss(tiny_smol, tmp_path):
    """dpo.py --valid-id-weight, pure DPO and S-DPO: the catalogue's IDs from the pairs' meta (semantic_ids); at
    step 1, where the policy is still the SFT model and the batch the same, the logged loss is the plain run's +
    weight x the logged validity term (> 0: the base vocabulary holds mass off the catalogue), and the weights
    trained differ."""
    argv = tiny_dpo_argv(tiny_smol, tmp_path, steps=2)
    pairs = argv[1]
    catalogue = sorted({(k, 1, 3) for k in range(4)} | {(k, 2, 0) for k in range(4)})   # write_pairs' answers
    table = tmp_path / "semantic_ids.tsv"
    table.write_text("track_id\tcode_0\tcode_1\tcode_2\n" + "".join(
        f"t{i}\t{a}\t{b}\t{c}\n" for i, (a, b, c) in enumerate(catalogue)))
    meta = json.load(open(os.path.join(pairs, "meta.json")))
    json.dump({**meta, "semantic_ids": str(table)}, open(os.path.join(pairs, "meta.json"), "w"))
    for loss_type in ("sigmoid", "sdpo"):
        base = argv + ["--rpo-alpha", "0", "--loss-type", loss_type]
        dpo.main(base + ["--out", str(tmp_path / f"plain_{loss_type}")])
        dpo.main(base + ["--out", str(tmp_path / f"valid_{loss_type}"), "--valid-id-weight", "0.5"])
        plain, valid = ([json.loads(l) for l in open(tmp_path / f"{n}_{loss_type}" / "log.jsonl")]
                        for n in ("plain", "valid"))
        assert "valid_loss" not in plain[1] and valid[1]["valid_loss"] > 0
        assert valid[1]["loss"] == pytest.approx(plain[1]["loss"] + 0.5 * valid[1]["valid_loss"], rel=1e-5)
        a, b = (adapter_tensors(tmp_path / f"{n}_{loss_type}" / "adapter") for n in ("plain", "valid"))
        assert any(not torch.allclose(a[k], b[k]) for k in a)


def test_dpo_sft_replay_adds_the_sft_runs_own_loss(tiny_smol, tmp_path, monkeypatch):
    """dpo.py --sft-replay: each step adds weight x the SFT loss of replayed SFT examples, with the SFT run's own
    options (its config.json's prompt-ID weight); at weight 0 the run trains exactly as without replay, and at step 1,
    where the policy is the SFT model, the logged replay loss is sft.sft_loss of that step's batch under the SFT
    adapter."""
    argv = tiny_dpo_argv(tiny_smol, tmp_path, steps=2)
    data = str(tmp_path / "sft_data")
    dpo.main(argv + ["--out", str(tmp_path / "plain")])
    dpo.main(argv + ["--out", str(tmp_path / "w0"), "--sft-replay", "4", "--sft-replay-weight", "0",
                     "--sft-data", data])
    a, b = adapter_tensors(tmp_path / "plain" / "adapter"), adapter_tensors(tmp_path / "w0" / "adapter")
    assert all(torch.equal(a[k], b[k]) for k in a)

    cfg_path = tmp_path / "sft" / "config.json"      # as if SFT had trained the prompt's IDs at weight 0.5
    cfg = json.load(open(cfg_path))
    cfg["prompt_id_weight"] = 0.5
    json.dump(cfg, open(cfg_path, "w"))
    calls = []
    real = sft.sft_loss
    monkeypatch.setattr(sft, "sft_loss", lambda *a, **k: calls.append(k["prompt_id_weight"]) or real(*a, **k))
    dpo.main(argv + ["--out", str(tmp_path / "replay"), "--sft-replay", "4", "--sft-data", data])
    assert calls == [0.5, 0.5]
    c = adapter_tensors(tmp_path / "replay" / "adapter")
    assert any(not torch.allclose(a[k], c[k]) for k in a)
    log = [json.loads(l) for l in open(tmp_path / "replay" / "log.jsonl")]
    model, tok, vocab = M.load_policy(tiny_smol, adapter=str(tmp_path / "sft" / "adapter"), dropout=0.0)
    fmt = M.PromptFormat(tok, vocab)
    pairs, soft, w, valid, trie = dpo.replay_examples(data, str(tmp_path / "sft" / "adapter"), fmt)
    assert soft is None and w == 0.5 and len(pairs) == 24 and valid == 0.0 and trie is None
    first = sft.batch_schedule([len(p) + len(q) for p, q in pairs], 2, 4, 0)[0]
    batch = [pairs[i] for i in first]
    with torch.no_grad():
        want = real(model, batch, M.pad_id_of(tok), sum(len(q) for _, q in batch), "cpu", vocab=vocab,
                    prompt_id_weight=0.5).item()
    assert log[1]["sft_loss"] == pytest.approx(want, rel=1e-4)

    # an SFT run with the validity term: replay adds it too, over the catalogue's IDs (meta's semantic_ids)
    table = tmp_path / "semantic_ids.tsv"
    ids = sorted({vocab.parse(json.loads(l)["answer"]) for l in open(os.path.join(data, "train.jsonl"))})
    table.write_text("track_id\tcode_0\tcode_1\tcode_2\n" + "".join(
        f"t{i}\t{a}\t{b}\t{c}\n" for i, (a, b, c) in enumerate(ids)))
    meta = json.load(open(os.path.join(data, "meta.json")))
    json.dump({**meta, "semantic_ids": str(table)}, open(os.path.join(data, "meta.json"), "w"))
    json.dump({**cfg, "valid_id_weight": 0.3}, open(cfg_path, "w"))
    calls.clear()
    def spy(*a, **k):
        calls.append((k["valid_id_weight"], len(k["trie"].allowed(()))))
        return real(*a, **k)
    monkeypatch.setattr(sft, "sft_loss", spy)
    dpo.main(argv + ["--out", str(tmp_path / "replay_valid"), "--sft-replay", "4", "--sft-data", data])
    assert calls == [(0.3, len({i[0] for i in ids}))] * 2             # the trie's first level: the codes in use
