"""The head's answer features (sft.py --answer-vectors, model.AnswerFeatures): the tables by hand, the level each
position continues, W = 0 leaving the head as it was, every scorer (training, DPO, beam, exact ranking) reading the
same prefix, and an adapter carrying them."""
import numpy as np
import pytest
import torch

import dpo
import model as M
import ranking
import sft
from tests.conftest import IDS

# four tracks, 3 levels x 4 codes: (0, 1) leads to two tracks, (0, 2) and (3, 0) to one each
CODES = torch.tensor([[0, 1, 2], [0, 1, 3], [0, 2, 0], [3, 0, 1]])
VECTORS = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, -1.0], [5.0, 5.0]])        # (N, D = 2)


def test_tables_hold_each_childs_mean_vector():
    af = M.AnswerFeatures(VECTORS, CODES, codebook_size=4, hidden=3)
    # level 1: prefixes (0,) and (3,); (0,) -> code 1 the mean of tracks 0 and 1, code 2 track 2, codes 0, 3 none
    assert af.keys_1.tolist() == [0, 3 * 5 ** 0]                        # id_key of one code in base K + 1 = 5
    zero = len(af.means_1) - 1
    assert af.means_1[zero].tolist() == [0.0, 0.0]
    kids = af.means_1[af.kids_1[0]]
    assert kids.tolist() == [[0.0, 0.0], [2.0, 1.0], [0.0, -1.0], [0.0, 0.0]]
    assert af.means_1[af.kids_1[1]].tolist() == [[5.0, 5.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    # level 2: the tracks' own vectors; prefix (0, 1) -> codes 2 and 3 tracks 0 and 1
    assert af.keys_2.tolist() == [0 * 5 + 1, 0 * 5 + 2, 3 * 5 + 0]
    assert af.means_2[af.kids_2[0]].tolist() == [[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [3.0, 2.0]]
    assert af.proj.shape == (2, 3, 2) and not af.proj.any()              # W_1, W_2 zero at the start


def test_preceding_tokens_worked_example():
    assert M.preceding_tokens(torch.tensor([[5, 6, 7]]), 2).tolist() == [[[-1, 5], [5, 6], [6, 7]]]


def test_level_and_prefix_read_the_trailing_id_codes():
    af = M.AnswerFeatures(VECTORS, CODES, codebook_size=4, hidden=3)
    off = 100
    a, b, c = (lambda code, l=l: off + 4 * l + code for l in range(3))
    prev = torch.tensor([[-1, 7],            # a text token: level 0
                         [-1, a(0)],         # after <a_0>: level 1, prefix (0)
                         [a(0), b(1)],       # after <a_0><b_1>: level 2, prefix (0, 1)
                         [b(1), c(2)],       # after a whole ID: level 0
                         [7, b(1)],          # <b_1> without its <a_>: level 0
                         [a(3), a(2)]])      # <a_3><a_2>: the last alone counts, level 1 prefix (2)
    level, prefix = af.level_and_prefix(prev, off)
    assert level.tolist() == [0, 1, 2, 0, 0, 1]
    assert prefix.tolist() == [[4, 4], [0, 4], [0, 1], [4, 4], [4, 4], [2, 4]]


def test_forward_is_h_dot_w_xbar_at_the_level_it_continues():
    af = M.AnswerFeatures(VECTORS, CODES, codebook_size=4, hidden=3)
    with torch.no_grad():
        af.proj[0] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])     # W_1 (H 3, D 2)
        af.proj[1] = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, -1.0]])    # W_2
    off = 100
    h = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    prev = torch.tensor([[-1, off + 0], [off + 0, off + 4 + 1], [off + 4 + 1, off + 8 + 2]])
    out = af(h, prev, off)
    assert out.shape == (3, 3, 4)
    # row 0, level 1 after (0,): u = h W_1 = [1 + 3, 2 + 3] = [4, 5]; code 1 reads [2, 1] -> 13, code 2 [0, -1] -> -5
    assert out[0].tolist() == [[0, 0, 0, 0], [0.0, 13.0, -5.0, 0.0], [0, 0, 0, 0]]
    # row 1, level 2 after (0, 1): u = h W_2 = [2, -1]; code 2 track 0 [1, 0] -> 2, code 3 track 1 [3, 2] -> 4
    assert out[1].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0.0, 0.0, 2.0, 4.0]]
    assert not out[2].any()                                             # after a whole ID: nothing


