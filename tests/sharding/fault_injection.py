"""Runs experiments.train, and SIGKILLs this process at a chosen point (tests only).

  JAXLAB_KILL=step:15:1 python tests/sharding/fault_injection.py <experiments.train flags>

`step:S:P`: process P kills itself before it runs step S (after S - 1 steps).
`save:S:P`: process P kills itself when the checkpoint of step S starts, so the others write
their part of it and it is never completed.
"""

import os
import runpy
import signal
import sys
import time

import jax

from jaxlab.train import checkpoint, step as step_lib

KIND, AT, PROCESS = os.environ["JAXLAB_KILL"].split(":")
AT, PROCESS = int(AT), int(PROCESS)


def _die():
  print(f"fault_injection: process {jax.process_index()} SIGKILLs itself at {time.time():.3f} "
        f"({KIND} {AT})", flush=True)
  os.kill(os.getpid(), signal.SIGKILL)


def _wrap_step(real):
  def train_step(state, *args, **kwargs):
    if KIND == "step" and jax.process_index() == PROCESS and int(state.step) == AT - 1:
      _die()
    return real(state, *args, **kwargs)
  return train_step


def _wrap_save(real):
  def save(manager, state, data_state):
    if KIND == "save" and jax.process_index() == PROCESS and int(state.step) == AT:
      _die()
    return real(manager, state, data_state)
  return save


step_lib.train_step = _wrap_step(step_lib.train_step)
checkpoint.save = _wrap_save(checkpoint.save)
sys.argv = ["experiments.train", *sys.argv[1:]]
runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
