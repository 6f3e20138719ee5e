"""rvq.py: k-means, residual quantisation, unique IDs, preprocessing, artifacts, report, CLI."""
import json
import math
import os

import numpy as np
import pytest
import torch

import formats
import rvq
import sessions
import signals
import tasks
from common import UserError, read_json

SQUARE = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)  # mean 0


def blobs():
    """4 blobs far apart, 4 points each at centre +- unit steps: each blob's mean is its centre exactly."""
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]], dtype=torch.float64)
    x = (centres[:, None, :] + SQUARE[None, :, :]).reshape(-1, 2)  # (16,2), rows 4b..4b+3 = blob b
    return centres, x


def scaled_books():
    """(3,4,2) codebooks at scales 100, 10, 1: greedy encoding of any codebook sum is exact."""
    return torch.stack([100 * SQUARE, 10 * SQUARE, SQUARE])


def all_codes(k=4, levels=3):
    return torch.cartesian_prod(*[torch.arange(k)] * levels)  # (K^L, L)


def sort_rows(t):
    return t[np.lexsort(t.numpy().T[::-1])]


# ----------------------------------------------------------------------------- k-means

def test_kmeans_recovers_separated_blobs_exactly():
    centres, x = blobs()
    cents, assign = rvq.kmeans(x, 4, seed=0)
    assert torch.equal(sort_rows(cents), sort_rows(centres))
    labels = assign.reshape(4, 4)
    assert (labels == labels[:, :1]).all() and len(set(labels[:, 0].tolist())) == 4
    assert torch.equal(cents[assign[::4]], centres)
    nearest, _ = rvq.nearest(x, cents)
    assert torch.equal(nearest, assign)  # returned assignment is the nearest centroid


def test_kmeans_pp_picks_distinct_points():
    distinct = torch.arange(5, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 2.0]])  # (5,2)
    x = distinct.repeat(10, 1)  # (50,2): each point 10 times
    for seed in range(5):
        picked = rvq.kmeans_pp_init(x, 5, torch.Generator().manual_seed(seed))
        assert torch.equal(sort_rows(picked), distinct)
    # more codes than distinct points: the extra picks are other copies, never an error
    assert rvq.kmeans_pp_init(x, 7, torch.Generator().manual_seed(0)).shape == (7, 2)
    with pytest.raises(ValueError):
        rvq.kmeans_pp_init(x[:3], 4, torch.Generator().manual_seed(0))


def test_dead_code_reset_reseeds_at_largest_error():
    x = torch.tensor([[0.0], [1.0], [10.0], [4.0]], dtype=torch.float64)
    cents = torch.tensor([[0.0], [50.0], [-50.0]], dtype=torch.float64)
    assign, err = rvq.nearest(x, cents)
    assert assign.tolist() == [0, 0, 0, 0] and err.tolist() == [0.0, 1.0, 100.0, 16.0]
    new = rvq.lloyd_update(x, assign, err, cents)
    # code 0 -> mean 15/4; dead codes 1 and 2 -> the points with the largest errors, 10 then 4
    assert new[:, 0].tolist() == [3.75, 10.0, 4.0]
    # no point with positive error (fewer distinct points than codes): the dead code stays put
    same = torch.zeros(3, 1, dtype=torch.float64)
    two = torch.tensor([[0.0], [7.0]], dtype=torch.float64)
    a, e = rvq.nearest(same, two)
    assert rvq.lloyd_update(same, a, e, two)[:, 0].tolist() == [0.0, 7.0]


# ----------------------------------------------------------------------------- residual quantisation

def test_two_level_rvq_recovers_sum_of_centres():
    centres, _ = blobs()
    x = (centres[:, None, :] + 3 * SQUARE[None, :, :]).reshape(-1, 2)  # every centre1 + centre2 combination
    books = rvq.fit_rvq(x, levels=2, k=4, seed=0)
    assert torch.equal(sort_rows(books[0]), sort_rows(centres))
    assert torch.equal(sort_rows(books[1]), sort_rows(3 * SQUARE))
    assert torch.equal(rvq.decode(rvq.encode(x, books), books), x)


def test_encode_decode_round_trip():
    books = scaled_books()
    codes = all_codes()
    x = rvq.decode(codes, books)
    assert torch.equal(x[5], books[0, 0] + books[1, 1] + books[2, 1])  # codes[5] = (0, 1, 1)
    assert torch.equal(rvq.encode(x, books), codes)
    y = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 50
    c = rvq.encode(y, books)
    assert c.dtype == torch.int64 and c.shape == (20, 3)
    assert torch.equal(rvq.decode(c, books), books[0][c[:, 0]] + books[1][c[:, 1]] + books[2][c[:, 2]])


