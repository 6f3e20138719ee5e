"""The GPU path (--device cuda, bf16 autocast) checked against the CPU's fp32 one, on tiny random Llama models.

Every test here is marked `gpu` and skipped where torch sees no CUDA device (CI and the 2-core machines have none).
On a GPU machine: `python -m pytest -m gpu tests` (benchmarks/gpu_check.sh runs it). What they check:
- an SFT run on --device cuda trains, its first loss equals the CPU run's within bf16 tolerance, and from the same
  starting weights SFT steps on the GPU follow the CPU's losses;
- a CUDA SFT run killed after a checkpoint and resumed ends with the same adapter as an uninterrupted CUDA run
  (the checkpoint holds the CUDA RNG state, so the LoRA dropout masks continue as if never interrupted);
- a short dpo.py run on cuda: step 0 is ln 2, the reference cache is the GPU's, its losses follow a CPU run's;
- the output head under bf16 autocast (model.head_logits) gives the fp32 logits;
- exact ranking (ranking.exact_top_k) on the GPU gives the CPU's scores within bf16 tolerance.
"""
import copy
import json
import math
import os

import numpy as np
import pytest
import torch

# cuBLAS is deterministic only with a fixed workspace; it must be set before the first CUDA matmul (this module is
# the only one that uses CUDA, so import time is early enough). torch.use_deterministic_algorithms needs it.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import dpo  # noqa: E402
import model as M  # noqa: E402
import ranking
import sft  # noqa: E402
from tests.conftest import adapter_tensors, write_pairs, write_sft_data  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")]
GPU = "cuda"   # the device under test

# bf16 autocast against fp32: bf16 keeps 8 bits of mantissa (relative error ~0.4% per rounding); losses of these
# tiny models are ~11 nats (SFT, log of a 49k vocabulary) and ~0.69 (DPO). 1% (SFT) and 0.05 nats (DPO, whose later
# steps also carry Adam's updates of rounded gradients) leave room for the roundings of a 2-layer model, while a
# real mismatch (a wrong mask, a bf16 head, a tensor left on the CPU) moves them far more.
SFT_REL = 1e-2
DPO_ABS = 5e-2


def run_sft(data, out, model, device, extra=()):
    return sft.main(["--data", data, "--out", str(out), "--model", model, "--device", device, "--steps", "6",
                     "--batch-size", "4", "--micro-batch-size", "2", "--eval-every", "2", "--lr", "1e-2",
                     "--id-lr", "1e-2", "--warmup-steps", "2", "--lora-r", "4", *extra])


def log_of(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture
def deterministic():
    """Deterministic CUDA kernels for the test's duration: attention's backward, index_add_ and the like switch to
    their deterministic forms (with warn_only they would only warn); an op that has none raises and names itself."""
    was, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was, warn_only=warn)


def test_sft_on_cuda_trains_and_matches_cpu(tiny_smol, tmp_path):
    data = write_sft_data(tmp_path / "data")
    no_dropout = ["--lora-dropout", "0"]
    run_sft(data, tmp_path / "cpu", tiny_smol, "cpu", no_dropout)
    run_sft(data, tmp_path / "gpu", tiny_smol, GPU, no_dropout)
    cpu, gpu = log_of(tmp_path / "cpu"), log_of(tmp_path / "gpu")
    assert [r["step"] for r in gpu] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) for r in gpu) and all(math.isfinite(r["val/loss"]) for r in gpu
                                                              if "val/loss" in r)
    assert gpu[-1]["loss"] < gpu[0]["loss"]                                  # it learns on the GPU
    # step 1: LoRA's B is 0 and the ID rows start at the mean embedding on both devices, so both runs score the
    # same function (later steps differ: LoRA's A is drawn from the CPU's generator on one, CUDA's on the other)
    assert gpu[0]["loss"] == pytest.approx(cpu[0]["loss"], rel=SFT_REL)
    summary = json.load(open(tmp_path / "gpu" / "summary.json"))
    assert math.isfinite(summary["val/loss"])
    assert os.path.exists(tmp_path / "gpu" / "adapter" / "id_tokens.safetensors")
    assert json.load(open(tmp_path / "gpu" / "config.json"))["device"] == GPU


