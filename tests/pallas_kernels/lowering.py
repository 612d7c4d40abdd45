"""Cross-platform lowering checks run on a CPU host (DESIGN.md, "Known traps").

`jax.export.export(jax.jit(f), platforms=[platform])` runs Pallas's lowering for "tpu" (Mosaic,
a `tpu_custom_call`) or "cuda" (Triton, a `__gpu$xla.gpu.triton` custom call) without the
hardware. Lowering is not full compilation (the device compilers check more), but it catches
block shapes, primitives and memory layouts that a target cannot take.
"""

import re

import jax

KERNEL_CALLS = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}
_DISABLED = [jax.export.DisabledSafetyCheck.custom_call(KERNEL_CALLS["cuda"])]


def export_text(fn, *args, platform: str) -> str:
  """The StableHLO text of jit(fn)(*args) exported for one platform ("tpu", "cuda", "cpu");
  args may be arrays or jax.ShapeDtypeStructs."""
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
