"""Every baseline on a small hand-made log with a known answer."""
import math

import numpy as np
import pytest
import torch

import baselines as B
from evaluate import top_k_pessimistic

# six tracks, two genres; training-window popularity
GENRES = [["rock"], ["rock"], ["jazz"], ["rock", "jazz"], ["jazz"], ["j-pop"]]
POP = np.array([5.0, 1.0, 9.0, 0.0, 3.0, 7.0])


def test_genre_popularity_known_answer():
    masks = B.genre_masks(GENRES)
    assert masks["rock"].tolist() == [True, True, False, True, False, False]
    # context track 1 (rock): rock tracks by popularity (0, then 3 with 0 plays), then the rest by popularity
    s = B.genre_popularity_scores(POP, masks["rock"])
    assert top_k_pessimistic(s, {3}, 6, exclude=[1]) == [0, 3, 2, 5, 4]
    # plain popularity would have put the relevant rock track last
    assert top_k_pessimistic(POP, {3}, 6, exclude=[1]) == [2, 5, 0, 4, 3]


def test_genre_first_keeps_ties_and_order():
    s = B.genre_first(np.array([2.0, 2.0, -1.0, 5.0]), np.array([False, True, True, False]))
    assert top_k_pessimistic(s, {2}, 4) == [1, 2, 3, 0]          # genre first, each group by score
    t = B.genre_first(np.zeros(3), np.array([True, False, True]))
    assert top_k_pessimistic(t, {0}, 3) == [2, 0, 1]               # a tie inside the genre stays pessimistic


def test_genre_content_knn_known_answer():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [0.05, 0.0], [3.0, 3.0], [0.2, 0.0], [9.0, 9.0]])
    masks = B.genre_masks(GENRES)
    # context 0 (rock): nearest overall are 2 (jazz), 1 (rock), 4 (jazz); restricted to rock: 1, then 3
    assert top_k_pessimistic(B.content_knn_scores(x, 0), set(), 3, exclude=[0]) == [2, 1, 4]
    assert top_k_pessimistic(B.genre_content_knn_scores(x, 0, masks["rock"]), set(), 5, exclude=[0]) == [1, 3, 2, 4, 5]


def test_item_knn_and_random():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [0.0, 0.3]])
    assert top_k_pessimistic(B.content_knn_scores(x, 0), {1}, 3, exclude=[0]) == [1, 3, 2]
    pop = np.array([1.0, 9.0, 3.0, 0.0])
    cooc = {0: {3: 2.0, 2: 1.0}}
    assert top_k_pessimistic(B.item_knn_scores(cooc, pop, 0), {3}, 3, exclude=[0]) == [3, 2, 1]   # co-listens first
    assert top_k_pessimistic(B.item_knn_scores(cooc, pop, 1), {2}, 3, exclude=[1]) == [2, 0, 3]   # by popularity
    r = B.random_scores(4, 0, seed=1)
    assert np.array_equal(r, B.random_scores(4, 0, seed=1)) and not np.array_equal(r, B.random_scores(4, 1, seed=1))


def test_genre_named_in_a_request():
    masks = B.genre_masks(GENRES)
    assert B.genre_in_request("Queue up some chill j-pop songs", masks) == "j-pop"   # not "pop", not "rock"
    assert B.genre_in_request("What's a good upbeat Rock track?", masks) == "rock"
    assert B.genre_in_request("Suggest a rockabilly song", masks) is None             # whole words only


def test_long_listen_rate_worked_values():
    r = B.long_listen_rate([0, 3, 0, 10], [0, 1, 2, 0])
    assert r.tolist() == pytest.approx([0.5, 4 / 6, 0.25, 11 / 12])


def test_pair_accuracy_counts_ties_as_half():
    scores = np.array([0.9, 0.1, 0.5, 0.5])
    assert B.pair_accuracy(scores, np.array([0, 1, 2]), np.array([1, 0, 3])).tolist() == [1.0, 0.0, 0.5]


