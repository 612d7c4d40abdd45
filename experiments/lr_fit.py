r"""The optimal learning rate per size of lr_transfer.json sweeps, by a parabola fit in log2 LR
with a bootstrap over seeds, and its drift per doubling of the size (jaxlab.analysis.lr_fit).

  python -m experiments.lr_fit \
      --results=docs/results/lr_transfer_mlp/lr_transfer.json --out=/tmp/lr_fit

Several --results files are merged: a parametrization's sizes from all of them, a size's seeds
joined when it appears in more than one. Prints a markdown table, writes lr_fit.json and lr_fit.png
(optimum vs log2 size with its interval, a line per parametrization) under --out.
"""

import json
import os
import sys

from absl import app, flags

from jaxlab.analysis import lr_fit, plots
from jaxlab.errors import UserError

_RESULTS = flags.DEFINE_list("results", None, "lr_transfer.json paths (comma-separated)")
_OUT = flags.DEFINE_string("out", None, "directory for lr_fit.json and lr_fit.png")
_N_BOOT = flags.DEFINE_integer("n_boot", 2000, "bootstrap resamples of the seeds")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the bootstrap resampling")
_POINTS = flags.DEFINE_integer("points", 5, "grid points around the argmin in each parabola fit")
flags.mark_flags_as_required(["results", "out"])


def run(paths, out: str, n_boot: int = 2000, seed: int = 0, points: int = 5) -> dict:
  """Fits, prints the markdown table, writes out/lr_fit.json and out/lr_fit.png; the report."""
  if points < 3:
    raise UserError(f"--points={points}; valid: 3 or more")
  if n_boot < 1:
    raise UserError(f"--n_boot={n_boot}; valid: 1 or more")
  report = lr_fit.fit_report(lr_fit.read_results(paths), n_boot, seed, points)
  print(lr_fit.markdown(report))
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(f"--out={out} cannot be created ({e.strerror}); valid: a directory") from None
  with open(os.path.join(out, "lr_fit.json"), "w") as f:
    json.dump(report, f, indent=1)
  plots.save_png(plots.lr_optimum_figure(report), os.path.join(out, "lr_fit.png"))
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    run(_RESULTS.value, _OUT.value, _N_BOOT.value, _SEED.value, _POINTS.value)
  except UserError as e:  # names the flag and the file; no traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
