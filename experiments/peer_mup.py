r"""Peer check of jaxlab's muP against microsoft/mup 1.0.0 (Yang et al. 2022, Tensor Programs V).

  PYTHONPATH=. python -m experiments.peer_mup --out=/tmp/peer_mup.md

Needs torch and mup, which are not jaxlab dependencies (pip commands in the error if missing).
Builds the mnist5k MLP (jaxlab/configs/mnist5k_mlp.py, two hidden layers) at --base_width and
--mult times it with config.param = {name: mup, base_width} as experiments.coord_check does,
copies its initial params into the same MLP in PyTorch (mup.MuReadout readout,
mup.set_base_shapes with a 2x delta model), checks both give the same logits at init, then trains
both --steps steps on the same real mnist5k batches with Adam (mup.MuAdam) and plain SGD
(mup.MuSGD), and, where jaxlab's MuP has `wd_convention`, AdamW with weight decay 0.1
(mup.MuAdamW, config.param.wd_convention="independent"). Per case and width it prints (and
writes as markdown to --out) each layer's mean |output| on a fixed probe batch before every step
in both frameworks with their relative difference, the wide/base ratio of each layer in both, and
the relative difference of every parameter and of its total update after the last step, and
|update mup| / |update jaxlab| after step 1 (same gradients there: the ratio of the two LR scales,
so a mismatched LR factor reads off directly). Target: every rel diff <= 1e-4.
"""

import math

from absl import app, flags
import jax
import numpy as np

try:
  import mup
  import torch
except ImportError as e:
  raise SystemExit(f"experiments.peer_mup needs {e.name} (not a jaxlab dependency): pip install "
                   "torch --index-url https://download.pytorch.org/whl/cpu && pip install "
                   "mup==1.0.0") from None

from experiments.width_configs import config_at
from jaxlab import data, param
from jaxlab.analysis.coord_check import activation_scales
from jaxlab.configs import mnist5k_mlp
from jaxlab.train import core, tasks
from jaxlab.train.init import build_model, dummy_input, make_tx, param_info_of

_OUT = flags.DEFINE_string("out", None, "markdown file the tables are written to")
_BASE = flags.DEFINE_integer("base_width", 64, "base width of muP (both hidden layers)")
_MULT = flags.DEFINE_integer("mult", 8, "the wide model has mult x base_width hidden units")
_STEPS = flags.DEFINE_integer("steps", 3, "training steps")
_BATCH = flags.DEFINE_integer("batch_size", 32, "batch size")
_ADAM_LR = flags.DEFINE_float("adam_lr", 1e-3, "learning rate of the Adam / AdamW cases")
_SGD_LR = flags.DEFINE_float("sgd_lr", 0.05, "learning rate of the SGD case")
flags.mark_flags_as_required(["out"])

TARGET = 1e-4
TASK = tasks.CLASSIFICATION


def cases() -> list[tuple[str, dict, dict]]:
  """(label, config.optim overrides, extra config.param keys) of each optimizer compared."""
  adam = dict(schedule="constant", warmup_steps=0, grad_clip=0.0, learning_rate=_ADAM_LR.value)
  out = [("adam", dict(adam, name="adam", weight_decay=0.0), {}),
         ("sgd", dict(schedule="constant", warmup_steps=0, grad_clip=0.0, name="sgd", momentum=0.0,
                      weight_decay=0.0, learning_rate=_SGD_LR.value), {})]
  if "wd_convention" in param.options("mup"):
    out.append(("adamw_wd0.1", dict(adam, name="adamw", weight_decay=0.1),
                {"wd_convention": "independent"}))
  return out


def jaxlab_config(width: int, optim: dict, param_extra: dict):
  c = config_at(mnist5k_mlp.get_config(), "mup", width, base_width=_BASE.value)
  c.optim.update(optim)
  c.param.update(param_extra)
  return c


def run_jaxlab(config, spec, batches: list[dict], probe: dict):
  """([params before step t], [mean |output| per layer before step t]), t = 0..steps, of
  jaxlab's model and optimizer chain trained on `batches`; statistics on `probe`."""
  model = build_model(config, spec)
  example = dummy_input(spec)
  tx = make_tx(config, model, param_info_of(model, example))
  params, extra = core.init_params_and_extra(model, jax.random.PRNGKey(config.seed), example)

  @jax.jit
  def step(params, opt_state, batch):
    _, _, grads, _ = core.loss_and_grads(model, params, extra, batch, TASK)
    return core.apply_update(tx, params, opt_state, grads)[:2]

  opt_state, snaps, history = tx.init(params), [], []
  for batch in [*batches, None]:
    snaps.append(jax.tree.map(np.asarray, params))
    scales = activation_scales(model, params, probe["image"])
    history.append({k: float(v) for k, v in scales.items() if k != "logits"})  # = readout
    if batch is not None:
      params, opt_state = step(params, opt_state, batch)
  return snaps, history


