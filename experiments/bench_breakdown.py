r"""Where the LM train step's time goes, per op category: ours (XLA:CPU thunks) vs eager PyTorch.

Ours: a few train steps under `jax.profiler.trace`; the XLA:CPU runtime records one host event
per executed thunk (lines `tf_XLAPjRtCpuClient/*`, `tf_XLAEigen/*`), named after its HLO
instruction. Each name is looked up in the compiled step's HLO text and classified by the ops it
fuses (a dot: matmul, with batch dims: attention) and by its metadata: the `op_name` (flax module
path, e.g. `block_0/attn_norm/...`) and the Python stack frames that built it (`rope.py`,
`apply_activation`, `optax/...`). PyTorch: the self CPU time of each aten op under
`torch.profiler`, labelled by the worker with its scope (rope, optimizer) or autograd node
(experiments/torch_reference_lm.py, `profile n`), classified by name into the same categories.
"""

import collections
import dataclasses
import glob
import json
import re
import statistics
import subprocess
import tempfile
import time

import jax

MATMUL, ATTENTION, SOFTMAX = "matmul", "attention (batched matmul)", "softmax"
LAYERNORM, GELU, ROPE, EMBED = "layernorm", "gelu", "rope", "embedding"
LOSS, OPTIMIZER, COPY = "reduce / loss", "optimizer (adamw + clip)", "copy/transpose"
ELEMENTWISE, UNATTRIBUTED = "other elementwise", "unattributed"
CATEGORIES = (MATMUL, ATTENTION, SOFTMAX, LAYERNORM, GELU, ROPE, EMBED, LOSS, OPTIMIZER, COPY,
              ELEMENTWISE, UNATTRIBUTED)
# Data movement only: a fusion of nothing else is a layout copy / transpose.
_MOVES = {"copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "concatenate", "pad",
          "dynamic-slice", "dynamic-update-slice", "parameter", "constant", "tuple",
          "get-tuple-element", "iota", "copy-start", "copy-done", "reverse", "fusion"}
_CONTROL = {"conditional", "while", "call"}  # not counted: the thunks they run are recorded
# Runtime events that are not an HLO instruction (waiting, dispatch); reported apart.
_RUNTIME = re.compile(r"ThunkExecutor|ThreadpoolListener|SlinkyThreadPool|^end: ")


@dataclasses.dataclass
class Instr:
  """One HLO instruction: opcode, its fused body's opcodes (and its own), op_name, source."""
  opcode: str
  ops: tuple[str, ...]
  op_name: str
  source: str  # the stack frames that built it, "file:function" innermost first
  calls: tuple[str, ...] = ()  # the computations it calls (fusion body, reducer)


@dataclasses.dataclass
class Breakdown:
  """Seconds per step by category, other (runtime) events per step, and wall seconds per step."""
  seconds: dict[str, float]
  runtime: dict[str, float]
  wall: float


def _table(text: str, section: str) -> dict[int, str]:
  """Implements id -> entry of one of the HLO text's stack-frame tables (FileNames, ...)."""
  m = re.search(rf"^{section}\n((?:\d+ .*\n)*)", text, re.M)
  rows = m.group(1).splitlines() if m else []
  return {int(k): v for k, v in (row.split(" ", 1) for row in rows)}


