r"""The plain PyTorch LM that experiments.bench times jaxlab's train step against.

The same network as jaxlab's default TransformerLM (jaxlab.models.transformer): byte embedding,
Pre-LN blocks (bias-free LayerNorm eps 1e-5, fused qkv, rotate-half RoPE base 1e4, causal
softmax attention, GELU-tanh MLP of ratio 4, no biases), final LayerNorm, untied readout; and
the same update: AdamW after global-norm clipping, hyperparameters from the bench's config
(constant LR: the schedule costs nothing), on the same batches. Eager PyTorch (no torch.compile), its fused causal
scaled_dot_product_attention, default intra-op threads.

A worker: experiments.bench starts it with the batches in an .npz (inputs, targets [N, B, L]) and
then, for each line "n" on stdin, it runs n train steps and answers one JSON line
{"torch": version, "times": [s, ...], "losses": [...]} on stdout; EOF ends it. A line
"profile n" runs n steps under torch.profiler and adds "profile": {"scope/aten::op": self CPU
seconds per step}, the scope being the innermost record_function ('rope', 'loss', 'optimizer')
or autograd node ('MmBackward0', ...) around the op, empty if none (experiments.bench_breakdown).
`load_jaxlab_params` copies a jaxlab TransformerLM's params in, so the two can be checked to
compute the same logits.
"""

import argparse
import contextlib
import json
import math
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def rope_tables(seq_len: int, head_dim: int, base: float = 10000.0):
  """cos, sin [L, head_dim] for the rotate-half layout (pair i with i + head_dim / 2)."""
  inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
  angles = torch.arange(seq_len, dtype=torch.float32)[:, None] * inv_freq
  angles = torch.cat([angles, angles], dim=-1)
  return angles.cos(), angles.sin()


def rotate(x, cos, sin):
  """RoPE (Su et al. 2021) on [B, H, L, Dh]: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
  with torch.profiler.record_function("rope"):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Block(nn.Module):

  def __init__(self, d_model: int, num_heads: int, mlp_ratio: int):
    super().__init__()
    self.num_heads = num_heads
    self.attn_norm = nn.LayerNorm(d_model, eps=1e-5, bias=False)
    self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
    self.out = nn.Linear(d_model, d_model, bias=False)
    self.mlp_norm = nn.LayerNorm(d_model, eps=1e-5, bias=False)
    self.up = nn.Linear(d_model, mlp_ratio * d_model, bias=False)
    self.down = nn.Linear(mlp_ratio * d_model, d_model, bias=False)

  def forward(self, x, cos, sin):
    B, L, D = x.shape
    q, k, v = self.qkv(self.attn_norm(x)).view(B, L, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, is_causal=True)
    x = x + self.out(a.transpose(1, 2).reshape(B, L, D))
    return x + self.down(F.gelu(self.up(self.mlp_norm(x)), approximate="tanh"))


class TorchLM(nn.Module):

  def __init__(self, vocab_size=256, d_model=256, num_layers=4, num_heads=4, mlp_ratio=4,
               seq_len=256):
    super().__init__()
    self.embed = nn.Embedding(vocab_size, d_model)
    self.blocks = nn.ModuleList(Block(d_model, num_heads, mlp_ratio) for _ in range(num_layers))
    self.final_norm = nn.LayerNorm(d_model, eps=1e-5, bias=False)
    self.readout = nn.Linear(d_model, vocab_size, bias=False)
    cos, sin = rope_tables(seq_len, d_model // num_heads)
    self.register_buffer("cos", cos, persistent=False)
    self.register_buffer("sin", sin, persistent=False)
    for p in self.parameters():  # N(0, 1/fan_in) like jaxlab's SP default
      if p.dim() == 2:
        nn.init.normal_(p, std=1 / math.sqrt(p.shape[1]))

  def forward(self, tokens):
    x = self.embed(tokens)
    L = tokens.shape[1]
    for block in self.blocks:
      x = block(x, self.cos[:L], self.sin[:L])
    return self.readout(self.final_norm(x))


def load_jaxlab_params(model: TorchLM, params: dict) -> None:
  """Copies a jaxlab TransformerLM's params ({'embed', 'block_i', 'final_norm', 'readout'})."""
  t = lambda a: torch.from_numpy(np.array(a, np.float32))  # noqa: E731
  with torch.no_grad():
    model.embed.weight.copy_(t(params["embed"]["embedding"]))
    model.final_norm.weight.copy_(t(params["final_norm"]["scale"]))
    model.readout.weight.copy_(t(params["readout"]["kernel"]).T)
    for i, block in enumerate(model.blocks):
      p = params[f"block_{i}"]
      block.attn_norm.weight.copy_(t(p["attn_norm"]["scale"]))
      block.mlp_norm.weight.copy_(t(p["mlp_norm"]["scale"]))
      for layer, kernel in ((block.qkv, p["attn"]["qkv"]), (block.out, p["attn"]["out"]),
                            (block.up, p["mlp"]["up"]), (block.down, p["mlp"]["down"])):
        layer.weight.copy_(t(kernel["kernel"]).T)


def make_step(model: TorchLM, learning_rate: float, b1: float, b2: float, eps: float,
              weight_decay: float, grad_clip: float):
  opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(b1, b2), eps=eps,
                          weight_decay=weight_decay)

  def step(inputs, targets) -> float:
    logits = model(inputs)
    with torch.profiler.record_function("loss"):
      loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.profiler.record_function("optimizer"):
      if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
      opt.step()
    return loss.item()

  return step


def scoped_self_times(events, steps: int) -> dict[str, float]:
  """Implements {"scope/op": self CPU seconds per step} over torch.profiler FunctionEvents."""
  out = {}
  for ev in events:
    scope, p = "", ev.cpu_parent
    while p is not None and not scope:
      if p.name in ("rope", "loss", "optimizer"):
        scope = p.name
      elif p.name.startswith("autograd::engine::evaluate_function: "):
        scope = p.name.split(": ", 1)[1]
      p = p.cpu_parent
    key = f"{scope}/{ev.name}"
    out[key] = out.get(key, 0.0) + ev.self_cpu_time_total / 1e6 / steps
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batches", required=True, help=".npz with inputs, targets [N, B, L]")
  for name, default in (("num_layers", 4), ("d_model", 256), ("num_heads", 4),
                        ("mlp_ratio", 4), ("vocab_size", 256)):
    ap.add_argument(f"--{name}", type=int, default=default)
  for name in ("learning_rate", "b1", "b2", "eps", "weight_decay", "grad_clip"):
    ap.add_argument(f"--{name}", type=float, required=True)
  args = ap.parse_args()
  data = np.load(args.batches)
  inputs = torch.as_tensor(data["inputs"].astype(np.int64))
  targets = torch.as_tensor(data["targets"].astype(np.int64))
  torch.manual_seed(0)
  model = TorchLM(args.vocab_size, args.d_model, args.num_layers, args.num_heads, args.mlp_ratio,
                  seq_len=inputs.shape[-1])
  step, i = make_step(model, args.learning_rate, args.b1, args.b2, args.eps, args.weight_decay,
                      args.grad_clip), 0
  for line in sys.stdin:
    times, losses, words = [], [], line.split()
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) \
        if words[0] == "profile" else None
    with prof or contextlib.nullcontext():
      for _ in range(int(words[-1])):
        t = time.perf_counter()
        losses.append(step(inputs[i % len(inputs)], targets[i % len(inputs)]))
        times.append(time.perf_counter() - t)
        i += 1
    out = {"torch": torch.__version__, "times": times, "losses": losses}
    if prof:
      out["profile"] = scoped_self_times(prof.events(), len(times))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
