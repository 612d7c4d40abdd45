"""What a reader would call a broken plot, checked on a figure drawn on matplotlib's Agg canvas.

`figure_problems(fig)` draws the figure and lists, in words:
- an axis whose tick labels are on but show fewer than two labelled ticks inside its view (a log
  axis spanning less than a decade with minor ticks switched off shows none);
- two labelled lines in one axes with the same data (the first is hidden under the second) or the
  same colour, line style and marker (the legend cannot tell them apart);
- two pieces of text that overlap (tick labels, axis labels, titles, legends), or text cut off at
  the edge of the figure.
`png_problems(data)` checks that bytes are a PNG that decodes to a non-blank image.
Notebook tests load this file by path (it needs only numpy and matplotlib).
"""

import io
import itertools

import numpy as np

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _labels_in_view(axis):
  """(tick labels are switched on, the visible non-empty tick labels inside the view)."""
  lo, hi = sorted(axis.get_view_interval())
  tol = 1e-9 * max(abs(lo), abs(hi), 1e-300)
  switched_on, shown = False, []
  for ticks, locs in ((axis.get_major_ticks(), axis.get_majorticklocs()),
                      (axis.get_minor_ticks(), axis.get_minorticklocs())):
    for tick, loc in zip(ticks, locs):
      for label in (tick.label1, tick.label2):
        switched_on |= label.get_visible()
        if label.get_visible() and label.get_text().strip() and lo - tol <= loc <= hi + tol:
          shown.append(label)
  return switched_on, shown


def _axes_name(ax, i):
  return f"axes {i} ({ax.get_title()!r})" if ax.get_title() else f"axes {i}"


def _tick_problems(ax, name):
  problems = []
  for letter, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
    if not axis.get_visible():
      continue
    switched_on, shown = _labels_in_view(axis)
    if switched_on and len({label.get_text() for label in shown}) < 2:
      problems.append(f"{name}: {len(shown)} labelled {letter} tick(s) in view")
  return problems


def _style(line):
  return (str(line.get_color()), line.get_linestyle(), str(line.get_marker()))


def _line_problems(ax, name):
  lines = [ln for ln in ax.get_lines() if ln.get_visible() and not ln.get_label().startswith("_")]
  problems = []
  for a, b in itertools.combinations(lines, 2):
    xa, ya = (np.asarray(v, float) for v in a.get_data())
    xb, yb = (np.asarray(v, float) for v in b.get_data())
    if xa.shape == xb.shape and ya.shape == yb.shape and np.allclose(xa, xb, equal_nan=True) \
        and np.allclose(ya, yb, equal_nan=True):
      problems.append(f"{name}: line {a.get_label()!r} is hidden under {b.get_label()!r} "
                      "(same data)")
    elif _style(a) == _style(b):
      problems.append(f"{name}: lines {a.get_label()!r} and {b.get_label()!r} look the same")
  return problems


def _texts(fig):
  """(description, artist) for every visible piece of text the reader reads."""
  out = []
  for i, ax in enumerate(fig.axes):
    if not ax.get_visible():
      continue
    name = _axes_name(ax, i)
    for letter, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
      if not axis.get_visible():
        continue
      out += [(f"{name} {letter} tick {t.get_text()!r}", t) for t in _labels_in_view(axis)[1]]
      if axis.label.get_visible() and axis.label.get_text():
        out.append((f"{name} {letter} label", axis.label))
    for title in (ax.title, ax._left_title, ax._right_title):  # noqa: SLF001 (no public getter)
      if title.get_visible() and title.get_text():
        out.append((f"{name} title", title))
    legend = ax.get_legend()
    if legend is not None and legend.get_visible():
      out.append((f"{name} legend", legend))
  for text in fig.texts:  # suptitle, supxlabel and fig.text() live here
    if text.get_visible() and text.get_text():
      out.append((f"figure text {text.get_text()!r}", text))
  return out


def _corners(artist, renderer) -> np.ndarray:
  """The 4 corners (pixels) of the rectangle an artist covers; a rotated text's own rectangle,
  not the axis-aligned box around it (rotated tick labels' boxes overlap while the text does not).
  """
  box = artist.get_window_extent(renderer)
  angle = artist.get_rotation() % 180 if hasattr(artist, "get_rotation") else 0.0
  if angle == 0:
    return np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1]])
  artist.set_rotation(0)  # measure the unrotated text; the centre of the box stays put
  flat = artist.get_window_extent(renderer)
  artist.set_rotation(angle)
  theta = np.deg2rad(angle)
  rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
  half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [flat.width / 2, flat.height / 2]
  return np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2]) + half @ rotation.T


def _overlap_px(a: np.ndarray, b: np.ndarray) -> float:
  """How deep two convex quadrilaterals overlap (pixels; <= 0: apart), by separating axes."""
  depth = np.inf
  for quad in (a, b):
    for i in range(4):
      edge = quad[(i + 1) % 4] - quad[i]
      normal = np.array([-edge[1], edge[0]]) / max(np.hypot(*edge), 1e-12)
      pa, pb = a @ normal, b @ normal
      depth = min(depth, min(pa.max(), pb.max()) - max(pa.min(), pb.min()))
  return depth


def _overlap_problems(fig, renderer):
  problems = []
  canvas = fig.bbox
  for name, artist in _texts(fig):
    box = artist.get_window_extent(renderer)
    if box.x0 < canvas.x0 - 1 or box.y0 < canvas.y0 - 1 or box.x1 > canvas.x1 + 1 \
        or box.y1 > canvas.y1 + 1:
      problems.append(f"{name} is cut off at the edge of the figure")
  quads = [(name, _corners(artist, renderer)) for name, artist in _texts(fig)]
  for (name_a, a), (name_b, b) in itertools.combinations(quads, 2):
    if _overlap_px(a, b) > 1:  # more than a pixel deep
      problems.append(f"{name_a} overlaps {name_b}")
  return problems


def figure_problems(fig) -> list[str]:
  """Every readability defect of `fig` (an empty list for a clean figure); draws it first, on an
  Agg canvas (a figure built without pyplot has none)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top

  canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
  canvas.draw()
  renderer = canvas.get_renderer()
  problems = []
  for i, ax in enumerate(fig.axes):
    if ax.get_visible() and ax.has_data():
      name = _axes_name(ax, i)
      problems += _tick_problems(ax, name) + _line_problems(ax, name)
  return problems + _overlap_problems(fig, renderer)


def png_problems(data: bytes, min_side: int = 100) -> list[str]:
  """A PNG that decodes to an image at least `min_side` pixels each way and is not one colour."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top

  if not data.startswith(_PNG_SIGNATURE):
    return ["not a PNG (bad signature)"]
  image = matplotlib.image.imread(io.BytesIO(data), format="png")
  problems = []
  if min(image.shape[:2]) < min_side:
    problems.append(f"PNG is only {image.shape[1]}x{image.shape[0]} pixels")
  if np.ptp(image[..., :3]) == 0:
    problems.append("PNG is blank (one colour)")
  return problems