def parse_hlo(text: str) -> dict[str, Instr]:
  """Implements name -> Instr for every instruction of an HLO module's text (compiled.as_text())."""
  files, funcs = _table(text, "FileNames"), _table(text, "FunctionNames")
  locs, frames = _table(text, "FileLocations"), _table(text, "StackFrames")

  def source(frame: int) -> str:
    out = []
    while frame in frames and len(out) < 64:
      f = re.search(r"file_location_id=(\d+) parent_frame_id=(\d+)", frames[frame])
      loc = re.search(r"file_name_id=(\d+) function_name_id=(\d+)", locs.get(int(f[1]), ""))
      if loc:
        out.append(f"{files.get(int(loc[1]), '')}:{funcs.get(int(loc[2]), '')}".replace('"', ""))
      frame = int(f[2]) - 1  # printed parent ids are one above the frame ids (0: none)
    return " ".join(out)

  comps, calls, instrs, comp = collections.defaultdict(list), collections.defaultdict(list), {}, ""
  for line in text.splitlines():
    head = re.match(r"(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .*\{$", line)
    if head:
      comp = head[1]
      continue
    m = re.match(r"\s+(?:ROOT )?%?([\w.\-]+) = (?:\([^=]*?\)|\S+) ([\w\-]+)\((.*)", line)
    if not m:
      continue
    op = m[2] + ("[batch]" if m[2] == "dot" and "lhs_batch_dims" in m[3] else "")
    called = re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", m[3])
    comps[comp].append(op)
    calls[comp] += called
    sf = re.search(r"stack_frame_id=(\d+)", m[3])
    instrs[m[1]] = Instr(m[2], (op,), (re.search(r'op_name="([^"]*)"', m[3]) or [None, ""])[1],
                         source(int(sf[1])) if sf else "", tuple(called))

  def body(c: str, seen: set) -> list[str]:
    seen.add(c)
    return comps[c] + [o for d in calls[c] if d not in seen for o in body(d, seen)]

  for i in instrs.values():
    if i.opcode == "fusion":
      i.ops += tuple(o for c in i.calls for o in body(c, set()))
  return instrs


def classify(instr: Instr) -> str:
  """Implements the op category of one HLO instruction (see CATEGORIES); first match wins.

  A dot (batched: attention), pure data movement, then the metadata (optimizer, loss, norm,
  rope, gelu, embedding, softmax in attention), then any reduce; else elementwise.
  """
  ops, name, src = set(instr.ops), instr.op_name, instr.source
  if "dot[batch]" in ops:
    return ATTENTION
  if "dot" in ops or "convolution" in ops:
    return MATMUL
  if ops <= _MOVES:
    return COPY
  if re.search(r"optax/(?!losses)|jaxlab/optim", src) or re.match(  # outside value_and_grad
      r"jit\(train_step\)/(?!.*(jvp\(|transpose\())", name):
    return OPTIMIZER
  if "optax/losses" in src or "tasks.py" in src or re.search(r"jvp\(\)|take_along_axis", name):
    return LOSS
  if re.search(r"_norm[/.]", name) or "norms.py" in src or "fused_norm" in src:
    return LAYERNORM
  if "rope.py" in src or ops & {"cosine", "sine"}:  # RoPE is the model's only trigonometry
    return ROPE
  if "apply_activation" in src or re.search(r":gelu\b", src):
    return GELU
  if "/embed/" in name:
    return EMBED
  if re.search(r":_?softmax\b", src) or (
      ("/attn/" in name or "attention" in src) and ops & {"exponential", "reduce", "select"}):
    return SOFTMAX
  if "reduce" in ops:
    return LOSS
  return ELEMENTWISE


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
                "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
# In COPY but writing nothing: views, arguments, tuples.
_NO_WRITE = {"bitcast", "parameter", "get-tuple-element", "tuple", "constant"}


def copy_inventory(hlo_text: str) -> list[tuple[str, int, int]]:
  """Implements the data movement a compiled program writes, from its HLO alone (no timing):
  (instruction kind and shape, count, bytes written in all) for the ENTRY computation's
  instructions classified COPY, largest first. The kind is the instruction's name without its
  numeric suffix (XLA names fusions after their ops: `transpose_copy_fusion`). Per device for
  an SPMD program."""
  instrs = parse_hlo(hlo_text)
  entry = hlo_text[hlo_text.index("\nENTRY"):]
  rows = collections.defaultdict(lambda: [0, 0])
  for m in re.finditer(r"^\s+(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\(",
                       entry, re.M):
    name, dtype, dims, opcode = m.groups()
    if opcode in _NO_WRITE or name not in instrs or classify(instrs[name]) != COPY:
      continue
    size = _DTYPE_BYTES.get(dtype, 4)
    for d in filter(None, dims.split(",")):
      size *= int(d)
    kind = re.sub(r"[.]\d+$", "", name)
    row = rows[f"{kind} {dtype}[{dims}]"]
    row[0] += 1
    row[1] += size
  return sorted(((k, n, b) for k, (n, b) in rows.items()), key=lambda r: -r[2])


