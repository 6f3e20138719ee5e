"""benchmarks/bench_ranker.py: one row of each form on a small catalogue (the figures live in BENCHMARKS.md)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_ranker  # noqa: E402


def test_each_form_builds_fits_and_reports(monkeypatch):
    monkeypatch.setattr(bench_ranker, "PLAYS", 300)
    monkeypatch.setattr(bench_ranker, "VAL", 50)
    for form in ("dense", "sparse"):
        row = bench_ranker.one(300, form)
        assert set(row) == {"build_s", "epoch_s", "peak_gb"} and row["epoch_s"] > 0 and row["peak_gb"] > 0
