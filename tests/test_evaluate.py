"""Metrics on worked values, constrained decoding, baselines on a tiny world with a known answer."""
import itertools
import json
import math
import os

import numpy as np
import pytest
import torch

import dpo
import evaluate as E
import metrics
import model as M
import ranking


# ----------------------------------------------------------------------------- metrics (RecBole)

@pytest.mark.parametrize("rank,expected", [(1, 1.0), (2, 0.6309), (3, 0.5), (5, 0.3869), (10, 0.2891)])
def test_ndcg_single_relevant(rank, expected):
    ranked = [f"x{i}" for i in range(1, rank)] + ["hit"] + ["y"] * 5
    assert metrics.ndcg_at_k(ranked, {"hit"}, 10) == pytest.approx(expected, abs=1e-4)
    assert metrics.hit_at_k(ranked, {"hit"}, 10) == 1.0
    assert metrics.mrr_at_k(ranked, {"hit"}, 10) == pytest.approx(1 / rank)


def test_ndcg_several_relevant_worked_values():
    # hits at ranks 1 and 3, |R| = 2: (1 + 1/2) / (1 + 1/log2(3)) = 0.9197
    assert metrics.ndcg_at_k(["a", "x", "b", "y"], {"a", "b"}, 10) == pytest.approx(0.9197, abs=1e-4)
    # hits at ranks 2 and 5, |R| = 3, K = 5: (0.6309 + 0.3869) / (1 + 0.6309 + 0.5) = 0.4776
    assert metrics.ndcg_at_k(["x", "a", "y", "z", "b"], {"a", "b", "c"}, 5) == pytest.approx(0.4776, abs=1e-4)


def test_metric_edge_cases():
    assert metrics.hit_at_k(["x", "y"], {"a"}, 10) == 0.0 and metrics.ndcg_at_k(["x", "y"], {"a"}, 10) == 0.0
    assert metrics.mrr_at_k(["x", "y"], {"a"}, 10) == 0.0
    assert metrics.hit_at_k(["x", "a"], {"a"}, 1) == 0.0                      # outside the cut-off
    # duplicates are removed first: never above 1, and the second copy does not take a slot
    assert metrics.ndcg_at_k(["a", "a", "a"], {"a"}, 3) == 1.0
    assert metrics.precision_at_k(["a", "a", "b"], {"a", "b"}, 2) == 1.0
    assert metrics.ndcg_at_k(["x", "x", "a"], {"a"}, 2) == pytest.approx(1 / math.log2(3))
    # K larger than the list: gaps count as misses for precision, NDCG's ideal is capped by |R|
    assert metrics.precision_at_k(["a"], {"a"}, 5) == 0.2
    assert metrics.ndcg_at_k(["a"], {"a"}, 20) == 1.0
    rng = np.random.default_rng(0)
    for _ in range(200):
        ranked = list(rng.integers(0, 10, size=int(rng.integers(1, 15))))
        rel = set(rng.integers(0, 10, size=int(rng.integers(1, 5))).tolist())
        for fn in metrics.METRICS.values():
            assert 0.0 <= fn(ranked, rel, int(rng.integers(1, 20))) <= 1.0


def test_pessimistic_ties_and_exclusion():
    scores = np.array([0.0, 5.0, 0.0, 0.0, 1.0])
    assert metrics.top_k_pessimistic(scores, {2}, 5) == [1, 4, 0, 3, 2]        # the tied relevant item goes last
    assert metrics.top_k_pessimistic(scores, {2}, 2, exclude=[1]) == [4, 0]
    assert metrics.top_k_pessimistic(scores, {0}, 5, exclude=[1]) == [4, 2, 3, 0]


def test_bootstrap_intervals():
    mean, lo, hi = metrics.bootstrap_ci(np.array([0.0, 1.0] * 50), n_boot=500, seed=0)
    assert mean == 0.5 and lo < 0.5 < hi and hi - lo == pytest.approx(0.2, abs=0.06)   # ~ +-1.96 * 0.05
    assert metrics.bootstrap_ci([1.0] * 10) == (1.0, 1.0, 1.0)
    d = metrics.paired_bootstrap([1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0])
    assert d[0] == pytest.approx(0.5) and d[1] >= 0.0