def format_copies(rows: list[tuple[str, int, int]], top: int = 8) -> str:
  """Implements the copy inventory's printout: total MB, then the `top` largest kinds."""
  out = [f"Copies and transposes the compiled step writes (static, from its HLO; per device): "
         f"{sum(r[2] for r in rows) / 1e6:.1f} MB in {sum(r[1] for r in rows)} instructions"]
  out += [f"  {b / 1e6:8.2f} MB  {n:3d} x {k}" for k, n, b in rows[:top]]
  return "\n".join(out)


def thunk_times(xplane_path: str) -> collections.Counter:
  """Implements name -> total ns of the XLA:CPU thunk / runtime events in a profile."""
  totals = collections.Counter()
  data = jax.profiler.ProfileData.from_file(xplane_path)
  for plane in data.planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      if line.name.startswith(("tf_XLAPjRtCpuClient", "tf_XLAEigen")):
        for ev in line.events:
          totals[ev.name] += ev.duration_ns
  return totals


def summarize(totals: dict[str, float], instrs: dict[str, Instr], steps: int) -> tuple[dict, dict]:
  """Implements per-step seconds by category and by runtime event from thunk ns totals."""
  seconds, runtime = collections.Counter(), collections.Counter()
  for name, ns in totals.items():
    if _RUNTIME.search(name):
      runtime[name] += ns / 1e9 / steps
    elif name in instrs and instrs[name].opcode in _CONTROL:
      continue
    else:
      seconds[classify(instrs[name]) if name in instrs else UNATTRIBUTED] += ns / 1e9 / steps
  return dict(seconds), dict(runtime)


def jax_op_times(step, hlo_text: str, steps: int = 3) -> Breakdown:
  """Implements the breakdown of `step()` (one blocking call of a jitted fn compiled to hlo_text)."""
  step()  # warm (and leave jit's slow first-call path)
  walls = []
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      for _ in range(steps):
        t = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t)
    path, = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
    totals = thunk_times(path)
  seconds, runtime = summarize(totals, parse_hlo(hlo_text), steps)
  return Breakdown(seconds, runtime, statistics.median(walls))


def classify_aten(key: str) -> str:
  """Implements the category of a PyTorch profiler key 'scope/aten::op' (scope may be empty).

  Scopes: 'rope', 'optimizer', 'loss' (record_function in the worker) or an autograd node
  ('MmBackward0', ...). PyTorch's fused SDPA computes its softmax inside the attention kernel,
  so its softmax time lands in the attention row: compare attention + softmax rows together.
  """
  scope, _, op = key.rpartition("/")
  if scope == "optimizer" or re.search(r"adam|_foreach_", op):
    return OPTIMIZER
  if scope == "rope" or re.match(r"(Mul|Cat|Neg|Split|Slice)Backward", scope):
    return ROPE
  if re.search(r"scaled_dot_product|flash_attention|bmm|baddbmm", key):
    return ATTENTION
  if re.search(r"::(mm|addmm|matmul|linear)$", op) or re.match(r"(Mm|Addmm)Backward", scope):
    return MATMUL
  if "layer_norm" in key or "LayerNorm" in scope:
    return LAYERNORM
  if "gelu" in key.lower():
    return GELU
  if "softmax" in op:
    return LOSS if scope == "loss" or "LogSoftmax" in scope else SOFTMAX
  if scope == "loss" or re.search(r"nll_loss|cross_entropy|NllLoss|LogSoftmax", key):
    return LOSS
  if re.search(r"embedding|index_select|EmbeddingBackward", key):
    return EMBED
  if re.search(r"::(copy_|clone|contiguous|transpose|permute|t|view|reshape|_unsafe_view|"
               r"as_strided|expand|empty_like|empty|zeros|zero_|fill_|select|slice|chunk|"
               r"split|unbind|detach|alias|_reshape_alias|cat)$", op):
    return COPY
  if re.search(r"::(sum|mean|norm|linalg_vector_norm|max|amax|stack)$", op):
    return LOSS
  return ELEMENTWISE


