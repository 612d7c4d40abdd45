"""Train any jaxlab config.

  python -m experiments.train --config=experiments/configs/mnist5k_mlp.py --workdir=/tmp/mlp
  python -m experiments.train --config=... --workdir=... --config.optim.learning_rate=3e-3

Rerunning the same command resumes from the latest checkpoint in --workdir. A resume whose
config changes how the checkpoints were trained (model, optim, data, seed, batch size, ...) stops
with one line (exit 2) unless --allow_config_change=KEYS; num_steps may grow. One run per
workdir: a second exits 2 naming the first's pid and host (jaxlab/train/workdir.py). Multi-host:
add --coordinator_address/--num_processes/--process_id (see jaxlab/sharding/distributed.py).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import config_overrides
from jaxlab import data
from jaxlab.sharding import distributed
from jaxlab.train import loop, workdir

_CONFIG = config_flags.DEFINE_config_file("config", None, "path to an experiments/configs file")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (metrics, checkpoints)")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_list(
    "allow_config_change", [], "config keys (dotted, e.g. optim.learning_rate, or a parent such "
    "as optim) that may differ from the workdir's config.json when resuming; both configs are "
    "kept (config.<step>.json) and metrics.jsonl marks the step (see jaxlab/train/workdir.py)")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax(logging.logging.Filter):
  """Drops orbax's per-save INFO chatter; its warnings and errors still show."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietOrbax())
  distributed.initialize_from_flags()
  try:
    result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                     allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except (loop.NonFiniteLossError, data.DatasetNotPreparedError) as e:
    logging.error("%s", e)
    sys.exit(1)
  except workdir.WorkdirError as e:  # config drift on resume, a locked workdir
    logging.error("%s", e)
    sys.exit(2)
  if result.get("preempted"):
    logging.info("stopped by SIGTERM at step %d; rerun the same command to resume", result["step"])


if __name__ == "__main__":
  config_overrides.exit_on_unknown_override(sys.argv)
  app.run(main)
