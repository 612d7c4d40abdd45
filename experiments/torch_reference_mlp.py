r"""The plain PyTorch MLP sweep that `experiments.bench --sweep` times jaxlab's LR sweep against.

The same network as jaxlab's MLP on flattened images (Linear -> ReLU per hidden width, then a
Linear readout, biases on; PyTorch's default init, which does not change the cost) and the same
update: AdamW at a constant learning rate with decoupled weight decay, mean cross-entropy, on the
same stacked batches (images [T, B, ...], labels [T, B] from an .npz). Two ways to run K learning
rates, each printing one JSON line {"torch", "mode", "seconds", "final_loss" [K]}:

  sequential: K fresh models trained one after the other in eager PyTorch (torch.optim.AdamW,
    its default foreach implementation): what a researcher's for-loop does.
  vmap: the K models' params stacked on a leading axis, gradients from torch.func.vmap over
    torch.func.grad of a torch.func.functional_call, and AdamW written out on the stacked
    tensors (torch.optim cannot step a vmapped model).
"""

import argparse
import json
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def make_mlp(in_features: int, widths: list[int], num_classes: int) -> nn.Sequential:
  layers, fan_in = [], in_features
  for w in widths:
    layers += [nn.Linear(fan_in, w), nn.ReLU()]
    fan_in = w
  return nn.Sequential(*layers, nn.Linear(fan_in, num_classes))


def sequential(images, labels, lrs, widths, num_classes, weight_decay) -> list[float]:
  """Final train losses of K runs, one after the other."""
  finals = []
  for k, lr in enumerate(lrs):
    torch.manual_seed(k)
    model = make_mlp(images[0, 0].numel(), widths, num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for t in range(images.shape[0]):
      loss = F.cross_entropy(model(images[t].flatten(1)), labels[t])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    finals.append(float(loss))
  return finals


def vmapped(images, labels, lrs, widths, num_classes, weight_decay,
            b1=0.9, b2=0.999, eps=1e-8) -> list[float]:
  """Final train losses of K runs stepped together (torch.func.vmap)."""
  from torch import func  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  models = [make_mlp(images[0, 0].numel(), widths, num_classes) for _ in lrs]
  params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
            for n, _ in models[0].named_parameters()}
  base = models[0].to("meta")
  lr = torch.tensor(lrs, dtype=torch.float32)

  def loss_fn(p, x, y):
    return F.cross_entropy(func.functional_call(base, p, (x,)), y)

  grad_and_loss = func.vmap(func.grad_and_value(loss_fn), in_dims=(0, None, None))
  m = {n: torch.zeros_like(p) for n, p in params.items()}
  v = {n: torch.zeros_like(p) for n, p in params.items()}
  for t in range(images.shape[0]):
    grads, losses = grad_and_loss(params, images[t].flatten(1), labels[t])
    c1, c2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
    for n, p in params.items():
      scale = lr.view(-1, *[1] * (p.dim() - 1))
      m[n].mul_(b1).add_(grads[n], alpha=1 - b1)
      v[n].mul_(b2).addcmul_(grads[n], grads[n], value=1 - b2)
      p.mul_(1 - scale * weight_decay)
      p.sub_(scale * (m[n] / c1) / ((v[n] / c2).sqrt() + eps))
  return [float(x) for x in losses]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batches", required=True, help=".npz with images [T, B, ...], labels [T, B]")
  parser.add_argument("--lrs", required=True, help="comma-separated learning rates")
  parser.add_argument("--widths", required=True, help="comma-separated hidden widths")
  parser.add_argument("--num_classes", type=int, default=10)
  parser.add_argument("--weight_decay", type=float, default=0.1)
  parser.add_argument("--mode", choices=("sequential", "vmap"), required=True)
  args = parser.parse_args()
  data = np.load(args.batches)
  images = torch.from_numpy(data["images"].astype(np.float32))
  labels = torch.from_numpy(data["labels"].astype(np.int64))
  lrs = [float(x) for x in args.lrs.split(",")]
  widths = [int(x) for x in args.widths.split(",")]
  run = sequential if args.mode == "sequential" else vmapped
  t = time.perf_counter()
  finals = run(images, labels, lrs, widths, args.num_classes, args.weight_decay)
  print(json.dumps({"torch": torch.__version__, "mode": args.mode,
                    "seconds": time.perf_counter() - t, "final_loss": finals}), flush=True)


if __name__ == "__main__":
  main()
