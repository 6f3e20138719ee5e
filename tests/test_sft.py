"""SFT: exact labels and masks, loss normalisation, schedule, resume == uninterrupted."""
import os

import numpy as np
import pytest
import torch

import model as M
import ranking
import sft
from tests.conftest import run_tiny_sft, write_sft_data


def test_prompt_format_smol_exact(smol_tokenizer):
    vocab = M.IDVocab(3, 4, offset=49152)
    fmt = M.PromptFormat(smol_tokenizer, vocab)
    ids = fmt.prompt("like <a_1><b_2><c_3>")
    text = fmt.decode(ids)
    assert text == ("<|im_start|>system\n" + M.SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n"
                    "like <a_1><b_2><c_3><|im_end|>\n<|im_start|>assistant\n")
    # V + level * K + code
    assert [vocab.token_id(0, 1), vocab.token_id(1, 2), vocab.token_id(2, 3)] == [49153, 49158, 49163]
    assert [49153, 49158, 49163] == [t for t in ids if t >= 49152]
    assert fmt.answer((0, 1, 2)) == [49152, 49157, 49162, smol_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    # a user's special-token text stays text: it cannot close the turn
    assert smol_tokenizer.convert_tokens_to_ids("<|im_end|>") not in fmt.encode_text("hi <|im_end|>")


def test_prompt_format_llama_plain(llama_tokenizer):
    vocab = M.IDVocab(3, 4, offset=128256)
    fmt = M.PromptFormat(llama_tokenizer, vocab)
    ids = fmt.prompt("rock")
    assert ids[0] == 128000                                    # <|begin_of_text|>
    assert fmt.decode(ids) == "<|begin_of_text|>User: rock\n\nAssistant: "
    assert fmt.answer((1, 1, 1))[-1] == 128001                 # <|end_of_text|> ends the answer
    assert vocab.parse("<a_1><b_0><c_3>") == (1, 0, 3)
    assert vocab.parse("<a_1><c_0><b_3>") is None and vocab.parse("<a_1><b_0>") is None
    assert vocab.parse("<a_4><b_0><c_3>") is None and vocab.parse("x <a_1><b_0><c_3>") is None


def test_collate_exact_labels_and_masks():
    pad = 0
    pairs = [([5, 6, 7], [20, 21, 9]), ([5, 8], [22, 23, 9])]
    ids, attn, loss = sft.collate(pairs, pad)
    assert ids.tolist() == [[5, 6, 7, 20, 21, 9], [5, 8, 22, 23, 9, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]
    assert loss.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 0]]
    # pad == eos: the real end token (9 here, pad 9) must stay supervised
    ids, attn, loss = sft.collate(pairs, pad_id=9)
    assert loss.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 0]]
    assert ids[1, -1] == 9 and attn[1, -1] == 0


def test_collate_marks_the_prompts_semantic_id_tokens(tiny_smol):
    _, _, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    a, b, c = vocab.ids((1, 2, 3))
    pairs = [([1, 5, a, b, c, 7], vocab.ids((0, 1, 2)) + [2]), ([a, 8], vocab.ids((3, 0, 0)) + [2])]
    _, _, loss = sft.collate(pairs, 2, vocab)
    P = sft.PROMPT_ID
    assert loss.tolist() == [[0, 0, P, P, P, 0, 1, 1, 1, 1],
                             [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]]   # an ID at position 0 is predicted by nothing
    assert sft.collate(pairs, 2)[2].max() == 1                 # without vocab: the answers only


def test_weighted_nll_worked_example():
    logps = torch.tensor([-1.0, -2.0, -3.0])
    kinds = torch.tensor([1, sft.PROMPT_ID, 1])
    assert sft.weighted_nll(logps, kinds, 0.5, 2).item() == pytest.approx(2.5)   # (1 + 3 + 0.5 * 2) / 2
    assert sft.weighted_nll(logps, kinds, 0.0, 2).item() == pytest.approx(2.0)   # answers only: (1 + 3) / 2
    assert sft.weighted_nll(logps, kinds, 1.0, 4).item() == pytest.approx(1.5)   # every token: 6 / 4


def two_prompts_policy(tiny_smol):
    """A policy whose LoRA B is random (so the adapter changes the logits) and two pairs: a next-track prompt with
    three Semantic-ID tokens, and a request without any."""
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol])
    model, tok, vocab = sft.build_policy(args, {"levels": 3, "codebook_size": 4}, "cpu")
    with torch.no_grad():
        for _, m in __import__("lora").lora_layers(model):
            m.lora_B.weight.normal_(std=0.1)
    fmt = M.PromptFormat(tok, vocab)
    pairs = [(fmt.prompt("more like (rock) <a_1><b_2><c_3>"), fmt.answer((1, 2, 0))),
             (fmt.prompt("play jazz"), fmt.answer((2, 0, 1)))]
    return model, fmt, vocab, pairs


