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


def test_matrix_rows_take_the_shapes_of_the_models_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8, "intermediate_size": 24}))
    bench_cpu.main(["--model", str(tmp_path), "--rows", "4", "--no-step"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[-3:-2] in (["float32"], ["bfloat16"])]
    assert [r[1] for r in rows] == ["8x24", "8x24", "24x8", "24x8", "8x8", "8x8"]
    assert all(float(r[-1]) > 0 and float(r[-2]) > 0 for r in rows)
