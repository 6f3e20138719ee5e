"""DPO: loss math by hand, step-0 identities, concatenated forward, an end-to-end run with resume."""
import math

import pytest
import torch

import dpo
import lora
import model as M
import ranking

PC, PR, RC, RR = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])
# Delta = (-1 - -3) - (-2 - -2) = 2; with beta = 0.5, beta * Delta = 1
SIG = math.log1p(math.exp(-1))          # -log sigmoid(1)  = 0.31326169
SIG_NEG = math.log1p(math.exp(1))       # -log sigmoid(-1) = 1.31326169


@pytest.mark.parametrize("loss_type,eps,expected", [
    ("sigmoid", 0.0, 0.31326169),
    ("cdpo", 0.1, 0.9 * SIG + 0.1 * SIG_NEG),             # 0.41326169
    ("robust", 0.1, (0.9 * SIG - 0.1 * SIG_NEG) / 0.8),   # 0.18826169
    ("ipo", 0.0, 1.0),                                     # (2 - 1 / (2 * 0.5))^2
    ("hinge", 0.0, 0.0),                                   # relu(1 - 1)
])
def test_loss_values_by_hand(loss_type, eps, expected):
    losses, cr, rr = dpo.dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type=loss_type, label_smoothing=eps)
    assert losses.item() == pytest.approx(expected, abs=1e-6)
    assert cr.item() == pytest.approx(0.5) and rr.item() == pytest.approx(-0.5)   # beta * (pi - ref)


def test_hinge_and_ipo_other_beta():
    assert dpo.dpo_loss(PC, PR, RC, RR, beta=0.25, loss_type="hinge")[0].item() == pytest.approx(0.5)
    assert dpo.dpo_loss(PC, PR, RC, RR, beta=0.25, loss_type="ipo")[0].item() == pytest.approx(0.0)  # (2 - 2)^2
    assert dpo.dpo_loss(PC, PR, RC, RR, beta=0.125, loss_type="ipo")[0].item() == pytest.approx(4.0)  # (2 - 4)^2


def test_eps_zero_variants_equal_sigmoid():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(16, generator=g) * 5 for _ in range(4)]
    base = dpo.dpo_loss(*x, beta=0.3, loss_type="sigmoid")[0]
    for t in ("cdpo", "robust"):
        assert torch.allclose(dpo.dpo_loss(*x, beta=0.3, loss_type=t, label_smoothing=0.0)[0], base)


def test_finite_at_extreme_logps():
    big = torch.tensor([-1e4]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0])
    for t in dpo.LOSS_TYPES:
        eps = 0.1 if t in ("cdpo", "robust") else 0.0
        assert torch.isfinite(dpo.dpo_loss(*big, beta=0.1, loss_type=t, label_smoothing=eps)[0]).all()


def test_rpo_term_lives_in_the_loss():
    # sigmoid 0.31326169 + alpha * NLL per token of the chosen answer: 0.5 * (1.0 / 4 tokens) = 0.125
    losses, cr, rr = dpo.dpo_loss(PC, PR, RC, RR, beta=0.5, rpo_alpha=0.5, chosen_lengths=torch.tensor([4.0]))
    assert losses.item() == pytest.approx(SIG + 0.125, abs=1e-6) and cr.item() == pytest.approx(0.5)
    ipo = dpo.dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo", rpo_alpha=2.0, chosen_lengths=torch.tensor([1.0]))
    assert ipo[0].item() == pytest.approx(1.0 + 2.0)
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo.dpo_loss(PC, PR, RC, RR, rpo_alpha=1.0)


def test_validity_loss_by_hand():
    """The docstring's example; S-DPO's K rejected answers each add theirs, a masked slot nothing."""
    c, r = torch.log(torch.tensor([0.9])), torch.log(torch.tensor([0.5]))
    assert dpo.validity_loss(c, r).item() == pytest.approx(0.7985, abs=1e-4)       # -(log 0.9 + log 0.5)
    more = torch.log(torch.tensor([[0.5, 0.25]]))
    masked = dpo.validity_loss(c, more, torch.tensor([[True, False]]))
    assert masked.item() == pytest.approx(0.7985, abs=1e-4)
    both = dpo.validity_loss(c, more, torch.tensor([[True, True]]))
    assert both.item() == pytest.approx(0.7985 + math.log(4), abs=1e-4)              # 2.1848