def test_sft_steps_from_the_same_weights_follow_the_cpu(tiny_smol):
    """sft.sft_loss under model.autocast on cuda, AdamW and clipping, from the CPU model's very weights."""
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--lora-dropout", "0"])
    torch.manual_seed(0)
    cpu_model, tok, vocab = sft.build_policy(args, {"levels": 3, "codebook_size": 4}, "cpu")
    gpu_model = copy.deepcopy(cpu_model).to(GPU)
    assert gpu_model.lm_head.new_rows is gpu_model.model.embed_tokens.new_rows      # still tied after the move
    fmt = M.PromptFormat(tok, vocab)
    pad = M.pad_id_of(tok)
    pairs = [(fmt.prompt(p), fmt.answer(c)) for p, c in
             [("rock", (0, 1, 2)), ("a much longer request for jazz", (1, 1, 1)), ("metal", (2, 0, 3)),
              ("something like <a_1><b_2><c_3>", (1, 2, 3))]]
    n_tok = sum(len(a) for _, a in pairs)
    losses = {}
    for name, device, model in (("cpu", torch.device("cpu"), cpu_model), ("gpu", torch.device(GPU), gpu_model)):
        opt = sft.make_optimizer(model, 3e-3, 3e-2)
        losses[name] = []
        for step in range(5):
            with M.autocast(device):
                loss = sft.sft_loss(model, pairs, pad, n_tok, device, shared_prefix=len(fmt.prefix))
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], sft.GRAD_CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[name].append(loss.item())
    assert losses["gpu"] == pytest.approx(losses["cpu"], rel=SFT_REL)
    assert losses["gpu"][-1] < losses["gpu"][0]


def test_sft_kill_and_resume_on_cuda_equals_uninterrupted(tiny_smol, tmp_path, monkeypatch, deterministic):
    """LoRA dropout on (0.1): its masks come from the CUDA generator, whose state the checkpoint must carry."""
    data = write_sft_data(tmp_path / "data")
    dropout = ["--lora-dropout", "0.1"]
    run_sft(data, tmp_path / "full", tiny_smol, GPU, dropout)

    class Killed(Exception):
        pass
    calls = {"n": 0}
    real = sft.sft_loss

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 9:        # 2 micro-batches a step: call 9 is step 5's first, after the step-4 checkpoint
            raise Killed()
        return real(*a, **k)
    monkeypatch.setattr(sft, "sft_loss", dying)
    with pytest.raises(Killed):
        run_sft(data, tmp_path / "killed", tiny_smol, GPU, dropout)
    monkeypatch.setattr(sft, "sft_loss", real)
    ck = torch.load(tmp_path / "killed" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["step"] == 4 and ck["cuda_rng"] is not None                     # the CUDA generators were saved
    assert not os.path.exists(tmp_path / "killed" / "adapter")
    run_sft(data, tmp_path / "killed", tiny_smol, GPU, dropout + ["--resume"])
    full, resumed = adapter_tensors(tmp_path / "full" / "adapter"), adapter_tensors(tmp_path / "killed" / "adapter")
    d = max_diff(full, resumed)
    if d != 0:
        # tell a resume bug from kernels that are not reproducible at all: run the uninterrupted one again
        run_sft(data, tmp_path / "again", tiny_smol, GPU, dropout)
        again = max_diff(full, adapter_tensors(tmp_path / "again" / "adapter"))
        why = "so CUDA training is not reproducible here" if again else "so the resume loses state"
        pytest.fail(f"resumed adapter differs from the uninterrupted one by up to {d:.3g}; a second uninterrupted "
                    f"run differs by {again:.3g} ({why})")
    assert len(log_of(tmp_path / "killed")) == len(log_of(tmp_path / "full")) == 6


def test_dpo_short_run_on_cuda(tiny_smol, tmp_path):
    data = write_sft_data(tmp_path / "sft_data")
    sft.main(["--data", data, "--out", str(tmp_path / "sft"), "--model", tiny_smol, "--device", GPU,
              "--steps", "2", "--batch-size", "4", "--micro-batch-size", "4", "--eval-every", "2", "--lora-r", "4"])
    pairs = write_pairs(tmp_path / "prefs")
    argv = ["--pairs", pairs, "--sft", str(tmp_path / "sft" / "adapter"), "--model", tiny_smol,
            "--steps", "4", "--batch-size", "4", "--micro-batch-size", "2", "--eval-every", "2",
            "--lr", "1e-2", "--warmup-steps", "1"]
    dpo.main(argv + ["--out", str(tmp_path / "gpu"), "--device", GPU])
    log = log_of(tmp_path / "gpu")
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4]
    # step 0: the policy is the reference, both scored by the same code on the same device
    assert log[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert log[1]["loss"] == pytest.approx(math.log(2), abs=1e-3)   # other batches, other padding: bf16 rounding
    assert all(math.isfinite(r[k]) for r in log for k in ("eval/loss", "loss", "grad_norm") if k in r)
    assert log[-1]["eval/rewards/margins"] > 0                              # it moves toward the chosen answers
    from safetensors import safe_open
    with safe_open(str(tmp_path / "gpu" / "ref_logps.safetensors"), "pt") as f:
        fp = json.loads(f.metadata()["fingerprint"])
    assert fp["device"].startswith(GPU) and fp["dtype"] == "torch.float32"
    assert os.path.exists(tmp_path / "gpu" / "adapter" / "adapter_model.safetensors")
    # the same run on the CPU: DPO draws nothing at random (dropout off, the policy starts from the adapter), so
    # the reference log-probs (the SFT model's, bf16 autocast against fp32) agree up to rounding, and the losses
    # follow the CPU's (steps 0 and 1 are ln 2 on both; later ones carry the updates, Adam's included)
    dpo.main(argv + ["--out", str(tmp_path / "cpu"), "--device", "cpu"])
    from safetensors.torch import load_file
    ref_gpu, ref_cpu = (load_file(str(tmp_path / d / "ref_logps.safetensors")) for d in ("gpu", "cpu"))
    assert ref_gpu.keys() == ref_cpu.keys()
    for k in ref_cpu:
        assert torch.allclose(ref_gpu[k], ref_cpu[k], rtol=5e-3, atol=5e-2), k
    cpu = log_of(tmp_path / "cpu")
    for a, b in zip(log, cpu):
        for k in ("loss", "eval/loss"):
            if k in a:
                assert a[k] == pytest.approx(b[k], abs=DPO_ABS), (a["step"], k)


def test_head_logits_are_fp32_under_bf16_autocast(tiny_smol):
    head_logits = getattr(M, "head_logits", None)
    if head_logits is None:
        pytest.skip("model.head_logits is not there yet")
    model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4, device=GPU)
    torch.manual_seed(0)
    with torch.no_grad():
        model.model.embed_tokens.new_rows.normal_(std=0.05)
    H = model.config.hidden_size
    h = torch.randn(64, H, device=GPU) * 3
    with torch.no_grad():
        want = model.lm_head(h)                                             # fp32, no autocast
        with torch.autocast(GPU, dtype=torch.bfloat16):
            got = head_logits(model, h)
            plain = model.lm_head(h)                                        # what autocast alone gives
            got_bf16_in = head_logits(model, h.bfloat16())
    assert want.dtype == got.dtype == got_bf16_in.dtype == torch.float32
    assert got.shape == (64, vocab.offset + vocab.levels * vocab.codebook_size)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert plain.dtype == torch.bfloat16          # the rounding head_logits avoids
    assert (plain.float() - want).abs().max() > 10 * (got - want).abs().max()
    with torch.no_grad():
        want_bf16_in = model.lm_head(h.bfloat16().float())
    assert torch.allclose(got_bf16_in, want_bf16_in, atol=1e-5, rtol=1e-5)