@pytest.fixture(scope="module")
def policies(tiny_smol):
    """A tiny policy with answer features over the conftest IDS (random vectors, random W), and the same without."""
    def make(with_features):
        model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
        torch.manual_seed(0)
        with torch.no_grad():
            model.model.embed_tokens.new_rows.normal_(std=1.0)
        if with_features:
            g = torch.Generator().manual_seed(1)
            af = M.add_answer_features(model, torch.randn(len(IDS), 3, generator=g), torch.tensor(IDS))
            with torch.no_grad():
                af.proj.normal_(std=0.5, generator=g)
        return model, M.PromptFormat(tok, vocab), vocab
    return make(True), make(False)


def forced_score(model, prompt, codes, vocab):
    """One full forward of prompt + the ID; the sum of its L log-probs, the head reading each position's prefix."""
    ids = torch.tensor([prompt + vocab.ids(codes)])
    with torch.no_grad():
        h = model.model(input_ids=ids).last_hidden_state
        logp = torch.log_softmax(M.head_logits(model, h, M.head_prev(model, ids)), -1)[0]
    T = len(prompt)
    return sum(float(logp[T - 1 + l, ids[0, T + l]]) for l in range(vocab.levels))


def test_zero_w_leaves_every_score_as_the_plain_heads(policies):
    (model, fmt, vocab), (plain, _, _) = policies
    trie = ranking.IDTrie(IDS, 3)
    prompt = fmt.prompt("something like <a_1><b_0><c_2>")
    af = model.lm_head.answer_features
    keep = af.proj.detach().clone()
    with torch.no_grad():
        af.proj.zero_()
    try:
        assert torch.equal(ranking.score_all_ids(model, prompt, vocab, trie)[1],
                           ranking.score_all_ids(plain, prompt, vocab, trie)[1])
    finally:
        with torch.no_grad():
            af.proj.copy_(keep)
    assert not torch.allclose(ranking.score_all_ids(model, prompt, vocab, trie)[1],
                              ranking.score_all_ids(plain, prompt, vocab, trie)[1])


def test_every_scorer_reads_the_same_prefix(policies):
    """score_all_ids, exact_top_k, a full-width beam, SFT's teacher-forced log-probs and DPO's answers_logps give
    each ID the score of one forward with the head reading every position's prefix."""
    (model, fmt, vocab), _ = policies
    trie = ranking.IDTrie(IDS, 3)
    prompts = [fmt.prompt("rock"), fmt.prompt("something like <a_1><b_0><c_2>, but a longer prompt")]
    pad = M.pad_id_of(fmt.tokenizer)
    for prompt in prompts:
        codes, scores = ranking.score_all_ids(model, prompt, vocab, trie)
        want = [forced_score(model, prompt, c, vocab) for c in codes]
        assert np.allclose(scores.numpy(), want, atol=1e-4)
        best = ranking.rank_ids(codes, scores, 5)
        beam = ranking.beam_search(model, [prompt], vocab, beam_width=len(IDS), trie=trie, pad_id=pad)[0]
        assert [vocab.parse(fmt.decode(list(t))) for t, _ in beam[:5]] == [c for c, _ in best]
        assert np.allclose([s for _, s in beam[:5]], [s for _, s in best], atol=1e-4)
    exact = ranking.exact_top_k(model, prompts, vocab, trie, 5, pad_id=pad)
    for prompt, got in zip(prompts, exact):
        assert [c for c, _ in got[:5]] == [c for c, _ in ranking.rank_ids(*ranking.score_all_ids(
            model, prompt, vocab, trie), 5)]
    answers = [fmt.answer(c) for c in IDS[:4]]
    with torch.no_grad():
        got = dpo.answers_logps(model, prompts, answers, [0, 1, 1, 0], pad, "cpu")
        ids, attn, loss_mask = sft.collate([(prompts[p], a) for p, a in zip([0, 1, 1, 0], answers)], pad)
        logps, row = sft.answer_logps(model, ids, attn, loss_mask)
        end = []                                                         # the end token after each ID
        for p, a in zip([0, 1, 1, 0], answers):
            seq = torch.tensor([prompts[p] + a[:-1]])
            h = model.model(input_ids=seq).last_hidden_state
            end.append(float(torch.log_softmax(M.head_logits(model, h, M.head_prev(model, seq)), -1)[0, -1, a[-1]]))
    forced = torch.zeros(4).index_add(0, row, logps)
    want = [forced_score(model, prompts[p], c, vocab) + e for p, c, e in zip([0, 1, 1, 0], IDS[:4], end)]
    assert np.allclose(got.numpy(), want, atol=1e-4) and np.allclose(forced.numpy(), want, atol=1e-4)


