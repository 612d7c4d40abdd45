"""Norm placements: the layout table, Mix-LN rounding, DeepNorm constants and init, and every
placement's TransformerLM against an independent numpy forward pass (hand computation)."""

import dataclasses
import math

import jax
import numpy as np
import pytest

from jaxlab import models, param
from jaxlab.depth import placement
from jaxlab.errors import UserError
from tests.models.fitting import KEY, fit

BLOCK_KEYS = tuple(f.name for f in dataclasses.fields(models.BlockOptions))

V, D, H, LAYERS, L = 16, 16, 2, 2, 8
TOKENS = np.random.default_rng(0).integers(0, V, (2, L + 1))


def _lm(**kw):
  """A TransformerLM; BlockOptions' keys go into block_options (as in models.build)."""
  options = models.BlockOptions(**{k: kw.pop(k) for k in BLOCK_KEYS if k in kw})
  kw = dict(vocab_size=V, d_model=D, num_layers=LAYERS, num_heads=H, max_len=L,
            positional="learned") | kw
  return models.TransformerLM(**kw, block_options=options)


def test_block_norms_table():
  pre = placement.block_norms("pre", 0, 4)
  assert (pre.norm_in, pre.norm_out, pre.norm_post) == (True, False, False)
  assert (pre.in_scale, pre.skip_scale, pre.init_scale) == (1.0, 1.0, 1.0)
  assert placement.block_norms("post", 1, 4).norm_post
  assert not placement.block_norms("post", 1, 4).norm_in
  peri = placement.block_norms("peri", 2, 4)
  assert peri.norm_in and peri.norm_out and not peri.norm_post
  assert [placement.block_norms("lns", i, 4).in_scale for i in range(4)] == pytest.approx(
      [1.0, 1 / math.sqrt(2), 1 / math.sqrt(3), 0.5])
  none = placement.block_norms("none", 0, 4)
  assert not (none.norm_in or none.norm_out or none.norm_post)
  assert [placement.has_final_norm(p, 4) for p in placement.PLACEMENTS] == [
      True, False, True, True, True, False, True]  # pre post peri mix lns deepnorm none
  assert not placement.has_final_norm("mix", 4, mix_ratio=1.0)


def test_mix_ln_rounds_down():
  """Mix-LN uses Post-LN for exactly the first floor(mix_ratio * L) layers."""
  assert placement.mix_post_layers(8) == 2  # default ratio 0.25
  assert placement.mix_post_layers(10, 0.25) == 2  # 2.5 -> 2
  assert placement.mix_post_layers(4, 0.3) == 1  # 1.2 -> 1
  assert placement.mix_post_layers(7, 0.99) == 6
  assert placement.mix_post_layers(100, 0.29) == 29  # 28.999999999999996 in floating point
  assert placement.mix_post_layers(3, 1.0) == 3 and placement.mix_post_layers(3, 0.0) == 0
  kinds = [placement.block_norms("mix", i, 10, 0.25).kind for i in range(10)]
  assert kinds == ["post"] * 2 + ["pre"] * 8
  for ratio, n_post in ((0.25, 1), (0.5, 2), (0.74, 2), (0.75, 3)):
    shapes = jax.eval_shape(_lm(num_layers=4, norm_placement="mix", mix_ratio=ratio).init, KEY,
                            TOKENS[:, :-1])["params"]
    post = [i for i in range(4) if "attn_post_norm" in shapes[f"block_{i}"]]
    pre = [i for i in range(4) if "attn_norm" in shapes[f"block_{i}"]]
    assert post == list(range(n_post)) and pre == list(range(n_post, 4)), ratio
    assert "final_norm" in shapes


def test_deepnorm_constants_and_init():
  alpha, beta = placement.deepnorm_constants(6)
  assert alpha == pytest.approx(12 ** 0.25) and beta == pytest.approx(48 ** -0.25)
  assert placement.deepnorm_constants(2) == pytest.approx((math.sqrt(2), 0.5))
  pre = param.unbox(jax.jit(_lm(use_bias=True).init)(KEY, TOKENS[:, :-1])["params"])
  deep = param.unbox(jax.jit(_lm(use_bias=True, norm_placement="deepnorm").init)(
      KEY, TOKENS[:, :-1])["params"])
  _, beta = placement.deepnorm_constants(LAYERS)
  for i in range(LAYERS):
    p, q = pre[f"block_{i}"], deep[f"block_{i}"]
    qkv_p, qkv_q = np.asarray(p["attn"]["qkv"]["kernel"]), np.asarray(q["attn"]["qkv"]["kernel"])
    np.testing.assert_array_equal(qkv_q[:, :2 * D], qkv_p[:, :2 * D])  # q, k: unscaled
    np.testing.assert_allclose(qkv_q[:, 2 * D:], beta * qkv_p[:, 2 * D:], rtol=1e-6)  # v
    for path in (("attn", "out"), ("mlp", "up"), ("mlp", "down")):
      np.testing.assert_allclose(q[path[0]][path[1]]["kernel"],
                                 beta * np.asarray(p[path[0]][path[1]]["kernel"]), rtol=1e-6)
  assert "final_norm" not in deep and "attn_post_norm" in deep["block_0"]