def test_prompt_id_loss_equals_a_full_forward(tiny_smol):
    """sft_loss with the prompt's IDs weighted = the hand-summed log-probs of one plain forward, with and
    without the shared template opening."""
    model, fmt, vocab, pairs = two_prompts_policy(tiny_smol)
    ids, attn, _ = sft.collate(pairs, 2)
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
    n0 = len(pairs[0][0])
    answer = sum(full[i, t - 1, ids[i, t]] for i, (p, a) in enumerate(pairs) for t in range(len(p), len(p) + len(a)))
    prompt_ids = sum(full[0, t - 1, ids[0, t]] for t in range(n0) if vocab.is_id_token(ids[0, t].item()))
    assert sum(vocab.is_id_token(t) for t in pairs[0][0]) == 3
    expected = -(answer + 0.3 * prompt_ids) / 8
    with torch.no_grad():
        for shared in (0, len(fmt.prefix)):
            got = sft.sft_loss(model, pairs, 2, 8, "cpu", shared_prefix=shared, vocab=vocab, prompt_id_weight=0.3)
            assert got.item() == pytest.approx(expected.item(), abs=1e-5)
        plain = sft.sft_loss(model, pairs, 2, 8, "cpu", vocab=vocab, prompt_id_weight=0.0)
        assert plain.item() == pytest.approx((-answer / 8).item(), abs=1e-5)


def test_answer_logps_only_answer_positions(tiny_smol):
    model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    pairs = [([1, 5, 6, 7], vocab.ids((0, 1, 2)) + [2]), ([1, 8], vocab.ids((3, 0, 0)) + [2])]
    ids, attn, loss = sft.collate(pairs, 2)
    logps, row = sft.answer_logps(model, ids, attn, loss)
    assert row.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
    expected = [full[0, t - 1, ids[0, t]] for t in range(4, 8)] + [full[1, t - 1, ids[1, t]] for t in range(2, 6)]
    assert torch.allclose(logps, torch.stack(expected), atol=1e-5)
    # alone or padded in a batch: the same log-probs
    alone, _ = sft.answer_logps(model, *sft.collate(pairs[1:], 2))
    assert torch.allclose(alone, logps[4:], atol=1e-5)


def test_micro_batching_does_not_change_gradient(tiny_smol):
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--lora-dropout", "0"])
    model, tok, vocab = sft.build_policy(args, {"levels": 3, "codebook_size": 4}, "cpu")
    fmt = M.PromptFormat(tok, vocab)
    pairs = [(fmt.prompt(p), fmt.answer(c)) for p, c in
             [("rock", (0, 1, 2)), ("a much longer request for jazz", (1, 1, 1)), ("metal", (2, 0, 3))]]
    n_tok = sum(len(a) for _, a in pairs)

    def grads(chunks):
        model.zero_grad()
        for ch in chunks:
            sft.sft_loss(model, ch, 2, n_tok, "cpu").backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    with torch.no_grad():
        for _, m in __import__("lora").lora_layers(model):
            m.lora_B.weight.normal_(std=0.1)
    assert torch.allclose(grads([pairs]), grads([pairs[:1], pairs[1:]]), atol=1e-6)


def test_shared_prefix_equals_full_forward(tiny_smol):
    """The template opening computed once per batch: same log-probs and gradients as per example."""
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--lora-dropout", "0"])
    model, tok, vocab = sft.build_policy(args, {"levels": 3, "codebook_size": 4}, "cpu")
    with torch.no_grad():
        for _, m in __import__("lora").lora_layers(model):
            m.lora_B.weight.normal_(std=0.1)
    fmt = M.PromptFormat(tok, vocab)
    pairs = [(fmt.prompt(p), fmt.answer(c)) for p, c in
             [("rock", (0, 1, 2)), ("a much longer request for jazz <a_1><b_1><c_1>", (1, 1, 1))]]
    P = len(fmt.prefix)
    assert P > 0 and all(p[:P] == fmt.prefix for p, _ in pairs)

    def run(prefix):
        model.zero_grad()
        loss = sft.sft_loss(model, pairs, 2, 8, "cpu", shared_prefix=prefix)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    (l0, g0), (l1, g1) = run(0), run(P)
    assert torch.allclose(l0, l1, atol=1e-6) and torch.allclose(g0, g1, atol=1e-6)


def test_grouped_loss_equals_the_expanded_examples(tiny_smol):
    """A prompt run once for its k answers: the loss and gradients of the k examples each with that prompt, the
    prompt's Semantic-ID tokens counted k times (prompt_id_weight), left padding included."""
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--lora-dropout", "0"])
    model, tok, vocab = sft.build_policy(args, {"levels": 3, "codebook_size": 4}, "cpu")
    with torch.no_grad():
        for _, m in __import__("lora").lora_layers(model):
            m.lora_B.weight.normal_(std=0.1)
        for p in M.id_parameters(model):
            p.normal_(std=0.1)
    fmt = M.PromptFormat(tok, vocab)
    chunks = [(fmt.prompt("More like (rock) <a_1><b_2><c_3>, please"), [fmt.answer((0, 1, 2)), fmt.answer((1, 1, 1)),
                                                                        fmt.answer((0, 1, 2))]),
              (fmt.prompt("jazz"), [fmt.answer((2, 0, 3))]),
              (fmt.prompt("<a_3><b_0><c_0> and more like it"), [fmt.answer((3, 3, 3)), fmt.answer((2, 2, 1))])]
    expanded = [(p, a) for p, answers in chunks for a in answers]
    n_tok = sum(len(a) for _, a in expanded)

    def run(fn, weight):
        model.zero_grad()
        loss = fn(weight)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    # the chat opening run once (shared_prefix) or with every prompt; a prompt whose own text opens with an ID
    for w, prefix in ((0.0, 0), (0.7, 0), (0.7, len(fmt.prefix))):
        l0, g0 = run(lambda w: sft.sft_loss(model, expanded, 2, n_tok, "cpu", vocab=vocab, prompt_id_weight=w), w)
        l1, g1 = run(lambda w: sft.grouped_loss(model, chunks, 2, n_tok, "cpu", vocab=vocab, prompt_id_weight=w,
                                                shared_prefix=prefix), w)
        assert torch.allclose(l0, l1, atol=1e-5) and torch.allclose(g0, g1, atol=1e-5)


