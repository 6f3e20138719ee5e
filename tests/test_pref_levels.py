"""benchmarks/pref_levels.py: a pair's summed log-prob split by the Semantic ID's levels."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import dpo  # noqa: E402
import lora  # noqa: E402
import model as M  # noqa: E402
from pref_levels import answer_token_logps, level_scores, shared_prefix  # noqa: E402


def test_level_scores_by_hand():
    # the docstring's example: three levels, then the end token
    chosen, rejected = torch.tensor([[-1.0, -2.0, -3.0, -0.1]]), torch.tensor([[-0.5, -3.0, -2.0, -0.1]])
    s = level_scores(chosen, rejected, levels=3)
    assert list(s) == ["sum (evaluate.py)", "level 1", "level 2", "level 3", "levels >= 2"]   # no 'levels >= 3'
    got = {k: (round(c.item(), 6), round(r.item(), 6)) for k, (c, r) in s.items()}
    assert got == {"sum (evaluate.py)": (-6.1, -5.6), "level 1": (-1.0, -0.5), "level 2": (-2.0, -3.0),
                   "level 3": (-3.0, -2.0), "levels >= 2": (-5.1, -5.1)}
    hits = {k: dpo.pair_hits(c, r).item() for k, (c, r) in s.items()}
    assert hits == {"sum (evaluate.py)": 0.0, "level 1": 0.0, "level 2": 1.0, "level 3": 0.0, "levels >= 2": 0.5}


def test_shared_prefix_counts_leading_codes_only():
    c = np.array([[1, 2, 3], [1, 5, 3], [4, 2, 3], [1, 2, 7]])
    r = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]])
    # a later equal code after a differing one does not count (row 1: 1 shared, not 2)
    assert shared_prefix(c, r).tolist() == [3, 1, 0, 2]


def test_token_logps_sum_to_the_summed_score(tiny_smol):
    """Each answer's per-token log-probs are its conditional log-probs, and their sum is dpo.score_pairs' score."""
    model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    lora.inject_lora(model, r=4, alpha=8, dropout=0.0)
    torch.manual_seed(0)
    for _, m in lora.lora_layers(model):
        torch.nn.init.normal_(m.lora_B.weight, std=0.2)
    with torch.no_grad():   # the ID rows start alike; apart, each code has a log-prob of its own
        for p in M.id_parameters(model):
            p.normal_(std=0.5)
    fmt, pad = M.PromptFormat(tok, vocab), M.pad_id_of(tok)
    pairs = [(fmt.prompt("rock"), fmt.answer((0, 1, 2)), fmt.answer((0, 1, 3))),
             (fmt.prompt("a much longer request, for some quiet jazz please"), fmt.answer((3, 0, 0)),
              fmt.answer((1, 0, 0))),
             (fmt.prompt("rock"), fmt.answer((2, 2, 2)), fmt.answer((0, 1, 2)))]
    chosen, rejected = answer_token_logps(model, pairs, pad, "cpu", batch_size=2)   # batches split the pairs
    assert chosen.shape == (3, 4) and (chosen < 0).all() and (rejected < 0).all()   # 3 codes + the end token
    c, r = dpo.score_pairs(model, pairs, pad, "cpu", batch_size=3)
    assert torch.allclose(chosen.sum(1), c, atol=1e-5) and torch.allclose(rejected.sum(1), r, atol=1e-5)
    # pair 0's answers share their first two codes: the same conditional log-probs there, not at the third
    assert torch.allclose(chosen[0, :2], rejected[0, :2], atol=1e-6) and chosen[0, 2] != rejected[0, 2]
    # token 0 of an answer is log pi(c_1 | x): the prompt's next-token distribution, by hand
    with torch.no_grad():
        ids = torch.tensor([pairs[1][0]])
        logits = M.head_logits(model, model.model(input_ids=ids).last_hidden_state[0, -1:])
        want = torch.log_softmax(logits.float(), -1)[0, pairs[1][1][0]]
    assert torch.allclose(chosen[1, 0], want, atol=1e-5)