def test_fit_is_deterministic_bit_identical():
    x = torch.randn(3000, 11, generator=torch.Generator().manual_seed(1))
    a = rvq.fit_rvq(x, levels=3, k=16, seed=7)
    b = rvq.fit_rvq(x.clone(), levels=3, k=16, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, rvq.fit_rvq(x, levels=3, k=16, seed=8))
    codes = rvq.encode(x, a)
    assert torch.equal(rvq.resolve_collisions(x, codes, a)[0], rvq.resolve_collisions(x, codes, a)[0])


def test_last_only_columns_worked_example():
    """fit_rvq's docstring example: column 1 is read by the last level alone, so level 1 splits on column 0 and
    level 2 on column 1, though column 1's spread (+-5) would otherwise rival column 0's (0 vs 10)."""
    x = torch.tensor([[0.0, 5.0], [0.0, -5.0], [10.0, 5.0], [10.0, -5.0]], dtype=torch.float64)
    books = rvq.fit_rvq(x, levels=2, k=2, seed=0, last_only=[False, True])
    assert torch.equal(sort_rows(books[0]), torch.tensor([[0.0, 0.0], [10.0, 0.0]], dtype=torch.float64))
    assert torch.equal(sort_rows(books[1]), torch.tensor([[0.0, -5.0], [0.0, 5.0]], dtype=torch.float64))
    codes = rvq.encode(x, books)
    assert codes[0, 0] == codes[1, 0] != codes[2, 0] == codes[3, 0]     # level 1: the column-0 halves
    assert codes[0, 1] == codes[2, 1] != codes[1, 1] == codes[3, 1]     # level 2: the sign of column 1
    assert torch.equal(rvq.decode(codes, books), x)