def test_exact_ranking_on_cuda_matches_cpu(tiny_smol):
    import itertools
    ids = [c for c in itertools.product(range(4), repeat=3) if c[0] != 3 and sum(c) % 3 != 1]
    model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    torch.manual_seed(0)
    with torch.no_grad():
        model.model.embed_tokens.new_rows.normal_(std=1.0)                  # IDs that score differently
    gpu_model = copy.deepcopy(model).to(GPU)
    fmt = M.PromptFormat(tok, vocab)
    prompts = [fmt.prompt("rock"), fmt.prompt("something like <a_1><b_2><c_3>, but a longer prompt")]
    trie, pad = ranking.IDTrie(ids, 3), M.pad_id_of(tok)
    cpu = ranking.exact_top_k(model, prompts, vocab, trie, 5, device="cpu", pad_id=pad)
    gpu = ranking.exact_top_k(gpu_model, prompts, vocab, trie, 5, device=GPU, pad_id=pad)
    full_cpu = ranking.exact_top_k(model, prompts, vocab, trie, len(ids), device="cpu", pad_id=pad)
    for c, g, full in zip(cpu, gpu, full_cpu):
        assert len(g) >= 5 and all(math.isfinite(s) for _, s in g)
        score = dict(full)
        # every ID the GPU ranks has the CPU's score for it (bf16 through 2 layers, summed over 3 tokens)
        assert all(abs(s - score[codes]) < 0.1 for codes, s in g), [(codes, s, score[codes]) for codes, s in g]
        # the top IDs agree wherever the CPU's scores are not within twice that tolerance of each other
        if c[0][1] - c[1][1] > 0.2:
            assert g[0][0] == c[0][0]