def test_logistic_regression_exact_solutions():
    # an intercept-only fit on weighted labels: 3 positives, 1 negative -> p = 3/4, b = ln 3
    w, b = B.fit_logistic(np.zeros((2, 1)), [1, 0], weight=[3, 1], l2=1e-3)
    assert b == pytest.approx(math.log(3), abs=1e-6) and w == pytest.approx([0.0], abs=1e-9)
    # at the optimum the regularised gradient is zero (Newton converged)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] - 0.5 * x[:, 1] + rng.normal(scale=0.5, size=200) > 0).astype(float)
    w, b = B.fit_logistic(x, y, l2=0.1)
    p = 1 / (1 + np.exp(-(x @ w + b)))
    assert np.abs(x.T @ (p - y) + 0.1 * w).max() < 1e-8 and abs((p - y).sum()) < 1e-8
    assert w[0] > 0 > w[1]


def test_audio_logistic_learns_which_sound_is_skipped():
    # feature 0 high -> listened to; low -> skipped. Track 3 was never played: scored from its features
    feats = np.array([[1.0, 0.0], [0.8, 1.0], [-1.0, 0.0], [2.0, 0.5], [-0.9, 1.0]])
    long = np.array([9, 6, 1, 0, 0])
    skip = np.array([1, 2, 8, 0, 5])
    s = B.audio_logistic_from_plays(feats, long, skip)
    assert s[3] > s[0] > s[2] and s[1] > s[4]
    pairs_c, pairs_r = np.array([0, 1, 0]), np.array([2, 4, 4])
    u = B.audio_logistic_from_pairs(feats, pairs_c, pairs_r)
    assert u[3] > u[0] > u[2] and B.pair_accuracy(u, pairs_c, pairs_r).tolist() == [1.0, 1.0, 1.0]


def test_preference_scores_fit_on_plays_and_on_pairs():
    feats = np.array([[1.0], [0.0], [-1.0]])
    s = B.preference_scores(feats, plays=np.array([10, 4, 1]), long=np.array([5, 1, 0]), skip=np.array([1, 2, 1]),
                            pairs_chosen=np.array([0, 0, 1]), pairs_rejected=np.array([2, 1, 2]))
    assert set(s) == {"play count", "long-listen rate", "audio logistic", "play count (pairs)",
                      "long-listen rate (pairs)", "audio logistic (pairs)"}
    assert s["play count"].tolist() == [10, 4, 1]
    assert s["play count (pairs)"].tolist() == [2, 2, 2]                         # appearances in the pairs
    assert s["long-listen rate (pairs)"].tolist() == pytest.approx([3 / 4, 2 / 4, 1 / 4])
    assert s["long-listen rate"].tolist() == pytest.approx([6 / 8, 2 / 5, 1 / 3])


def test_content_popularity_worked_example():
    x, plays, one_genre = np.array([[0.0], [1.0], [2.0]]), np.array([0.0, 9.0, 99.0]), np.ones(3, bool)
    # tau 1: track 1 scores log 10 - 1 = 1.30, track 2 log 100 - 4 = 0.61; tau 4: 2.05 against 3.61
    s = B.content_popularity_scores(x, 0, plays, one_genre, 1.0)
    assert s[1] - s[2] == pytest.approx(math.log(10) - 1 - (math.log(100) - 4))
    assert top_k_pessimistic(s, set(), 2, exclude=[0]) == [1, 2]
    assert top_k_pessimistic(B.content_popularity_scores(x, 0, plays, one_genre, 4.0), set(), 2, exclude=[0]) == [2, 1]
    # the limits: a wide kernel ranks as genre popularity, a narrow one as genre content kNN (genre first in both)
    xs = np.array([[0.0, 0.0], [0.1, 0.0], [0.05, 0.0], [3.0, 3.0], [0.2, 0.0], [9.0, 9.0]])
    masks = B.genre_masks(GENRES)
    wide = B.content_popularity_scores(xs, 1, POP, masks["rock"], 1e9)
    assert top_k_pessimistic(wide, set(), 5, exclude=[1]) == \
        top_k_pessimistic(B.genre_popularity_scores(POP, masks["rock"]), set(), 5, exclude=[1])
    narrow = B.content_popularity_scores(xs, 1, POP, masks["rock"], 1e-6)
    assert top_k_pessimistic(narrow, set(), 5, exclude=[1]) == \
        top_k_pessimistic(B.genre_content_knn_scores(xs, 1, masks["rock"]), set(), 5, exclude=[1])


