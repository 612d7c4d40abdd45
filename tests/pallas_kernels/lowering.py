"""Cross-platform lowering checks run on a CPU host (DESIGN.md, "Known traps").

`jax.export.export(jax.jit(f), platforms=[platform])` runs Pallas's lowering for "tpu" (Mosaic,
a `tpu_custom_call`) or "cuda" (Triton, a `__gpu$xla.gpu.triton` custom call) without the
hardware. Lowering is not full compilation (the device compilers check more), but it catches
block shapes, primitives and memory layouts that a target cannot take.
"""

import contextlib
import re

import jax

KERNEL_CALLS = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}
H100 = "NVIDIA H100 80GB HBM3"  # the GPU jax 0.11 lowers Triton kernels for (sm_90)
_DISABLED = [jax.export.DisabledSafetyCheck.custom_call(KERNEL_CALLS["cuda"])]


def target_device(platform: str):
  """A context naming the device the export is for. Triton lowering asks for the GPU's compute
  capability; jax >= 0.11 reads it from the abstract mesh's device and fails on a CPU host
  without one ("No supported GPU devices found"). jax 0.10 needs nothing."""
  if platform != "cuda" or jax.__version_info__ < (0, 11):
    return contextlib.nullcontext()
  device = jax.sharding.AbstractDevice(device_kind=H100, num_cores=None, platform="cuda")
  return jax.sharding.use_abstract_mesh(
      jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device))


def export_text(fn, *args, platform: str) -> str:
  """The StableHLO text of jit(fn)(*args) exported for one platform ("tpu", "cuda", "cpu");
  args may be arrays or jax.ShapeDtypeStructs. One platform per export: a program with
  platform_dependent kernels cannot be exported for "tpu" and "cuda" at once in jax 0.10/0.11
  (every branch is lowered for every platform, and a pallas_call's compiler params name one)."""
  with target_device(platform):
    exported = jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=_DISABLED)
    return exported(*args).mlir_module()


def kernel_names(text: str, platform: str) -> list[str]:
  """The pallas_call `name=` of every kernel custom call of `platform` in exported text, in
  order of appearance (TPU: `kernel_name` in the call's config; Triton: its `name`)."""
  if platform == "tpu":
    names = re.findall(r'kernel_name\\?"?\s*[:=]\s*\\?"([^"\\]+)', text)
    count = text.count("@tpu_custom_call(")
  else:
    names = re.findall(r'name = "([^"]+)", num_stages', text)
    count = text.count("@__gpu$xla.gpu.triton(")
  if len(names) != count:
    raise AssertionError(f"found {count} {KERNEL_CALLS[platform]} calls but {len(names)} names")
  return names
