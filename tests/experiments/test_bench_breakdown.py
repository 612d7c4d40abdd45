"""experiments.bench_breakdown: HLO / aten classifiers, the JAX profile reader, the CLI flag."""

import re

import jax

from experiments import bench_breakdown as bb

HLO = """HloModule jit_train_step, is_scheduled=true

FileNames
1 "/repo/jaxlab/models/rope.py"
2 "/venv/optax/_src/transform.py"
3 "/repo/jaxlab/models/layers.py"

FunctionNames
1 "apply_rope"
2 "scale_by_adam.<locals>.update_fn"
3 "apply_activation"

FileLocations
1 {file_name_id=1 function_name_id=1 line=10 end_line=10 column=1 end_column=2}
2 {file_name_id=2 function_name_id=2 line=20 end_line=20 column=1 end_column=2}
3 {file_name_id=3 function_name_id=3 line=30 end_line=30 column=1 end_column=2}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}
3 {file_location_id=3 parent_frame_id=1}

%fused_mm (p0: f32[8,4], p1: f32[4,8]) -> f32[8,8] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = f32[4,8]{1,0} parameter(1)
  ROOT %d = f32[8,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%max (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %m = f32[] maximum(%a, %b)
}

%fused_softmax (p0: f32[2,8,8]) -> f32[2,8,8] {
  %p0 = f32[2,8,8]{2,1,0} parameter(0)
  %c = f32[] constant(-inf)
  %r = f32[2,8]{1,0} reduce(%p0, %c), dimensions={2}, to_apply=%max
  %b = f32[2,8,8]{2,1,0} broadcast(%r), dimensions={0,1}
  %s = f32[2,8,8]{2,1,0} subtract(%p0, %b)
  ROOT %e = f32[2,8,8]{2,1,0} exponential(%s)
}

%fused_copy (p0: f32[8,4]) -> f32[4,8] {
  %p0 = f32[8,4]{1,0} parameter(0)
  ROOT %t = f32[4,8]{0,1} transpose(%p0), dimensions={1,0}
}

%fused_rope (p0: f32[8,4]) -> f32[8,4] {
  %p0 = f32[8,4]{1,0} parameter(0)
  ROOT %m = f32[8,4]{1,0} multiply(%p0, %p0)
}

ENTRY %main (x: f32[8,4], y: f32[4,8], q: f32[2,8,4]) -> f32[8,8] {
  %x = f32[8,4]{1,0} parameter(0)
  %y = f32[4,8]{1,0} parameter(1)
  %q = f32[2,8,4]{2,1,0} parameter(2)
  %ynn_fusion.3 = f32[8,8]{1,0} fusion(%x, %y), kind=kCustom, calls=%fused_mm, metadata={op_name="jit(train_step)/jvp(TransformerLM)/block_0/mlp/up/dot_general"}
  %dot.7 = f32[2,8,8]{2,1,0} dot(%q, %q), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={2}, metadata={op_name="jit(train_step)/jvp(TransformerLM)/block_0/attn/bhqd,bhkd->bhqk/dot_general"}
  %exp_fusion = f32[2,8,8]{2,1,0} fusion(%dot.7), kind=kLoop, calls=%fused_softmax, metadata={op_name="jit(train_step)/jvp(TransformerLM)/block_0/attn/exp"}
  %copy_fusion.1 = f32[4,8]{0,1} fusion(%x), kind=kLoop, calls=%fused_copy, metadata={op_name="jit(train_step)/jvp(TransformerLM)/block_0/attn/transpose"}
  %mul_fusion = f32[8,4]{1,0} fusion(%x), kind=kLoop, calls=%fused_rope, metadata={op_name="jit(train_step)/jvp(TransformerLM)/block_0/attn/mul" stack_frame_id=1}
  %norm_fusion = f32[8,4]{1,0} fusion(%x), kind=kLoop, calls=%fused_rope, metadata={op_name="jit(train_step)/transpose(jvp(TransformerLM))/block_0/mlp_norm/mlp_norm._fused/mul"}
  %gelu_fusion = f32[8,4]{1,0} fusion(%x), kind=kLoop, calls=%fused_rope, metadata={op_name="jit(train_step)/jvp(TransformerLM)/block_0/mlp/mul" stack_frame_id=3}
  %adam_fusion = f32[8,4]{1,0} fusion(%x), kind=kLoop, calls=%fused_rope, metadata={op_name="jit(train_step)/mul" stack_frame_id=2}
  %loss_fusion = f32[8,4]{1,0} fusion(%x), kind=kLoop, calls=%fused_rope, metadata={op_name="jit(train_step)/jvp()/mul"}
  %gather.2 = f32[8,4]{1,0} gather(%x, %y), offset_dims={1}, metadata={op_name="jit(train_step)/jvp(TransformerLM)/embed/jit(_take)/gather"}
  %add.5 = f32[8,4]{1,0} add(%x, %x), metadata={op_name="jit(train_step)/jvp(TransformerLM)/block_0/add"}
  ROOT %cond.1 = f32[8,8]{1,0} conditional(%x, %y), branch_computations={%fused_mm, %fused_mm}
}
"""


