"""Errors the user causes (a config value, flag, dataset or path), as opposed to bugs."""


class UserError(ValueError):
  """A config value, flag, dataset or path the run cannot use.

  The message is one line naming the key/flag/path and what is valid. experiments/train.py prints
  it without a traceback and exits 2 (the traceback only with --verbose_errors). A ValueError so
  that callers catching ValueError keep working.
  """
