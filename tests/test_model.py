"""model.py: the output head in fp32 under autocast; unconstrained beams stop at the end token; truncation."""
import argparse
import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import dpo
import evaluate as E
import model as M
import ranking
import sft
from tests.conftest import IDS, ROOT, make_tiny_llama

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
    vocab, trie = fmt.vocab, ranking.IDTrie(IDS, 3)
    pairs = [(p, fmt.answer((0, 1, 2)), fmt.answer((2, 0, 1))) for p in prompts]
    out = {}
    with M.autocast("cpu"):                                                      # as sft.py's training step
        ids, attn, loss = sft.collate([(p, a) for p, a, _ in pairs], pad)
        out["answer_logps"] = sft.answer_logps(model, ids, attn, loss)[0]
        out["sft_loss"] = sft.sft_loss(model, [(p, a) for p, a, _ in pairs], pad, 8, "cpu",
                                       shared_prefix=len(fmt.prefix))[None]
        out["dpo_policy"] = torch.cat(dpo.concatenated_logps(model, pairs, pad, "cpu"))   # as dpo.py's step
        out["sft_val_loss"] = torch.tensor([sft.evaluate(model, [(p, a) for p, a, _ in pairs], pad, vocab,
                                                         "cpu", 2)["val/loss"]])
    out["dpo_reference"] = torch.cat(dpo.score_pairs(model, pairs, pad, "cpu", 2))
    for name, width, t in (("beam", 5, trie), ("beam_unconstrained", 5, None)):
        res = ranking.beam_search(model, prompts, vocab, width, trie=t, pad_id=pad)
        out[name] = torch.tensor([s for r in res for _, s in r])
        out[name + "_tokens"] = torch.tensor([x for r in res for toks, _ in r for x in toks]).float()
    out["score_all_ids"] = ranking.score_all_ids(model, prompts[0], vocab, trie)[1]
    top = ranking.exact_top_k(model, prompts, vocab, trie, 4, pad_id=pad)
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


# ----------------------------------------------------------------------------- finished beams stop

@pytest.fixture(scope="module")
def noisy(tmp_path_factory, smol_tokenizer):
    """A tiny untied policy with noisy ID rows in and out (a tied random model mostly repeats its last token)."""
    folder = make_tiny_llama(smol_tokenizer, tmp_path_factory.mktemp("tiny_untied_beam"), tie=False)
    model, tok, vocab = M.load_policy(folder, levels=3, codebook_size=4)
    torch.manual_seed(0)
    with torch.no_grad():
        model.model.embed_tokens.new_rows.normal_(std=1.0)
        model.lm_head.new_rows.normal_(std=1.0)
    fmt = M.PromptFormat(tok, vocab)
    return model, fmt, fmt.prompt("rock"), M.pad_id_of(tok)


def next_logp(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)


def teacher_forced(model, prompt, toks, pad):
    with torch.no_grad():
        return dpo.sequence_logps(model, *M.pad_batch([prompt + list(toks)], pad, [len(toks)])).item()