class TorchMLP(torch.nn.Module):
  """jaxlab's MLP in PyTorch: flatten -> [Linear -> ReLU] * len(widths) -> mup.MuReadout."""

  def __init__(self, in_dim: int, widths: tuple[int, ...], num_classes: int):
    super().__init__()
    dims = (in_dim, *widths)
    self.hidden = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
    self.readout = mup.MuReadout(widths[-1], num_classes)

  def forward(self, x):
    x = x.flatten(1)
    for layer in self.hidden:
      x = torch.relu(layer(x))
    return self.readout(x)

  def named_layers(self) -> dict[str, torch.nn.Linear]:
    """The Linear layers under jaxlab's module names (dense_<i>, readout)."""
    return {**{f"dense_{i}": l for i, l in enumerate(self.hidden)}, "readout": self.readout}


def torch_model(config, spec, jax_params) -> TorchMLP:
  """The muP MLP of `config` in PyTorch, base shapes set, holding jaxlab's `jax_params`."""
  in_dim, widths = math.prod(spec.input_shape), tuple(config.model.hidden_widths)
  make = lambda w: TorchMLP(in_dim, (w,) * len(widths), spec.num_classes)  # noqa: E731
  model = mup.set_base_shapes(TorchMLP(in_dim, widths, spec.num_classes), make(_BASE.value),
                              delta=make(2 * _BASE.value))
  with torch.no_grad():
    for name, layer in model.named_layers().items():
      layer.weight.copy_(torch.from_numpy(np.asarray(jax_params[name]["kernel"]).T.copy()))
      layer.bias.copy_(torch.from_numpy(np.asarray(jax_params[name]["bias"])))
  return model


def torch_optimizer(model: TorchMLP, config):
  o = config.optim
  if o.name == "sgd":
    return mup.MuSGD(model.parameters(), lr=o.learning_rate)
  make = mup.MuAdamW if o.name == "adamw" else mup.MuAdam
  return make(model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps,
              weight_decay=o.weight_decay)


def torch_scales(model: TorchMLP, x: np.ndarray) -> dict[str, float]:
  """{layer: mean |output|}, like jaxlab.analysis.coord_check.activation_scales."""
  out, hooks = {}, []
  for name, layer in model.named_layers().items():
    hook = lambda _m, _i, y, name=name: out.__setitem__(name, y.abs().mean().item())  # noqa: E731
    hooks.append(layer.register_forward_hook(hook))
  with torch.no_grad():
    model(torch.from_numpy(x))
  for h in hooks:
    h.remove()
  return out


def torch_params(model: TorchMLP) -> dict:
  """The torch model's params in jaxlab's layout ({layer: {kernel [in, out], bias}})."""
  return {name: {"kernel": layer.weight.detach().numpy().T.copy(),
                 "bias": layer.bias.detach().numpy().copy()}
          for name, layer in model.named_layers().items()}


def run_torch(model: TorchMLP, opt, batches: list[dict], probe: dict) -> tuple[list, list]:
  """Like run_jaxlab for the torch model and its mup optimizer."""
  snaps, history = [], []
  for batch in [*batches, None]:
    snaps.append(torch_params(model))
    history.append(torch_scales(model, probe["image"]))
    if batch is not None:
      opt.zero_grad()
      logits = model(torch.from_numpy(batch["image"]))
      torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["label"]).long()).backward()
      opt.step()
  return snaps, history


