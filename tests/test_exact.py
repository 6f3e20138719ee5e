"""Exact ranking (ranking.score_all_ids, ranking.exact_top_k): equal to brute force, to each other, to a
full-width beam."""
import os
import sys

import numpy as np
import pytest
import torch

import model as M
import ranking
from tests.conftest import IDS, make_tiny_llama

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_exact  # noqa: E402


@pytest.fixture(scope="module")
def tiny_untied(tmp_path_factory, smol_tokenizer):
    return make_tiny_llama(smol_tokenizer, tmp_path_factory.mktemp("tiny_untied"), tie=False)


@pytest.fixture(scope="module", params=["tied", "untied"])
def policy(request, tiny_smol, tiny_untied):
    """A tiny random policy whose ID rows differ (normal noise), so that scores differ.

    Untied, the head's ID rows are their own noise: a random tied model mostly predicts the token it was just fed
    (its input row is its output row), which leaves every prefix's score close to every other's, and nothing to
    prune; the untied one spreads them.
    """
    model, tok, vocab = M.load_policy(tiny_smol if request.param == "tied" else tiny_untied,
                                      levels=3, codebook_size=4)
    torch.manual_seed(0)
    with torch.no_grad():
        model.model.embed_tokens.new_rows.normal_(std=1.0)
        if request.param == "untied":
            model.lm_head.new_rows.normal_(std=1.0)
    fmt = M.PromptFormat(tok, vocab)
    prompts = [fmt.prompt("rock"), fmt.prompt("something like <a_1><b_2><c_3>, but a longer prompt")]
    return model, vocab, ranking.IDTrie(IDS, 3), prompts, M.pad_id_of(tok)


def brute_force(model, prompt, codes, vocab):
    """One full forward of prompt + the codes' tokens (an ID, or a prefix of one); the sum of their log_softmax
    values."""
    ids = prompt + vocab.ids(codes)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    T = len(prompt)
    return sum(float(logp[T - 1 + l, ids[T + l]]) for l in range(len(codes)))


def full_top_k(model, prompt, vocab, trie, k):
    return ranking.rank_ids(*ranking.score_all_ids(model, prompt, vocab, trie), k)


def assert_same_ranking(got, want, atol=1e-4):
    assert [c for c, _ in got] == [c for c, _ in want]
    assert np.allclose([s for _, s in got], [s for _, s in want], atol=atol)


def test_ids_fixture_leaves_prefixes_out():
    trie = ranking.IDTrie(IDS, 3)
    assert 20 <= len(IDS) <= 40 and trie.allowed(()).tolist() == [0, 1, 2] and trie.allowed((1, 2)).numel() == 0


def test_score_all_ids_equals_brute_force(policy):
    model, vocab, trie, prompts, _ = policy
    for prompt in prompts:
        codes, scores = ranking.score_all_ids(model, prompt, vocab, trie)
        assert codes == sorted(IDS) and scores.shape == (len(IDS),) and scores.dtype == torch.float32
        want = [brute_force(model, prompt, c, vocab) for c in codes]
        assert np.allclose(scores.numpy(), want, atol=1e-4)
    assert len(set(ranking.score_all_ids(model, prompts[0], vocab, trie)[1].tolist())) == len(IDS)   # no ties here


def test_chunked_walk_equals_unchunked(policy):
    model, vocab, trie, prompts, _ = policy
    codes, whole = ranking.score_all_ids(model, prompts[1], vocab, trie, chunk=10_000)
    for chunk in (1, 3):
        c, s = ranking.score_all_ids(model, prompts[1], vocab, trie, chunk=chunk)
        assert c == codes and torch.allclose(s, whole, atol=1e-5)


def test_rank_ids_order_and_ties():
    codes = [(0, 0, 1), (0, 0, 0), (1, 0, 0), (0, 1, 0)]
    scores = [-1.0, -2.0, -1.0, -2.0]
    assert ranking.rank_ids(codes, scores) == [((0, 0, 1), -1.0), ((1, 0, 0), -1.0), ((0, 0, 0), -2.0),
                                               ((0, 1, 0), -2.0)]
    assert [c for c, _ in ranking.rank_ids(codes, scores, 1)] == [(0, 0, 1), (1, 0, 0)]        # the tie comes along
    assert len(ranking.rank_ids(codes, scores, 3)) == 4 and len(ranking.rank_ids(codes, scores, 9)) == 4
    with pytest.raises(ValueError):
        ranking.rank_ids(codes, scores, 0)