def test_last_only_levels_are_those_of_the_input_without_the_columns():
    """The levels before the last, fitted with some columns last-only, are the quantiser of the input without
    those columns (zeros there), and encode gives the same codes at those levels; the last level reads them."""
    x = torch.randn(600, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    late = torch.tensor([False, False, False, False, True, True])
    books = rvq.fit_rvq(x, levels=3, k=8, seed=2, last_only=late)
    alone = rvq.fit_rvq(x[:, :4], levels=2, k=8, seed=2)
    assert torch.equal(books[:2, :, 4:], torch.zeros(2, 8, 2, dtype=torch.float64))
    assert torch.allclose(books[:2, :, :4], alone)
    assert torch.equal(rvq.encode(x, books)[:, :2], rvq.encode(x[:, :4], alone))
    assert books[2, :, 4:].abs().sum() > 0


# ----------------------------------------------------------------------------- unique IDs

def test_resolve_collisions_duplicated_rows():
    books = scaled_books()
    codes = all_codes()[::3]  # 22 distinct IDs
    x = rvq.decode(codes, books)
    x = torch.cat([x, x[[0, 0, 4, 9]]])  # row 0 three times, rows 4 and 9 twice
    greedy = rvq.encode(x, books)
    assert len(torch.unique(greedy, dim=0)) == 22
    unique, moved = rvq.resolve_collisions(x, greedy, books)
    assert moved == 4 and len(torch.unique(unique, dim=0)) == len(x)
    assert torch.equal(unique[:22], greedy[:22])  # the first copy keeps its ID (equal error: lowest row)
    assert torch.equal(unique[22:, :2], greedy[22:, :2])  # free last-level codes existed: prefixes kept


def test_resolve_collisions_keeps_lowest_error_and_picks_best_free_code():
    books = scaled_books()
    s = books[0, 0] + books[1, 0]
    x = torch.stack([s + SQUARE[0] + torch.tensor([0.0, 0.4], dtype=torch.float64),   # error 0.16
                     s + SQUARE[0]])                                                   # error 0
    codes = rvq.encode(x, books)
    assert codes.tolist() == [[0, 0, 0], [0, 0, 0]]
    unique, moved = rvq.resolve_collisions(x, codes, books)
    # row 1 is exact and stays; row 0 moves to the last-level code nearest (1, 0.4): (0, 1) = code 2
    assert moved == 1 and unique.tolist() == [[0, 0, 2], [0, 0, 0]]


def test_resolve_collisions_full_bucket_moves_up_a_level():
    books = scaled_books()
    x = rvq.decode(torch.tensor([[1, 2, 3]]), books).repeat(6, 1)  # 6 identical tracks, bucket has 4 IDs
    unique, moved = rvq.resolve_collisions(x, rvq.encode(x, books), books)
    assert moved == 5 and len(torch.unique(unique, dim=0)) == 6
    assert (unique[:, 0] == 1).all()  # never further up than needed
    assert (unique[:4, 1] == 2).all() and sorted(unique[:4, 2].tolist()) == [0, 1, 2, 3]
    assert (unique[4:, 1] != 2).all()


# ----------------------------------------------------------------------------- preprocessing

def feature_rows(keys, **cols):
    f = np.tile(np.array([0.5, 0.5, 0, -8.0, 0.05, 0.2, 0.01, 0.1, 0.5, 120.0]), (len(keys), 1))
    f[:, formats.FEATURES.index("key")] = keys
    for name, v in cols.items():
        f[:, formats.FEATURES.index(name)] = v
    return f


def test_preprocess_key_on_circle_and_scaling():
    rng = np.random.default_rng(0)
    train = feature_rows(np.tile(np.arange(12), 10), danceability=rng.uniform(0, 1, 120),
                         speechiness=rng.uniform(0, 0.5, 120), tempo=rng.uniform(60, 200, 120))
    params = signals.fit_preprocess(train)
    assert params["key_scale"] == pytest.approx(1.0)  # uniform keys: cos and sin carry 0.5 variance each
    x = signals.preprocess(train, params)
    assert x.shape == (120, 11) and signals.COLUMNS[2:4] == ("key_cos", "key_sin")
    assert np.allclose(x[:, 2:4].var(axis=0).sum(), 1.0)
    for col in ("danceability", "speechiness", "tempo"):
        j = signals.COLUMNS.index(col)
        assert np.allclose([x[:, j].mean(), x[:, j].std()], [0.0, 1.0])
    j = formats.FEATURES.index("speechiness")
    expect = (np.log(train[:, j] + signals.LOG_EPS) - params["mean"][j]) / params["std"][j]
    assert np.allclose(x[:, signals.COLUMNS.index("speechiness")], expect)
    k = signals.preprocess(feature_rows([0, 11, 6, -1]), params)
    dist = lambda a, b: np.linalg.norm(k[a] - k[b])  # noqa: E731
    assert dist(0, 1) == pytest.approx(2 * math.sin(math.pi / 12))  # neighbours on the circle
    assert dist(0, 2) == pytest.approx(2.0)  # opposite pitch classes
    assert k[3, 2:4].tolist() == [0.0, 0.0]  # no key


# ----------------------------------------------------------------------------- artifacts

def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    feats = feature_rows(rng.integers(-1, 12, 200), energy=rng.uniform(0, 1, 200),
                         instrumentalness=rng.uniform(0, 1, 200) ** 4)
    params = signals.fit_preprocess(feats)
    x = torch.from_numpy(signals.preprocess(feats, params))
    books = rvq.fit_rvq(x, levels=2, k=16, seed=0)
    rvq.save_rvq(tmp_path, books, params, 2, 16)
    first = (tmp_path / rvq.MODEL_FILE).read_bytes()
    rvq.save_rvq(tmp_path, books, params, 2, 16)
    assert (tmp_path / rvq.MODEL_FILE).read_bytes() == first  # byte-identical artifact
    model = rvq.load_rvq(tmp_path)
    assert torch.equal(model["codebooks"], books)
    assert all(np.array_equal(model["params"][name], params[name]) for name in params)
    assert model["meta"]["levels"] == 2 and model["meta"]["codebook_size"] == 16
    assert formats.read_rvq_meta(tmp_path) == {k: model["meta"][k] for k in ("levels", "codebook_size", "signals",
                                                                             "t_val")}   # the torch-free reader
    assert torch.equal(rvq.encode_new(feats, model), rvq.encode(x, books))

    codes, _ = rvq.resolve_collisions(x, rvq.encode(x, books), books)
    ids = [f"t{i}" for i in range(200)]
    formats.write_semantic_ids(tmp_path / "ids.tsv", ids, codes)
    assert (tmp_path / "ids.tsv").read_text().splitlines()[0] == "track_id\tcode_0\tcode_1"
    got_ids, got_codes = formats.load_semantic_ids(tmp_path / "ids.tsv")
    assert got_ids == ids and np.array_equal(got_codes, codes.numpy()) and got_codes.dtype == np.int64


@pytest.mark.parametrize("text, where", [
    ("id\tcode_0\nA\t1\n", "line 1"),
    ("track_id\tcode_0\tcode_1\nA\t1\t2\nB\t3\n", "line 3"),
    ("track_id\tcode_0\nA\t1\nB\tx\n", "line 3, column 'code_0'"),
    ("track_id\tcode_0\nA\t1\nA\t2\n", "line 3, column 'track_id'"),
    ("track_id\tcode_0\nA\t1\nB\t1\n", "line 3"),
    ("track_id\tcode_0\n", "line 1"),
])
def test_load_semantic_ids_errors(tmp_path, text, where):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(UserError, match=f"bad.tsv, {where}"):
        formats.load_semantic_ids(path)


def test_load_rvq_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        rvq.load_rvq(tmp_path)
    with pytest.raises(UserError, match="not found"):
        formats.read_rvq_meta(tmp_path)
    (tmp_path / rvq.MODEL_FILE).write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="rvq.safetensors"):
        rvq.load_rvq(tmp_path)
    with pytest.raises(UserError, match="rvq.safetensors: not a readable safetensors file"):
        formats.read_rvq_meta(tmp_path)


