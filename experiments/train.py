"""Train any jaxlab config.

  python -m experiments.train --config=jaxlab/configs/mnist5k_mlp.py --workdir=/tmp/mlp
  python -m experiments.train --config=... --workdir=... --config.optim.learning_rate=3e-3

Rerunning the same command resumes from the latest checkpoint in --workdir. A resume whose
config changes how the checkpoints were trained (model, optim, data, seed, batch size, ...) stops
with one line (exit 2) unless --allow_config_change=KEYS; num_steps may grow. One run per
workdir: a second exits 2 naming the first's pid and host (jaxlab/train/workdir.py). An error
the user caused (config, flags, data, --workdir, mesh, resume) exits 2 with one line naming the
key/flag/path and what is valid; --verbose_errors adds its traceback. Multi-host:
add --coordinator_address/--num_processes/--process_id (see jaxlab/sharding/distributed.py).
"""

import os
import signal
import sys
import traceback

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

from experiments import config_overrides  # noqa: E402
from jaxlab import data  # noqa: E402
from jaxlab.errors import UserError  # noqa: E402
from jaxlab.sharding import distributed  # noqa: E402
from jaxlab.train import checkpoint  # noqa: E402
from jaxlab.train import loop, workdir  # noqa: E402

_CONFIG = config_overrides.define_config_file("config", "path to a jaxlab/configs file")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (metrics, checkpoints)")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_list(
    "allow_config_change", [], "config keys (dotted, e.g. optim.learning_rate, or a parent such "
    "as optim) that may differ from the workdir's config.json when resuming; both configs are "
    "kept (config.<step>.json) and metrics.jsonl marks the step (see jaxlab/train/workdir.py)")
_VERBOSE_ERRORS = flags.DEFINE_bool(
    "verbose_errors", False, "print the traceback of an error the run stops on (config, flags, "
    "data, workdir, resume); by default it is one line naming the key, flag or path")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax(logging.logging.Filter):
  """Drops orbax's per-save INFO chatter; its warnings and errors still show."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or "/orbax/" not in record.pathname


def _fail(error: BaseException, exit_code: int):
  """The error's message (one line naming the key/flag/path), with its traceback only under
  --verbose_errors; then exit."""
  logging.error("%s", error, exc_info=error if _VERBOSE_ERRORS.value else None)
  sys.exit(exit_code)


def check_workdir(path: str) -> str:
  """Creates --workdir if needed; a UserError naming it when it is empty, a file, under a file
  or not writable."""
  if not path or not path.strip():
    raise UserError("--workdir is empty; valid: a directory path (created if missing)")
  path = os.path.expanduser(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"--workdir={path} is a file; valid: a directory path (created if missing)")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:  # a parent is a file (NotADirectoryError), no permission, read-only fs
    raise UserError(f"--workdir={path} cannot be created ({e.strerror}: {e.filename}); valid: a "
                    "directory path under a writable directory") from e
  if not os.access(path, os.W_OK | os.X_OK):
    raise UserError(f"--workdir={path} is not writable; valid: a directory you can write to")
  return path


def _parse_flags(argv):
  """absl's flag parsing, with a bad flag value in one line (exit 2) instead of two (exit 1)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"FATAL flags: {' '.join(str(e).split())} (--helpshort lists the flags)", file=sys.stderr)
    sys.exit(2)
  except (OSError, SyntaxError) as e:  # --config's file does not load
    _config_does_not_load(e, argv)


def _config_does_not_load(e: Exception, argv):
  """One line (exit 2) for a --config file that does not load; its traceback (user code) only
  with --verbose_errors."""
  if _verbose_in(argv):
    traceback.print_exception(e)
    sys.exit(2)
  cause = f"{type(e).__name__}: {str(e).strip().splitlines()[-1].strip()}"
  print(f"FATAL flags: --config does not load ({cause}); valid: a config file such as "
        "jaxlab/configs/mnist5k_mlp.py (--verbose_errors shows the traceback)",
        file=sys.stderr)
  sys.exit(2)


def _verbose_in(argv) -> bool:
  return any(a in ("--verbose_errors", "--verbose_errors=true", "--verbose_errors=True")
             for a in argv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietOrbax())
  try:
    distributed.initialize_from_flags()
    result = loop.train_and_evaluate(_CONFIG.value, check_workdir(_WORKDIR.value),
                                     allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  # Errors the user caused exit 2 with one line (--verbose_errors: the traceback): UserError is
  # what jaxlab raises for a config value, flag, dataset or path it cannot use (validate_config,
  # the model/parametrization/quantization/mesh/optimizer/data builders, --workdir). Any other
  # exception (a ValueError included) is a bug and keeps its traceback.
  except loop.Interrupted as e:  # SIGINT / SIGTERM before the first step
    logging.error("stopped by %s during start-up (nothing new was saved); rerun the same command"
                  " to resume", e.signal_name)
    sys.exit(SIGNAL_EXIT_CODES[e.signal_name])
  except loop.DivergenceError as e:  # incl. NonFiniteLossError
    _fail(e, 1)
  except data.DatasetNotPreparedError as e:  # config.data.name not prepared in its data_dir
    _fail(e, 2)
  except workdir.WorkdirError as e:  # config drift on resume, a locked workdir
    _fail(e, 2)
  except checkpoint.NoReadableCheckpointError as e:  # checkpoints exist, none restores
    _fail(e, 2)
  except UserError as e:  # names the key/flag/path and what is valid
    _fail(e, 2)
  if result.get("preempted"):
    name = result.get("signal", "SIGTERM")
    logging.info("stopped by %s at step %d; rerun the same command to resume", name,
                 result["step"])
    sys.exit(SIGNAL_EXIT_CODES[name])


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