def test_the_head_refuses_to_score_without_the_prefix(policies):
    (model, _, _), _ = policies
    with pytest.raises(RuntimeError, match="answer features"):
        M.head_logits(model, torch.zeros(1, model.config.hidden_size))


def test_a_loss_trains_w_and_the_adapter_carries_it(tiny_smol, tmp_path):
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--answer-vectors", "--lora-dropout",
                           "0"])
    model, tok, vocab = sft.build_policy(args, {"levels": 3, "codebook_size": 4}, "cpu", track=(VECTORS, CODES))
    fmt = M.PromptFormat(tok, vocab)
    af = model.lm_head.answer_features
    assert af.proj.requires_grad and any(p is af.proj for p in M.track_feature_parameters(model))
    chunks = [(fmt.prompt("more like <a_3><b_0><c_1>"), [fmt.answer((0, 1, 2)), fmt.answer((0, 1, 3))])]
    loss = sft.grouped_loss(model, chunks, 2, 8, "cpu", vocab=vocab, prompt_id_weight=0.5)
    loss.backward()
    # W_1 from the level-1 positions (after <a_0>; the prompt's <a_3>); W_2 from those after <a_0><b_1>, <a_3><b_0>
    assert af.proj.grad[0].abs().sum() > 0 and af.proj.grad[1].abs().sum() > 0
    expanded = [(p, a) for p, answers in chunks for a in answers]
    assert torch.allclose(loss, sft.sft_loss(model, expanded, 2, 8, "cpu", vocab=vocab, prompt_id_weight=0.5),
                          atol=1e-6)
    with torch.no_grad():
        af.proj.normal_(generator=torch.Generator().manual_seed(0))
    M.save_policy(model, vocab, str(tmp_path / "adapter"), tiny_smol, "sha")
    again, _, _ = M.load_policy(tiny_smol, adapter=str(tmp_path / "adapter"))
    assert torch.equal(again.lm_head.answer_features.proj, af.proj.detach())
    trie = ranking.IDTrie(CODES.tolist(), 3)
    prompt = fmt.prompt("rock")
    assert torch.allclose(ranking.score_all_ids(again, prompt, vocab, trie)[1],
                          ranking.score_all_ids(model, prompt, vocab, trie)[1])


def test_init_adapter_keeps_its_answer_features_and_adds_what_is_asked(tiny_smol, tmp_path):
    """--init-adapter from an adapter with answer features and no track token: --track-vectors still adds the
    token (the features' parameters are not the token's), and the features start at the adapter's W."""
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--answer-vectors"])
    meta = {"levels": 3, "codebook_size": 4, "id_table_sha256": "sha"}
    model, _, vocab = sft.build_policy(args, meta, "cpu", track=(VECTORS, CODES))
    with torch.no_grad():
        model.lm_head.answer_features.proj.normal_(generator=torch.Generator().manual_seed(0))
    M.save_policy(model, vocab, str(tmp_path / "adapter"), tiny_smol, "sha")
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--track-vectors", "--answer-vectors"])
    again, _, _ = sft.build_policy(args, meta, "cpu", init_adapter=str(tmp_path / "adapter"), track=(VECTORS, CODES))
    assert again.get_input_embeddings().track_features is not None
    assert torch.equal(again.lm_head.answer_features.proj, model.lm_head.answer_features.proj)
    assert again.lm_head.answer_features.proj.requires_grad
    # both modules built from one (vectors, codes): the adapter still saves (safetensors refuses shared memory)
    M.save_policy(again, vocab, str(tmp_path / "both"), tiny_smol, "sha")
    both, _, _ = M.load_policy(tiny_smol, adapter=str(tmp_path / "both"))
    assert both.get_input_embeddings().track_features is not None and both.lm_head.answer_features is not None


