"""benchmarks/bench_cpu.py: the matrix-product rates it prints are what it measured, for the model's shapes."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_cpu  # noqa: E402


def test_linear_gflops_counts_two_flops_per_multiply_add(monkeypatch):
    # a clock that advances 1 s per reading: every timed product takes exactly 1 s, so the rate is the flop count
    ticks = iter(range(10 ** 6))
    monkeypatch.setattr(bench_cpu.time, "perf_counter", lambda: float(next(ticks)))
    assert bench_cpu.linear_gflops(4, 8, 16, bench_cpu.torch.float32, 1, repeats=2) == 2 * 4 * 8 * 16 / 1e9


def test_matrix_rows_take_the_shapes_of_the_models_config(tmp_path, capsys, monkeypatch):
    # a clock that advances 1 microsecond per reading: every timed product takes exactly 1 us, so each printed rate
    # is its shape's flop count, whatever else the machine runs (a real clock under a loaded machine once printed a
    # tiny product's rate as 0.0): 2 x 16 x 64 x 192 = 393,216 flops in 1 us = 393.2 GFLOP/s; 64 x 64: 131.1
    ticks = iter(range(10 ** 6))
    monkeypatch.setattr(bench_cpu.time, "perf_counter", lambda: next(ticks) * 1e-6)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "intermediate_size": 192}))
    bench_cpu.main(["--model", str(tmp_path), "--rows", "16", "--no-step"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[-3:-2] in (["float32"], ["bfloat16"])]
    assert [r[1] for r in rows] == ["64x192", "64x192", "192x64", "192x64", "64x64", "64x64"]
    assert [(r[-2], r[-1]) for r in rows] == [("393.2", "393.2")] * 4 + [("131.1", "131.1")] * 2
