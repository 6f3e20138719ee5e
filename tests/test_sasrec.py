"""SASRec: causality, left padding, training windows, overfitting a tiny set, the CLI stage."""
import json
import os

import numpy as np
import pytest
import torch

import sasrec
from common import UserError

# deterministic sessions over 20 items: every item has exactly one successor
SESSIONS = [[1, 2, 3, 4, 5], [6, 7, 8, 9], [10, 11, 12, 13, 14, 15], [16, 17, 18, 19, 0]]


def flat(sessions):
    """[[row, ...], ...] -> (items int32, offsets int64), the layout of listening_stats.npz."""
    offsets = np.cumsum([0] + [len(s) for s in sessions]).astype(np.int64)
    return np.array([i for s in sessions for i in s], dtype=np.int32), offsets


def tiny_model(n_items=20, max_len=8, seed=0):
    torch.manual_seed(seed)
    return sasrec.SASRec(n_items, dim=16, layers=2, heads=2, max_len=max_len, dropout=0.0).eval()


def test_causal():
    model = tiny_model()
    a = torch.tensor([[3, 5, 7, 9, 11, 13]])
    b = torch.tensor([[3, 5, 7, 2, 20, 1]])  # differs after position 2
    with torch.no_grad():
        ha, hb = model(a), model(b)
    torch.testing.assert_close(ha[:, :3], hb[:, :3])
    assert not torch.allclose(ha[:, 3:], hb[:, 3:])


def test_left_padding_changes_nothing_and_makes_no_nan():
    model = tiny_model()
    seqs = torch.tensor([[0, 0, 0, 0, 4, 9, 2], [0, 0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        padded = model(seqs)
        short = model(torch.tensor([[4, 9, 2]]))
    assert torch.isfinite(padded).all()  # even the all-padding row
    torch.testing.assert_close(padded[0, -1], short[0, -1], atol=1e-5, rtol=0)
    # gradients through a padded batch are finite too
    model.train()
    targets = torch.tensor([[0, 0, 0, 0, 9, 2, 3], [0] * 7, [2, 3, 4, 5, 6, 7, 8]])
    loss = sasrec.loss(model, seqs, targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_sequences_windows():
    items, offsets = flat([[0, 1, 2], [5], [3, 4, 5, 6, 7]])
    inputs, targets = sasrec.sequences(items, offsets, max_len=3)
    # tokens are rows + 1; the 5-play session has 4 transitions: the last 3, then the first one
    np.testing.assert_array_equal(inputs, [[0, 1, 2], [5, 6, 7], [0, 0, 4]])
    np.testing.assert_array_equal(targets, [[0, 2, 3], [6, 7, 8], [0, 0, 5]])
    assert inputs.dtype == targets.dtype == np.int64
    hist, tgt = sasrec.transitions(items, offsets, max_len=3)
    assert hist == [[0], [0, 1], [3], [3, 4], [3, 4, 5], [4, 5, 6]]
    np.testing.assert_array_equal(tgt, [1, 2, 4, 5, 6, 7])


def test_training_windows_and_scoring_agree():
    """The loss at step t of a training window is the CE of scoring the history up to t: same positions."""
    model = tiny_model()
    items, offsets = flat(SESSIONS)
    inputs, targets = sasrec.sequences(items, offsets, max_len=8)
    with torch.no_grad():
        train_ce = sasrec.loss(model, torch.from_numpy(inputs), torch.from_numpy(targets)).item()
    val = sasrec.validate(model, *sasrec.transitions(items, offsets, max_len=8), 20)
    assert val["val/loss"] == pytest.approx(train_ce, abs=1e-5)


def test_overfits_tiny_sessions_and_is_deterministic():
    items, offsets = flat(SESSIONS * 5)   # 20 windows: one batch per epoch
    kw = dict(dim=16, layers=1, heads=1, max_len=8, dropout=0.0, lr=3e-2, batch_size=20, max_epochs=20,
              time_budget_s=60, patience=20, seed=0)
    model, log = sasrec.train(items, offsets, *flat(SESSIONS), 20, **kw)
    hist, tgt = sasrec.transitions(*flat(SESSIONS), max_len=8)
    scores = sasrec.score(model, hist, 20)
    assert scores.shape == (len(hist), 20)
    np.testing.assert_array_equal(scores.argmax(1), tgt)
    assert max(r["val/hit@10"] for r in log) == 1.0
    _, log2 = sasrec.train(items, offsets, *flat(SESSIONS), 20, **dict(kw, max_epochs=2))
    assert [r["loss"] for r in log2] == [r["loss"] for r in log[:2]]


def test_score_checks_histories_and_save_load(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match="empty"):
        sasrec.score(model, [[1, 2], []], 20)
    with pytest.raises(ValueError, match="outside"):
        sasrec.score(model, [[20]], 20)
    hist = [[1, 2, 3], [4], list(range(20))]  # the last is longer than max_len and gets cut
    sasrec.save(model, tmp_path / "m", {"note": "test"})
    loaded = sasrec.load(tmp_path / "m")
    assert loaded.config == model.config and not loaded.training
    np.testing.assert_allclose(sasrec.score(loaded, hist, 20), sasrec.score(model, hist, 20), atol=1e-6)
    np.testing.assert_allclose(sasrec.score(model, [list(range(20))], 20),
                               sasrec.score(model, [list(range(12, 20))], 20), atol=1e-5)


def write_stats(folder, drop=()):
    os.makedirs(folder, exist_ok=True)
    tr_items, tr_off = flat(SESSIONS * 5)
    va_items, va_off = flat(SESSIONS)
    arrays = {"popularity": np.bincount(tr_items, minlength=20).astype(np.int64),
              "train_seq_items": tr_items, "train_seq_offsets": tr_off,
              "val_seq_items": va_items, "val_seq_offsets": va_off}
    np.savez(os.path.join(folder, "listening_stats.npz"), **{k: v for k, v in arrays.items() if k not in drop})
    return str(folder)


def test_cli_end_to_end(tmp_path, capsys):
    sft_data = write_stats(tmp_path / "sft_data")
    out = tmp_path / "sasrec"
    summary = sasrec.main(["--sft-data", sft_data, "--out", str(out), "--dim", "16", "--layers", "1",
                           "--max-len", "8", "--max-epochs", "3", "--time-budget", "60"])
    for name in ("model.safetensors", "sasrec_config.json", "log.jsonl", "config.json", "summary.json"):
        assert (out / name).exists(), name
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert {"epoch", "loss", "val/hit@10", "val/loss", "seconds"} <= set(log[0])
    assert sum(bool(r.get("best")) for r in log) == 1
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["epochs"] == 3 and summary["train_sequences"] == 20
    assert json.loads((out / "config.json").read_text())["dim"] == 16
    assert sasrec.score(sasrec.load(out), [[1, 2]], 20).shape == (1, 20)
    assert "best validation HR@10" in capsys.readouterr().out


def test_cli_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found.*data.py sft"):
        sasrec.main(["--sft-data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    sft_data = write_stats(tmp_path / "old", drop=("val_seq_offsets",))
    with pytest.raises(UserError, match=r"listening_stats\.npz: no array val_seq_offsets.*data\.py sft"):
        sasrec.main(["--sft-data", sft_data, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing is written before the inputs are checked