def test_prompt_groups_and_chunk_schedule_by_hand(tiny_smol):
    _, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    fmt = M.PromptFormat(tok, vocab)
    rows = [("next_track", "More like (rock) <a_1><b_2><c_3>"), ("attributes", "rock music"),
            ("next_track", "Something like (rock) <a_1><b_2><c_3>"), ("next_track", "More like (jazz) <a_0><b_0><c_0>"),
            ("attributes", "rock music"), ("next_track", "Play me songs similar to (rock) <a_1><b_2><c_3>")]
    examples = [{"task": t, "prompt": p, "answer": "<a_0><b_0><c_1>"} for t, p in rows]
    pairs = sft.tokenize_examples(examples, fmt)
    # one group per context's IDs, whatever the phrasing; an attribute request is its own group, even repeated
    groups = sft.prompt_groups(examples, pairs, vocab)
    assert groups == [[0, 2, 5], [1], [3], [4]]
    steps = sft.chunk_schedule(groups, steps=6, prompts_per_step=2, per_prompt=2, seed=0)
    assert len(steps) == 6 and all(len(s) == 2 for s in steps)
    # an epoch: 5 chunks ([0, 2, 5] cut in 2 + 1, and three singletons), 2 steps of 2 and one chunk dropped
    epoch = [list(c) for s in steps[:2] for c in s]
    assert all(len(c) <= 2 for c in epoch) and len({i for c in epoch for i in c}) == sum(len(c) for c in epoch)
    assert all(set(c) <= {0, 2, 5} for c in epoch if len(c) == 2)
    again = sft.chunk_schedule(groups, steps=6, prompts_per_step=2, per_prompt=2, seed=0)
    assert all(np.array_equal(a, b) for s, t in zip(steps, again) for a, b in zip(s, t))
    # per_prompt 3: the context's three examples are one chunk
    three = sft.chunk_schedule(groups, steps=2, prompts_per_step=4, per_prompt=3, seed=1)
    assert sorted(sorted(c.tolist()) for c in three[0]) == [[0, 2, 5], [1], [3], [4]]
    with pytest.raises(M.UserError, match="fewer chunks than one step"):
        sft.chunk_schedule(groups, steps=1, prompts_per_step=6, per_prompt=3, seed=0)


def test_tiny_model_overfits_one_batch(tiny_smol):
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--lora-dropout", "0"])
    torch.manual_seed(0)
    model, tok, vocab = sft.build_policy(args, {"levels": 3, "codebook_size": 4}, "cpu")
    fmt = M.PromptFormat(tok, vocab)
    pairs = [(fmt.prompt("rock"), fmt.answer((0, 1, 2))), (fmt.prompt("jazz"), fmt.answer((3, 0, 1))),
             (fmt.prompt("metal"), fmt.answer((2, 2, 3)))]
    opt = sft.make_optimizer(model, 3e-3, 3e-2)
    n_tok = sum(len(a) for _, a in pairs)
    first = sft.sft_loss(model, pairs, 2, n_tok, "cpu").item()
    for _ in range(60):
        sft.sft_loss(model, pairs, 2, n_tok, "cpu").backward()
        opt.step()
        opt.zero_grad()
    ids, attn, loss_mask = sft.collate(pairs, 2)
    with torch.no_grad():
        logps, _ = sft.answer_logps(model, ids, attn, loss_mask)
    id_nll = -logps.view(3, 4)[:, :3].mean().item()   # (3 answers, 3 ID tokens + end)
    # Only the ID tokens can be memorised here: the end token's row is frozen and, behind the
    # frozen final RMSNorm of a 32-wide random model, its logit cannot rise above ~0.6.
    assert first > 5 and id_nll < 0.1
    assert sft.evaluate(model, pairs, 2, vocab, "cpu", 4)["val/id_accuracy"] == 1.0


def test_lr_schedule():
    assert sft.lr_at(0, 100, 10) == pytest.approx(0.1)
    assert sft.lr_at(9, 100, 10) == pytest.approx(1.0)
    assert sft.lr_at(10, 100, 10) == pytest.approx(1.0)
    assert sft.lr_at(55, 100, 10) == pytest.approx(0.1 + 0.9 * 0.5)   # half way: cos(pi/2) = 0
    assert sft.lr_at(100, 100, 10) == pytest.approx(0.1)