# ----------------------------------------------------------------------------- report

def test_entropy_and_purity_by_hand():
    assert rvq._entropy(torch.tensor([2, 2, 2, 2])) == pytest.approx(1.0)
    assert rvq._entropy(torch.tensor([8, 0, 0, 0])) == 0.0
    assert rvq._entropy(torch.tensor([4, 4, 0, 0])) == pytest.approx(0.5)
    code = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 1])  # majorities 2 + 1 + 2 + 1 of 8
    assert rvq.genre_purity(code, labels, 4) == 0.75


def test_quality_report_tiny_case():
    books = torch.tensor([[[0.0], [1.0], [2.0], [3.0]], [[0.0], [0.5], [9.0], [9.0]]], dtype=torch.float64)
    codes = torch.tensor([[0, 0], [0, 0], [1, 0], [1, 0], [2, 0], [2, 0], [3, 0], [3, 0]])
    x = rvq.decode(codes, books)  # (8,1): 0 0 1 1 2 2 3 3
    unique, moved = rvq.resolve_collisions(x, codes, books)
    genres = ["a", "a", "a", "b", "b", "b", "c", "b"]
    rep = rvq.quality_report(x, codes, unique, books, genres, seed=0)
    lv = rep["per_level"]
    assert rep["total_variance"] == 1.25 and lv[0]["mse"] == 0.0 and lv[0]["explained"] == 1.0
    assert lv[0]["usage"] == 1.0 and lv[0]["entropy"] == pytest.approx(1.0)
    assert lv[1]["used"] == 1 and lv[1]["usage"] == 0.25 and lv[1]["entropy"] == 0.0
    ids = rep["ids"]
    assert ids["unique_before"] == 4 and ids["collisions_before"] == 4 and ids["largest_bucket"] == 2
    assert ids["colliding_groups"] == 4 and ids["identical_feature_rows"] == 4
    assert ids["unique_after"] == 8 and ids["collisions_after"] == 0 and ids["moved"] == moved == 4
    assert ids["mse_added"] == pytest.approx(0.25 * 4 / 8)  # each mover's best free code is 0.5 away
    assert rep["genre_purity"]["code1"] == 0.75 and rep["genre_purity"]["genres"] == 3
    assert 0.5 <= rep["genre_purity"]["random"] <= 0.875  # bounds for codes of 2 tracks and these genres
    assert rep == rvq.quality_report(x, codes, unique, books, genres, seed=0)  # fixed-seed baseline
    same = rvq.quality_report(x, codes, unique, books, ["a"] * 8)
    assert same["genre_purity"]["code1"] == same["genre_purity"]["random"] == 1.0
    assert "largest bucket 2" in rvq.format_report(rep)


# ----------------------------------------------------------------------------- CLI

