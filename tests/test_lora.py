"""LoRA by hand: init, scaling, merge, freezing, PEFT-format round trips, the tied ID rows."""
import math
import os

import pytest
import torch
import torch.nn as nn

import lora
import model as M
import sft


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_lora_linear_init_is_noop_and_scaling_exact():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    x = torch.randn(3, 6)
    ref = base(x).detach()
    m = lora.LoRALinear(base, r=2, alpha=8.0)
    assert torch.count_nonzero(m.lora_B.weight) == 0          # B = 0 at init
    assert torch.count_nonzero(m.lora_A.weight) > 0
    assert torch.equal(m(x), ref)                              # so the layer equals the base
    assert m.scaling == 4.0
    assert lora.LoRALinear(nn.Linear(6, 5), r=4, alpha=8.0, use_rslora=True).scaling == 4.0  # 8 / sqrt(4)
    with torch.no_grad():
        m.lora_A.weight.fill_(1.0)     # A x = sum(x) for each of the r rows
        m.lora_B.weight.fill_(0.5)     # B (A x) = r * 0.5 * sum(x) = sum(x) for r = 2
    expected = ref + 4.0 * x.sum(1, keepdim=True)
    assert torch.allclose(m(x), expected, atol=1e-6)


def test_kaiming_bound_of_A():
    m = lora.LoRALinear(nn.Linear(100, 7), r=8, alpha=16)
    bound = 1 / math.sqrt(100)         # kaiming_uniform(a=sqrt(5)) on fan_in 100
    assert m.lora_A.weight.abs().max() <= bound
    assert m.lora_A.weight.abs().max() > 0.8 * bound


def test_dropout_only_on_branch():
    torch.manual_seed(0)
    base = nn.Linear(4, 4)
    m = lora.LoRALinear(base, r=2, alpha=2, dropout=0.9).train()
    x = torch.randn(8, 4)
    assert torch.equal(m(x), base(x))  # B = 0: whatever the dropout does, the frozen path is clean


def test_merge_unmerge_idempotent(tiny_smol):
    model, tok = M.load_base(tiny_smol)
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    base_logits = logits_of(model, ids)
    lora.inject_lora(model, r=4, alpha=8)
    assert torch.allclose(logits_of(model, ids), base_logits, atol=0)   # B = 0: unchanged
    torch.manual_seed(1)
    for _, m in lora.lora_layers(model):
        nn.init.normal_(m.lora_B.weight, std=0.5)
    adapted = logits_of(model, ids)
    assert (adapted - base_logits).abs().max() > 1e-3                    # B != 0: it differs
    lora.merge_lora(model)
    lora.merge_lora(model)                                               # twice is a no-op
    assert torch.allclose(logits_of(model, ids), adapted, atol=1e-4)
    lora.unmerge_lora(model)
    assert torch.allclose(logits_of(model, ids), adapted, atol=1e-4)
    with lora.lora_disabled(model):
        assert torch.allclose(logits_of(model, ids), base_logits, atol=1e-4)


def test_injection_targets_and_freezing(tiny_smol):
    model, _ = M.load_base(tiny_smol)
    names = lora.inject_lora(model, targets=("q_proj", "v_proj"), r=2, alpha=4)
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable) and len(trainable) == 8
    t, total = lora.count_parameters(model)
    # per layer: A (r x in) + B (out x r); q: 32 -> 32, v: 32 -> 16 (2 kv heads of 8 dims)
    assert t == 2 * ((2 * 32 + 32 * 2) + (2 * 32 + 16 * 2)) == 448
    with pytest.raises(Exception):
        lora.inject_lora(M.load_base(tiny_smol)[0], targets=("nope",))


def trained_policy(tiny, steps=3, seed=0):
    """Tiny model + ID tokens + LoRA after a few optimizer steps on a fixed batch."""
    torch.manual_seed(seed)
    model, tok, vocab = M.load_policy(tiny, levels=3, codebook_size=4)
    lora.inject_lora(model, r=4, alpha=8, dropout=0.0)
    for p in M.id_parameters(model):
        p.requires_grad_(True)
    fmt = M.PromptFormat(tok, vocab)
    seqs = [fmt.prompt("play rock <a_1><b_2><c_3>") + fmt.answer((0, 1, 2)),
            fmt.prompt("something chill") + fmt.answer((3, 3, 1))]
    ids, attn, loss_mask = M.pad_batch(seqs, M.pad_id_of(tok), [4, 4])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        logps, _ = sft.answer_logps(model, ids, attn, loss_mask)
        (-logps.mean()).backward()
        opt.step()
        opt.zero_grad()
    return model, tok, vocab, ids