def test_batch_schedule_deterministic_and_bucketed():
    lengths = list(range(40))
    a = sft.batch_schedule(lengths, 12, 4, seed=1, bucket=2)
    assert a.shape == (12, 4) and np.array_equal(a, sft.batch_schedule(lengths, 12, 4, seed=1, bucket=2))
    assert sorted(a[:10].flatten().tolist()) == list(range(40))        # one epoch = each example once
    for b in a:                                                         # sorted within each batch
        assert list(b) == sorted(b)


def test_sft_bad_data_is_one_line_error(tiny_smol, tmp_path):
    data = write_sft_data(tmp_path / "data")
    with open(os.path.join(data, "train.jsonl"), "a") as f:
        f.write('{"prompt": "x", "answer": "<a_9><b_0><c_0>"}\n')
    with pytest.raises(M.UserError, match=r"train.jsonl, line 25: answer '<a_9><b_0><c_0>' is not a Semantic ID"):
        run_tiny_sft(data, str(tmp_path / "out"), tiny_smol)


def test_llama32_path_trains_and_decodes(tiny_llama, tmp_path):
    """The real Llama-3.2 base tokenizer (no chat template, 128,256-row vocabulary) through the same code."""
    data = write_sft_data(tmp_path / "data")
    sft.main(["--data", data, "--out", str(tmp_path / "out"), "--model", tiny_llama, "--steps", "2",
              "--batch-size", "4", "--micro-batch-size", "4", "--eval-every", "2", "--lora-r", "4"])
    model, tok, vocab = M.load_policy(tiny_llama, adapter=str(tmp_path / "out" / "adapter"), id_table_sha="test")
    assert vocab.offset == 128256 and model.lm_head.new_rows is model.model.embed_tokens.new_rows
    fmt = M.PromptFormat(tok, vocab)
    assert fmt.end_id == 128001 and fmt.prefix[0] == 128000
    trie = ranking.IDTrie([(0, 1, 2), (1, 2, 3), (3, 3, 3)], 3)
    res = ranking.beam_search(model, [fmt.prompt("I need music for a rock playlist")], vocab, 3, trie=trie,
                              pad_id=M.pad_id_of(tok))[0]
    assert sorted(tuple(vocab.level_code(t)[1] for t in toks) for toks, _ in res) == sorted(trie.valid)


def test_micro_batch_defaults_to_the_batch():
    args = sft.parse_args(["--data", "d", "--out", "o", "--batch-size", "8"])
    assert args.micro_batch_size == 8                                     # was 16: "--batch-size 8" failed
    assert sft.parse_args(["--data", "d", "--out", "o", "--batch-size", "64"]).micro_batch_size == 16
    with pytest.raises(SystemExit):
        sft.parse_args(["--data", "d", "--out", "o", "--batch-size", "8", "--micro-batch-size", "3"])
    with pytest.raises(SystemExit):
        sft.parse_args(["--data", "d", "--out", "o", "--answers-per-prompt", "0"])


def test_no_finite_validation_is_one_clear_error():
    best = {"val/loss": float("inf"), "step": -1, "state": None}       # every validation loss was NaN
    with pytest.raises(M.UserError, match="no finite validation loss"):
        sft.restore_best(torch.nn.Linear(2, 2), best)


def test_checkpoint_rng_is_restored_on_the_cpu_whatever_the_device(tmp_path):
    """The saved RNG state must come back as a CPU ByteTensor: map_location=device broke a CUDA resume."""
    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(lin.parameters())
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    sft.save_checkpoint(tmp_path / "ck.pt", lin, opt, 3, {"state": None}, [], "fp")
    ck = torch.load(tmp_path / "ck.pt", weights_only=False)
    assert "cuda_rng" in ck                                               # saved too (None without a GPU)
    torch.manual_seed(0)
    step, _, _ = sft.load_checkpoint(tmp_path / "ck.pt", lin, opt, torch.device("meta"))
    assert step == 3 and torch.equal(torch.rand(3), expected)


def test_id_rows_from_descriptions_by_hand():
    """Each code's row is the mean over its tracks of the mean embedding of the track's words; unused codes and
    wordless tracks take the mean of all rows (the neutral init)."""
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0], [3.0, 6.0]])       # (V=4, H=2); mean row (2, 3)
    track_tokens = [[0], [1, 2], []]                                          # A, B, C (no words)
    codes = np.array([[0, 1], [0, 0], [1, 1]])                                # L=2 levels, K=2 codes
    rows = M.id_rows_from_descriptions(w, track_tokens, codes, codebook_size=2)
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 3.0]), torch.tensor([2.0, 3.0])   # B: (w1 + w2) / 2
    expected = torch.stack([(a + b) / 2,    # level 0, code 0: A and B
                            c,              # level 0, code 1: C (no words: the mean row)
                            b,              # level 1, code 0: B
                            (a + c) / 2])   # level 1, code 1: A and C
    assert torch.equal(rows, expected)
    rows = M.id_rows_from_descriptions(w, [[0]], np.array([[1, 0]]), codebook_size=3)   # codes no track uses
    assert torch.equal(rows[0], torch.tensor([2.0, 3.0])) and torch.equal(rows[1], torch.tensor([1.0, 0.0]))


