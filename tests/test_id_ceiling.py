"""benchmarks/id_ceiling.py: rankers that read only the context's Semantic ID, by hand on tiny tables."""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import id_ceiling as IC  # noqa: E402

# four tracks, two levels: tracks 0 and 1 share their first code, 2 and 3 theirs
CODES = np.array([[0, 1], [0, 2], [1, 1], [1, 3]])
POP = np.array([3.0, 1.0, 2.0, 2.0])
# training (history, next): from track 0 twice to track 2, once to 1; from track 2 once to 3
PAIRS = [([0], 2), ([0], 2), ([0], 1), ([2], 3)]


def test_prefix_keys_number_each_levels_prefixes():
    assert IC.prefix_keys(CODES).tolist() == [[0, 0], [0, 1], [1, 2], [1, 3]]
    # the same second code under another first code is another prefix
    assert IC.prefix_keys(np.array([[5, 7], [6, 7], [5, 7]])).tolist() == [[0, 0], [1, 1], [0, 0]]


def test_ngram_scores_by_hand():
    keys = IC.prefix_keys(CODES)
    tables = IC.ngram_tables(keys, POP, PAIRS)
    # level 1 from track 0's prefix (0): answers' first prefixes 1, 1, 0 -> P(0) = 1/3, P(1) = 2/3; within their
    # prefix by popularity: tracks 0, 1 of prefix 0 hold 3/4, 1/4; tracks 2, 3 of prefix 1 hold 1/2, 1/2
    level1 = np.array([1 / 3 * 3 / 4, 1 / 3 * 1 / 4, 2 / 3 / 2, 2 / 3 / 2])
    np.testing.assert_allclose(np.exp(IC.ngram_scores(keys, tables, 0, (1.0, 0.0), POP)), level1)
    # level 2 = the whole ID: track 0's own next plays, 2 twice and 1 once
    level2 = np.array([0, 1 / 3, 2 / 3, 0])
    np.testing.assert_allclose(np.exp(IC.ngram_scores(keys, tables, 0, (0.0, 1.0), POP)), level2, atol=1e-12)
    np.testing.assert_allclose(np.exp(IC.ngram_scores(keys, tables, 0, (0.5, 0.5), POP)), (level1 + level2) / 2)
    # track 1 was never a context, but its first prefix (0) was, track 0's: level 2 drops out, its weight
    # renormalised away
    np.testing.assert_allclose(np.exp(IC.ngram_scores(keys, tables, 1, (0.5, 0.5), POP)), level1)
    # track 3 was never a context, and level 1 is weighted 0: no term at all, the popularity share alone
    np.testing.assert_allclose(np.exp(IC.ngram_scores(keys, tables, 3, (0.0, 1.0), POP)), POP / POP.sum())


def test_weight_grid_is_the_simplex_in_steps():
    g = IC.weight_grid(3, 4)
    assert len(g) == 15 and all(sum(w) == pytest.approx(1) for w in g) and len(set(g)) == 15
    assert IC.weight_grid(2, 2) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]


