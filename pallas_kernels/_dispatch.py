"""The one dispatch rule of every op's api.py (README, "Accelerators").

  implementation=None   one program that picks by the platform it is *lowered* for
                        (jax.lax.platform_dependent): on "tpu" and "cuda" the op's kernel
                        compiled for that target (Mosaic TPU / Triton), unless the kernel's
                        unsupported_reason(target) refuses the call; every other platform, and
                        a refused call, runs the op's default XLA path. A refusal is logged
                        (absl, warning level when it concerns this machine's backend, info
                        otherwise). So a step traced on a CPU host and exported or AOT-compiled
                        for a TPU or GPU carries that platform's kernel.
  "pallas"              the kernel compiled for this machine's accelerator (jax.default_backend()
                        "tpu" -> the TPU kernel, "cuda"/"gpu" -> the Triton kernel); ValueError
                        with the reason when there is no accelerator or the kernel refuses the
                        call.
  "pallas_interpret"    the kernel in the Pallas interpreter (any backend), laid out for
                        `interpret_target` ("tpu" unless this machine has a GPU); ValueError
                        when the kernel refuses the call.
  any other valid name  the op's own XLA path of that name.
An invalid name is a ValueError listing the valid ones.
"""

from typing import Callable, Mapping

import jax
from absl import logging

KERNEL = "pallas"
INTERPRET = "pallas_interpret"
# lowering platform (jax.export / lax.platform_dependent names) -> kernel target
LOWERING_TARGETS = {"tpu": "tpu", "cuda": "gpu"}
TARGETS = ("tpu", "gpu")


def backend_target() -> str | None:
  """"tpu" or "gpu" for this process's default backend, None for any other (CPU)."""
  backend = jax.default_backend()
  if backend == "tpu":
    return "tpu"
  return "gpu" if backend in ("gpu", "cuda") else None


def interpret_target() -> str:
  """The layout "pallas_interpret" emulates: this machine's accelerator, else the TPU's."""
  return backend_target() or "tpu"


def check_implementation(implementation, paths: Mapping[str, Callable]) -> tuple[str, ...]:
  """The valid names (kernel, interpreter, then the op's XLA paths); ValueError for others."""
  valid = (KERNEL, INTERPRET, *paths)
  if implementation is not None and implementation not in valid:
    raise ValueError(f"implementation must be None or one of {valid}; got {implementation!r}")
  return valid


def run(op: str, implementation: str | None, operands: tuple, *,
        paths: Mapping[str, Callable], default: str,
        kernel: Callable[[str, bool], Callable],
        unsupported_reason: Callable[[str, bool], str | None],
        kernel_targets: tuple[str, ...] = TARGETS):
  """Runs `op` on `operands` (a tuple of arrays or pytrees of arrays; None allowed) by the rule
  in the module docstring.

  Args:
    op: the op's name for messages ("attention", "fused_norm", ...).
    implementation: the caller's `implementation=` argument.
    paths: the op's XLA implementations by name, each a function of *operands.
    default: the name in `paths` that None runs where no kernel runs.
    kernel: kernel(target, interpret) -> a function of *operands running the Pallas kernels
      laid out for target "tpu" or "gpu" (interpret: in the Pallas interpreter).
    unsupported_reason: (target, interpret) -> why the kernels cannot run this call there, or
      None. Called before any kernel is traced, so a refused call never reaches lowering.
    kernel_targets: targets on which None picks the kernel.
  """
  valid = check_implementation(implementation, paths)
  if implementation in paths:
    return paths[implementation](*operands)
  if implementation == INTERPRET:
    target = interpret_target()
    _raise_if_refused(op, implementation, valid, unsupported_reason(target, True), target)
    return kernel(target, True)(*operands)
  if implementation == KERNEL:
    target = backend_target()
    if target is None:
      raise ValueError(
          f"pallas_kernels.{op}: implementation='pallas' compiles the kernels for a GPU or TPU; "
          f"this machine's default backend is {jax.default_backend()!r}. Use None (the kernel "
          f"where the program is lowered for a GPU/TPU, XLA elsewhere), 'pallas_interpret' or "
          f"one of {tuple(paths)}")
    _raise_if_refused(op, implementation, valid, unsupported_reason(target, False), target)
    return kernel(target, False)(*operands)
  branches = {}
  for platform, target in LOWERING_TARGETS.items():
    if target not in kernel_targets:
      continue
    reason = unsupported_reason(target, False)
    if reason is None:
      branches[platform] = kernel(target, False)
    else:
      log = logging.warning if target == backend_target() else logging.info
      log("pallas_kernels.%s: on %s the kernel cannot run this call, using %r: %s", op,
          platform, default, reason)
  if not branches:
    return paths[default](*operands)
  return jax.lax.platform_dependent(*operands, default=paths[default], **branches)


def _raise_if_refused(op, implementation, valid, reason, target):
  if reason is not None:
    others = tuple(v for v in valid if v != implementation)
    raise ValueError(f"pallas_kernels.{op}: implementation={implementation!r} cannot run this "
                     f"call ({target} kernel): {reason}. Valid values: None (picks one that "
                     f"runs) or one of {others}")