def test_validity_logps_equal_a_full_forward(tiny_smol):
    """The answers' validity log-probs: per answer, sum over its 3 ID tokens of log sum_{allowed} p, summed by hand
    from one plain forward of prompt + answer; the summed log-probs beside them are the ones without a trie, and
    S-DPO's forward gives the same."""
    model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    fmt, pad = M.PromptFormat(tok, vocab), M.pad_id_of(tok)
    trie = ranking.IDTrie([(0, 1, 2), (0, 1, 3), (0, 2, 0), (1, 2, 3), (3, 0, 0), (0, 0, 0)], 3)
    pairs = [(fmt.prompt("rock"), fmt.answer((0, 1, 2)), fmt.answer((1, 2, 3))),
             (fmt.prompt("a longer request for jazz"), fmt.answer((3, 0, 0)), fmt.answer((0, 0, 0)))]
    with torch.no_grad():
        pc, pr, vc, vr = dpo.concatenated_logps(model, pairs, pad, "cpu", vocab=vocab, trie=trie)
        plain = dpo.concatenated_logps(model, pairs, pad, "cpu")
        assert torch.equal(pc, plain[0]) and torch.equal(pr, plain[1])
        for i, (p, c, r) in enumerate(pairs):
            for answer, got in ((c, vc[i]), (r, vr[i])):
                full = torch.log_softmax(model(input_ids=torch.tensor([p + answer])).logits[0].float(), -1)
                codes = [vocab.level_code(t)[1] for t in answer[:3]]
                allowed = [[vocab.token_id(level, k) for k in trie.allowed(codes[:level])] for level in range(3)]
                want = sum(torch.logsumexp(full[len(p) + level - 1, allowed[level]], 0) for level in range(3))
                assert got.item() == pytest.approx(want.item(), abs=1e-5)
                assert got.item() < 0                  # the base vocabulary holds mass off the catalogue
        logps, valid = dpo.answer_set_logps(model, [p for p, _, _ in pairs], [[c for _, c, _ in pairs],
                                            [r for _, _, r in pairs]], pad, "cpu", vocab, trie)
        assert torch.allclose(valid, torch.stack([vc, vr]), atol=1e-6)
        assert torch.allclose(logps, torch.stack([pc, pr]), atol=1e-6)
    with pytest.raises(ValueError, match="shared"):
        dpo.concatenated_logps(model, pairs, pad, "cpu", shared_prompt=False, vocab=vocab, trie=trie)


def test_implicit_reward_hits_by_hand():
    # pair 1: the docstring's: policy -5 > -6, but the reward -5 - -4 = -1 < -6 - -8 = +2: lost; pair 2: the reward
    # margin (-1 - -2) - (-3 - -3) = +1: won, though the policy's own log-probs would say the same; pair 3: a tie
    pc, pr = torch.tensor([-5.0, -1.0, -2.0]), torch.tensor([-6.0, -3.0, -2.0])
    rc, rr = torch.tensor([-4.0, -2.0, -1.0]), torch.tensor([-8.0, -3.0, -1.0])
    assert dpo.implicit_reward_hits(pc, pr, rc, rr).tolist() == [0.0, 1.0, 0.5]
    assert dpo.pair_hits(pc, pr).tolist() == [1.0, 1.0, 0.5]   # the policy's own log-probs: pair 1 won
    # it is dpo_loss's reward comparison, whatever beta: chosen_rewards > rejected_rewards where the hit is 1
    _, cr, rj = dpo.dpo_loss(pc, pr, rc, rr, beta=0.3)
    assert (cr > rj).float().tolist() == [0.0, 1.0, 0.0]


def test_label_smoothing_only_where_it_applies():
    for t in ("sigmoid", "ipo", "hinge"):
        with pytest.raises(ValueError, match="label_smoothing"):
            dpo.dpo_loss(PC, PR, RC, RR, loss_type=t, label_smoothing=0.1)
    with pytest.raises(SystemExit):
        dpo.parse_args(["--pairs", "p", "--sft", "s", "--out", "o", "--label-smoothing", "0.1"])
    assert dpo.parse_args(["--pairs", "p", "--sft", "s", "--out", "o", "--loss-type", "cdpo",
                           "--label-smoothing", "0.1"]).label_smoothing == 0.1