def test_cli_end_to_end_real_catalogue(shared_data, tmp_path, capsys):
    catalog = os.path.join(shared_data, "spotify_tracks", "union_8325.csv")
    out = tmp_path / "rvq"
    rvq.main(["train", "--catalog", catalog, "--out", str(out), "--codebook-size", "32"])
    printed = capsys.readouterr().out
    assert "genre purity of code 1" in printed and "7991 distinct after" in printed
    assert sorted(os.listdir(out)) == sorted([rvq.MODEL_FILE, formats.IDS_FILE, rvq.VECTORS_FILE, rvq.REPORT_FILE,
                                              rvq.CONFIG_FILE])
    ids, codes = formats.load_semantic_ids(out / formats.IDS_FILE)
    cat, _ = formats.load_catalog(catalog)
    assert ids == cat.track_id and codes.shape == (7991, 3) and codes.max() < 32
    # the track vectors are the quantiser's input, row for row: its greedy codes are `encode`'s below
    vectors = rvq.load_track_vectors(str(out), len(ids))
    assert vectors.shape == (7991, 11)
    greedy_of_vectors = rvq.encode(vectors.double(), rvq.load_rvq(str(out))["codebooks"]).numpy()
    rep = read_json(out / rvq.REPORT_FILE)
    assert rep["ids"]["collisions_after"] == 0 and rep["ids"]["unique_after"] == 7991
    assert rep["genre_purity"]["code1"] > rep["genre_purity"]["random"]
    assert [lv["mse"] for lv in rep["per_level"]] == sorted([lv["mse"] for lv in rep["per_level"]], reverse=True)

    rvq.main(["encode", "--rvq", str(out), "--catalog", catalog])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "track_id\tcode_0\tcode_1\tcode_2" and len(lines) == 7992
    greedy = np.array([[int(v) for v in ln.split("\t")[1:]] for ln in lines[1:]])
    assert (greedy == codes).all(axis=1).sum() == 7991 - rep["ids"]["moved"]  # only the movers differ
    assert (greedy_of_vectors == greedy).all()


def tiny_catalogue(path, n=5):
    """Write n pop tracks t0..t{n-1} with random keys and energies to path (the dataset.csv layout)."""
    rng = np.random.default_rng(0)
    cat = formats.Catalog([f"t{i}" for i in range(n)], ["s"] * n, ["a"] * n, ["al"] * n, [["pop"]] * n,
                          feature_rows(rng.integers(0, 12, n), energy=rng.uniform(0, 1, n)),
                          np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, bool), np.ones(n, np.int64))
    formats.write_catalog(cat, path)
    return path