def test_id_init_descriptions_sets_the_rows(tmp_path, tiny_smol):
    """sft.py --id-init descriptions: the ID rows start at the words of their tracks (genre and attribute
    phrases, tasks.track_words); mean (the default) keeps them identical; a track the catalogue lacks: one line."""
    import formats
    import tasks
    from common import UserError
    from tests.conftest import tiny_catalog
    cat = tiny_catalog(n=3)
    cat.genres = [["rock"], ["jazz"], ["rock"]]
    cat.features[:, formats.FEATURES.index("tempo")] = 110.0                  # neither fast nor slow
    cat.features[0, formats.FEATURES.index("energy")] = 0.9
    assert [tasks.track_words(cat, r) for r in range(3)] == ["rock high-energy", "jazz", "rock"]
    formats.write_catalog(cat, tmp_path / "catalog.csv")
    codes = np.array([[0, 1, 2], [1, 0, 0], [0, 2, 3]])
    formats.write_semantic_ids(tmp_path / "ids.tsv", cat.track_id, codes)
    meta = {"levels": 3, "codebook_size": 4, "catalog": str(tmp_path / "catalog.csv"),
            "semantic_ids": str(tmp_path / "ids.tsv")}
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--id-init", "descriptions"])
    model, tok, vocab = sft.build_policy(args, meta, "cpu", id_init=args.id_init)
    emb = model.get_input_embeddings()
    words = tok([" rock high-energy", " jazz", " rock"], add_special_tokens=False)["input_ids"]
    assert torch.equal(emb.new_rows.detach(), M.id_rows_from_descriptions(emb.weight, words, codes, 4))
    rock = emb.weight[words[2]].float().mean(0)
    assert torch.allclose(emb.new_rows[vocab.token_id(0, 0) - vocab.offset], (emb.weight[words[0]].mean(0) + rock) / 2)
    assert model.lm_head.new_rows is emb.new_rows                    # tied: the head starts there too
    plain, _, _ = sft.build_policy(args, meta, "cpu")                 # id_init="mean"
    assert torch.equal(plain.get_input_embeddings().new_rows[0], plain.get_input_embeddings().new_rows[-1])
    formats.write_semantic_ids(tmp_path / "ids.tsv", ["t0", "t1", "gone"], codes)
    with pytest.raises(UserError, match=r"ids.tsv: track gone is not in .*catalog.csv \(1 such\)"):
        sft.build_policy(args, meta, "cpu", id_init="descriptions")


def test_id_rows_from_codebooks_by_hand():
    """Each code's row is the mean embedding plus its codebook vector, rotated and scaled to the rows' spread."""
    w = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]]) + torch.tensor([1.0, 1.0])  # mean (1, 1)
    rows = M.id_rows_from_codebooks(w, torch.tensor([[[1.0], [-1.0]]]))     # L=1, K=2, D=1; spread 2, norm 1
    assert torch.allclose(rows.sum(0) / 2, torch.tensor([1.0, 1.0]))      # mean +- 2 q
    assert torch.allclose((rows - torch.tensor([1.0, 1.0])).norm(dim=1), torch.tensor([2.0, 2.0]))
    # distances between the codes of one level are the codebook's, times that level's scale
    g = torch.Generator().manual_seed(0)
    w, books = torch.randn(10, 8, generator=g), torch.randn(2, 5, 3, generator=g)
    rows = M.id_rows_from_codebooks(w, books).reshape(2, 5, 8)
    spread = (w - w.mean(0)).norm(dim=1).median()
    for lvl in range(2):
        s = spread / books[lvl].norm(dim=1).mean()
        assert torch.allclose(torch.cdist(rows[lvl], rows[lvl]), s * torch.cdist(books[lvl], books[lvl]), atol=1e-5)
    assert torch.equal(rows.reshape(10, 8), M.id_rows_from_codebooks(w, books))          # seeded: the same rows
    with pytest.raises(ValueError, match="cannot be rotated"):
        M.id_rows_from_codebooks(torch.randn(4, 2), torch.randn(1, 2, 3))


def test_id_init_codebook_sets_the_rows(tmp_path, tiny_smol, monkeypatch):
    """sft.py --id-init codebook: the ID rows start at model.id_rows_from_codebooks of the run's RVQ codebooks."""
    books = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1))
    seen = []
    monkeypatch.setattr(sft.rvq, "load_rvq", lambda folder: seen.append(folder) or {"codebooks": books})
    meta = {"levels": 3, "codebook_size": 4, "rvq": str(tmp_path / "rvq")}
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--id-init", "codebook", "--seed", "3"])
    model, _, _ = sft.build_policy(args, meta, "cpu", id_init=args.id_init)
    emb = model.get_input_embeddings()
    assert seen == [str(tmp_path / "rvq")]
    assert torch.equal(emb.new_rows.detach(), M.id_rows_from_codebooks(emb.weight, books, seed=3).to(emb.weight.dtype))
    assert model.lm_head.new_rows is emb.new_rows                    # tied: the head starts there too


def test_prefix_targets_worked_example():
    got = sft.prefix_targets((1, 5), [(1, 5), (1, 6), (2, 7), (1, 5)])
    assert got[0][0].tolist() == [1, 2] and np.allclose(got[0][1], [0.75, 0.25])
    assert got[1][0].tolist() == [5, 6] and np.allclose(got[1][1], [2 / 3, 1 / 3])   # among the answers after 1
    weighted = sft.prefix_targets((1, 5), [(1, 5), (1, 6), (2, 7)], weights=[1.0, 3.0, 4.0])
    assert np.allclose(weighted[0][1], [0.5, 0.5]) and np.allclose(weighted[1][1], [0.25, 0.75])
    alone = sft.prefix_targets((2, 7), [(1, 5), (1, 6), (2, 7), (1, 5)])
    assert alone[1][0].tolist() == [7] and alone[1][1].tolist() == [1.0]           # 2 is followed by 7 alone


