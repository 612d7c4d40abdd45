r"""`experiments.bench --sweep`: K learning rates of the mnist5k MLP trained four ways, timed in
one run, and the ratios printed.

  (a) jaxlab's sweep: sweep_schedule.run_sweep with the LR axis over all devices (the bench
      splits the CPU into one device per core: --cpu_devices), which runs two chunks of LRs (one
      LR per device) alone, then the rest chunk by chunk or vmapped, whichever it predicts to
      be faster;
  (b) jaxlab one by one: lr_sweep.make_sweep's program for one LR on one device, called K times;
  (c) eager PyTorch one by one (experiments/torch_reference_mlp.py, a subprocess);
  (d) PyTorch torch.func.vmap + functional_call over the K models, same subprocess script.

All four train the same network (flatten -> [Dense -> ReLU] x 2 -> readout) with AdamW at a
constant LR (weight decay 0.1) on the same batches (mnist5k, batch 128, augment_shift 2,
stacked in memory beforehand), for the same steps. Times are wall clock from the first call
(compilation included: a researcher waits for it) to the last result.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import optax

from jaxlab import data, models
from jaxlab.analysis import sweep_schedule
from jaxlab.analysis.lr_sweep import lr_mesh, make_sweep, stack_batches
from jaxlab.configs import mnist5k_mlp
from jaxlab.train import tasks

WEIGHT_DECAY = 0.1


def mnist_batches(data_dir: str, steps: int, batch_size: int = 128) -> tuple[dict, dict]:
  """(train batches [T, B, ...], one eval batch of the test split)."""
  config = mnist5k_mlp.get_config()
  config.data.data_dir = data_dir
  whole = {"process_index": 0, "process_count": 1}
  train = stack_batches(data.make_train_iterator(config.data, batch_size=batch_size, seed=0,
                                                 **whole), steps)
  return train, next(data.eval_batches(config.data, batch_size=1000, **whole))


def time_jaxlab(width: int, lrs: list[float], train: dict, eval_batch: dict) -> dict:
  """Seconds of (a) sweep_schedule.run_sweep (auto: it picks the schedule) and (b) lr_sweep's
  one-LR program called once per LR."""
  model = models.MLP(hidden_widths=(width, width), num_classes=10)
  tx_fn = lambda lr: optax.adamw(lr, weight_decay=WEIGHT_DECAY)
  sweep_schedule.matmul_peak_flops()  # measured once per process, before either is timed
  t = time.perf_counter()
  picked = sweep_schedule.run_sweep(model, tx_fn, tasks.CLASSIFICATION, lrs, [0], train,
                                    eval_batch, mesh=lr_mesh(len(lrs)))
  picked_s = time.perf_counter() - t
  one = make_sweep(model, tx_fn, tasks.CLASSIFICATION)
  t = time.perf_counter()
  single = [one(np.float32([lr]), np.uint32([0]), train, eval_batch)[0] for lr in lrs]
  single = np.concatenate(jax.device_get(single))
  single_s = time.perf_counter() - t
  # The same runs: equal over the first steps (later, the large LRs' chaotic runs amplify the
  # last-bit differences between programs).
  np.testing.assert_allclose(picked["train_loss"][..., :10], single[..., :10], rtol=1e-4)
  return {"schedule": picked["schedule"], "estimate": picked["estimate"], "picked_s": picked_s,
          "one_by_one_s": single_s, "final_train_loss": picked["train_loss"][:, 0, -1].tolist()}


def time_torch(width: int, lrs: list[float], train: dict) -> dict | None:
  """Seconds of (c) eager PyTorch one by one and (d) torch.func.vmap; None without torch."""
  if importlib.util.find_spec("torch") is None:
    return None
  out = {}
  with tempfile.TemporaryDirectory(prefix="jaxlab_sweep_") as tmp:
    path = os.path.join(tmp, "batches.npz")
    np.savez(path, images=train["image"], labels=train["label"])
    for mode in ("sequential", "vmap"):
      done = subprocess.run(
          [sys.executable, "-m", "experiments.torch_reference_mlp", f"--batches={path}",
           f"--lrs={','.join(map(str, lrs))}", f"--widths={width},{width}",
           f"--weight_decay={WEIGHT_DECAY}", f"--mode={mode}"],
          capture_output=True, text=True, check=False,
          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
      if done.returncode:
        out[mode] = {"error": done.stderr.strip().splitlines()[-1:]}
        continue
      out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
  return out


def run(data_dir: str, widths: list[int], num_lrs: int, steps: int,
        torch_reference: bool = True) -> list[dict]:
  """Times every width, printing one block per width; returns the rows."""
  lrs = np.geomspace(1e-4, 1e-1, num_lrs).tolist()
  train, eval_batch = mnist_batches(data_dir, steps)
  rows = []
  for width in widths:
    ours = time_jaxlab(width, lrs, train, eval_batch)
    theirs = time_torch(width, lrs, train) if torch_reference else None
    row = {"width": width, "num_lrs": num_lrs, "steps": steps, "jaxlab": ours, "torch": theirs}
    rows.append(row)
    print(f"sweep of {num_lrs} LRs x {steps} AdamW steps, mnist5k MLP 2 x {width} "
          f"({jax.device_count()} device(s)):")
    estimate = ", ".join(f"{k} {s:.2f} s" for k, s in ours["estimate"].items())
    picked = (f"after two chunks, predicted for the rest: {estimate}" if estimate else
              "no prediction: at most one chunk after the first two")
    print(f"  (a) jaxlab sweep, schedule {ours['schedule']} ({picked}): {ours['picked_s']:.2f} s")
    print(f"  (b) jaxlab one by one: {ours['one_by_one_s']:.2f} s   (a)/(b) speed-up "
          f"{ours['one_by_one_s'] / ours['picked_s']:.2f}x")
    if theirs is None:
      print("  PyTorch: skipped (--notorch_reference, or torch is not installed)")
      continue
    for key, name in (("sequential", "(c) PyTorch eager one by one"),
                      ("vmap", "(d) PyTorch torch.func.vmap")):
      r = theirs[key]
      if "seconds" not in r:
        print(f"  {name}: failed: {r['error']}")
        continue
      print(f"  {name} (torch {r['torch']}): {r['seconds']:.2f} s   (a) is "
            f"{r['seconds'] / ours['picked_s']:.2f}x faster")
  return rows