def test_exact_top_k_equals_full_scoring(policy):
    model, vocab, trie, prompts, pad = policy
    full_walk = len(trie.children)           # 1 prompt forward + one per prefix of length 1 .. L-1
    for k in (1, 2, 5, 10, len(IDS), len(IDS) + 7):
        stats = {}
        got = ranking.exact_top_k(model, prompts, vocab, trie, k, batch_size=2, pad_id=pad, stats=stats)
        one = ranking.exact_top_k(model, prompts, vocab, trie, k, batch_size=1, pad_id=pad, chunk=2)
        assert len(got) == len(prompts) == len(stats["forwards"])
        for prompt, g, o, f in zip(prompts, got, one, stats["forwards"]):
            want = full_top_k(model, prompt, vocab, trie, k)
            assert len(want) == min(k, len(IDS))
            assert_same_ranking(g, want)
            assert_same_ranking(o, g, atol=1e-5)          # other batching and chunking: the same lists
            assert f <= full_walk and (k < len(IDS) or f == full_walk)
    if model.lm_head.new_rows is not model.model.embed_tokens.new_rows:    # the untied one: the bound prunes
        stats = {}
        ranking.exact_top_k(model, prompts, vocab, trie, 3, pad_id=pad, stats=stats)
        assert max(stats["forwards"]) < full_walk


def test_bench_exact_least_forwards(policy):
    """benchmarks/bench_exact.least_forwards, by hand: 1 + the prefixes whose brute-force score is above the k-th
    score; all of the walk at k = every ID; never more than exact_top_k spends."""
    model, vocab, trie, prompts, pad = policy
    prefixes = {c[:l] for c in trie.valid for l in range(1, vocab.levels)}
    prefix_scores = [[brute_force(model, prompt, p, vocab) for p in prefixes] for prompt in prompts]
    for k in (1, 3, len(IDS)):
        stats = {}
        exact = ranking.exact_top_k(model, prompts, vocab, trie, k, batch_size=2, pad_id=pad, stats=stats)
        least = bench_exact.least_forwards(model, prompts, vocab, trie, exact, k, pad, batch_size=2)
        for scores, res, n, f in zip(prefix_scores, exact, least, stats["forwards"]):
            theta = res[k - 1][1]
            want = 1 + sum(sc > theta + 1e-5 for sc in scores)
            near = sum(abs(sc - theta) <= 1e-5 for sc in scores)     # float ties with the k-th score: either side
            assert want <= n <= want + near and n <= f
            if k == len(IDS):
                assert n == len(trie.children)       # the lowest ID's prefixes score above it: the whole walk


@pytest.fixture
def tied_policy(policy):
    """policy with two level-3 rows made identical: IDs (a, b, 1) and (a, b, 2) then score exactly the same."""
    model, vocab, trie, prompts, pad = policy
    tensors = [model.model.embed_tokens.new_rows, model.lm_head.new_rows]    # one tensor twice when tied
    saved = [t.detach().clone() for t in tensors]
    with torch.no_grad():
        for t in tensors:
            t[2 * vocab.codebook_size + 2] = t[2 * vocab.codebook_size + 1]
    yield policy
    with torch.no_grad():
        for t, s in zip(tensors, saved):
            t.copy_(s)


def test_exact_top_k_includes_ties_at_the_kth_score(tied_policy):
    model, vocab, trie, prompts, pad = tied_policy
    for prompt, got_all in zip(prompts, ranking.exact_top_k(model, prompts, vocab, trie, len(IDS), pad_id=pad)):
        full = full_top_k(model, prompt, vocab, trie, None)
        score = dict(full)
        pairs = [(a, b) for a, b in zip(full, full[1:]) if a[1] == b[1]]
        assert pairs and all(a[0][:2] == b[0][:2] and {a[0][2], b[0][2]} == {1, 2} for a, b in pairs)
        assert dict(got_all).keys() == score.keys()
        for (a, _), _ in pairs:
            k = full.index((a, score[a])) + 1          # the k-th is the first of a tied pair
            got = ranking.exact_top_k(model, [prompt], vocab, trie, k, pad_id=pad)[0]
            assert len(got) == k + 1 and got[k - 1][1] == got[k][1]      # the tied (k+1)-th comes along
            assert got[k - 1][0] < got[k][0]                               # ascending codes among equals
            assert_same_ranking(got, full[:k + 1])


def test_beam_search_at_full_width_equals_exact(policy):
    model, vocab, trie, prompts, pad = policy
    res = ranking.beam_search(model, prompts, vocab, beam_width=len(IDS), trie=trie, pad_id=pad, batch_size=2)
    for prompt, r in zip(prompts, res):
        beam = [(tuple(vocab.level_code(t)[1] for t in toks), s) for toks, s in r]
        assert_same_ranking(beam, full_top_k(model, prompt, vocab, trie, None))


@pytest.mark.parametrize("tied", [True, False])
def test_ids_indistinguishable(tiny_smol, tiny_untied, tied):
    model, tok, vocab = M.load_policy(tiny_smol if tied else tiny_untied, levels=3, codebook_size=4)   # zero-shot
    assert M.ids_indistinguishable(model, vocab)
    _, scores = ranking.score_all_ids(model, M.PromptFormat(tok, vocab).prompt("rock"), vocab, ranking.IDTrie(IDS, 3))
    assert torch.allclose(scores, scores[0].expand_as(scores), atol=1e-5)    # what it promises: one big tie
    for rows in (model.model.embed_tokens.new_rows, model.lm_head.new_rows):
        saved = rows.detach().clone()
        with torch.no_grad():
            rows[5, 0] += 1e-3                                                  # one row of one level moves
        assert not M.ids_indistinguishable(model, vocab)
        with torch.no_grad():
            rows.copy_(saved)