def test_bootstrap_ratio_interval():
    # the docstring's example: resamples give 0.5 (a, a), 0 (b, b) or 0.4, a quarter of the draws at each end
    assert metrics.bootstrap_ratio_ci([2, 0], [4, 1]) == (0.4, 0.0, 0.5)
    # equal denominators: the per-unit shares' bootstrap, draw for draw (hallucinated@1: one output a prompt)
    bad = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0] * 4)
    assert metrics.bootstrap_ratio_ci(bad, np.ones(40)) == metrics.bootstrap_ci(bad)
    assert metrics.bootstrap_ratio_ci(bad * 10, np.full(40, 10)) == pytest.approx(metrics.bootstrap_ci(bad))
    assert metrics.bootstrap_ratio_ci([0, 0], [3, 3]) == (0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------- constrained decoding

@pytest.fixture(scope="module")
def tiny_policy(tiny_smol):
    model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    torch.manual_seed(0)
    with torch.no_grad():
        model.model.embed_tokens.new_rows.normal_(std=1.0)     # distinct ID tokens, so scores differ
    return model, tok, vocab


def exhaustive(model, prompt, ids, vocab, pad):
    seqs = [prompt + vocab.ids(c) for c in ids]
    with torch.no_grad():
        lp = dpo.sequence_logps(model, *M.pad_batch(seqs, pad, [vocab.levels] * len(seqs)))
    return sorted(zip(ids, lp.tolist()), key=lambda t: -t[1])


def test_beam_search_equals_exhaustive_scoring(tiny_policy):
    model, tok, vocab = tiny_policy
    ids = [c for c in itertools.product(range(4), repeat=3) if sum(c) % 3 != 0]      # 42 of 64 codes valid
    trie = ranking.IDTrie(ids, 3)
    fmt = M.PromptFormat(tok, vocab)
    prompts = [fmt.prompt("rock"), fmt.prompt("something like <a_1><b_2><c_3>, but a longer prompt")]
    res = ranking.beam_search(model, prompts, vocab, beam_width=len(ids), trie=trie, pad_id=M.pad_id_of(tok),
                              batch_size=2)
    for p, r in zip(prompts, res):
        got = [(tuple(vocab.level_code(t)[1] for t in toks), s) for toks, s in r]
        want = exhaustive(model, p, ids, vocab, M.pad_id_of(tok))
        assert [g[0] for g in got] == [w[0] for w in want]
        assert np.allclose([g[1] for g in got], [w[1] for w in want], atol=1e-4)
        assert len({g[0] for g in got}) == len(got)                                  # unique beams
    # a narrow beam still returns valid, unique IDs, best first
    narrow = ranking.beam_search(model, prompts, vocab, beam_width=5, trie=trie, pad_id=M.pad_id_of(tok))
    for r in narrow:
        codes = [tuple(vocab.level_code(t)[1] for t in toks) for toks, _ in r]
        assert len(r) == 5 and all(c in trie.valid for c in codes) and len(set(codes)) == 5
        assert [s for _, s in r] == sorted((s for _, s in r), reverse=True)


def test_repeated_prompts_ranked_once_each_query_its_own_exclusions(tiny_policy, monkeypatch):
    """rank_with_model ranks a distinct prompt once: a query that repeats a prompt gets the list that prompt gets
    when ranked alone, under its own relevant items and exclusions."""
    model, tok, vocab = tiny_policy
    ids = [c for c in itertools.product(range(4), repeat=3) if sum(c) % 3 != 0]
    trie, id_to_row = ranking.IDTrie(ids, 3), {c: i for i, c in enumerate(ids)}
    fmt = M.PromptFormat(tok, vocab)
    args = E.parse_args(["--run", "unused", "--batch-size", "2", "--device", "cpu", "--ranking", "exact"])
    a, b = "something like <a_1><b_2><c_1>", "rock"
    prompts, relevant, exclude = [a, b, a, a], [{0}, {1}, {2}, {3}], [[5], [], [], [7]]
    calls, real = [], ranking.exact_top_k
    monkeypatch.setattr(ranking, "exact_top_k",
                        lambda model, chunk, *rest, **kw: calls.append(len(chunk)) or real(model, chunk, *rest, **kw))
    got = E.rank_with_model(model, fmt, prompts, trie, id_to_row, relevant, exclude, args, "t")
    assert sum(calls) == 2                                              # two distinct prompts, one walk each
    for i, p in enumerate(prompts):
        alone = E.rank_with_model(model, fmt, [p], trie, id_to_row, [relevant[i]], [exclude[i]], args, "t")[0]
        assert got[i] == alone
    assert 5 not in got[0] and 7 not in got[3] and got[2][0] == got[0][0] != 5


def test_trie_never_yields_invalid_and_raises_on_empty(tiny_policy):
    model, tok, vocab = tiny_policy
    trie = ranking.IDTrie([(0, 1, 2), (0, 1, 3), (2, 0, 0)], 3)
    assert trie.allowed(()).tolist() == [0, 2] and trie.allowed((0, 1)).tolist() == [2, 3]
    assert trie.allowed((1,)).tolist() == []
    fmt = M.PromptFormat(tok, vocab)
    res = ranking.beam_search(model, [fmt.prompt("x")], vocab, beam_width=20, trie=trie, pad_id=0)[0]
    assert sorted(tuple(vocab.level_code(t)[1] for t in toks) for toks, _ in res) == sorted(trie.valid)
    broken = ranking.IDTrie([(0, 1, 2)], 3)
    broken.children[(0, 1)] = torch.empty(0, dtype=torch.long)                     # a prefix with no child
    with pytest.raises(RuntimeError, match="no Semantic-ID token is allowed"):
        ranking.beam_search(model, [fmt.prompt("x")], vocab, beam_width=4, trie=broken, pad_id=0)


def test_unconstrained_classification(tiny_policy):
    _, tok, vocab = tiny_policy
    end = 2
    ok = vocab.ids((1, 2, 3)) + [end]
    assert E.id_codes(ok, vocab, end) == (1, 2, 3)
    assert E.id_codes(vocab.ids((1, 2, 3))[:2] + [end, end], vocab, end) is None     # too short
    assert E.id_codes([vocab.token_id(1, 0), vocab.token_id(0, 0), vocab.token_id(2, 0), end], vocab, end) is None
    assert E.id_codes(vocab.ids((1, 2, 3)) + [5], vocab, end) is None                  # no end token


def test_same_weights_of_two_adapter_folders(tmp_path):
    """evaluate.py reuses SFT's results for a DPO adapter that is the SFT weights (dpo.py kept step 0)."""
    import shutil

    import evaluate as E
    import lora
    import model as M
    a, b = tmp_path / "sft", tmp_path / "dpo"
    a.mkdir()
    (a / lora.ADAPTER_WEIGHTS).write_bytes(b"lora")
    (a / M.ID_TOKENS_FILE).write_bytes(b"rows")
    (a / lora.ADAPTER_CONFIG).write_text('{"r": 8, "lora_alpha": 16, "lora_dropout": 0.05}')
    shutil.copytree(a, b)
    (b / lora.ADAPTER_CONFIG).write_text('{"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}')   # inference: the same
    assert E.same_weights(str(a), str(b))
    (b / lora.ADAPTER_CONFIG).write_text('{"r": 8, "lora_alpha": 32, "lora_dropout": 0.0}')   # another scaling
    assert not E.same_weights(str(a), str(b))
    (b / lora.ADAPTER_CONFIG).write_text('{"r": 8, "lora_alpha": 16}')
    (b / M.ID_TOKENS_FILE).write_bytes(b"moved")                                             # trained rows
    assert not E.same_weights(str(a), str(b))
    os.remove(b / M.ID_TOKENS_FILE)
    assert not E.same_weights(str(a), str(b))


def test_hallucination_prompts_split_half_and_half_then_fill():
    nxt, attr = [f"n{i}" for i in range(200)], [f"a{i}" for i in range(40)]
    assert E.hallucination_prompts(nxt, attr, 40) == nxt[:20] + attr[:20]
    assert E.hallucination_prompts(nxt, attr, 41) == nxt[:20] + attr[:21]
    assert E.hallucination_prompts(nxt, attr, 240) == nxt + attr          # every prompt: attributes run out first
    assert E.hallucination_prompts(nxt, attr, 1000) == nxt + attr
    assert E.hallucination_prompts(nxt[:3], attr, 10) == nxt[:3] + attr[:7]   # next-track runs out: attributes fill
    assert E.hallucination_prompts(nxt, [], 6) == nxt[:6]
    assert E.hallucination_prompts(nxt, attr, 0) == nxt + attr == E.hallucination_prompts(nxt, attr, -1)  # 0: all


def test_baseline_choice_is_every_validation_next_play_whatever_the_shuffle(tmp_path):
    # 600 next plays among 900 attribute requests, in two shuffles: the default choice set is the same in both (the
    # first 500 next plays of each file, the default until 2026-12-06, were not)
    code_row = {(i, i, i): i for i in range(700)}
    nxt = [{"task": "next_track", "prompt": f"after <a_{i}><b_{i}><c_{i}> play", "answer": f"<a_{i + 1}><b_{i + 1}>"
            f"<c_{i + 1}>"} for i in range(600)]
    attrs = [{"task": "attributes", "prompt": "some rock", "answer": "<a_0><b_0><c_0>"}] * 900
    sets = []
    for seed in (0, 1):
        rows = [(nxt + attrs)[i] for i in np.random.default_rng(seed).permutation(1500)]
        d = tmp_path / str(seed)
        d.mkdir()
        (d / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        got = E.baseline_choice_queries(str(d), code_row)
        assert len(got) == 600
        sets.append(sorted((c, min(rel)) for c, rel in got))
        assert len(E.baseline_choice_queries(str(d), code_row, 500)) == 500
    assert sets[0] == sets[1] == [(i, i + 1) for i in range(600)]


def test_hit_at_k_pessimistic_worked_example():
    assert metrics.hit_at_k_pessimistic([3, 5, 5, 1], {2}, 1) == 0.0      # item 1 ties item 2 and goes first
    assert metrics.hit_at_k_pessimistic([3, 5, 5, 1], {2}, 2) == 1.0
    assert metrics.hit_at_k_pessimistic([3, 5, 5, 1], {2}, 2, exclude=[2]) == 0.0   # the context is never a hit
    assert metrics.hit_at_k_pessimistic([3, 5, 5, 1], {2}, 1, exclude=[1]) == 1.0
    assert metrics.hit_at_k_pessimistic([3, -np.inf, 5, 1], {1}, 4) == 0.0           # unscored: never listed


def test_hit_at_k_pessimistic_equals_the_sorted_ranking():
    """The counting form gives hit_at_k(top_k_pessimistic(...)) on every case: ties (integer scores), exclusions,
    several relevant items, -inf and +inf scores."""
    rng = np.random.default_rng(0)
    for case in range(3000):
        n = int(rng.integers(1, 30))
        scores = rng.integers(0, 6, n).astype(float)
        if case % 5 == 0:
            scores[rng.random(n) < 0.2] = -np.inf
        if case % 7 == 0:
            scores[rng.random(n) < 0.1] = np.inf
        relevant = set(rng.choice(n, size=int(rng.integers(1, min(n, 3) + 1)), replace=False).tolist())
        exclude = rng.choice(n, size=int(rng.integers(0, min(n, 2) + 1)), replace=False).tolist()
        k = int(rng.integers(1, 12))
        want = metrics.hit_at_k(metrics.top_k_pessimistic(scores, relevant, k, exclude=exclude), relevant, k)
        got = metrics.hit_at_k_pessimistic(scores, relevant, k, exclude=exclude)
        assert got == want, (scores, relevant, exclude, k)


def test_ranker_training_plays_draw():
    plays = [(i, i + 1) for i in range(10)]
    assert E.ranker_training_plays(plays, 0, 0) == plays and E.ranker_training_plays(plays, 10, 0) == plays
    got = E.ranker_training_plays(plays, 3, 0)
    assert len(got) == 3 and got == sorted(got) and set(got) <= set(plays)      # a draw, kept in file order
    assert got == E.ranker_training_plays(plays, 3, 0)                          # the seed decides it
    assert any(E.ranker_training_plays(plays, 3, s) != got for s in range(1, 5))
    with pytest.raises(SystemExit):
        E.parse_args(["--run", "runs/x", "--ranker-plays", "-1"])
