"""DepthwiseConv, 1-D causal, against a plain-numpy causal correlation (the 2-D case is tested
in test_convnext.py against lax.conv_general_dilated)."""

import numpy as np

from jaxlab import param
from jaxlab.models.depthwise import DepthwiseConv
from jaxlab.param import roles
from tests.models.fitting import KEY


def test_causal_1d_matches_numpy():
  x = np.random.default_rng(0).standard_normal((2, 7, 3)).astype(np.float32)
  layer = DepthwiseConv((3,), causal=True, channel_axis="mlp")
  boxed = layer.init(KEY, x)["params"]
  assert boxed["kernel"].names == ("kernel_w", "mlp") and boxed["kernel"].role == roles.INPUT
  params = param.unbox(boxed)
  w = np.asarray(params["kernel"], np.float64)
  params["bias"] = np.arange(3, dtype=np.float32)
  want = np.zeros((2, 7, 3)) + np.arange(3)
  for t in range(7):
    for j in range(3):
      if t - j >= 0:
        want[:, t] += w[j] * x[:, t - j]
  np.testing.assert_allclose(layer.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)
