"""Reporting shared by the benchmarks and ``python -m examples.train``: results files, tables, figures.

A results file is JSON with a ``machine`` entry (:func:`machine`) so that every number says where it was
measured. Each benchmark ``python -m benchmarks.<name>`` keeps its committed results in a folder of its own,
``benchmarks/results/<name>/`` (:func:`results_dir`), and its short runs in that folder's ``quick/``,
ignored by git (:func:`output_dir`).

Figures follow four rules, so that a reader gets them at a glance: a bar's y axis starts at 0
or marks its break (:func:`y_from_zero_or_break`, :func:`mark_axis_break`); a bar cut by the axis limit
says so and carries its value (:func:`mark_cut_bars`); every error bar, band and reference line says
what it is in the legend (:func:`error_bars_legend`, :func:`band_legend`, :func:`reference_line`); and
overlapping curves differ in line style as well as colour (:func:`line_with_band`). matplotlib is
imported only by :func:`pyplot`, so a run without figures needs no matplotlib.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
  from matplotlib.axes import Axes
  from matplotlib.figure import Figure

RESULTS = Path(__file__).resolve().parent / "results"
# Versions worth recording when installed; the benchmarks' numbers depend on each.
_PACKAGES = ("jax", "jaxlib", "optax", "optax_usam", "flax", "torch", "unifiedsam")
# Line styles that keep overlapping curves apart in print and for colour-blind readers.
LINE_STYLES = ("-", "--", "-.", ":")


def machine(threads: int | None = None) -> dict[str, Any]:
  """Where a result was measured: CPU, cores, threads used, platform, package versions, JAX device, load."""
  import jax

  cpu = platform.processor() or platform.machine()
  try:
    names = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    cpu = names[0] if names else cpu
  except OSError:
    pass
  info: dict[str, Any] = {
    "cpu": cpu,
    "cores_visible": os.cpu_count(),
    "threads": threads,
    "platform": platform.platform(),
    "python": platform.python_version(),
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0]),
    "device_count": jax.device_count(),
    "loadavg_start": os.getloadavg(),
    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
  }
  for package in _PACKAGES:
    try:
      info[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      pass
  return info


def utc_now() -> str:
  """The current UTC time to the second, ISO 8601: the ``date_utc`` of a results file."""
  return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
  """Writes ``data`` as indented JSON (one trailing newline), creating the folder; returns ``path``."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data, indent=1) + "\n")
  return path


def read_json(path: Path) -> dict[str, Any]:
  return json.loads(path.read_text())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
  """A GitHub markdown table; ``align`` has one ``l`` or ``r`` per column (default: all left)."""
  align = align or "l" * len(header)
  if len(align) != len(header) or any(len(row) != len(header) for row in rows):
    raise ValueError(f"every row and align need {len(header)} columns")
  rules = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
  cells = ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(["| " + " | ".join(header) + " |", rules, *cells])


def pyplot() -> Any:
  """``matplotlib.pyplot`` drawing to files only (the Agg backend: no display needed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def save(
  fig: Figure, path: Path, dpi: int = 100, rect: tuple[float, float, float, float] | None = None
) -> Path:
  """Lays out (the axes within ``rect``, in figure fractions, leaving room for a figure legend), writes
  and closes ``fig``; returns ``path``."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout(rect=rect)
  fig.savefig(path, dpi=dpi)
  pyplot().close(fig)
  return path


def error_bars_legend(ax: Axes, label: str) -> None:
  """Adds a legend entry saying what the error bars of ``ax`` are (e.g. ``"IQR over rounds"``)."""
  ax.errorbar([], [], yerr=[], fmt="none", ecolor="k", capsize=3, label=f"error bars: {label}")


def band_legend(ax: Axes, label: str) -> None:
  """Adds a legend entry saying what the shaded bands of ``ax`` are (e.g. ``"+-1 std over 5 trials"``)."""
  ax.fill_between([], [], [], color="0.5", alpha=0.3, lw=0, label=f"bands: {label}")