def test_step0_identities(tiny_smol):
    """policy == reference: loss ln 2, rewards 0, dL/dlogp = -beta/2, +beta/2; B = 0 -> A gets no gradient."""
    model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    lora.inject_lora(model, r=4, alpha=8, dropout=0.0)
    fmt = M.PromptFormat(tok, vocab)
    pairs = [(fmt.prompt("rock"), fmt.answer((0, 1, 2)), fmt.answer((1, 2, 3))),
             (fmt.prompt("something like <a_1><b_1><c_1>"), fmt.answer((3, 0, 0)), fmt.answer((0, 0, 0)))]
    pc, pr = dpo.concatenated_logps(model, pairs, M.pad_id_of(tok), "cpu")
    pc.retain_grad()
    pr.retain_grad()
    beta = 0.1
    losses, cr, rr = dpo.dpo_loss(pc, pr, pc.detach(), pr.detach(), beta=beta)
    assert torch.allclose(losses, torch.full((2,), math.log(2)), atol=1e-7)
    assert torch.equal(cr, torch.zeros(2)) and torch.equal(rr, torch.zeros(2))
    losses.sum().backward()
    assert torch.allclose(pc.grad, torch.full((2,), -beta / 2))
    assert torch.allclose(pr.grad, torch.full((2,), beta / 2))
    layers = lora.lora_layers(model)
    assert all(torch.count_nonzero(m.lora_A.weight.grad) == 0 for _, m in layers)
    assert any(torch.count_nonzero(m.lora_B.weight.grad) > 0 for _, m in layers)


def test_concatenated_equals_separate_and_padding_invariant(tiny_smol):
    model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    fmt = M.PromptFormat(tok, vocab)
    pad = M.pad_id_of(tok)
    pairs = [(fmt.prompt("rock"), fmt.answer((0, 1, 2)), fmt.answer((1, 2, 3))),
             (fmt.prompt("a much longer request, for some quiet jazz please"), fmt.answer((3, 0, 0)),
              fmt.answer((0, 0, 0)))]
    with torch.no_grad():
        pc, pr = dpo.concatenated_logps(model, pairs, pad, "cpu")
        for i, (p, c, r) in enumerate(pairs):
            alone = [dpo.sequence_logps(model, *M.pad_batch([p + a], pad, [len(a)])) for a in (c, r)]
            assert torch.allclose(alone[0], pc[i:i + 1], atol=1e-5)
            assert torch.allclose(alone[1], pr[i:i + 1], atol=1e-5)
        plain = dpo.concatenated_logps(model, pairs, pad, "cpu", shared_prompt=False)   # the plain forward
        assert torch.allclose(torch.cat(plain), torch.cat([pc, pr]), atol=1e-5)
    ids, attn, loss = dpo.concatenated_batch(pairs, pad)
    assert ids.shape[0] == 4 and loss.sum(1).tolist() == [4, 4, 4, 4]


def test_shared_prompt_gradients_equal_full_forward(tiny_smol):
    """The prompt computed once feeds both answers' gradients: same as two full sequences."""
    model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    lora.inject_lora(model, r=4, alpha=8, dropout=0.0)
    for p in M.id_parameters(model):
        p.requires_grad_(True)
    torch.manual_seed(0)
    for _, m in lora.lora_layers(model):
        torch.nn.init.normal_(m.lora_B.weight, std=0.2)
    fmt = M.PromptFormat(tok, vocab)
    pad = M.pad_id_of(tok)
    # pairs 0 and 2 share their prompt (one forward of it), and pair 2 rejects what pair 0 chose (one forward of
    # that answer, its log-prob used twice)
    pairs = [(fmt.prompt("rock"), fmt.answer((0, 1, 2)), fmt.answer((1, 2, 3))),
             (fmt.prompt("a longer request for jazz"), fmt.answer((3, 0, 0)), fmt.answer((0, 0, 0))),
             (fmt.prompt("rock"), fmt.answer((2, 2, 2)), fmt.answer((0, 1, 2)))]

    def grads(fn):
        model.zero_grad()
        pc, pr = fn()
        (pc.sum() - 2 * pr.sum()).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    shared = grads(lambda: dpo.concatenated_logps(model, pairs, pad, "cpu"))
    full = grads(lambda: dpo.concatenated_logps(model, pairs, pad, "cpu", shared_prompt=False))
    assert torch.allclose(shared, full, atol=1e-5)
    with torch.no_grad():
        pc, pr = dpo.concatenated_logps(model, pairs, pad, "cpu")
        assert pr[2] == pc[0]                     # the same (prompt, answer): one row, not two equal ones
        # score_pairs scores in prompt order, in batches that split the shared prompt's pairs; the pairs' order back
        c, r = dpo.score_pairs(model, pairs, pad, "cpu", batch_size=2)
        assert torch.allclose(c, pc, atol=1e-5) and torch.allclose(r, pr, atol=1e-5)


