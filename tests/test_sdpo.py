"""S-DPO (softmax DPO over several rejected answers): the loss math, by hand."""
import math

import pytest
import torch

from dpo import dpo_loss, sdpo_loss
import dpo


def logps_for(beta_deltas, beta=0.1):
    """Policy / reference log-probs whose beta * delta against each rejected answer is beta_deltas (B, K)."""
    bd = torch.tensor(beta_deltas, dtype=torch.float64)
    B, K = bd.shape
    pc = torch.full((B,), -5.0, dtype=torch.float64)
    rc = torch.full((B,), -6.0, dtype=torch.float64)          # chosen log-ratio 1.0
    # rejected log-ratio = 1 - delta, put on the policy side with the reference at -8
    pr = -8.0 + (1.0 - bd / beta)
    rr = torch.full((B, K), -8.0, dtype=torch.float64)
    return pc, pr, rc, rr


def test_hand_value_two_rejected():
    pc, pr, rc, rr = logps_for([[1.0, 2.0]])
    losses, cr, rj = sdpo_loss(pc, pr, rc, rr, beta=0.1)
    # -log s(-log(e^-1 + e^-2)) = log(1 + e^-1 + e^-2)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-1) + math.exp(-2)), abs=1e-12)
    assert losses.item() == pytest.approx(0.4076059644443804, abs=1e-12)
    assert cr.item() == pytest.approx(0.1) and rj.item() == pytest.approx(0.1 * (1 - 10.0))


def test_one_rejected_is_dpo_sigmoid():
    pc, pr, rc, rr = logps_for([[0.3], [-2.0], [4.0]])
    s, _, _ = sdpo_loss(pc, pr, rc, rr, beta=0.1)
    d, _, _ = dpo_loss(pc, pr[:, 0], rc, rr[:, 0], beta=0.1, loss_type="sigmoid")
    assert torch.allclose(s, d, atol=1e-12)
    # and through dpo_loss's branch, with (B,) rejected
    s1, _, _ = dpo_loss(pc, pr[:, 0], rc, rr[:, 0], beta=0.1, loss_type="sdpo")
    assert torch.allclose(s1, d, atol=1e-12)


def test_masked_columns_drop_out():
    pc, pr, rc, rr = logps_for([[1.0, 2.0, -3.0]])
    mask = torch.tensor([[True, True, False]])
    masked, _, _ = sdpo_loss(pc, pr, rc, rr, beta=0.1, rejected_mask=mask)
    two, _, _ = sdpo_loss(pc, pr[:, :2], rc, rr[:, :2], beta=0.1)
    assert torch.allclose(masked, two, atol=1e-12)
    assert torch.isfinite(masked).all()


def test_gradient_weights_the_hardest_rejected_most():
    pc, pr, rc, rr = logps_for([[1.0, 3.0]])
    pr = pr.clone().requires_grad_(True)
    losses, _, _ = sdpo_loss(pc, pr, rc, rr, beta=0.1)
    losses.sum().backward()
    g = pr.grad[0]
    # d loss / d pr_j = beta * softmax-like weight e^{g_j} / (1 + sum e^{g}): larger for the smaller delta (1.0)
    w = torch.tensor([math.exp(-1.0), math.exp(-3.0)], dtype=torch.float64) / (1 + math.exp(-1) + math.exp(-3))
    assert torch.allclose(g, 0.1 * w, atol=1e-12)
    assert g[0] > g[1] > 0


def test_rpo_term_added():
    pc, pr, rc, rr = logps_for([[1.0, 2.0]])
    base, _, _ = sdpo_loss(pc, pr, rc, rr, beta=0.1)
    rpo, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="sdpo", rpo_alpha=0.5,
                         chosen_lengths=torch.tensor([4.0], dtype=torch.float64))
    assert rpo.item() == pytest.approx(base.item() + 0.5 * 5.0 / 4.0, abs=1e-12)
    with pytest.raises(ValueError):
        sdpo_loss(pc, pr, rc, rr, rpo_alpha=1.0)


def test_answer_sets_equal_separate_scoring(tiny_smol):
    """One prompt computation for 1 + K answers gives each answer's log-prob as if scored alone."""
    import model as M
    from dpo import answer_set_logps
    model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    fmt = M.PromptFormat(tok, vocab)
    pad = M.pad_id_of(tok)
    prompts = [fmt.prompt("rock"), fmt.prompt("a much longer request, for some quiet jazz please")]
    sets = [[fmt.answer((0, 1, 2)), fmt.answer((3, 0, 0))], [fmt.answer((1, 2, 3)), fmt.answer((0, 0, 0))],
            [fmt.answer((2, 2, 2)), fmt.answer((1, 1, 1))]]
    with torch.no_grad():
        got = answer_set_logps(model, prompts, sets, pad, "cpu")
        assert got.shape == (3, 2)
        for s, answers in enumerate(sets):
            for b, a in enumerate(answers):
                alone = dpo.sequence_logps(model, *M.pad_batch([prompts[b] + a], pad, [len(a)]))
                assert torch.allclose(alone, got[s, b:b + 1], atol=1e-5)
