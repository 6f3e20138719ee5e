"""benchmarks/expo.py: theta_sft + lambda (theta_dpo - theta_sft) as one adapter of rank 2r, exactly."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import lora  # noqa: E402
import model as M  # noqa: E402
from common import UserError  # noqa: E402
from expo import combine_lora, main, mix  # noqa: E402


def test_combine_lora_by_hand():
    # the docstring's example
    a, b = combine_lora(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0]]), torch.tensor([[0.0, 1.0]]),
                        torch.tensor([[2.0]]), 0.5)
    assert a.tolist() == [[1.0, 0.0], [0.0, 1.0]] and b.tolist() == [[0.5, 1.0]]
    assert (b @ a).tolist() == [[0.5, 1.0]]
    assert mix(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 2.0]), 2.0).tolist() == [5.0, 2.0]   # past DPO


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 2.5])
def test_combine_lora_is_the_weights_line(lam):
    g = torch.Generator().manual_seed(0)
    a_s, b_s, a_d, b_d = (torch.randn(shape, generator=g) for shape in [(4, 6), (5, 4), (4, 6), (5, 4)])
    a, b = combine_lora(a_s, b_s, a_d, b_d, lam)
    assert a.shape == (8, 6) and b.shape == (5, 8)
    assert torch.allclose(b @ a, (1 - lam) * b_s @ a_s + lam * b_d @ a_d, atol=1e-5)


def _policy(tiny, seed, folder):
    """A tiny policy with random LoRA B and ID rows (as if trained), saved as an adapter folder."""
    model, tok, vocab = M.load_policy(tiny, levels=3, codebook_size=4)
    lora.inject_lora(model, r=4, alpha=8, dropout=0.0)
    torch.manual_seed(seed)
    for _, m in lora.lora_layers(model):
        torch.nn.init.normal_(m.lora_A.weight, std=0.3)
        torch.nn.init.normal_(m.lora_B.weight, std=0.3)
    with torch.no_grad():
        for p in M.id_parameters(model):
            p.normal_(std=0.5)
    M.save_policy(model, vocab, folder, tiny, "sha")
    return model, tok


def _logits(model, ids):
    with torch.no_grad():
        return M.head_logits(model, model.model(input_ids=ids).last_hidden_state[0]).float()


def test_combined_adapter_computes_the_line(tiny_smol, tmp_path):
    """At lambda 0 and 1 the combined adapter computes SFT's and DPO's logits; at 2, W_sft + 2 (W_dpo - W_sft)."""
    sft, tok = _policy(tiny_smol, 0, str(tmp_path / "sft"))
    dpo, _ = _policy(tiny_smol, 1, str(tmp_path / "dpo"))
    ids = torch.tensor([tok("some rock music please")["input_ids"] + [len(tok) + 5]])
    for lam, want in [(0.0, _logits(sft, ids)), (1.0, _logits(dpo, ids))]:
        main(["--sft", str(tmp_path / "sft"), "--dpo", str(tmp_path / "dpo"), "--lam", str(lam),
              "--out", str(tmp_path / "mix")])
        got, _, _ = M.load_policy(tiny_smol, adapter=str(tmp_path / "mix"), id_table_sha="sha")
        assert lora.read_adapter_config(str(tmp_path / "mix"))["r"] == 8
        assert torch.allclose(_logits(got, ids), want, atol=1e-4)
    # lambda 2: every LoRA layer's delta and the ID rows on the line, past DPO
    main(["--sft", str(tmp_path / "sft"), "--dpo", str(tmp_path / "dpo"), "--lam", "2", "--out", str(tmp_path / "x")])
    got, _, _ = M.load_policy(tiny_smol, adapter=str(tmp_path / "x"), id_table_sha="sha")
    ls, ld, lg = (dict(lora.lora_layers(m)) for m in (sft, dpo, got))
    for name in ls:
        d_s, d_d = ls[name].delta_weight(), ld[name].delta_weight()
        assert torch.allclose(lg[name].delta_weight(), d_s + 2 * (d_d - d_s), atol=1e-5)
    r_s, r_d, r_g = (m.model.embed_tokens.new_rows for m in (sft, dpo, got))
    assert torch.allclose(r_g, r_s + 2 * (r_d - r_s), atol=1e-6)


def test_adapters_of_other_shapes_are_one_line(tiny_smol, tmp_path):
    _policy(tiny_smol, 0, str(tmp_path / "sft"))
    model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    lora.inject_lora(model, r=2, alpha=8, dropout=0.0)
    M.save_policy(model, vocab, str(tmp_path / "r2"), tiny_smol, "sha")
    with pytest.raises(UserError, match="r differs"):
        main(["--sft", str(tmp_path / "sft"), "--dpo", str(tmp_path / "r2"), "--out", str(tmp_path / "x")])
    assert not os.path.exists(tmp_path / "x")