def test_cli_user_errors(tmp_path):
    path = tiny_catalogue(tmp_path / "tiny.csv")
    with pytest.raises(UserError, match="exceeds the catalogue's 5 tracks"):
        rvq.main(["train", "--catalog", str(path), "--out", str(tmp_path / "o"), "--codebook-size", "8"])
    with pytest.raises(UserError, match="more than 2\\^2 IDs"):
        rvq.main(["train", "--catalog", str(path), "--out", str(tmp_path / "o"), "--codebook-size", "2",
                  "--levels", "2"])
    with pytest.raises(UserError, match="not found"):
        rvq.main(["train", "--catalog", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()  # nothing written on a user error
    rvq.main(["train", "--catalog", str(path), "--out", str(tmp_path / "o"), "--codebook-size", "2"])
    assert len(formats.load_semantic_ids(tmp_path / "o" / formats.IDS_FILE)[0]) == 5


def test_cli_says_which_catalogue_rows_it_skipped(tmp_path, capsys):
    path = tiny_catalogue(tmp_path / "cat.csv")
    header, first = path.read_text().splitlines()[:2]
    cells = first.split(",")
    energy = header.split(",").index("energy")
    bad = ",".join(["5", "t5"] + cells[2:energy] + ["high"] + cells[energy + 1:])     # line 7: not a number
    dup = ",".join(["6"] + cells[1:-1] + ["rock"])                                     # t0 again, another genre
    path.write_text(path.read_text() + bad + "\n" + dup + "\n")
    rvq.main(["train", "--catalog", str(path), "--out", str(tmp_path / "o"), "--codebook-size", "2"])
    note = (f"{path}: 5 tracks from 7 rows; 1 row skipped (non-numeric energy: 1), first line 7, column 'energy': "
            "non-numeric energy ('high'); 1 more row of a track_id already read merged (their genres added)")
    assert capsys.readouterr().out.splitlines()[0] == note
    rep = read_json(tmp_path / "o" / rvq.REPORT_FILE)["catalog"]
    assert (rep["rows_read"], rep["kept"], rep["dropped"], rep["duplicate_rows_merged"]) == (7, 5, 1, 1)
    rvq.main(["encode", "--rvq", str(tmp_path / "o"), "--catalog", str(path)])
    out, err = capsys.readouterr()
    assert err.strip() == note and len(out.splitlines()) == 1 + 5   # the ID table alone on stdout


# ----------------------------------------------------------------------------- signal blocks

def test_ppmi_worked_example_and_cliques():
    i, j, c = np.array([0, 1, 1, 2]), np.array([1, 0, 2, 1]), np.array([2, 2, 1, 1])
    assert signals.ppmi(i, j, c, 3) == pytest.approx([math.log(2)] * 4)
    # two cliques of co-listening {0,1,2} and {3,4,5}; track 6 never co-listened
    pairs = [(a, b) for clique in ((0, 1, 2), (3, 4, 5)) for a in clique for b in clique if a != b]
    i, j = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    emb = signals.ppmi_svd(i, j, np.full(len(pairs), 3), 7, dim=2, seed=0)
    d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    assert d[0, 1] < 1e-6 and d[3, 5] < 1e-6 and d[0, 3] > 0.1       # a clique shares one vector
    assert np.all(emb[6] == 0)                                          # cold: no vector of its own


def test_blocks_weigh_what_their_weights_say():
    rng = np.random.default_rng(0)
    blocks = {"audio": rng.normal(size=(300, 11)) * 3, "genre": np.eye(4)[rng.integers(0, 4, 300)],
              "collab": rng.normal(size=(300, 16)) * 0.1}
    params = {"signals": ["audio", "genre", "collab"], "weights": [1.0, 2.0, 0.5],
              "scales": [signals.block_scale(blocks[b]) for b in ("audio", "genre", "collab")]}
    x = signals.signal_matrix(blocks, params)
    total = x.var(axis=0)
    assert [total[:11].sum(), total[11:15].sum(), total[15:].sum()] == pytest.approx([1.0, 2.0, 0.5])
    assert signals.genre_onehot(["rock", "jazz", "polka"], ["jazz", "rock"]).tolist() == [[0, 1], [1, 0], [0, 0]]


def test_cold_map_recovers_a_linear_relation():
    rng = np.random.default_rng(0)
    content = rng.normal(size=(200, 5))
    w = rng.normal(size=(5, 3))
    emb = content @ w + 0.5
    warm = np.arange(200) < 150
    m = signals.fit_cold_map(content, emb, warm, ridge=1e-6)
    pred = np.hstack([content, np.ones((200, 1))]) @ m
    assert np.allclose(pred[~warm], emb[~warm], atol=1e-4)              # the cold tracks are placed right


def small_world(tmp_path):
    """A world of 300 tracks in 6 genres and 40 listeners, and rvq.py's options for its log: (folder, options)."""
    import world
    w = tmp_path / "world"
    world.main(["generate", "--out", str(w), "--tracks", "300", "--users", "40", "--genres", "6", "--seed", "1"])
    return w, ["--logs", str(w / "userid_trackid_timestamp.tsv"), "--id-information", str(w / "id_information.csv"),
               "--id-metadata", str(w / "id_metadata.csv")]


def test_train_with_genre_and_collab_signals(tmp_path):
    """rvq.py train on a small world: genre-pure first codes, a saved model that encodes new tracks like the
    catalogue's cold ones, the quality sheet's new entries, and one-line errors for bad options."""
    w, logs = small_world(tmp_path)
    out = tmp_path / "rvq"
    rvq.main(["train", "--catalog", str(w / "catalog.csv"), "--out", str(out), "--levels", "3",
              "--codebook-size", "8", "--signals", "audio,genre,collab", "--weights", "1,4,1"] + logs)
    rep = json.loads((out / rvq.REPORT_FILE).read_text())
    assert rep["genre_purity"]["code1"] == 1.0 and len(rep["genre_purity"]["per_level"]) == 3
    nb = rep["colisten_neighbours_sharing_code1"]
    assert nb["share"] > nb["random"]
    assert rep["signals"]["blocks"] == ["audio", "genre", "collab"] and rep["signals"]["dims"]["genre"] == 6
    model = rvq.load_rvq(out)
    assert model["meta"]["signals"] == ["audio", "genre", "collab"] and model["meta"]["t_val"] > 0
    split = read_json(out / sessions.SPLIT_FILE)   # the time split, for data.py sft to reuse, and what it came from
    assert split["t_val"] == model["meta"]["t_val"] < split["t_test"]
    assert split["inputs"] == sessions.split_inputs(logs[1], w / "catalog.csv", logs[3], logs[5])
    cat, _ = formats.load_catalog(w / "catalog.csv")
    primary = [g[0] for g in cat.genres]
    new = rvq.encode_new(cat.features, model, primary)                   # every track as if it were new
    cold = rep["tracks"] - rep["signals"]["collab_warm_tracks"]
    assert new.shape == (300, 3) and cold >= 0
    _, ids = formats.load_semantic_ids(out / formats.IDS_FILE)
    assert (new[:, 0].numpy() == ids[:, 0]).mean() > 0.95                # a new track lands in its genre's code
    with pytest.raises(UserError, match="needs --logs"):
        rvq.main(["train", "--catalog", str(w / "catalog.csv"), "--out", str(out), "--signals", "audio,collab"])
    with pytest.raises(UserError, match="--signals"):
        rvq.main(["train", "--catalog", str(w / "catalog.csv"), "--out", str(out), "--signals", "audio,moods"])
    with pytest.raises(UserError, match="--weights"):
        rvq.main(["train", "--catalog", str(w / "catalog.csv"), "--out", str(out), "--signals", "audio,genre",
                  "--weights", "1"])


def test_rate_logit_and_the_rate_the_prefixes_explain():
    # (long + 1) / (long + skip + 2): 3 long, 1 skip -> 4/6, logit log 2; never labelled -> 1/2, logit 0
    assert signals.rate_logit([3, 0, 0], [1, 0, 4]) == pytest.approx([math.log(2), 0.0, math.log(1 / 5)])
    logit, warm = np.array([0.0, 0.0, 2.0, 2.0, 9.0]), np.array([True, True, True, True, False])
    same = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [1, 2]])       # first codes split the logits exactly
    assert rvq.prefix_rate_explained(same, logit, warm) == pytest.approx([1.0, 1.0])
    mixed = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0, 0]])      # first codes blind; both codes: one track each
    assert rvq.prefix_rate_explained(mixed, logit, warm) == pytest.approx([0.0, 1.0])
    # logits [0, 1, 2] in groups {0, 1}, {2}: group means 0.5, 2; within 0.5, total 2 -> 0.75 explained
    assert rvq.prefix_rate_explained(np.array([[0], [0], [1]]), np.array([0.0, 1.0, 2.0]),
                                     np.ones(3, bool)) == pytest.approx([0.75])