def test_expected_logps_worked_example():
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]))
    ids = torch.tensor([[0, 1], [2, 0]])
    probs = torch.tensor([[0.75, 0.25], [1.0, 0.0]])                  # the second row one-hot: its plain log-prob
    got = sft.expected_logps(logps, ids, probs)
    assert torch.allclose(got, torch.tensor([0.75 * np.log(0.5) + 0.25 * np.log(0.25), np.log(0.7)]).float())


def test_group_targets_of_next_tracks_requests_and_names(tiny_smol):
    _, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    fmt = M.PromptFormat(tok, vocab)
    ex = [{"prompt": "More like (rock) <a_0><b_0><c_0>", "answer": "<a_1><b_2><c_3>", "task": "next_track"},
          {"prompt": "Something like (rock) <a_0><b_0><c_0>", "answer": "<a_1><b_0><c_0>", "task": "next_track"},
          {"prompt": "More like (jazz) <a_2><b_0><c_0>", "answer": "<a_3><b_3><c_3>", "task": "next_track"},
          {"prompt": "Play something rock", "answer": "<a_1><b_2><c_3>", "task": "attributes",
           "attributes": [["genre", "rock"]]},
          {"prompt": "Play A - B", "answer": "<a_1><b_0><c_0>", "task": "grounding"}]
    pairs = sft.tokenize_examples(ex, fmt)
    rock = np.array([vocab.ids(c) for c in [(1, 2, 3), (1, 2, 0), (0, 1, 1)]])
    soft = sft.group_targets(ex, pairs, vocab, {(("genre", "rock"),): rock})
    a, b, c = (vocab.token_id(level, code) for level, code in zip(range(3), (1, 2, 3)))
    # the two prompts after <a_0><b_0><c_0> (other phrasings) share their answers: a_1 both, then b_2 or b_0
    assert soft[0][0][0].tolist() == [a] and soft[0][0][1].tolist() == [1.0]
    assert soft[0][1][0].tolist() == [vocab.token_id(1, 0), b] and np.allclose(soft[0][1][1], [0.5, 0.5])
    assert soft[0][2][0].tolist() == [c]                              # after a_1 b_2: c_3 alone
    assert soft[2] is None and soft[4] is None                        # a context seen once; a track by name
    # the request: every rock track, level by level along the answer's prefix: a_1 2 of 3, then b_2 both, c_0 or c_3
    assert soft[3][0][0].tolist() == [vocab.token_id(0, 0), a] and np.allclose(soft[3][0][1], [1 / 3, 2 / 3])
    assert soft[3][1][0].tolist() == [b] and np.allclose(soft[3][2][1], [0.5, 0.5])
    with pytest.raises(sft.UserError, match="not in attribute_answers.jsonl"):
        sft.group_targets(ex, pairs, vocab, {})
    # with co-listened tracks (weights: counts) beside the next plays: the context <a_0><b_0><c_0> has answers
    # (1,2,3) x 1 + 2, (1,0,0) x 1, (2,2,2) x 4 of 8 -> a_1 4/8, a_2 4/8; after a_1: b_0 1/4, b_2 3/4
    ctx = tuple(vocab.ids((0, 0, 0)))
    near = {ctx: (np.array([vocab.ids(c) for c in [(1, 2, 3), (2, 2, 2)]]), np.array([2.0, 4.0]))}
    soft = sft.group_targets(ex, pairs, vocab, {(("genre", "rock"),): rock}, near)
    assert soft[0][0][0].tolist() == [a, vocab.token_id(0, 2)] and np.allclose(soft[0][0][1], [0.5, 0.5])
    assert soft[0][1][0].tolist() == [vocab.token_id(1, 0), b] and np.allclose(soft[0][1][1], [0.25, 0.75])
    assert soft[1][1][0].tolist() == [vocab.token_id(1, 0), b] and soft[2] is None   # no neighbours: as before
    # a teacher's distribution (weights summing to 1) at near_weight 1 weighs as much as the group's two plays:
    # (1,2,3) x 1 + 0.25 * 2, (1,0,0) x 1, (2,2,2) x 0.75 * 2 of 4 -> a_1 2.5/4, a_2 1.5/4; after a_1: b_0 0.4, b_2 0.6
    teacher = {ctx: (np.array([vocab.ids(c) for c in [(1, 2, 3), (2, 2, 2)]]), np.array([0.25, 0.75]))}
    soft = sft.group_targets(ex, pairs, vocab, {(("genre", "rock"),): rock}, teacher, near_weight=1.0)
    assert np.allclose(soft[0][0][1], [2.5 / 4, 1.5 / 4]) and np.allclose(soft[0][1][1], [0.4, 0.6])
    soft = sft.group_targets(ex, pairs, vocab, {(("genre", "rock"),): rock}, teacher, near_weight=0.5)
    assert np.allclose(soft[0][0][1], [2.25 / 3, 0.75 / 3])          # half the mass: 0.5 of the plays' 2