def rel(a, b) -> float:
  """|a - b| / |a| (Frobenius norms for arrays)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return norm_ratio(a - b, a)


def norm_ratio(a, b) -> float:
  return float(np.linalg.norm(a) / max(np.linalg.norm(b), 1e-30))


def param_rows(sj: list, st: list) -> list[tuple]:
  """Per param: rel diff of final values and of the total update, and |update mup| / |update
  jaxlab| at step 1 (same params and gradients there, so it is the ratio of the two LR scales)
  and over all steps."""
  rows = []
  for name in sj[0]:
    for key in ("kernel", "bias"):
      pj, pt = ([np.asarray(s[name][key], np.float64) for s in snaps] for snaps in (sj, st))
      dj, dt = pj[-1] - pj[0], pt[-1] - pt[0]
      rows.append((f"{name}/{key}", rel(pj[-1], pt[-1]), rel(dj, dt),
                   norm_ratio(pt[1] - pt[0], pj[1] - pj[0]), norm_ratio(dt, dj)))
  return rows


def table(header: tuple[str, ...], rows) -> list[str]:
  fmt = lambda v: f"{v:.6g}" if isinstance(v, float) else str(v)  # noqa: E731
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(fmt(v) for v in r) + " |" for r in rows), ""]


def compare_width(width: int, optim: dict, param_extra: dict, spec, batches, probe) -> tuple:
  """(markdown lines, activation histories (jaxlab, mup), max rel diff of activations, max rel
  diff of param updates) of one optimizer case at one width."""
  config = jaxlab_config(width, optim, param_extra)
  sj, hj = run_jaxlab(config, spec, batches, probe)
  model = torch_model(config, spec, sj[0])
  x = probe["image"]
  logits_j = np.asarray(build_model(config, spec).apply({"params": sj[0]}, x))
  with torch.no_grad():
    logits_t = model(torch.from_numpy(x)).numpy()
  st, ht = run_torch(model, torch_optimizer(model, config), batches, probe)
  rows = [(t, k, hj[t][k], ht[t][k], abs(hj[t][k] - ht[t][k]) / abs(hj[t][k]))
          for t in range(len(hj)) for k in hj[t]]
  prows = param_rows(sj, st)
  lines = [f"width {width} (m = {width / _BASE.value:g}, {config.optim.name}, lr "
           f"{config.optim.learning_rate:g}, weight decay {config.optim.weight_decay:g}): logits "
           f"at init rel diff {rel(logits_j, logits_t):.2e}", "",
           *table(("step", "layer", "jaxlab mean abs", "mup mean abs", "rel diff"), rows),
           *table(("param", "rel diff final", "rel diff of update", "update ratio mup/jaxlab, "
                   "step 1", "all steps"), prows)]
  return lines, (hj, ht), max(r[-1] for r in rows), max(r[2] for r in prows)


def compare_case(label: str, optim: dict, param_extra: dict, spec, batches, probe) -> tuple:
  """(markdown lines, max rel diff of activations, of param updates) of one optimizer case at
  both widths, with the wide/base ratio of each layer's statistic after the last step."""
  lo, hi = _BASE.value, _MULT.value * _BASE.value
  lines, hist, worst = [f"### {label}", ""], {}, []
  for width in (lo, hi):
    width_lines, hist[width], act, par = compare_width(width, optim, param_extra, spec, batches,
                                                       probe)
    lines += width_lines
    worst.append((act, par))
  act, par = max(w[0] for w in worst), max(w[1] for w in worst)
  ratios = [(k, *(hist[hi][i][-1][k] / hist[lo][i][-1][k] for i in (0, 1)))
            for k in hist[lo][0][-1]]
  verdict = "PASS" if max(act, par) <= TARGET else "FAIL"
  lines += [f"width ratio {hi}/{lo} of mean abs output after step {_STEPS.value}:", "",
            *table(("layer", "jaxlab", "mup"), ratios),
            f"**{label}: max rel diff activations {act:.2e}, param updates {par:.2e}: {verdict} "
            f"(target {TARGET:g})**", ""]
  return lines, act, par


def main(argv):
  del argv
  torch.manual_seed(0)
  config = mnist5k_mlp.get_config()
  spec = data.dataset_spec(config.data)
  it = data.make_train_iterator(config.data, batch_size=_BATCH.value, seed=config.seed)
  batches = [next(it) for _ in range(_STEPS.value)]
  lines = [f"## jaxlab muP vs microsoft/mup {getattr(mup, '__version__', '1.0.0')} (torch "
           f"{torch.__version__}): mnist5k MLP, base width {_BASE.value}, batch {_BATCH.value}, "
           f"{_STEPS.value} steps; mean abs output on the first batch before each step", ""]
  summary = []
  for label, optim, extra in cases():
    case_lines, act, par = compare_case(label, optim, extra, spec, batches, batches[0])
    lines += case_lines
    summary.append(f"{label}: activations {act:.2e}, param updates {par:.2e}")
  if len(summary) < 3:
    lines.append("adamw_wd0.1 vs mup.MuAdamW: not run (jaxlab's MuP has no wd_convention option)")
  lines += ["", "max rel diff per optimizer: " + "; ".join(summary)]
  print("\n".join(lines))
  with open(_OUT.value, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