def test_content_colisten_worked_example():
    x, plays, one_genre = np.array([[0.0], [1.0], [2.0]]), np.array([0.0, 9.0, 99.0]), np.ones(3, bool)
    cooc = {0: {1: 9.0}, 1: {0: 9.0}}
    n01 = B.colisten_counts(cooc, 0, 3)
    assert n01.tolist() == [0.0, 9.0, 0.0] and B.colisten_counts(cooc, 2, 3).tolist() == [0.0, 0.0, 0.0]
    # lam 0 is content x popularity: track 1 log 10 - 1/4 = 2.05, track 2 log 100 - 4/4 = 3.61
    s0 = B.content_colisten_scores(x, 0, plays, n01, one_genre, 4.0, 0.0)
    assert np.allclose(s0, B.content_popularity_scores(x, 0, plays, one_genre, 4.0))
    assert top_k_pessimistic(s0, set(), 2, exclude=[0]) == [2, 1]
    # lam 1: track 1 gains log(1 + 9) = 2.30 and passes track 2 (4.35 against 3.61)
    s1 = B.content_colisten_scores(x, 0, plays, n01, one_genre, 4.0, 1.0)
    assert s1[1] - s1[2] == pytest.approx(math.log(10) - 0.25 + math.log(10) - (math.log(100) - 1.0))
    assert top_k_pessimistic(s1, set(), 2, exclude=[0]) == [1, 2]
    # the genre still comes first: co-listens never lift a track of another genre above the context's genre
    rock = np.array([True, False, True])
    assert top_k_pessimistic(B.content_colisten_scores(x, 0, plays, n01, rock, 4.0, 4.0), set(), 2,
                             exclude=[0]) == [2, 1]
    # item kNN reads the same counts: co-listens first, popularity / (max + 1) breaking ties
    assert B.item_knn_scores(cooc, plays, 0).tolist() == pytest.approx([0.0, 9.0 + 9.0 / 100, 99.0 / 100])


def test_select_tau_lambda_takes_co_listening_only_where_it_helps():
    x, plays, one_genre = np.array([[0.0], [1.0], [2.0]]), np.array([0.0, 9.0, 99.0]), np.ones(3, bool)
    cooc = {0: {1: 9.0}}
    # next play 1 after 0: at width 4 only co-listening puts it first; at width 1 distance alone does
    (tau, lam), hr = B.select_tau_lambda(x, plays, cooc, [(0, {1})], lambda c: one_genre, taus=(4.0,),
                                         lams=(0.0, 1.0), k=1)
    assert hr == {(4.0, 0.0): 0.0, (4.0, 1.0): 1.0} and (tau, lam) == (4.0, 1.0)
    (tau, lam), hr = B.select_tau_lambda(x, plays, cooc, [(0, {1})], lambda c: one_genre, taus=(1.0, 4.0),
                                         lams=(0.0, 1.0), k=1)
    assert (tau, lam) == (1.0, 0.0) and hr[(1.0, 1.0)] == 1.0    # ties go to the first: lam 0 before lam 1
    # next play 2, popular and never co-listened: co-listening can only hurt, lam 0 is kept
    (tau, lam), _ = B.select_tau_lambda(x, plays, cooc, [(0, {2})], lambda c: one_genre, taus=(4.0,),
                                        lams=(0.0, 1.0), k=1)
    assert (tau, lam) == (4.0, 0.0)
    with pytest.raises(B.UserError, match="no validation"):
        B.select_tau_lambda(x, plays, cooc, [], lambda c: one_genre)


def test_select_tau_takes_the_best_validation_width():
    # context 0; the next play is track 2, far but popular: only a wide kernel ranks it in the top 1
    x, plays, one_genre = np.array([[0.0], [1.0], [2.0]]), np.array([0.0, 9.0, 99.0]), np.ones(3, bool)
    tau, hr = B.select_tau(x, plays, [(0, {2})], lambda c: one_genre, taus=(1.0, 4.0, 16.0), k=1)
    assert hr == {1.0: 0.0, 4.0: 1.0, 16.0: 1.0} and tau == 4.0          # ties go to the first width
    tau, hr = B.select_tau(x, plays, [(0, {1})], lambda c: one_genre, taus=(1.0, 4.0), k=1)
    assert hr == {1.0: 1.0, 4.0: 0.0} and tau == 1.0
    with pytest.raises(B.UserError, match="no validation"):
        B.select_tau(x, plays, [], lambda c: one_genre)