def test_unknown_placement_and_ratio():
  with pytest.raises(UserError, match=r"config\.model\.norm_placement 'sandwich'.*pre, post"):
    jax.eval_shape(_lm(norm_placement="sandwich").init, KEY, TOKENS[:, :-1])
  with pytest.raises(UserError, match=r"config\.model\.mix_ratio"):
    jax.eval_shape(_lm(norm_placement="mix", mix_ratio=1.5).init, KEY, TOKENS[:, :-1])
  with pytest.raises(UserError, match=r"config\.model\.norm_placement"):
    placement.block_norms("Pre", 0, 2)


def test_post_ln_block_output_has_unit_rms():
  x = 3.0 * np.random.default_rng(1).standard_normal((2, L, 32)).astype(np.float32) + 1.0
  for kind in ("post", "deepnorm"):
    block = models.Block(4, num_layers=4, layer=1,
                         options=models.BlockOptions(norm_placement=kind))
    y = np.asarray(jax.jit(block.init_with_output)(KEY, x)[0])
    np.testing.assert_allclose(np.sqrt(np.mean(y ** 2, axis=-1)), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.mean(y, axis=-1), 0.0, atol=1e-5)


# --- independent numpy forward pass (float64) --------------------------------------------------


def _ln(x, g, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g


def _attn(h, p):
  B, T, _ = h.shape
  q, k, v = (a.reshape(B, T, H, D // H) for a in np.split(h @ p["qkv"]["kernel"], 3, -1))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D // H)
  logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", w, v).reshape(B, T, D) @ p["out"]["kernel"]


def _mlp(h, p):
  u = h @ p["up"]["kernel"]
  u = 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
  return u @ p["down"]["kernel"]


def _reference(params, tokens, kind, mix_ratio=0.5):
  x = params["embed"]["embedding"][tokens] + params["pos_embed"]["embedding"][:tokens.shape[1]]
  for i in range(LAYERS):
    b = params[f"block_{i}"]
    k = kind if kind != "mix" else ("post" if i < int(mix_ratio * LAYERS) else "pre")
    for name, f in (("attn", _attn), ("mlp", _mlp)):
      g = lambda suffix: b[f"{name}_{suffix}"]["scale"]  # noqa: E731
      if k == "pre":
        x = x + f(_ln(x, g("norm")), b[name])
      elif k == "lns":  # LayerNorm output x 1/sqrt(l), l = i + 1
        x = x + f(_ln(x, g("norm")) / math.sqrt(i + 1), b[name])
      elif k == "peri":
        x = x + _ln(f(_ln(x, g("norm")), b[name]), g("out_norm"))
      elif k == "post":
        x = _ln(x + f(x, b[name]), g("post_norm"))
      elif k == "deepnorm":  # alpha = (2N)^(1/4)
        x = _ln((2 * LAYERS) ** 0.25 * x + f(x, b[name]), g("post_norm"))
      else:
        x = x + f(x, b[name])
  if kind not in ("post", "deepnorm"):
    x = _ln(x, params["final_norm"]["scale"])
  return x @ params["readout"]["kernel"]


@pytest.mark.parametrize("kind", placement.PLACEMENTS)
def test_lm_matches_hand_computation(kind):
  """2-layer LM with known (random, non-unit gain) params vs the numpy forward pass."""
  model = _lm(norm_placement=kind, mix_ratio=0.5)
  params = param.unbox(jax.jit(model.init)(KEY, TOKENS[:, :-1])["params"])
  rng = np.random.default_rng(2)
  params = jax.tree.map(
      lambda a: np.asarray(a) * (1 + 0.5 * rng.standard_normal(a.shape)).astype(np.float32),
      params)
  logits = np.asarray(jax.jit(model.apply)({"params": params}, TOKENS[:, :-1]))
  ref = _reference(jax.tree.map(lambda a: a.astype(np.float64), params), TOKENS[:, :-1], kind)
  np.testing.assert_allclose(logits, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


@pytest.mark.parametrize("kind", placement.PLACEMENTS)
def test_placement_trains(kind):
  first, last = fit(_lm(norm_placement=kind, mix_ratio=0.5), TOKENS[:, :-1], TOKENS[:, 1:],
                    steps=6, lr=1e-2)
  assert np.isfinite(first) and np.isfinite(last) and last < first, (first, last)