def test_prompt_schedule():
    """Steps of whole prompts: each prompt once an epoch, up to per_prompt of its pairs, by the seed."""
    A, B, C = [1], [2], [3]
    pairs = [(A, [0], [9]), (B, [0], [9]), (A, [1], [9]), (C, [0], [9]), (A, [2], [9]), (B, [1], [9])]
    prompt_of = [p[0] for p, _, _ in pairs]
    steps = dpo.prompt_schedule(pairs, steps=6, prompts_per_step=1, per_prompt=2, seed=0)
    assert len(steps) == 6
    for epoch in (steps[:3], steps[3:]):
        assert sorted(prompt_of[s[0]] for s in epoch) == [1, 2, 3]      # every prompt once an epoch
    for s in steps:
        assert len({prompt_of[i] for i in s}) == 1 and len(set(s.tolist())) == len(s)
        assert len(s) == min(2, prompt_of.count(prompt_of[s[0]]))      # A: 2 of its 3 pairs; C: its 1
    again = dpo.prompt_schedule(pairs, steps=6, prompts_per_step=1, per_prompt=2, seed=0)
    assert all(a.tolist() == b.tolist() for a, b in zip(steps, again))
    two = dpo.prompt_schedule(pairs, steps=4, prompts_per_step=2, per_prompt=8, seed=1)
    assert all(len({prompt_of[i] for i in s}) == 2 for s in two)       # 3 prompts: one step an epoch, 1 left over
    assert dpo.drawn_pairs(two).tolist() == sorted(set(i for s in two for i in s.tolist()))
    with pytest.raises(dpo.UserError, match="3 distinct prompts"):
        dpo.prompt_schedule(pairs, steps=1, prompts_per_step=4, per_prompt=2, seed=0)


def test_reference_cache_knows_its_base(tiny_smol, smol_tokenizer, tmp_path):
    """Another base of the same shape must not reuse the cached reference log-probs: its hash differs."""
    import shutil
    from tests.conftest import make_tiny_llama
    other = make_tiny_llama(smol_tokenizer, tmp_path / "other", seed=1)
    same = tmp_path / "same"
    shutil.copytree(tiny_smol, same)
    assert dpo.base_weights_sha256(other) != dpo.base_weights_sha256(tiny_smol)
    assert dpo.base_weights_sha256(str(same)) == dpo.base_weights_sha256(tiny_smol)


def test_checkpoint_selection_rules():
    best = {"eval/logp_accuracy": 0.70, "eval/loss": 2.0}
    better_acc = {"eval/logp_accuracy": 0.72, "eval/loss": 2.5}
    same_acc_lower_loss = {"eval/logp_accuracy": 0.70, "eval/loss": 1.9}
    worse = {"eval/logp_accuracy": 0.60, "eval/loss": 2.4}
    assert dpo.improves(better_acc, best, "accuracy") and dpo.improves(same_acc_lower_loss, best, "accuracy")
    assert not dpo.improves(worse, best, "accuracy")
    assert not dpo.improves(better_acc, best, "loss") and dpo.improves(same_acc_lower_loss, best, "loss")
    assert all(dpo.improves(r, best, "last") for r in (better_acc, same_acc_lower_loss, worse))