def test_factorised_starts_at_popularity_and_learns_the_transitions():
    keys = IC.prefix_keys(CODES)
    m = IC.IDFactorised(keys, np.log(POP / POP.sum()), dim=4, seed=0)
    with torch.no_grad():
        s0 = m(torch.arange(4)[:, None])
    # small vectors at the start: every context ranks by popularity (the bias), within a hair
    np.testing.assert_allclose(s0.numpy(), np.tile(np.log(POP / POP.sum()), (4, 1)), atol=1e-2)
    calls = []

    def select(model):     # HR@1 of track 0's context on its most frequent next play
        calls.append(1)
        with torch.no_grad():
            s = model(torch.tensor([[0]]))[0].clone()
        s[0] = -float("inf")
        return float(s.argmax() == 2)

    m, hist = IC.fit_factorised(keys, POP, PAIRS * 50, select, dim=4, epochs=3, lr=0.05, batch=8, seed=0)
    assert sorted(hist) == [1, 2, 3] and len(calls) == 3 and max(hist.values()) == 1.0
    with torch.no_grad():
        p = torch.softmax(m(torch.tensor([[0], [2]])), -1).numpy()
    assert p[0].argmax() == 2 and p[1].argmax() == 3          # each context's own next play comes first
    # deterministic: the same seed, the same weights
    m2, _ = IC.fit_factorised(keys, POP, PAIRS * 50, select, dim=4, epochs=3, lr=0.05, batch=8, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_code_onehot_and_the_id_logistic_reads_quality_off_the_codes():
    import baselines as B
    x = IC.code_onehot(CODES)
    # K = 4 (largest code 3): level 0 in columns 0..3, level 1 in 4..7
    assert x.tolist() == [[1, 0, 0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0, 1, 0],
                          [0, 1, 0, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0, 1]]
    # plays where the first code decides: track 0 (code 0) 9 long listens of 10, track 2 (code 1) 1 of 10, tracks 1
    # and 3 never played; the logistic regression on the codes puts both code-0 tracks above both code-1 tracks
    long, skip = np.array([9.0, 0.0, 1.0, 0.0]), np.array([1.0, 0.0, 9.0, 0.0])
    s = B.audio_logistic_from_plays(x, long, skip)
    assert s[0] > s[2] and s[1] > s[3] and min(s[0], s[1]) > max(s[2], s[3])
    rate = B.long_listen_rate(long, skip)
    assert rate[1] == rate[3] == 0.5        # the rate cannot tell the two cold tracks apart; the codes can


def test_play_matrix_and_a_history_the_model_reads():
    assert IC.play_matrix([[4, 5, 6], [7]], 2).tolist() == [[6, 5], [7, -1]]
    assert IC.play_matrix([[4, 5, 6]], 1).tolist() == [[6]]
    keys = IC.prefix_keys(CODES)
    # the context is always track 0; the play before it decides: after 1 then 0 comes 2, after 3 then 0 comes 3
    pairs = [([1, 0], 2), ([3, 0], 3)] * 60
    m, _ = IC.fit_factorised(keys, POP, pairs, lambda model: 0.0, dim=4, epochs=4, lr=0.05, batch=8, seed=0,
                             history=2)
    with torch.no_grad():
        s = m(IC.play_matrix([[1, 0], [3, 0], [0]], 2))
    assert s[0].argmax() == 2 and s[1].argmax() == 3
    # a prompt without the older play reads the context alone: its column padded with -1 counts nothing
    with torch.no_grad():
        alone = m(IC.play_matrix([[0]], 1))
    torch.testing.assert_close(s[2:], alone)
    # history 1 has no weights for older plays: the model of the context alone
    assert IC.IDFactorised(keys, np.log(POP / POP.sum()), 4, 0).older.numel() == 0


def test_unit_matrix_numbers_known_units_and_pads():
    assert IC.request_units([["genre", "rock"], ["energy", "low"], ["bpm", 125]]) == [
        "genre=rock", "energy=low", "bpm=125"]
    vocab = {"genre=rock": 0, "energy=low": 1, "genre=jazz": 2}
    got = IC.unit_matrix([["genre=rock", "energy=low"], ["genre=jazz"], ["bpm=125"]], vocab)
    assert got.tolist() == [[0, 1], [2, -1], [-1, -1]]     # a unit no training request had counts nothing


def test_request_ranker_multiplies_its_attributes():
    """Trained on single-attribute requests only, it ranks the track that has both attributes first when asked for
    both: the units' scores add, their softmax factors multiply (a product of experts)."""
    keys = IC.prefix_keys(CODES)
    vocab = {"genre=a": 0, "mood=b": 1}
    # genre a: tracks 0 and 1 (first code 0); mood b: tracks 1 and 3; both: track 1 alone
    reqs = [["genre=a"], ["mood=b"]] * 40
    targets = torch.tensor([[0.5, 0.5, 0, 0], [0, 0.5, 0, 0.5]] * 40)
    m0 = IC.IDRequests(keys, 2, dim=4, seed=0)
    with torch.no_grad():
        s0 = m0(IC.unit_matrix([[]], vocab))
    assert torch.equal(s0, torch.zeros(1, 4))              # no units: the bias alone, 0 at the start
    m, hist = IC.fit_requests(keys, 2, IC.unit_matrix(reqs, vocab), targets, lambda model: 0.0, dim=4, epochs=20,
                              lr=0.05, batch=16, seed=0)
    with torch.no_grad():
        p = torch.softmax(m(IC.unit_matrix([["genre=a"], ["mood=b"], ["genre=a", "mood=b"]], vocab)), -1).numpy()
    assert set(np.argsort(-p[0])[:2]) == {0, 1} and set(np.argsort(-p[1])[:2]) == {1, 3}
    # never asked for both, yet it puts the one track with both first, surer of it than of either attribute alone
    assert p[2].argmax() == 1 and p[2][1] > max(p[0][1], p[1][1])
    assert sorted(hist) == list(range(1, 21))


def test_precision_of_and_attribute_examples(tmp_path):
    # two requests: relevant {0, 1} and {3}; scores rank 1, 0, 2, 3 and 3, 2, 1, 0; K = 10 > 4 tracks: every track
    # listed, so precision@10 is |relevant| / 10
    q = [({0, 1}, None), ({3}, None)]
    S = [np.array([2.0, 3.0, 1.0, 0.0]), np.array([0.0, 1.0, 2.0, 3.0])]
    assert IC.precision_of(lambda i: S[i], q) == [pytest.approx(0.2), pytest.approx(0.1)]
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "x", "answer": "<a_0>", "task": "attributes", "attributes": [["genre", "rock"]], '
                    '"track_id": "t1"}\n{"prompt": "y", "answer": "<a_0>", "task": "next_track", "track_id": "t0"}\n')
    assert IC.attribute_examples(str(tmp_path), "train.jsonl", {"t0": 0, "t1": 1}) == [([["genre", "rock"]], 1)]
    from common import UserError
    with pytest.raises(UserError, match="line 1: an attribute request without"):
        IC.attribute_examples(str(tmp_path), "train.jsonl", {"t0": 0})