def reference_line(ax: Axes, y: float, label: str, color: str = "k", style: str = "-") -> None:
  """A horizontal line at ``y`` with a legend entry saying what it is."""
  ax.axhline(y, color=color, lw=0.9, ls=style, label=label)


def mark_cut_bars(ax: Axes, xs: Sequence[float], heights: Sequence[float]) -> int:
  """Marks the bars at ``xs`` taller than the y axis (set the limits first) with a triangle and the value.

  When a bar is cut, the legend gets one entry saying what the triangle means. Returns how many were cut.
  """
  bottom, top = ax.get_ylim()
  cut = 0
  for x, h in zip(xs, heights, strict=True):
    if np.isfinite(h) and h > top:
      cut += 1
      ax.plot([x], [top], marker="^", color="k", ms=5, ls="none", clip_on=False, zorder=5)
      ax.annotate(
        f"{h:.3g}",
        (x, top),
        xytext=(0, 5),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=6,
        rotation=90,
        annotation_clip=False,
      )
  label = "bar cut by the axis (value above it)"
  if cut and label not in ax.get_legend_handles_labels()[1]:
    ax.plot([], [], marker="^", color="k", ms=5, ls="none", label=label)
  ax.set_ylim(bottom, top)
  return cut


def y_from_zero_or_break(ax: Axes, low: float, high: float, margin: float = 0.05) -> None:
  """Sets the y axis of a bar chart to ``[0, high]`` or, when the data sit far above 0, to a window
  ``[low, high]`` (with ``margin`` of the span around it) whose cut is drawn on the axis as ``//``.

  A bar's length reads as its value only from 0; a window is used when 0 would flatten the differences
  (the lowest value above 40% of the highest), and the break mark says the bars are cut.
  """
  span = max(high - low, abs(high) * 1e-3, 1e-12)
  if low <= 0.4 * high or low <= 0:
    ax.set_ylim(min(0.0, low), high + margin * span)
    return
  ax.set_ylim(low - margin * span, high + margin * span)
  mark_axis_break(ax)


def mark_axis_break(ax: Axes) -> None:
  """Draws ``//`` across the bottom of the y axis: the axis does not start at 0."""
  kwargs = {"transform": ax.transAxes, "color": "k", "clip_on": False, "lw": 1}
  for dy in (0.0, 0.025):
    ax.plot([-0.015, 0.015], [0.01 + dy, 0.035 + dy], **kwargs)


def line_with_band(
  ax: Axes,
  x: np.ndarray,
  mean: np.ndarray,
  lower: np.ndarray,
  upper: np.ndarray,
  label: str,
  index: int,
  color: Any = None,
  style: str | None = None,
) -> None:
  """Curve ``index`` of a figure: its line, in colour ``C{index}`` and a line style of its own unless
  given (overlapping curves stay apart in print too), and a shaded band from ``lower`` to ``upper``
  (say what the bands are with :func:`band_legend`)."""
  color = f"C{index % 10}" if color is None else color
  style = LINE_STYLES[index % len(LINE_STYLES)] if style is None else style
  ax.plot(x, mean, color=color, ls=style, lw=1.5, label=label)
  ax.fill_between(x, lower, upper, color=color, alpha=0.15, lw=0)


def results_dir(benchmark: str) -> Path:
  """The committed results of ``python -m benchmarks.<benchmark>``: ``benchmarks/results/<benchmark>/``.

  Every file there is written by a command the docs show (``tests/test_benchmarks_report.py`` checks it);
  its name starts with the benchmark's name, or with the ``--name`` of the run that wrote it.
  """
  return RESULTS / benchmark


def output_dir(args: Any, full_run: Mapping[str, Any], results: Path) -> Path:
  """Where a benchmark writes: ``args.out`` if given, else ``results`` for the full run (no ``--quick``, with
  plots where the benchmark draws any, every setting of ``full_run``) and ``results/quick`` (ignored by git)
  for any other, so that a short run never replaces the committed results."""
  if args.out is not None:
    return args.out
  plots = not getattr(args, "no_plots", False)
  full = not args.quick and plots and all(getattr(args, k) == v for k, v in full_run.items())
  return results if full else results / "quick"