def test_kernel_terms_by_hand_and_zero_at_the_start():
    """--answer-kernel: + beta(p + c) - xbar' S xbar at the level each row continues; at the start (beta, S = 0)
    the same scores as the head without them."""
    af = M.AnswerFeatures(VECTORS, CODES, codebook_size=4, hidden=3, kernel=True)
    plain = M.AnswerFeatures(VECTORS, CODES, codebook_size=4, hidden=3)
    assert [p.shape for p in af.kernel_parameters()] == [(2, 2, 2), (len(af.means_1),), (len(af.means_2),)]
    assert plain.kernel_parameters() == [] and not any(p.any() for p in af.kernel_parameters())
    with torch.no_grad():
        for m in (af, plain):
            m.proj[0] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
            m.proj[1] = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, -1.0]])
    off = 100
    h = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    prev = torch.tensor([[-1, off + 0], [off + 0, off + 4 + 1], [off + 4 + 1, off + 8 + 2]])
    assert torch.equal(af(h, prev, off), plain(h, prev, off))
    with torch.no_grad():
        af.quad[1] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])               # S_2: x' S x = x_0^2
        kids = af.kids_2[0]                                                 # after (0, 1): codes 2, 3 tracks 0, 1
        af.node_bias_2[kids[2]], af.node_bias_2[kids[3]] = 0.5, -1.0
        af.node_bias_2[len(af.means_2) - 1] = -3.0                          # codes that lead to no track
    out = af(h, prev, off)
    # row 1, level 2 after (0, 1): h . W xbar [., ., 2, 4] (test above); code 2, track 0 [1, 0]: 2 + 0.5 - 1;
    # code 3, track 1 [3, 2]: 4 - 1 - 9; codes 0 and 1 lead to no track: -3
    assert out[1].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [-3.0, -3.0, 1.5, -6.0]]
    assert out[0].tolist() == [[0, 0, 0, 0], [0.0, 13.0, -5.0, 0.0], [0, 0, 0, 0]]    # level 1: S_1, beta_1 = 0
    assert not out[2].any()


def test_answer_kernel_trains_at_the_id_rate_and_the_adapter_carries_it(tiny_smol, tmp_path):
    with pytest.raises(SystemExit):                                         # the kernel terms need the features
        sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--answer-kernel"])
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--answer-vectors", "--answer-kernel"])
    model, _, vocab = sft.build_policy(args, {"levels": 3, "codebook_size": 4}, "cpu", track=(VECTORS, CODES))
    af = model.lm_head.answer_features
    kernel = M.answer_kernel_parameters(model)
    assert af.kernel and len(kernel) == 3 and all(p.requires_grad for p in kernel)
    opt = sft.make_optimizer(model, lr=1e-3, id_lr=1e-2)
    group = next(g for g in opt.param_groups if any(p is kernel[0] for p in g["params"]))
    assert group["lr"] == 1e-2 and all(any(p is q for q in group["params"]) for p in kernel)
    with torch.no_grad():
        for p in kernel:
            p.normal_(generator=torch.Generator().manual_seed(0))
    M.save_policy(model, vocab, str(tmp_path / "adapter"), tiny_smol, "sha")
    again, _, _ = M.load_policy(tiny_smol, adapter=str(tmp_path / "adapter"))
    assert again.lm_head.answer_features.kernel
    for p, q in zip(M.answer_kernel_parameters(again), kernel):
        assert torch.equal(p, q.detach())