@pytest.mark.parametrize("end_after", [0, 1])
def test_unconstrained_beam_stops_at_the_end_token(noisy, end_after):
    """A beam that emits the end token keeps the score it had there and is not expanded further.

    The end token is chosen to be the model's favourite after `end_after` tokens of the best beam, so a beam ends
    early (at step end_after) and would otherwise go on adding (negative) log-probs of tokens after its end.
    """
    model, fmt, prompt, pad = noisy
    L, width = fmt.vocab.levels, 6
    first = next_logp(model, prompt)
    best = [int(first.argmax())]
    then = next_logp(model, prompt + best)
    then[best[0]] = float("-inf")                    # another token than the first, so that the end is visible
    end = int(then.argmax()) if end_after else best[0]
    res = ranking.beam_search(model, [prompt], fmt.vocab, width, trie=None, end_id=end, pad_id=pad)[0]
    assert len(res) == width and len({toks for toks, _ in res}) == width             # unique beams
    assert [s for _, s in res] == sorted((s for _, s in res), reverse=True)
    ended = [toks for toks, _ in res if len(toks) < L + 1]
    assert ended, "some beam must end early"
    for toks, score in res:
        assert end not in toks[:-1]                                                   # nothing after the end
        assert len(toks) == L + 1 or toks[-1] == end
        # the score is the sum of log-probs up to and including the end token, nothing after it
        assert score == pytest.approx(teacher_forced(model, prompt, toks, pad), abs=1e-4)
        assert len(toks) == L + 1 or E.id_codes(toks, fmt.vocab, end) is None         # ended early: malformed
    early = (best + [end]) if end_after else [end]
    assert tuple(early) in {toks for toks, _ in res}
    # the best beam's own first token has the top step-0 log-prob; ended at step 0, nothing can beat it
    if not end_after:
        assert res[0][0] == (end,) and res[0][1] == pytest.approx(first[end].item(), abs=1e-5)


def test_beam_without_end_id_and_constrained_beams_are_unchanged(noisy):
    """end_id only affects unconstrained search; a trie never allows it, and without it every beam has L+1 tokens."""
    model, fmt, prompt, pad = noisy
    trie = ranking.IDTrie(IDS, 3)
    with_end = ranking.beam_search(model, [prompt], fmt.vocab, 5, trie=trie, end_id=fmt.end_id, pad_id=pad)
    assert with_end == ranking.beam_search(model, [prompt], fmt.vocab, 5, trie=trie, pad_id=pad)
    plain = ranking.beam_search(model, [prompt], fmt.vocab, 5, trie=None, pad_id=pad)[0]
    assert all(len(toks) == fmt.vocab.levels + 1 for toks, _ in plain)


def test_hallucination_passes_the_end_token(noisy, monkeypatch):
    model, fmt, prompt, pad = noisy
    seen = []
    real = ranking.beam_search

    def spy(*a, **k):
        seen.append(k.get("end_id"))
        return real(*a, **k)
    monkeypatch.setattr(ranking, "beam_search", spy)
    args = argparse.Namespace(batch_size=2, hallucination_beam=3, device="cpu")
    out, per_prompt = E.hallucination(model, fmt, ["rock", "jazz"], ranking.IDTrie(IDS, 3), args, "test")
    assert seen == [fmt.end_id] and 0 <= out["hallucinated@10"] <= 1
    assert per_prompt["outputs@1"] == [1, 1] and per_prompt["outputs@10"] == [3, 3]   # the beam's 3, per prompt
    assert out["hallucinated@10"] == sum(per_prompt["hallucinated@10"]) / 6


def test_hallucination_counts_by_hand(noisy, monkeypatch):
    """Fixed beams, counted by hand: a track, a well-formed ID of no track, and outputs that are not one ID."""
    model, fmt, prompt, pad = noisy
    v, end = fmt.vocab, fmt.end_id
    track, no_track = list(IDS[0]), next(c for c in itertools.product(range(4), repeat=3) if c not in IDS)
    beams = [[(v.ids(track) + [end], -1.0), (v.ids(no_track) + [end], -2.0), (v.ids(track)[:2] + [end], -3.0)],
             [(v.ids(track)[::-1] + [end], -1.0), (v.ids(track) + [end], -2.0), (v.ids(track), -3.0)]]
    monkeypatch.setattr(ranking, "beam_search", lambda *a, **k: beams)
    args = argparse.Namespace(batch_size=2, hallucination_beam=3, device="cpu")
    out, per_prompt = E.hallucination(model, fmt, ["rock", "jazz"], ranking.IDTrie(IDS, 3), args, "test")
    # @1: a track, then codes in the wrong level order (malformed); @5 and @10: every beam
    assert per_prompt["hallucinated@1"] == [0, 1] and per_prompt["hallucinated@10"] == [2, 2]
    assert per_prompt["top1"] == [fmt.decode(beams[0][0][0]), fmt.decode(beams[1][0][0])]
    assert per_prompt["top1"][1].startswith(f"<c_{track[2]}><b_{track[1]}><a_{track[0]}>")   # what the report shows
    assert out == {"malformed@1": 0.5, "invalid@1": 0.0, "hallucinated@1": 0.5,
                   "malformed@5": 3 / 6, "invalid@5": 1 / 6, "hallucinated@5": 4 / 6,
                   "malformed@10": 3 / 6, "invalid@10": 1 / 6, "hallucinated@10": 4 / 6}
    assert per_prompt["exit_level@1"] == [0, None]                  # a track; malformed
    assert E.exit_counts(per_prompt["exit_level@1"], 3) == {"malformed": 1, "level 1": 0, "level 2": 0, "level 3": 0}


