"""model.py: the output head in fp32 under autocast."""
import pytest
import torch
import torch.nn.functional as F

import dpo
import model as M
import sft
from tests.test_exact import IDS

# ----------------------------------------------------------------------------- fp32 head under autocast
# There is no GPU here: CPU autocast in bf16 stands in for CUDA's (it runs nn.Linear / F.linear in bf16 too).


def bf16_autocast(device="cpu"):
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_head_logits_are_fp32_under_autocast():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    M.add_id_tokens(model, 3, 8)
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_()
        model.model.embed_tokens.new_rows.normal_()
    hidden = torch.randn(5, 7, 32)
    exact = torch.cat([F.linear(hidden, model.lm_head.weight), F.linear(hidden, model.lm_head.new_rows)], -1)
    assert torch.equal(M.head_logits(model, hidden), exact)                      # no autocast: the plain head
    with bf16_autocast():
        naive = model.lm_head(hidden).float()                                    # what `.float()` afterwards gives
        fixed = M.head_logits(model, hidden)
    assert fixed.dtype == torch.float32
    assert (fixed - exact).abs().max() < 1e-5
    assert (naive - exact).abs().max() > 1e-2                                    # bf16 loses ~3 digits
    # bf16 weights (a model loaded in bf16): the head still runs in fp32, on those weights' values
    w, rows = model.lm_head.weight.bfloat16(), model.lm_head.new_rows.bfloat16()
    model.lm_head = M.IDHead(w, rows)
    with bf16_autocast():
        got = M.head_logits(model, hidden)
    assert torch.allclose(got, torch.cat([F.linear(hidden, w.float()), F.linear(hidden, rows.float())], -1),
                          atol=1e-5)


@pytest.fixture(scope="module")
def bigram(tiny_smol):
    """A tiny policy whose body is exact under bf16 autocast, so that only the head can differ.

    With every layer's output projections (o_proj, down_proj) zero, attention and MLP add exact zeros to the
    residual stream: the hidden state is the final norm of the last token's embedding, computed in fp32 with or
    without autocast. The ID rows are noise, so scores differ and bf16 rounding in the head shows.
    """
    model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.new_rows.normal_(std=1.0)
    fmt = M.PromptFormat(tok, vocab)
    prompts = [fmt.prompt("rock"), fmt.prompt("something like <a_1><b_2><c_3>, but a longer prompt")]
    return model, fmt, prompts, M.pad_id_of(tok)


def everything_scored(model, fmt, prompts, pad):
    """Every place that turns hidden states into log-probs under model.autocast, as flat fp32 tensors."""
    vocab, trie = fmt.vocab, M.IDTrie(IDS, 3)
    pairs = [(p, fmt.answer((0, 1, 2)), fmt.answer((2, 0, 1))) for p in prompts]
    out = {}
    with M.autocast("cpu"):                                                      # as sft.py's training step
        ids, attn, loss = sft.collate([(p, a) for p, a, _ in pairs], pad)
        out["answer_logps"] = M.answer_logps(model, ids, attn, loss)[0]
        out["sft_loss"] = sft.sft_loss(model, [(p, a) for p, a, _ in pairs], pad, 8, "cpu",
                                       shared_prefix=len(fmt.prefix))[None]
        out["dpo_policy"] = torch.cat(dpo.concatenated_logps(model, pairs, pad, "cpu"))   # as dpo.py's step
        out["sft_val_loss"] = torch.tensor([sft.evaluate(model, [(p, a) for p, a, _ in pairs], pad, vocab,
                                                         "cpu", 2)["val/loss"]])
    out["dpo_reference"] = torch.cat(dpo.score_pairs(model, pairs, pad, "cpu", 2))
    for name, width, t in (("beam", 5, trie), ("beam_unconstrained", 5, None)):
        res = M.beam_search(model, prompts, vocab, width, trie=t, pad_id=pad)
        out[name] = torch.tensor([s for r in res for _, s in r])
        out[name + "_tokens"] = torch.tensor([x for r in res for toks, _ in r for x in toks]).float()
    out["score_all_ids"] = M.score_all_ids(model, prompts[0], vocab, trie)[1]
    top = M.exact_top_k(model, prompts, vocab, trie, 4, pad_id=pad)
    out["exact_top_k"] = torch.tensor([s for r in top for _, s in r])
    return out


def test_every_score_uses_an_fp32_head_under_autocast(bigram, monkeypatch):
    """Under (simulated) CUDA autocast, SFT, DPO, beam search and exact ranking score as in fp32."""
    model, fmt, prompts, pad = bigram
    with torch.no_grad():
        want = everything_scored(model, fmt, prompts, pad)                      # CPU: fp32, autocast off
    monkeypatch.setattr(M, "autocast", bf16_autocast)                            # what a GPU run gets
    with torch.no_grad():
        got = everything_scored(model, fmt, prompts, pad)
    off = {name: f"off by {(got[name] - want[name]).abs().max():.2g}" if got[name].shape == want[name].shape
           else "other results" for name in want}
    bad = {n: o for n, o in off.items() if o == "other results" or float(o.split()[-1]) > 1e-5}
    assert not bad, f"under autocast: {bad}"