def test_sft_loss_with_group_targets_is_the_cross_entropy(tiny_smol):
    """sft_loss with soft targets = -(sum over the answer's ID tokens of sum_v q(v) log p(v) + the end token's log p)
    / n by hand from one full forward; one-hot soft targets give the plain loss; the shared opening changes nothing."""
    model, fmt, vocab, pairs = two_prompts_policy(tiny_smol)
    t = vocab.token_id
    soft = [[(np.array([t(0, 1), t(0, 3)]), np.array([0.6, 0.4])), (np.array([t(1, 2)]), np.array([1.0])),
             (np.array([t(2, 0), t(2, 2)]), np.array([0.5, 0.5]))], None]
    ids, attn, _ = sft.collate(pairs, 2)
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
    n0 = len(pairs[0][0])
    total = 0.0
    for j, (v, q) in enumerate(soft[0]):
        total += sum(qq * full[0, n0 + j - 1, vv] for vv, qq in zip(v.tolist(), q.tolist()))
    total += full[0, n0 + 2, ids[0, n0 + 3]]                                      # the end token, one-hot
    n1 = len(pairs[1][0])
    total += sum(full[1, t_ - 1, ids[1, t_]] for t_ in range(n1, n1 + 4))        # the second example, one-hot
    prompt_ids = sum(full[0, t_ - 1, ids[0, t_]] for t_ in range(n0) if vocab.is_id_token(ids[0, t_].item()))
    with torch.no_grad():
        for shared in (0, len(fmt.prefix)):
            got = sft.sft_loss(model, pairs, 2, 8, "cpu", shared_prefix=shared, vocab=vocab, prompt_id_weight=0.5,
                               soft=soft)
            assert got.item() == pytest.approx((-(total + 0.5 * prompt_ids) / 8).item(), abs=1e-5)
        one_hot = [[(np.array([tok_]), np.array([1.0])) for tok_ in pairs[0][1][:3]], None]
        assert sft.sft_loss(model, pairs, 2, 8, "cpu", soft=one_hot).item() == pytest.approx(
            sft.sft_loss(model, pairs, 2, 8, "cpu").item(), abs=1e-6)