def test_parse_hlo_reads_fused_bodies_and_stack_frames():
  instrs = bb.parse_hlo(HLO)
  assert instrs["ynn_fusion.3"].ops == ("fusion", "parameter", "parameter", "dot")
  assert "maximum" in instrs["exp_fusion"].ops  # the reducer of a fused reduce is included
  assert instrs["dot.7"].ops == ("dot[batch]",)
  assert instrs["mul_fusion"].source == "/repo/jaxlab/models/rope.py:apply_rope"
  assert instrs["adam_fusion"].source.startswith("/venv/optax/_src/transform.py:scale_by_adam")
  assert instrs["adam_fusion"].source.endswith("rope.py:apply_rope")  # parent printed as id + 1


def test_classify_hlo_instructions():
  instrs = bb.parse_hlo(HLO)
  got = {name: bb.classify(instrs[name]) for name in (
      "ynn_fusion.3", "dot.7", "exp_fusion", "copy_fusion.1", "mul_fusion", "norm_fusion",
      "gelu_fusion", "adam_fusion", "loss_fusion", "gather.2", "add.5")}
  assert got == {"ynn_fusion.3": bb.MATMUL, "dot.7": bb.ATTENTION, "exp_fusion": bb.SOFTMAX,
                 "copy_fusion.1": bb.COPY, "mul_fusion": bb.ROPE, "norm_fusion": bb.LAYERNORM,
                 "gelu_fusion": bb.GELU, "adam_fusion": bb.OPTIMIZER, "loss_fusion": bb.LOSS,
                 "gather.2": bb.EMBED, "add.5": bb.ELEMENTWISE}


def test_copy_inventory_counts_bytes_of_entry_copies():
  """Only the transposing copy writes memory among the fixture's COPY instructions (the
  parameters are not copies); 4 x 8 f32 = 128 bytes."""
  rows = bb.copy_inventory(HLO)
  assert rows == [("copy_fusion f32[4,8]", 1, 128)]
  text = bb.format_copies(rows)
  assert "0.0 MB in 1 instructions" in text and "1 x copy_fusion f32[4,8]" in text


def test_summarize_splits_ops_runtime_and_unknown_names():
  instrs = bb.parse_hlo(HLO)
  totals = {"ynn_fusion.3": 4e6, "dot.7": 2e6, "cond.1": 9e6, "mystery.1": 1e6,
            "ThunkExecutor::Execute": 8e6, "end: dot.7": 1e3}
  seconds, runtime = bb.summarize(totals, instrs, steps=2)
  assert seconds == {bb.MATMUL: 2e-3, bb.ATTENTION: 1e-3, bb.UNATTRIBUTED: 5e-4}
  assert runtime == {"ThunkExecutor::Execute": 4e-3, "end: dot.7": 5e-7}