def test_exit_level_worked_example():
    """The docstring's: tracks (0, 1) and (0, 3)."""
    trie = ranking.IDTrie([(0, 1), (0, 3)], 2)
    assert [E.exit_level(c, trie) for c in [(0, 3), (0, 2), (1, 1), (1, 3), None]] == [0, 2, 1, 1, None]
    assert E.exit_counts([0, 2, 1, 1, None, 2], 2) == {"malformed": 1, "level 1": 2, "level 2": 2}


# ----------------------------------------------------------------------------- truncation (model.py truncate)

def test_truncated_config_cuts_the_depth_and_per_layer_lists():
    cfg = {"num_hidden_layers": 4, "hidden_size": 8, "layer_types": ["full_attention"] * 4}
    out = M.truncated_config(cfg, 3)
    assert out["num_hidden_layers"] == 3 and out["layer_types"] == ["full_attention"] * 3
    assert cfg["num_hidden_layers"] == 4 and len(cfg["layer_types"]) == 4     # the input is left alone
    for bad in (0, 5):
        with pytest.raises(M.UserError, match=f"--layers {bad} is not between 1 and its 4 decoder layers"):
            M.truncated_config(cfg, bad, "m")


def test_truncated_model_is_the_first_layers_of_the_whole(tmp_path, smol_tokenizer):
    """The written folder computes exactly what the whole model computes with its later layers removed."""
    from transformers import LlamaForCausalLM
    src = make_tiny_llama(smol_tokenizer, tmp_path / "whole", layers=3, seed=1)
    out = M.truncate_model(src, str(tmp_path / "cut"), 2)
    assert not os.path.exists(out + ".tmp")
    cut, tok = M.load_base(out)
    whole = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    assert cut.config.num_hidden_layers == 2 and len(cut.model.layers) == 2
    assert M.model_fingerprint(cut.config)["num_hidden_layers"] == 2   # an adapter of the whole will not load on it
    whole.model.layers = whole.model.layers[:2]
    whole.config.num_hidden_layers = 2
    ids = torch.tensor([tok("I want to listen to rock")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(cut(ids).logits, whole(ids).logits)
    assert torch.equal(cut.lm_head.weight, cut.model.embed_tokens.weight)   # still tied


def test_truncate_cli_writes_a_folder_and_names_a_bad_depth(tmp_path, smol_tokenizer, capsys):
    src = make_tiny_llama(smol_tokenizer, tmp_path / "whole", layers=2)
    M.main(["truncate", "--model", src, "--out", str(tmp_path / "one"), "--layers", "1"])
    assert "the first 1 decoder layers" in capsys.readouterr().out
    assert M.read_config(str(tmp_path / "one"))["num_hidden_layers"] == 1
    with pytest.raises(M.UserError, match="--layers 3 is not between 1 and its 2"):
        M.main(["truncate", "--model", src, "--out", str(tmp_path / "three"), "--layers", "3"])
    assert not os.path.exists(tmp_path / "three")


def test_make_model_with_layers_cuts_the_embedded_model(tmp_path, smol_tokenizer):
    """`make demo LAYERS=n`: the model rule cuts the embedded folder (here a tiny one) into <embedded>-l<n>; a MODEL
    folder without config.json is a one-line error, not a conversion into it."""
    emb = make_tiny_llama(smol_tokenizer, tmp_path / "emb", layers=2)
    make = ["make", "-s", "-C", ROOT, "model", f"EMBEDDED={emb}", f"PY={sys.executable}", "VENV_STAMP="]
    r = subprocess.run(make + ["LAYERS=1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert M.read_config(emb + "-l1")["num_hidden_layers"] == 1
    assert M.read_config(emb)["num_hidden_layers"] == 2
    r = subprocess.run(make + [f"MODEL={tmp_path / 'nothing'}"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "no config.json there; MODEL must be a local Hugging Face Llama folder" in r.stderr
    assert not os.path.exists(tmp_path / "nothing")


def test_make_demo_defaults_and_the_seed_configuration(tmp_path):
    """The demo trains the 15-layer cut for 720 steps (480 until 2026-12-07) on IDs with the quality block (in the
    last code alone), 32,000 attribute requests toward their answer sets, and DPO on steps of 4 prompts x up to 8
    pairs drawn from every training pair, to its final weights, and tests on 1,000 next plays (200 until
    2026-12-07); SEED_CONFIG=1 the whole model for 240, with the seed's audio-only IDs, answer-only SFT loss, and
    pure DPO on 80 steps of 8 of 640 pairs (the commands `make -n` prints)."""
    def commands(*extra):
        r = subprocess.run(["make", "-n", "-C", ROOT, "demo", f"RUN={tmp_path / 'run'}", "VENV_STAMP=", *extra],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return {w: next(l for l in r.stdout.splitlines() if f" {w} " in l)
                for w in ("rvq.py", "sft", "sft.py", "dpo.py", "prefs", "evaluate.py")}
    demo = commands()
    assert "--model models/smollm2-135m-l15 --steps 720 " in demo["sft.py"] and "--rpo-alpha" not in demo["dpo.py"]
    # 1,000 next-track test queries, the first 200 and the 120 attribute requests decoded without constraints
    assert "--test-next 1000 " in demo["sft"] and "--hallucination-prompts 320 " in demo["evaluate.py"] + " "
    # DEMO_OF=2026-12-07: 480 SFT steps and the test window of 200 queries, every one decoded freely, nothing else
    # changed; every earlier demo ran 480 steps on 200 queries too
    dec7 = commands("DEMO_OF=2026-12-07")
    assert dec7["sft.py"] == demo["sft.py"].replace(" --steps 720 ", " --steps 480 ")
    assert dec7["sft"] == demo["sft"].replace(" --test-next 1000 ", " --test-next 200 ")
    assert (dec7["evaluate.py"] + " ").replace(" --hallucination-prompts 0 ", " --hallucination-prompts 320 ") == \
        demo["evaluate.py"] + " "
    assert all(dec7[w] == demo[w] for w in ("rvq.py", "dpo.py", "prefs"))
    # attribute requests as most of the examples, toward their answer sets, the prompt's IDs at a quarter weight
    assert "--attribute-examples 32000 " in demo["sft"] and "--answer-targets group" in demo["sft.py"]
    assert "--prompt-id-weight 0.25" in demo["sft.py"]
    # the long-listen rate in the last code alone; DEMO_OF=2026-12-06 every code reads it, the rest as 2026-12-07's
    assert demo["rvq.py"].split()[-2:] == ["--last-level-signals", "quality"]
    dec6 = commands("DEMO_OF=2026-12-06")
    assert dec6["rvq.py"].split() == demo["rvq.py"].split()[:-2]
    assert all(dec6[w] == dec7[w] for w in ("sft", "sft.py", "dpo.py", "prefs", "evaluate.py"))
    # IDs without the quality block keep nothing for the last code, unless asked (and rvq.py then says why not)
    assert "--last-level-signals" not in commands("SIGNALS=audio,genre,collab")["rvq.py"]
    assert "--last-level-signals" in commands("SIGNALS=audio", "LAST_LEVEL_SIGNALS=quality")["rvq.py"]
    # DPO at beta 0.5 with 8 SFT examples replayed a step; DEMO_OF=2026-12-05 the same SFT, DPO at 0.1 without them
    assert "--beta 0.5 --sft-replay 8 --sft-data " + str(tmp_path / "run" / "sft_data") in demo["dpo.py"]
    dec5 = commands("DEMO_OF=2026-12-05")
    assert dec5["rvq.py"] == dec6["rvq.py"]
    assert all(dec5[w] == dec7[w] for w in ("sft", "sft.py", "prefs", "evaluate.py"))
    assert "--beta" not in dec5["dpo.py"] and "--sft-replay" not in dec5["dpo.py"]
    before = commands("DEMO_OF=2026-12-04")                    # the demo those options replaced
    assert "--attribute-examples 2000 " in before["sft"] and "--answer-targets" not in before["sft.py"]
    assert "--prompt-id-weight" not in before["sft.py"] and before["dpo.py"] == dec5["dpo.py"]
    assert "--attribute-examples 2000 " in commands("SEED_CONFIG=1")["sft"]
    assert "--signals audio,genre,collab,quality " in demo["rvq.py"] and "--max-train 0 " in demo["prefs"]
    assert ("--batch-size 4 " in demo["dpo.py"] and "--pairs-per-prompt 8 --micro-batch-size 32 --select last"
            in demo["dpo.py"])
    assert "--beta" not in commands("DPO_BETA=0.1")["dpo.py"]       # the ablation's `grouped` row
    assert "--hallucination-prompts 0 " in dec7["evaluate.py"] + " "   # every test prompt of the 200 + 120
    seed = commands("SEED_CONFIG=1")
    assert "--model models/smollm2-135m --steps 240 " in seed["sft.py"] and "--prompt-id-weight 0" in seed["sft.py"]
    assert "--signals audio " in seed["rvq.py"] and "--rpo-alpha 0" in seed["dpo.py"]
    assert "--last-level-signals" not in seed["rvq.py"]
    assert "--max-train 640 " in seed["prefs"] and "--batch-size 8 " in seed["dpo.py"]
    assert "--pairs-per-prompt" not in seed["dpo.py"] and "--select" not in seed["dpo.py"]
    assert "--sft-replay" not in seed["dpo.py"]
    before = commands("DEMO_OF=2026-12-01", "LAYERS=30")       # the README's `make demo` lines of earlier figures
    assert "--signals audio,genre,collab " in before["rvq.py"] and "--max-train 640 " in before["prefs"]
    assert "--model models/smollm2-135m --steps 480 " in before["sft.py"] and "--rpo-alpha" not in before["dpo.py"]
    assert "--batch-size 8 " in before["dpo.py"] and "--pairs-per-prompt" not in before["dpo.py"]
    assert "--select" not in before["dpo.py"] and "--beta" not in before["dpo.py"] + seed["dpo.py"]
    assert "--sft-replay" not in before["dpo.py"]
    assert "--hallucination-prompts 40 " in before["evaluate.py"] + " "   # as that demo decoded
    assert "--signals audio,genre,collab,quality " in commands("DEMO_OF=2026-12-01", "SIGNALS=audio,genre,collab,"
                                                               "quality")["rvq.py"]


def test_ask_uses_the_base_the_run_was_trained_on(tmp_path):
    """ask.py without --model: the adapter's recorded base, else the run's SFT options (the zero-shot `base`)."""
    import json
    import ask
    (tmp_path / "sft" / "adapter").mkdir(parents=True)
    (tmp_path / "sft" / "adapter" / M.ID_VOCAB_FILE).write_text(json.dumps({"base_model": "models/cut-l15"}))
    assert ask.trained_base(str(tmp_path), str(tmp_path / "sft" / "adapter")) == "models/cut-l15"
    assert ask.trained_base(str(tmp_path), None) is None                 # no SFT options: the caller's default
    (tmp_path / "sft" / "config.json").write_text(json.dumps({"model": "models/whole"}))
    assert ask.trained_base(str(tmp_path), None) == "models/whole"


def test_ask_drops_the_tracks_just_heard():
    """ask.drop_heard: the named track and the --played ones never answer; the order and the count k hold."""
    import ask
    ranked = [((0, 1, 2), -1.0), ((0, 1, 3), -2.0), ((1, 0, 0), -3.0), ((1, 1, 1), -4.0)]
    id_to_row = {(0, 1, 2): 10, (0, 1, 3): 11, (1, 0, 0): 12, (1, 1, 1): 13}
    assert ask.drop_heard(ranked, id_to_row, {11}, 2) == [(10, -1.0, (0, 1, 2)), (12, -3.0, (1, 0, 0))]
    assert ask.drop_heard(ranked, id_to_row, {10, 12}, 5) == [(11, -2.0, (0, 1, 3)), (13, -4.0, (1, 1, 1))]
    assert ask.drop_heard(ranked, id_to_row, set(), 3) == [(10, -1.0, (0, 1, 2)), (11, -2.0, (0, 1, 3)),
                                                           (12, -3.0, (1, 0, 0))]


def test_ask_notes_a_request_in_words_it_was_not_trained_on():
    """A free-text request with none of the catalogue's genres nor an attribute phrase gets a one-line note."""
    import ask
    from tests.conftest import tiny_catalog
    cat = tiny_catalog(n=2)
    cat.genres = [["hip-hop"], ["rock"]]
    for request in ("upbeat rock", "Hip Hop, please", "something for a workout", "music around 120 BPM"):
        assert ask.unknown_words_note(request, cat) is None, request
    note = ask.unknown_words_note("Give me some jazz", cat)
    assert note.startswith("note: the request names none of this catalogue's 2 genres (hip-hop, rock) nor an "
                           "attribute the model was trained on (e.g. high-energy, chill, upbeat, melancholic)")
    assert "\n" not in note
    assert ask.unknown_words_note("rockabilly", cat) is not None      # whole words: "rock" is not in "rockabilly"
    assert ask.unknown_words_note("Play Artist 1 - Song 1", cat) is None   # a track by name: grounding
    assert ask.unknown_words_note("Song 0", cat) is None
    assert ask.unknown_words_note("", cat).startswith("note: ")           # an empty request: noted, no crash


# ----------------------------------------------------------------------------- the head's per-code ID bias

def test_id_bias_moves_the_id_logits_alone_and_by_exactly_itself(tiny_smol):
    model, _, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    ids = torch.tensor([[5, 9, vocab.token_id(0, 1), vocab.token_id(1, 2)]])
    V = M.base_vocab_size(model)
    with torch.no_grad():
        before = model(ids).logits
        model.lm_head.id_bias.copy_(torch.arange(12, dtype=torch.float32) / 4)
        after = model(ids).logits
    assert torch.equal(after[..., :V], before[..., :V])                          # the text tokens: untouched
    assert torch.equal(after[..., V:], before[..., V:] + torch.arange(12) / 4)   # each ID token: + its bias
    assert not M.ids_indistinguishable(model, vocab)   # equal rows, unequal biases: the IDs no longer tie
    with torch.no_grad():
        model.lm_head.id_bias.copy_(torch.tensor([1.0, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 0]))
    assert M.ids_indistinguishable(model, vocab)       # one bias per level shifts every ID by the same amount


def test_id_bias_is_saved_only_where_trained(tiny_smol, tmp_path):
    from safetensors.torch import load_file

    import lora
    model, _, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    lora.inject_lora(model, r=2)
    M.save_policy(model, vocab, str(tmp_path / "zero"), tiny_smol, "sha")
    # an untrained bias is not written: an SFT adapter's file is what it was before the bias existed
    assert set(load_file(str(tmp_path / "zero" / M.ID_TOKENS_FILE))) == {"embed_tokens.new_rows"}
    bias = torch.linspace(-1, 1, 12)
    with torch.no_grad():
        model.lm_head.id_bias.copy_(bias)
    M.save_policy(model, vocab, str(tmp_path / "bias"), tiny_smol, "sha")
    loaded, _, _ = M.load_policy(tiny_smol, adapter=str(tmp_path / "bias"))
    assert torch.equal(loaded.lm_head.id_bias, bias)
    assert not M.load_policy(tiny_smol, adapter=str(tmp_path / "zero"))[0].lm_head.id_bias.any()


def test_untied_id_rows_train_apart_and_round_trip(tiny_smol, tmp_path):
    """sft.py --untie-id-rows: the head's ID rows are a Parameter of their own, starting where the prompt's start;
    the adapter carries both and loads untied; a tied adapter asked to untie starts the head's rows at its rows."""
    import lora
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--untie-id-rows"])
    model, _, vocab = sft.build_policy(args, {"levels": 3, "codebook_size": 4}, "cpu")
    emb, head = model.get_input_embeddings(), model.lm_head
    assert head.new_rows is not emb.new_rows and torch.equal(head.new_rows, emb.new_rows)
    assert head.weight is emb.weight                                  # the base vocabulary stays tied
    assert {id(p) for p in M.id_parameters(model)} == {id(emb.new_rows), id(head.new_rows)}
    assert all(p.requires_grad for p in M.id_parameters(model))
    # a loss on an answer code reaches the head's row of that code (through the softmax) but not the prompt's row
    # of it, which only a prompt that shows the code reaches
    ids = torch.tensor([[5, vocab.token_id(0, 1), vocab.token_id(1, 2)]])
    model(ids).logits[0, -1, vocab.token_id(2, 3)].backward()
    assert head.new_rows.grad[vocab.token_id(2, 3) - vocab.offset].abs().sum() > 0
    assert emb.new_rows.grad[vocab.token_id(2, 3) - vocab.offset].abs().sum() == 0    # not in the prompt
    assert emb.new_rows.grad[vocab.token_id(0, 1) - vocab.offset].abs().sum() > 0     # in the prompt
    with torch.no_grad():
        emb.new_rows.normal_(generator=torch.Generator().manual_seed(0))
        head.new_rows.normal_(generator=torch.Generator().manual_seed(1))
    M.save_policy(model, vocab, str(tmp_path / "untied"), tiny_smol, "sha")
    loaded, _, _ = M.load_policy(tiny_smol, adapter=str(tmp_path / "untied"))
    assert torch.equal(loaded.get_input_embeddings().new_rows, emb.new_rows)
    assert torch.equal(loaded.lm_head.new_rows, head.new_rows)
    assert loaded.lm_head.new_rows is not loaded.get_input_embeddings().new_rows
    # a tied adapter, untied on loading (sft.py --init-adapter ... --untie-id-rows): both start at its rows
    tied, _, tv = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    lora.inject_lora(tied, r=2)
    with torch.no_grad():
        tied.get_input_embeddings().new_rows.normal_(generator=torch.Generator().manual_seed(2))
    M.save_policy(tied, tv, str(tmp_path / "tied"), tiny_smol, "sha")
    again, _, _ = M.load_policy(tiny_smol, adapter=str(tmp_path / "tied"), untie=True)
    assert again.lm_head.new_rows is not again.get_input_embeddings().new_rows
    assert torch.equal(again.lm_head.new_rows, tied.get_input_embeddings().new_rows)
    assert torch.equal(again.get_input_embeddings().new_rows, tied.get_input_embeddings().new_rows)
    plain = M.load_policy(tiny_smol, adapter=str(tmp_path / "tied"))[0]      # not asked: it stays tied
    assert plain.lm_head.new_rows is plain.get_input_embeddings().new_rows