def test_sft_trains_toward_group_targets(tmp_path, tiny_smol):
    """sft.py --answer-targets group end to end: it needs data.py's attribute_answers.jsonl (one line when it is
    missing) and trains; its first step's loss is the one-hot run's (the new ID rows start equal, so any target
    distribution over ID tokens costs the same), and the runs part after it."""
    import json
    data = write_sft_data(tmp_path / "data")
    rows = [json.loads(l) for l in open(os.path.join(data, "train.jsonl"))]
    genres = {"rock": 0, "jazz": 1, "metal": 2}
    for r in rows:
        r["attributes"] = [["genre", r["prompt"].split()[-2]]]
    with open(os.path.join(data, "train.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with pytest.raises(sft.UserError, match="attribute_answers.jsonl"):
        run_tiny_sft(data, str(tmp_path / "missing"), tiny_smol, ["--answer-targets", "group"])
    with open(os.path.join(data, "attribute_answers.jsonl"), "w") as f:   # every ID of the genre's first code
        for g, a in genres.items():
            answers = [f"<a_{a}><b_{b}><c_{c}>" for b in range(4) for c in range(4)]
            f.write(json.dumps({"attributes": [["genre", g]], "answers": answers}) + "\n")
    for targets in ("example", "group"):
        run_tiny_sft(data, str(tmp_path / targets), tiny_smol, ["--answer-targets", targets])
    logs = {t: [json.loads(l) for l in open(tmp_path / t / "log.jsonl")] for t in ("example", "group")}
    assert [x["step"] for x in logs["group"]] == list(range(1, 7))
    assert all(np.isfinite(x["loss"]) for x in logs["group"])
    # step 1: the new ID rows all start at one vector, so every ID token has the same log-prob at each position and
    # any distribution over ID tokens has the cross-entropy of one of them: the same loss; then they part
    assert logs["group"][0]["loss"] == pytest.approx(logs["example"][0]["loss"], rel=1e-4)
    assert logs["group"][-1]["loss"] != pytest.approx(logs["example"][-1]["loss"], rel=1e-3)


def test_valid_id_logps_worked_example_and_gradient():
    """log of the valid tokens' total probability; its gradient scales the valid tokens up in proportion (their
    ratios kept) and pushes each invalid one down by its probability."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).requires_grad_(True)
    got = sft.valid_id_logps(torch.log_softmax(logits, -1), torch.tensor([[0, 2]]), torch.tensor([[True, True]]))
    assert got.item() == pytest.approx(np.log(0.7))
    (-got.sum()).backward()
    # d(-log P_valid)/d logit_v = p_v - [v valid] p_v / P_valid
    assert torch.allclose(logits.grad, torch.tensor([[0.5 - 0.5 / 0.7, 0.3, 0.2 - 0.2 / 0.7]]))
    padded = sft.valid_id_logps(torch.log(torch.tensor([[0.5, 0.3, 0.2]])), torch.tensor([[1, 0]]),
                                torch.tensor([[True, False]]))
    assert padded.item() == pytest.approx(np.log(0.3))             # padding adds nothing


def test_validity_table_by_hand():
    """The docstring's example, after a row's prompt IDs (PROMPT_ID) and beside a second row."""
    vocab = M.IDVocab(2, 4, 10)                                   # level 0: tokens 10-13, level 1: 14-17
    trie = ranking.IDTrie([(0, 1), (0, 3), (2, 0)], 2)
    P = sft.PROMPT_ID
    targets = torch.tensor([12, 14, 10, 17, 99, 12, 14, 99])     # row 0: prompt <a_2><b_0>, answer (0, 3), end
    kinds = torch.tensor([P, P, 1, 1, 1, 1, 1, 1])               # row 1: answer (2, 0), end
    row = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    where, ids, mask = sft.validity_table(targets, kinds, row, vocab, trie)
    assert where.tolist() == [2, 3, 5, 6]                         # the answers' ID tokens, never the ends
    got = [ids[q][mask[q]].tolist() for q in range(4)]
    assert got == [[10, 12], [15, 17], [10, 12], [14]]           # codes {0, 2}; after 0: {1, 3}; after 2: {0}
    with pytest.raises(sft.UserError, match="not in the catalogue"):
        sft.validity_table(torch.tensor([11, 14, 99]), torch.tensor([1, 1, 1]), torch.tensor([0, 0, 0]), vocab,
                           trie)                                  # (1, 0): no track


def test_sft_loss_validity_term_equals_a_full_forward(tiny_smol):
    """sft_loss with --valid-id-weight = the plain loss - w sum over the answers' ID tokens of log sum_{allowed} p,
    summed by hand from one full forward; the shared opening changes nothing."""
    model, fmt, vocab, pairs = two_prompts_policy(tiny_smol)     # answers (1, 2, 0) and (2, 0, 1)
    catalogue = [(1, 2, 0), (1, 2, 3), (1, 0, 0), (2, 0, 1), (3, 3, 3)]
    trie = ranking.IDTrie(catalogue, 3)
    ids, attn, _ = sft.collate(pairs, 2)
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
    t = vocab.token_id
    allowed = [[[t(0, 1), t(0, 2), t(0, 3)], [t(1, 0), t(1, 2)], [t(2, 0), t(2, 3)]],   # (1, 2, 0)
               [[t(0, 1), t(0, 2), t(0, 3)], [t(1, 0)], [t(2, 1)]]]                      # (2, 0, 1)
    valid = sum(torch.logsumexp(full[i, len(p) + j - 1, allowed[i][j]], 0) for i, (p, _) in enumerate(pairs)
                for j in range(3))
    with torch.no_grad():
        plain = sft.sft_loss(model, pairs, 2, 8, "cpu")
        for shared in (0, len(fmt.prefix)):
            got = sft.sft_loss(model, pairs, 2, 8, "cpu", shared_prefix=shared, vocab=vocab, valid_id_weight=0.5,
                               trie=trie)
            assert got.item() == pytest.approx((plain - 0.5 * valid / 8).item(), abs=1e-5)


def test_sft_trains_with_the_validity_term(tmp_path, tiny_smol):
    """sft.py --valid-id-weight end to end: it reads the catalogue's IDs from meta's semantic_ids, trains, and its
    first loss differs from the plain run's by the term; bad combinations are one line."""
    import json
    data = write_sft_data(tmp_path / "data")
    ids = set()   # the catalogue: the tracks the examples answer, so some codes are not allowed
    for f in ("train.jsonl", "val.jsonl"):
        for l in open(os.path.join(data, f)):
            ids.add(M.IDVocab(3, 4, 0).parse(json.loads(l)["answer"]))
    table = os.path.join(data, "semantic_ids.tsv")
    with open(table, "w") as f:
        f.write("track_id\tcode_0\tcode_1\tcode_2\n")
        f.writelines(f"t{i}\t{a}\t{b}\t{c}\n" for i, (a, b, c) in enumerate(sorted(ids)))
    meta = json.load(open(os.path.join(data, "meta.json")))
    meta["semantic_ids"] = table
    json.dump(meta, open(os.path.join(data, "meta.json"), "w"))
    run_tiny_sft(data, str(tmp_path / "plain"), tiny_smol)
    run_tiny_sft(data, str(tmp_path / "valid"), tiny_smol, ["--valid-id-weight", "1"])
    logs = {n: [json.loads(l) for l in open(tmp_path / n / "log.jsonl")] for n in ("plain", "valid")}
    assert [x["step"] for x in logs["valid"]] == list(range(1, 7))
    assert all(np.isfinite(x["loss"]) for x in logs["valid"])
    # the same first batch: the term adds -log p(an allowed code) > 0 at every answer ID token (the base vocabulary
    # holds mass too), so the first loss is larger
    assert logs["valid"][0]["loss"] > logs["plain"][0]["loss"]
    with pytest.raises(sft.UserError, match="at least 0"):
        run_tiny_sft(data, str(tmp_path / "neg"), tiny_smol, ["--valid-id-weight", "-1"])
    with pytest.raises(sft.UserError, match="answers-per-prompt"):
        run_tiny_sft(data, str(tmp_path / "grouped"), tiny_smol, ["--valid-id-weight", "1",
                                                                  "--answers-per-prompt", "2"])