def test_train_with_the_quality_signal(tmp_path):
    """--signals ...,quality: the block of training-window long-listen rates at its default weight (0.25), the
    share of the rate each prefix explains in the quality sheet, its cold-track map saved and used for new
    tracks, and the one-line error without --logs."""
    w, logs = small_world(tmp_path)
    out = tmp_path / "rvq"
    rvq.main(["train", "--catalog", str(w / "catalog.csv"), "--out", str(out), "--codebook-size", "8",
              "--signals", "audio,genre,collab,quality"] + logs)
    rep = json.loads((out / rvq.REPORT_FILE).read_text())
    assert rep["signals"]["weights"] == [1.0, 1.0, 1.0, 0.25] and rep["signals"]["dims"]["quality"] == 1
    assert 0 < rep["signals"]["quality_warm_tracks"] <= 300
    explained = rep["rate_explained_per_level"]
    assert len(explained) == 3 and 0 <= explained[0] <= explained[1] <= explained[2] == pytest.approx(1.0)
    model = rvq.load_rvq(out)
    assert model["params"]["quality_map"].shape == (11 + 6 + 1, 1)
    assert model["codebooks"].shape[2] == 11 + 6 + 16 + 1
    cat, _ = formats.load_catalog(w / "catalog.csv")
    new = rvq.encode_new(cat.features, model, [g[0] for g in cat.genres])   # every track as if it were new
    _, ids = formats.load_semantic_ids(out / formats.IDS_FILE)
    assert new.shape == (300, 3) and (new[:, 0].numpy() == ids[:, 0]).mean() > 0.9
    with pytest.raises(UserError, match="--signals quality needs --logs"):
        rvq.main(["train", "--catalog", str(w / "catalog.csv"), "--out", str(out), "--signals", "audio,quality"])
    # the quality block read by the last level alone: the first two codes are those of the IDs without it
    late, without = tmp_path / "late", tmp_path / "without"
    rvq.main(["train", "--catalog", str(w / "catalog.csv"), "--out", str(late), "--codebook-size", "8",
              "--signals", "audio,genre,collab,quality", "--last-level-signals", "quality"] + logs)
    rvq.main(["train", "--catalog", str(w / "catalog.csv"), "--out", str(without), "--codebook-size", "8",
              "--signals", "audio,genre,collab"] + logs)
    model = rvq.load_rvq(late)
    assert torch.equal(model["codebooks"][:2, :, -1], torch.zeros(2, 8, dtype=model["codebooks"].dtype))
    assert model["codebooks"][2, :, -1].abs().sum() > 0
    by_code = [json.loads((d / rvq.REPORT_FILE).read_text())["rate_explained_per_code"] for d in (out, late)]
    assert by_code[1][2] > by_code[0][2] and by_code[1][2] > 0.5   # the last code alone holds the rate
    assert read_json(late / rvq.CONFIG_FILE)["last_level_signals"] == "quality"
    # the codebooks, not the unique IDs: resolve_collisions moves a track whose (c_2, c_3) bucket is full up a level
    assert torch.allclose(model["codebooks"][:2, :, :-1], rvq.load_rvq(without)["codebooks"][:2], atol=1e-5)
    for bad, match in ((["--signals", "audio,genre", "--last-level-signals", "quality"], "expected blocks of"),
                       (["--signals", "audio,quality", "--levels", "1", "--codebook-size", "300",
                         "--last-level-signals", "quality"], "--levels 2 or more")):
        with pytest.raises(UserError, match=match):
            rvq.main(["train", "--catalog", str(w / "catalog.csv"), "--out", str(out)] + bad + logs)