def torch_op_times(worker_args: list[str], cwd: str, steps: int = 3,
                   env: dict | None = None) -> tuple[Breakdown, str]:
  """Implements the breakdown of a fresh PyTorch reference worker's `steps` profiled steps (env:
  the worker's environment, None: ours)."""
  proc = subprocess.Popen(worker_args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          cwd=cwd, env=env)
  try:
    proc.stdin.write(f"1\nprofile {steps}\n")
    proc.stdin.flush()
    lines = [proc.stdout.readline() for _ in range(2)]
    if not lines[1]:
      raise RuntimeError(f"the PyTorch reference worker exited with code {proc.wait()}")
    out = json.loads(lines[1])
  finally:
    proc.stdin.close()
    proc.wait()
  seconds = collections.Counter()
  for key, s in out["profile"].items():
    seconds[classify_aten(key)] += s
  return Breakdown(dict(seconds), {}, statistics.median(out["times"])), out["torch"]


def format_table(ours: Breakdown, ref: Breakdown | None = None, ref_name: str = "PyTorch") -> str:
  """Implements the side-by-side table: ms/step and share per category, and ours/theirs."""
  rows = [c for c in CATEGORIES if ours.seconds.get(c) or (ref and ref.seconds.get(c))]
  tot = sum(ours.seconds.values())
  rtot = sum(ref.seconds.values()) if ref else 0.0
  head = f"{'category':<28}{'ours ms':>10}{'share':>8}"
  if ref:
    head += f"{ref_name + ' ms':>14}{'share':>8}{'ours/theirs':>13}"
  out = [head, "-" * len(head)]

  def row(label, s, r, shares=True):
    share = lambda x, t: f"{100 * x / t:7.1f}%" if shares and t else " " * 8  # noqa: E731
    line = f"{label:<28}{s * 1e3:10.2f}{share(s, tot)}"
    if ref:
      line += f"{r * 1e3:14.2f}{share(r, rtot)}" + (f"{s / r:12.2f}x" if r else f"{'-':>13}")
    return line

  out += [row(c, ours.seconds.get(c, 0.0), ref.seconds.get(c, 0.0) if ref else 0) for c in rows]
  out += ["-" * len(head), row("sum of op times", tot, rtot),
          row("wall-clock step (profiled)", ours.wall, ref.wall if ref else 0, shares=False)]
  wait = ours.runtime.get("ThunkExecutor::Execute (wait for completion)", 0.0)
  spans = ours.runtime.get("ThunkExecutor::Execute", 0.0)
  out.append(f"  ours: XLA:CPU executor spans {spans * 1e3:.1f} ms/step, summed over threads "
             f"(they contain the thunks; spans - op sum = dispatch between thunks); the calling "
             f"thread waited {wait * 1e3:.1f} ms/step for the step; "
             f"{ours.seconds.get(UNATTRIBUTED, 0) * 1e3:.1f} ms/step in thunks not in the HLO")
  out.append("  (ms per step. Op times are summed over threads: XLA runs independent thunks on "
             "its Eigen threads at once, so ours can exceed the wall time; PyTorch's intra-op "
             "threads are inside each op's time. PyTorch's fused SDPA includes its softmax: "
             "compare attention + softmax together. Wall time beyond our op sum is time with "
             "no thunk on any thread; the largest such gaps follow the `dot` thunks XLA:CPU runs "
             "on Eigen, which seem to return before Eigen's threads finish: see "
             "docs/results/cpu_speed.md.)")
  return "\n".join(out)