def test_only_adapter_and_new_rows_change(tiny_smol):
    before, _ = M.load_base(tiny_smol)
    before_state = {k: v.clone() for k, v in before.state_dict().items()}
    model, _, vocab, _ = trained_policy(tiny_smol)
    for k, v in model.state_dict().items():
        if ".lora_" in k or k.endswith("new_rows"):
            continue
        if k == "lm_head.id_bias":                      # new too, and not trained here: still 0
            assert not v.any()
            continue
        assert torch.equal(v, before_state[k]), k       # the base (incl. the full embedding) is frozen
    assert any(m.lora_B.weight.abs().sum() > 0 for _, m in lora.lora_layers(model))
    rows = model.model.embed_tokens.new_rows
    mean = before_state["model.embed_tokens.weight"].mean(0)
    assert not torch.allclose(rows[vocab.token_id(0, 0) - vocab.offset], mean)   # trained row moved


def test_tie_holds_and_round_trip(tiny_smol, tmp_path):
    model, tok, vocab, ids = trained_policy(tiny_smol)
    assert model.lm_head.new_rows is model.model.embed_tokens.new_rows
    assert model.lm_head.weight is model.model.embed_tokens.weight
    expected = logits_of(model, ids)
    M.save_policy(model, vocab, str(tmp_path / "adapter"), tiny_smol, "sha")
    assert sorted(os.listdir(tmp_path / "adapter")) == [
        "adapter_config.json", "adapter_model.safetensors", "id_tokens.safetensors", "id_vocab.json"]
    loaded, _, vocab2 = M.load_policy(tiny_smol, adapter=str(tmp_path / "adapter"), id_table_sha="sha")
    assert loaded.lm_head.new_rows is loaded.model.embed_tokens.new_rows    # the tie survives a reload
    assert torch.equal(logits_of(loaded, ids), expected)
    assert vocab2.to_json() == vocab.to_json()
    with pytest.raises(M.UserError, match="another Semantic-ID table"):
        M.load_policy(tiny_smol, adapter=str(tmp_path / "adapter"), id_table_sha="other")


def test_peft_loads_our_adapter(tiny_smol, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import LlamaForCausalLM
    model, _ = M.load_base(tiny_smol)
    lora.inject_lora(model, r=4, alpha=8)
    torch.manual_seed(3)
    for _, m in lora.lora_layers(model):
        nn.init.normal_(m.lora_B.weight, std=0.3)
    lora.save_adapter(model, str(tmp_path), base_model_name_or_path=tiny_smol)
    ids = torch.tensor([[1, 5, 9, 200, 7, 42]])
    ours = logits_of(model, ids)
    base = LlamaForCausalLM.from_pretrained(tiny_smol, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(base, str(tmp_path)).eval()
    assert torch.allclose(logits_of(theirs, ids), ours, atol=1e-5)


def test_regex_target_round_trip(tiny_smol, tmp_path):
    """A regex target wraps some q_proj only: the saved config names them in full and loads back the same."""
    model, _ = M.load_base(tiny_smol)
    wrapped = lora.inject_lora(model, targets=(r"model\.layers\.0\..*_proj",), r=2, alpha=4)
    assert wrapped and all(n.startswith("model.layers.0.") for n in wrapped)
    torch.manual_seed(1)
    for _, m in lora.lora_layers(model):
        nn.init.normal_(m.lora_B.weight, std=0.3)
    config = lora.save_adapter(model, str(tmp_path))
    assert config["target_modules"] == sorted(wrapped)                      # not the ambiguous ["q_proj", ...]
    ids = torch.tensor([[1, 5, 9, 200, 7, 42]])
    loaded, _ = M.load_base(tiny_smol)
    lora.load_adapter(loaded, str(tmp_path))
    assert [n for n, _ in lora.lora_layers(loaded)] == wrapped
    assert torch.allclose(logits_of(loaded, ids), logits_of(model, ids), atol=1e-6)
    # plain names that select every such module stay short, as PEFT writes them
    full, _ = M.load_base(tiny_smol)
    lora.inject_lora(full, targets=("q_proj", "v_proj"), r=2, alpha=4)
    assert lora.save_adapter(full, str(tmp_path / "short"))["target_modules"] == ["q_proj", "v_proj"]
