"""experiments.bench_kernels: the --quick run end to end (JSON structure, compiled-program memory)
and the growth / crossover helpers."""

import json
import math

from absl import app
import pytest

from experiments import bench_kernels
from experiments.kernel_bench import attention, int8_matmul, long_conv


def test_quick_run_writes_every_number(run_python, tmp_path):
  path = tmp_path / "kernels.json"
  done = run_python("-m", "experiments.bench_kernels", "--quick", f"--json_out={path}",
                    timeout=180)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "FFT crossover" in done.stdout
  r = json.loads(path.read_text())
  assert set(r) >= {"command", "machine", "settings", "ops", "wall_seconds"}
  assert list(r["ops"]) == ["attention", "long_conv", "depthwise", "fused_norm", "int8_matmul"]

  attn = r["ops"]["attention"]
  lengths = r["settings"]["attn_lengths"]
  assert [row["seq_len"] for row in attn["rows"]] == lengths and len(lengths) >= 2
  programs = ("naive_fwd", "chunked_fwd", "naive_fwd_bwd", "chunked_fwd_bwd")
  for row in attn["rows"]:
    assert set(row["memory"]) == set(programs)
    for m in row["memory"].values():
      assert m["peak"] > 0 and m["temp"] > 0 and m["argument"] > 0 and m["output"] > 0
    for mode in ("fwd", "fwd_bwd"):
      t = row["time"][mode]
      assert t["ref_s"] > 0 and t["fast_s"] > 0 and t["speedup"] > 0 and t["rounds"] >= 3
  largest = attn["rows"][-1]["memory"]
  for mode in ("fwd", "fwd_bwd"):  # deterministic: the logits tile is 32 x 32 vs 256 x 256
    assert largest[f"chunked_{mode}"]["peak"] < largest[f"naive_{mode}"]["peak"]
    g = attn["growth"][f"chunked_{mode}"]
    assert len(g["factor_per_doubling"]) == len(lengths) - 1
    assert g["factor_per_doubling"][-1] < attn["growth"][f"naive_{mode}"]["factor_per_doubling"][-1]

  lc = r["ops"]["long_conv"]
  assert [row["length"] for row in lc["rows"]] == r["settings"]["long_conv_lengths"]
  assert all(row["ref_s"] > 0 and row["fast_s"] > 0 for row in lc["rows"])
  assert lc["crossover_length"] is None or lc["crossover_length"] in r["settings"][
      "long_conv_lengths"]

  dw = r["ops"]["depthwise"]
  assert len(dw["rows"]) == 2 and dw["config"]["dispatch_implementation"] == "xla"
  assert all(row["fast_s"] > 0 and not row["same_program"] for row in dw["rows"])  # shift-and-add

  norm = r["ops"]["fused_norm"]
  st = r["settings"]
  assert norm["config"]["dispatch_implementation"] == "xla"
  assert [(row["kind"], row["rows"], row["features"]) for row in norm["rows"]] == [
      (k, R, D) for k in st["norm_kinds"] for R in st["norm_rows"] for D in st["norm_features"]]
  assert {row["kind"] for row in norm["rows"]} == {"layernorm", "rmsnorm"}
  for row in norm["rows"]:
    assert row["bias"] == (row["kind"] == "layernorm")
    xy_bytes = 2 * row["rows"] * row["features"] * 4  # f32 x in, y out
    for path in ("naive", "dispatch"):
      fwd, fwd_bwd = row["memory"][f"{path}_fwd"], row["memory"][f"{path}_fwd_bwd"]
      assert fwd["peak"] >= xy_bytes and fwd["argument"] > 0 and fwd["output"] > 0
      assert fwd_bwd["peak"] > fwd["peak"] and fwd_bwd["argument"] > fwd["argument"]
      assert row["kernels"][f"{path}_fwd"] >= 1 and row["kernels"][f"{path}_fwd_bwd"] >= 1
    assert row["max_abs_diff_fwd"] < 1e-4  # the naive baseline computes the same norm
    for mode in ("fwd", "fwd_bwd"):
      t = row["time"][mode]
      assert t["ref_s"] > 0 and t["fast_s"] > 0 and t["speedup"] > 0 and t["rounds"] >= 3

  i8 = r["ops"]["int8_matmul"]
  assert i8["config"]["dispatch_implementation"] == "xla"
  assert [(row["M"], row["K"], row["N"]) for row in i8["rows"]] == [
      int8_matmul.parse_mkn(t) for t in st["int8_shapes"]]
  for row in i8["rows"]:
    assert set(row["memory"]) == set(row["median_s"]) == {"int8", "fake_quant", "f32"}
    for m in row["memory"].values():
      assert m["peak"] > 0 and m["argument"] > 0 and m["output"] == 4 * row["M"] * row["N"]
    # int8 codes + f32 scales in: a quarter of the f32 operands' bytes, plus the scales
    assert row["memory"]["int8"]["argument"] < row["memory"]["f32"]["argument"]
    assert row["memory"]["int8"]["argument"] == row["memory"]["fake_quant"]["argument"]
    for t in row["time"].values():
      assert t["ref_s"] > 0 and t["fast_s"] > 0 and t["speedup"] > 0 and t["rounds"] >= 3
    assert all(g > 0 for g in row["gops"].values())


def test_growth_order_and_crossover():
  lengths = [256, 512, 1024, 2048]
  linear = attention.growth(lengths, [100 + 3 * L for L in lengths])
  quadratic = attention.growth(lengths, [100 + L * L for L in lengths])
  assert all(f <= 2 for f in linear["factor_per_doubling"])
  assert all(math.isclose(p, 1.0) for p in linear["order"])
  assert all(math.isclose(p, 2.0) for p in quadratic["order"])
  assert long_conv.crossover([64, 128, 256], [0.5, 2.0, 3.0]) == 128
  assert long_conv.crossover([64, 128, 256], [2.0, 0.5, 3.0]) == 256
  assert long_conv.crossover([64, 128, 256], [2.0, 3.0, 0.5]) is None


def test_ops_help_and_int8_shapes():
  assert all(op in bench_kernels.FLAGS["ops"].help for op in bench_kernels.BENCHMARKS)
  assert int8_matmul.parse_mkn("4096x256x1024") == (4096, 256, 1024)
  with pytest.raises(app.UsageError, match="MxKxN"):
    int8_matmul.parse_mkn("64x128")