def test_neighbour_ranks_by_hand():
    x = np.array([[0.0], [1.0], [3.0], [0.5]])
    in_genre = np.array([[1, 1, 1, 0]] * 3 + [[0, 0, 0, 1]]) > 0          # tracks 0-2 one genre, 3 another
    # context 0: track 1 nearest (1), track 2 second, past ranks=1 (2); itself and track 3 the last bucket (3)
    want = [[3, 1, 2, 3], [1, 3, 2, 3], [2, 1, 3, 3], [3, 3, 3, 3]]
    assert B.neighbour_ranks(x, in_genre, ranks=1).tolist() == want
    assert B.neighbour_ranks(x, in_genre, ranks=5).tolist()[0] == [7, 1, 2, 7]
    # equal distances: the lower row ranks first
    assert B.neighbour_ranks(np.array([[0.0], [1.0], [-1.0]]), np.ones((3, 3), bool), ranks=5).tolist()[0] == \
        [7, 1, 2]


def test_neighbour_ranks_model_starts_at_genre_popularity_and_reads_its_weights():
    x, pop = np.array([[0.0], [1.0], [3.0], [0.5]]), np.array([4.0, 0.0, 9.0, 1.0])
    in_genre = np.array([[1, 1, 1, 0]] * 3 + [[0, 0, 0, 1]]) > 0
    m = B.NeighbourRanks(x, pop, in_genre, ranks=1)
    with torch.no_grad():
        np.testing.assert_allclose(m(torch.tensor([0]))[0].numpy(), np.log1p(pop) + B.RANKER_START_GENRE * in_genre[0],
                                   rtol=1e-6)
        m.w.copy_(torch.tensor([0.0, 5.0, 2.0, -1.0]))          # w[1] the nearest, w[2] past ranks, w[3] the rest
        got = m(torch.tensor([0]))[0].numpy()
    want = np.log1p(pop) + B.RANKER_START_GENRE * in_genre[0] + np.array([-1.0, 5.0, 2.0, -1.0])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_fit_neighbour_ranks_learns_the_nearest_neighbour_and_keeps_the_best_epoch():
    """Next plays that are always the context's nearest in-genre neighbour: w[1] rises above every other rank's
    weight; the model comes back at the epoch of the lowest validation cross-entropy, which the trace records."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2))
    genre = np.repeat([0, 1, 2], 10)
    in_genre = genre[:, None] == genre[None, :]
    rank = B.neighbour_ranks(x, in_genre, ranks=B.RANKER_RANKS).numpy()
    nearest = {c: int(np.argmin(rank[c])) for c in range(30)}
    train = [(c, nearest[c]) for c in range(30)] * 20
    val = [(c, nearest[c]) for c in range(0, 30, 3)]
    m, trace = B.fit_neighbour_ranks(B.NeighbourRanks(x, np.ones(30), in_genre, colisten=np.zeros((30, 30))), train,
                                     val, epochs=4, lr=0.1, batch=32, seed=0)
    assert sorted(trace) == [1, 2, 3, 4] and trace[4] < trace[1]
    assert m.w[1] > m.w[2:].max()                       # the nearest neighbour's weight above every farther one
    v_ctx, v_nxt = torch.tensor([c for c, _ in val]), torch.tensor([t for _, t in val])
    with torch.no_grad():
        kept = float(B.next_loss(m(v_ctx), v_ctx, v_nxt))
    assert abs(kept - min(trace.values())) < 1e-6        # the returned weights are the kept epoch's
    # deterministic: the same seed, the same weights
    m2, trace2 = B.fit_neighbour_ranks(B.NeighbourRanks(x, np.ones(30), in_genre, colisten=np.zeros((30, 30))),
                                       train, val, epochs=4, lr=0.1, batch=32, seed=0)
    assert trace2 == trace and torch.equal(m2.w, m.w)
    with pytest.raises(B.UserError):
        B.fit_neighbour_ranks(B.NeighbourRanks(x, np.ones(30), in_genre), train, [], epochs=1)


def test_fit_epochs_patience_stops_after_epochs_without_a_lower_value():
    """Validation values 5, 4, 4.5, 4.6, 3: with patience 2 the fit stops after epoch 4 (two epochs above 4), its
    epochs the full run's to the bit (the same seeded order); with patience 0 all five run and epoch 5 is lowest,
    the case a stop can miss. Ties do not count as lower: 5, 4, 4, 4 stops at epoch 4 too."""
    x = np.array([[0.0], [1.0], [2.0]])
    ctx, nxt = torch.tensor([0, 1, 2, 0] * 3), torch.tensor([1, 2, 1, 2] * 3)

    def run(values, patience):
        m = B.NeighbourRanks(x, np.zeros(3), np.ones((3, 3), bool), colisten=np.zeros((3, 3)))
        it = iter(values)
        return B.fit_epochs(m, len(ctx), lambda i: B.next_loss(m(ctx[i]), ctx[i], nxt[i]), lambda mm: next(it),
                            len(values), 0.1, 4, 0, patience)

    full, full_states = run([5.0, 4.0, 4.5, 4.6, 3.0], 0)
    early, early_states = run([5.0, 4.0, 4.5, 4.6, 3.0], 2)
    assert list(full) == [1, 2, 3, 4, 5] and list(early) == [1, 2, 3, 4]
    assert all(torch.equal(early_states[e][k], full_states[e][k]) for e in early for k in early_states[e])
    assert list(run([5.0, 4.0, 4.0, 4.0, 1.0], 2)[0]) == [1, 2, 3, 4]
    assert list(run([5.0, 4.0, 4.5, 3.9, 3.8], 2)[0]) == [1, 2, 3, 4, 5]   # a lower value resets the count


def test_neighbour_ranks_reads_co_listening_with_its_power():
    """With colisten: + lam log(1 + n_ct), lam 0 at the start (the form without it) and trainable."""
    x, pop = np.array([[0.0], [1.0], [3.0]]), np.zeros(3)
    co = np.array([[0, 3, 0], [3, 0, 1], [0, 1, 0]], dtype=float)
    m = B.NeighbourRanks(x, pop, np.ones((3, 3), bool), ranks=1, colisten=co)
    plain = B.NeighbourRanks(x, pop, np.ones((3, 3), bool), ranks=1)
    assert m.lam.requires_grad and not plain.lam.requires_grad
    with torch.no_grad():
        assert torch.equal(m(torch.tensor([0, 1])), plain(torch.tensor([0, 1])))
        m.lam.fill_(2.0)
        got = m(torch.tensor([0]))[0] - plain(torch.tensor([0]))[0]
    np.testing.assert_allclose(got.numpy(), [0.0, 2 * np.log(4.0), 0.0], rtol=1e-6)


def test_sparse_neighbour_ranks_is_the_dense_form_to_the_bit():
    """NeighbourRanksSparse (no (N, N) tables) against NeighbourRanks on a catalogue with tracks in two genres, tied
    distances and a genre smaller than the ranks kept: the same rank rows, scores, trained numbers and trace."""
    rng = np.random.default_rng(3)
    n = 40
    x = np.round(rng.normal(size=(n, 2)), 1)                                 # rounded: some distances tie
    primary = rng.integers(0, 3, n)
    primary[-3:] = 3                                                           # a genre of 3 tracks: fewer than ranks
    members = np.zeros((n, 4), bool)
    members[np.arange(n), primary] = True
    members[::5, 0] = True                                                     # every fifth track lists genre 0 too
    in_genre = members[:, primary].T                                           # (N, N) row c: c's primary genre
    cooc = {i: {int(j): float(rng.integers(1, 5)) for j in rng.choice(n, 4, replace=False) if j != i}
            for i in range(0, n, 2)}
    colisten = np.stack([B.colisten_counts(cooc, c, n) for c in range(n)])
    pop = rng.integers(0, 30, n).astype(float)
    dense = B.NeighbourRanks(x, pop, in_genre, ranks=5, colisten=colisten)
    sparse = B.NeighbourRanksSparse(x, pop, members, primary, ranks=5, cooc=cooc)
    ctx = torch.arange(n)
    assert torch.equal(sparse.rank_rows(ctx, torch.as_tensor(in_genre)), dense.rank)
    assert torch.equal(sparse.log_colisten_rows(ctx), dense.log_colisten)
    with torch.no_grad():
        for m in (dense, sparse):
            m.w.copy_(torch.linspace(3.0, -1.0, 8))
            m.lam.fill_(0.7)
        assert torch.equal(sparse(ctx), dense(ctx))
    train = [(int(c), int(t)) for c, t in zip(rng.integers(0, n, 300), rng.integers(0, n, 300)) if c != t]
    val = [(int(c), int(t)) for c, t in zip(rng.integers(0, n, 40), rng.integers(0, n, 40)) if c != t]
    fits = [B.fit_neighbour_ranks(m, train, val, epochs=3, lr=0.1, batch=32, seed=0, chunk=chunk)
            for m, chunk in ((B.NeighbourRanks(x, pop, in_genre, ranks=5, colisten=colisten), None),
                             (B.NeighbourRanksSparse(x, pop, members, primary, ranks=5, cooc=cooc), None))]
    (md, td), (ms, ts) = fits
    assert td == ts and all(torch.equal(a, b) for a, b in zip(md.parameters(), ms.parameters()))
    # the validation loss in chunks (the sparse form's, on large catalogues) is the same mean, to rounding
    _, tc = B.fit_neighbour_ranks(B.NeighbourRanksSparse(x, pop, members, primary, ranks=5, cooc=cooc), train, val,
                                  epochs=3, lr=0.1, batch=32, seed=0, chunk=7)
    assert all(abs(tc[e] - td[e]) < 1e-5 for e in td)


def test_content_colisten_grid_rows_are_the_baseline_to_the_bit():
    rng = np.random.default_rng(0)
    x, pop = rng.normal(size=(40, 3)), rng.integers(0, 30, 40).astype(float)
    co, in_genre = rng.integers(0, 4, 40).astype(float), rng.random(40) < 0.4
    s = B.content_colisten_grid(x, 5, pop, co, in_genre)
    grid = [(t, lam) for t in B.CONTENT_TAUS for lam in B.COLISTEN_LAMBDAS]
    assert s.shape == (len(grid), 40)
    for row, (tau, lam) in zip(s, grid):
        assert (row == B.content_colisten_scores(x, 5, pop, co, in_genre, tau, lam)).all()


def test_select_tau_lambda_is_best_on_validation():
    """The settings scored together give best_on_validation's choice and HR@10 per setting, exactly (coarse
    features and popularity: many ties, which the pessimistic rule must break alike)."""
    rng = np.random.default_rng(1)
    n = 60
    x, pop = rng.integers(0, 3, (n, 2)).astype(float), rng.integers(0, 5, n).astype(float)
    genre = rng.integers(0, 3, n)
    cooc = {i: {int(j): int(rng.integers(1, 4)) for j in rng.choice(n, 5, replace=False)} for i in range(n)}
    queries = [(int(c), {int(r)}) for c, r in rng.integers(0, n, (80, 2)) if c != r]

    def in_genre_of(c):
        return genre == genre[c]

    grid = [(t, lam) for t in B.CONTENT_TAUS for lam in B.COLISTEN_LAMBDAS]
    want = B.best_on_validation(lambda p, c: B.content_colisten_scores(
        x, c, pop, B.colisten_counts(cooc, c, n), in_genre_of(c), *p), grid, queries)
    assert B.select_tau_lambda(x, pop, cooc, queries, in_genre_of) == want
    assert len(set(want[1].values())) > 1          # the settings differ, so the choice means something


def test_select_tau_from_grid_is_select_tau():
    """content x popularity's width read off content x co-listening's table (its lam-0 column) is select_tau's
    choice, and its HR@10 per width select_tau's exactly, on coarse features with many ties and on fine ones."""
    for seed, levels in ((2, 3), (3, 0)):
        rng = np.random.default_rng(seed)
        n = 60
        x = rng.integers(0, levels, (n, 2)).astype(float) if levels else rng.normal(size=(n, 2))
        pop, genre = rng.integers(0, 5, n).astype(float), rng.integers(0, 3, n)
        cooc = {i: {int(j): int(rng.integers(1, 4)) for j in rng.choice(n, 5, replace=False)} for i in range(n)}
        queries = [(int(c), {int(r)}) for c, r in rng.integers(0, n, (80, 2)) if c != r]

        def in_genre_of(c):
            return genre == genre[c]

        want = B.select_tau(x, pop, queries, in_genre_of)
        assert B.select_tau_from_grid(B.select_tau_lambda(x, pop, cooc, queries, in_genre_of)[1]) == want
        assert len(set(want[1].values())) > 1
