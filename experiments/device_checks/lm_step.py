"""The LM train step of experiments.device_check: tokens/s and MFU of jaxlab's TransformerLM
train step on synthetic tokens, against this device's measured matmul peak."""

import statistics
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.device_checks.kernel_cases import normal
from experiments.kernel_bench.measure import (Timing, compile_program, lm_flops_per_token,
                                              time_interleaved)
from jaxlab import models, sharding
from jaxlab.train import init
from jaxlab.train import step as step_lib, tasks


def matmul_peak(dtype, n: int, timing: Timing) -> float:
  """TFLOP/s of a jitted n x n x n matmul in `dtype` on the default device (median)."""
  a = normal(np.random.default_rng(0), (n, n), dtype)
  compiled = compile_program(jnp.matmul, a, a)
  times = time_interleaved({"mm": lambda: compiled(a, a)}, timing)["mm"]
  return 2 * n**3 / statistics.median(times) / 1e12


LM_SIZES = {"toy": dict(d_model=128, num_layers=1, num_heads=2, seq_len=256, batch=2, steps=2),
            "full": dict(d_model=1024, num_layers=8, num_heads=8, seq_len=2048, batch=8,
                         steps=10)}


def time_lm_step(size: str, dtype: str, attention_impl: str, peak: float) -> dict:
  """tokens/s and MFU of the TransformerLM train step (synthetic tokens, AdamW, one device)."""
  s = LM_SIZES[size]
  T, B, vocab = s["seq_len"], s["batch"], 256
  model = models.build({"name": "transformer", "d_model": s["d_model"],
                        "num_layers": s["num_layers"], "num_heads": s["num_heads"],
                        "mlp_ratio": 4, "max_len": T, "vocab_size": vocab,
                        "attention_impl": attention_impl}, dtype=dtype)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1))
  mesh = sharding.make_mesh(types.SimpleNamespace(data=1, fsdp=1), devices=jax.devices()[:1])
  state, _ = init.init_state(model, tx, jnp.zeros((1, T), jnp.int32), 0, mesh)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, vocab, (B, T + 1)), jnp.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  kw = dict(model=model, tx=tx, task=tasks.LM)
  t = time.perf_counter()
  state, metrics = step_lib.train_step(state, batch, **kw)  # compiles
  jax.block_until_ready(metrics["loss"])
  compile_s = time.perf_counter() - t
  times = []
  for _ in range(s["steps"]):
    t = time.perf_counter()
    state, metrics = step_lib.train_step(state, batch, **kw)
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - t)
  step_s = statistics.median(times)
  flops = lm_flops_per_token(s["num_layers"], s["d_model"], 4, T, vocab) * B * T / step_s / 1e12
  loss = float(metrics["loss"])
  return {"dtype": dtype, "attention_impl": attention_impl,
          "config": {k: v for k, v in s.items() if k != "steps"}, "compile_s": compile_s,
          "step_ms": step_s * 1e3, "tokens_per_s": B * T / step_s, "model_tflops": flops,
          "peak_tflops": peak, "mfu": flops / peak, "loss": loss, "finite": bool(np.isfinite(loss))}