def test_attribute_flags_by_hand():
    # danceability, energy, key, loudness, speechiness, acousticness, instrumentalness, liveness, valence, tempo
    party = [0.8, 0.9, 5, -5.0, 0.05, 0.1, 0.0, 0.1, 0.7, 128.0]    # 128 BPM: a workout (> 120), not "fast" (> 130)
    sleep = [0.3, 0.2, 0, -20.0, 0.03, 0.9, 0.8, 0.1, 0.2, 70.0]
    # high-energy, chill, upbeat, melancholic, fast, slow, danceable, acoustic, instrumental, workout, studying,
    # party, sleep
    assert tasks.attribute_flags(np.array([party, sleep])).astype(int).tolist() == [
        [1, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0],
        [0, 1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1]]


def test_prefix_attribute_purity_by_hand():
    # one phrase; first codes {0, 0}, {1, 1}: flags 1, 1 agree, 0, 1 tie (one of two holds the majority) -> 3 / 4
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    assert rvq.prefix_attribute_purity(codes, np.array([[1], [1], [0], [1]])) == pytest.approx([0.75, 1.0])
    # two phrases, one group: [1, 0], [1, 1], [0, 1] -> 2 of 3 each -> 2 / 3; whole IDs unique -> 1
    codes = np.array([[0, 0], [0, 1], [0, 2]])
    assert rvq.prefix_attribute_purity(codes, np.array([[1, 0], [1, 1], [0, 1]])) == pytest.approx([2 / 3, 1.0])


def test_train_with_the_attrs_signal(tmp_path):
    """--signals ...,attrs: one 0/1 column per attribute phrase in the quantiser's input, no log needed, and new
    tracks encoded from their features alone."""
    w, _ = small_world(tmp_path)
    out = tmp_path / "rvq"
    rvq.main(["train", "--catalog", str(w / "catalog.csv"), "--out", str(out), "--codebook-size", "8",
              "--signals", "audio,genre,attrs"])
    rep = json.loads((out / rvq.REPORT_FILE).read_text())
    assert rep["signals"]["dims"] == {"audio": 11, "genre": 6, "attrs": 13}
    assert rep["signals"]["weights"] == [1.0, 1.0, 0.5]
    purity = rep["attribute_purity_per_level"]
    assert len(purity) == 3 and 0.5 <= purity[0] <= purity[1] <= purity[2] == pytest.approx(1.0)
    model = rvq.load_rvq(out)
    assert model["codebooks"].shape[2] == 11 + 6 + 13
    cat, _ = formats.load_catalog(w / "catalog.csv")
    new = rvq.encode_new(cat.features, model, [g[0] for g in cat.genres])
    _, ids = formats.load_semantic_ids(out / formats.IDS_FILE)
    # from the features alone, exactly the catalogue's codes, but for the tracks collision resolution moved
    assert new.shape == (300, 3) and (new.numpy() == ids).all(axis=1).sum() == 300 - rep["ids"]["moved"]
