"""benchmarks/kernel_ceiling.py: content x popularity with its numbers learned, by hand on tiny catalogues."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import baselines as B  # noqa: E402
import id_ceiling as IC  # noqa: E402
import kernel_ceiling as KC  # noqa: E402


def test_kernel_scores_worked_example():
    z = torch.tensor([[0.0], [1.0], [3.0]])
    s = KC.kernel_scores(z, torch.tensor([0, 2]), torch.tensor([0.0, 0.0, 2.0]), torch.tensor(1.0),
                         torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]))
    # context 0: [1 - 0, 1 - 1, 1 + 2 - 9]; context 2, track 0 of another genre: [0 - 9, 1 - 4, 1 + 2 - 0]
    assert s.tolist() == [[1.0, 0.0, -6.0], [-9.0, -3.0, 3.0]]


def test_learned_kernel_starts_at_content_x_popularity():
    rng = np.random.default_rng(0)
    x, pop = rng.normal(size=(12, 3)), rng.integers(0, 50, 12).astype(float)
    genre = np.repeat([0, 1], 6)
    in_genre = genre[:, None] == genre[None, :]
    m = KC.LearnedKernel(x, pop, in_genre, tau=4.0)
    with torch.no_grad():
        s = m(torch.tensor([1, 8])).double().numpy()
    for row, c in zip(s, (1, 8)):
        # eq. (2) at its start is eq. (1) with G = START_GENRE: log(1 + plays) - ||x_t - x_c||^2 / tau, + G in genre
        want = np.log1p(pop) + B.content_knn_scores(x, c) / 4.0 + KC.START_GENRE * in_genre[c]
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-5)
        # and it ranks as content x popularity does (G above any in-genre spread here)
        assert (np.argsort(-row, kind="stable")
                == np.argsort(-B.content_popularity_scores(x, c, pop, in_genre[c], 4.0), kind="stable")).all()


def test_next_loss_masks_the_context():
    m = KC.LearnedKernel(np.array([[0.0], [1.0], [2.0]]), np.zeros(3), np.ones((3, 3), bool), tau=1.0)
    loss = B.next_loss(m(torch.tensor([0])), torch.tensor([0]), torch.tensor([1]))
    # scores after context 0: [masked, 20 - 1, 20 - 4]: -log(e^-1 / (e^-1 + e^-4))
    assert abs(loss.item() - np.log1p(np.exp(-3.0))) < 1e-5


def test_fit_epochs_keeps_every_epoch_and_fit_best_epoch_picks_from_them():
    torch.manual_seed(0)
    x = np.array([[0.0], [1.0], [2.0], [5.0]])
    ctx, nxt = torch.tensor([0, 0, 1, 2, 3] * 4), torch.tensor([1, 1, 2, 1, 2] * 4)

    def run(fit):
        m = KC.LearnedKernel(x, np.zeros(4), np.ones((4, 4), bool), tau=1.0)
        return m, fit(m, len(ctx), lambda i: B.next_loss(m(ctx[i]), ctx[i], nxt[i]),
                      lambda mm: float(B.next_loss(mm(ctx), ctx, nxt)), 3, 0.1, 5, 0)

    m, (scores, states) = run(B.fit_epochs)
    assert sorted(scores) == [1, 2, 3] and sorted(states) == [1, 2, 3]
    assert scores[3] < scores[1]                                         # the training loss falls
    assert not torch.equal(states[1]["A"], states[3]["A"])               # copies, not the live tensors
    # fit_best_epoch: the same seeded run, left at the epoch of the largest select value (here the loss: epoch 1)
    _, (m2, scores2) = run(IC.fit_best_epoch)
    assert scores2 == scores and torch.equal(m2.A, states[1]["A"]) and torch.equal(m2.b, states[1]["b"])