def test_classify_aten_ops():
  got = {key: bb.classify_aten(key) for key in (
      "/aten::mm", "MmBackward0/aten::mm", "/aten::addmm",
      "/aten::_scaled_dot_product_flash_attention_for_cpu",
      "ScaledDotProductFlashAttentionForCpuBackward0/aten::_scaled_dot_product_flash_attention_"
      "for_cpu_backward", "/aten::native_layer_norm",
      "NativeLayerNormBackward0/aten::native_layer_norm_backward", "/aten::gelu",
      "GeluBackward0/aten::gelu_backward", "rope/aten::mul", "MulBackward0/aten::mul",
      "CatBackward0/aten::slice", "optimizer/aten::_fused_adamw_", "/aten::_foreach_norm",
      "loss/aten::_log_softmax", "LogSoftmaxBackward0/aten::_log_softmax_backward_data",
      "NllLossBackward0/aten::nll_loss_backward", "/aten::embedding",
      "EmbeddingBackward0/aten::embedding_dense_backward", "/aten::copy_", "/aten::transpose",
      "/aten::clone", "/aten::add", "AddBackward0/aten::add_")}
  want = [bb.MATMUL] * 3 + [bb.ATTENTION] * 2 + [bb.LAYERNORM] * 2 + [bb.GELU] * 2 + \
      [bb.ROPE] * 3 + [bb.OPTIMIZER] * 2 + [bb.LOSS] * 3 + [bb.EMBED] * 2 + [bb.COPY] * 3 + \
      [bb.ELEMENTWISE] * 2
  assert list(got.values()) == want


def gelu(x):  # named: the classifier reads the function names of the HLO's stack frames
  return jax.nn.gelu(x)


def softmax(x):
  return jax.nn.softmax(x)


def test_jax_op_times_on_a_tiny_jitted_function():
  f = jax.jit(lambda a, b: (a @ b, gelu(a), softmax(b)))  # three independent thunks
  a = jax.random.normal(jax.random.PRNGKey(0), (512, 512))
  text = f.lower(a, a).compile().as_text()
  out = bb.jax_op_times(lambda: jax.block_until_ready(f(a, a)), text, steps=3)
  for category in (bb.MATMUL, bb.GELU, bb.SOFTMAX):
    assert out.seconds.get(category, 0) > 0, (category, out.seconds)
  total = sum(out.seconds.values())
  assert 0.2 * out.wall < total < 2.5 * out.wall, (total, out.wall)  # <= 2 busy threads
  assert out.seconds.get(bb.UNATTRIBUTED, 0) < 0.1 * total
  table = bb.format_table(out)
  assert re.search(r"^matmul\s+[\d.]+\s+[\d.]+%$", table, re.M), table


def test_bench_cli_breakdown(run_python, tfds_data_dir):
  done = run_python("-m", "experiments.bench", f"--data_dir={tfds_data_dir}", "--num_layers=1",
                    "--d_model=32", "--seq_len=32", "--batch_size=4", "--steps=2", "--qat=",
                    "--notorch_reference", "--breakdown")
  assert done.returncode == 0, done.stderr[-3000:]
  out = done.stdout
  assert "profiled train steps (ours only)" in out and "PyTorch ms" not in out
  ms = {m[1]: float(m[2]) for m in re.finditer(r"^(matmul|layernorm|optimizer \(adamw \+ clip\)"
                                                r"|sum of op times)\s+([\d.]+)", out, re.M)}
  assert len(ms) == 4 and all(v > 0 for v in ms.values()), out
  assert re.search(r"([\d.]+) ms/step in thunks not in the HLO", out)
  copies = re.search(r"step writes \(static, from its HLO; per device\): ([\d.]+) MB in (\d+) "
                     r"instructions", out)
  assert copies and int(copies[2]) > 0, out
