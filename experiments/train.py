"""Train any jaxlab config.

  python -m experiments.train --config=experiments/configs/mnist5k_mlp.py --workdir=/tmp/mlp
  python -m experiments.train --config=... --workdir=... --config.optim.learning_rate=3e-3

Rerunning the same command resumes from the latest checkpoint in --workdir. A resume whose
config changes how the checkpoints were trained (model, optim, data, seed, batch size, ...) stops
with one line (exit 2) unless --allow_config_change=KEYS; num_steps may grow. One run per
workdir: a second exits 2 naming the first's pid and host (jaxlab/train/workdir.py). Multi-host:
add --coordinator_address/--num_processes/--process_id (see jaxlab/sharding/distributed.py).
"""

import signal
import sys

# SIGINT (Ctrl-C) exits 130, as shells expect; SIGTERM (preemption) keeps exit 0. Either way the
# loop first saves a checkpoint, and rerunning the same command resumes from it.
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 0}


def _stop_during_start_up(signum, frame):
  """Until the train loop installs its own handlers (imports, flags): one line, no traceback."""
  del frame
  name = signal.Signals(signum).name
  print(f"stopped by {name} during start-up (nothing new was saved); rerun the same command to"
        " resume", file=sys.stderr)
  raise SystemExit(SIGNAL_EXIT_CODES[name])


if __name__ == "__main__":  # before the slow imports below
  for _signal in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signal, _stop_during_start_up)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import config_overrides  # noqa: E402
from jaxlab import data  # noqa: E402
from jaxlab.sharding import distributed  # noqa: E402
from jaxlab.train import checkpoint  # noqa: E402
from jaxlab.train import loop, workdir  # noqa: E402

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
  except loop.Interrupted as e:  # SIGINT / SIGTERM before the first step
    logging.error("stopped by %s during start-up (nothing new was saved); rerun the same command"
                  " to resume", e.signal_name)
    sys.exit(SIGNAL_EXIT_CODES[e.signal_name])
  except (loop.DivergenceError, data.DatasetNotPreparedError) as e:  # incl. NonFiniteLossError
    logging.error("%s", e)
    sys.exit(1)
  except workdir.WorkdirError as e:  # config drift on resume, a locked workdir
    logging.error("%s", e)
    sys.exit(2)
  except checkpoint.NoReadableCheckpointError as e:  # checkpoints exist, none restores
    logging.error("%s", e)
    sys.exit(2)
  except ValueError as e:  # a config value the run cannot use (the message names the key)
    logging.error("%s", e)
    sys.exit(2)
  if result.get("preempted"):
    name = result.get("signal", "SIGTERM")
    logging.info("stopped by %s at step %d; rerun the same command to resume", name,
                 result["step"])
    sys.exit(SIGNAL_EXIT_CODES[name])


if __name__ == "__main__":
  config_overrides.exit_on_unknown_override(sys.argv)
  app.run(main)
