"""What the main job reports: the table it prints, and the JSON and PNG it writes under --out.

The JSON and the figure go through ``benchmarks/report.py``, shared with the benchmarks: the JSON records
the machine the numbers come from, and the figure follows the same rules (bars from 0, error bars and
bands that say what they are, curves told apart by line style as well as colour, and by a zoom where
they overlap).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks import report
from examples.train.methods import FAMILY, family_dest

if TYPE_CHECKING:
  from matplotlib.axes import Axes

# The zoomed panel shows the methods whose final accuracy is within this many points of the best one.
ZOOM_POINTS = 5.0
# The parameters of each cheaper variant and SAM-family member, as the title names them, and their settings.
VARIANT_SETTINGS = {
  "reuse-sam": (("k", "reuse_every"),),
  "random-sam": (("p", "sam_probability"),),
  "subbatch-sam": (("f", "ascent_fraction"),),
  **{name: tuple((p, family_dest(name, p)) for p in parameters) for name, (_, parameters) in FAMILY.items()},
}


def settings(args: argparse.Namespace) -> dict[str, Any]:
  """The job's settings as the JSON stores them (methods by name), for :func:`title` and :func:`write`; where
  the files go and the display are not among them."""
  config = {k: v for k, v in vars(args).items() if k not in ("methods", "out", "name", "no_progress")}
  config["methods"] = [m.name for m in args.methods]
  return config


def title(config: dict[str, Any]) -> str:
  """The first line the job prints, and its figure's title: the settings its numbers depend on."""
  dtype = f", {config['dtype']}" if config["dtype"] != "float32" else ""
  variants = "".join(
    f", {name} " + " and ".join(f"{symbol} = {config[key]:g}" for symbol, key in parameters)
    for name, parameters in VARIANT_SETTINGS.items()
    if name in config["methods"]
  )
  return (
    f"{config['dataset']} ({config['model']}), noise {config['noise']:g}, rho {config['rho']:g}, "
    f"{config['epochs']} epochs, {config['seeds']} seeds{dtype}{variants}"
  )


def table(results: dict[str, Any]) -> str:
  width = max(16, *map(len, results))  # random-smoothing-sam is longer than 16
  rows = [f"{'method':<{width}} {'test acc (%)':>16}   per seed"]
  for name, r in results.items():
    acc = np.asarray(r["final_test_acc"])
    per_seed = " ".join(f"{a:.1f}" for a in acc)
    rows.append(f"{name:<{width}} {acc.mean():>8.2f} +- {acc.std():<5.2f}   {per_seed}")
  return "\n".join(rows)


def plot(results: dict[str, Any], path: Path, title: str) -> Path:
  """Final test accuracy per method (bars), test accuracy per epoch (curves), and a zoom on the last
  epochs of the methods near the best, where their curves overlap; returns ``path``."""
  names = list(results)
  accs = [np.asarray(results[n]["final_test_acc"], dtype=float) for n in names]
  curves = [np.asarray(results[n]["test_acc_curve"], dtype=float) for n in names]
  means = np.array([a.mean() for a in accs])
  seeds, epochs = curves[0].shape
  xs = np.arange(len(names))
  near = [i for i in xs if means[i] >= means.max() - ZOOM_POINTS]
  zoom = len(near) > 1 and epochs > 1
  plt = report.pyplot()
  widths = (1, 1.1, 1.1) if zoom else (1, 1.1)
  fig, axes = plt.subplots(1, len(widths), figsize=(5.5 * sum(widths), 4.8), width_ratios=widths)
  ax_bar, ax_curve = axes[:2]

  # From 0, so that a bar's length reads as its value; the numbers tell the close ones apart.
  ax_bar.bar(xs, means, color=[f"C{i % 10}" for i in xs], width=0.7)
  if seeds > 1:
    ax_bar.errorbar(xs, means, yerr=[a.std() for a in accs], fmt="none", ecolor="k", capsize=4)
  for x, mean in zip(xs, means, strict=True):
    ax_bar.text(x, mean / 2, f"{mean:.1f}", ha="center", va="center", color="w", fontsize=9, rotation=90)
  ax_bar.set_ylim(0, 100)
  ax_bar.set_xticks(xs, names, rotation=30, ha="right", rotation_mode="anchor")
  ax_bar.set_ylabel("final test accuracy (%)")
  spread = f"; error bars: ± std over {seeds} seeds" if seeds > 1 else ""
  ax_bar.set_title(f"final epoch, mean of {seeds} seed(s){spread}", fontsize=9)

  epoch_axis = np.arange(1, epochs + 1)
  for i, (name, curve) in enumerate(zip(names, curves, strict=True)):
    report.line_with_band(ax_curve, epoch_axis, curve.mean(0), curve.min(0), curve.max(0), name, i)
  ax_curve.set_xlabel("epoch")
  ax_curve.set_ylabel("test accuracy (%)")
  ax_curve.set_title(f"mean of {seeds} seed(s); band: min to max over seeds", fontsize=9)
  ax_curve.legend(fontsize=8)

  if zoom:
    _zoom(axes[2], [names[i] for i in near], [curves[i].mean(0) for i in near], near)
  fig.suptitle("\n".join(textwrap.wrap(title, 150)))  # the SAM family's settings make it long
  return report.save(fig, path, dpi=80)


def _zoom(ax: Axes, names: list[str], means: list[np.ndarray], indices: list[int]) -> None:
  """The last third of the epochs of the methods near the best (their mean curves), where they overlap."""
  epochs = len(means[0])
  first = epochs - max(2, epochs // 3)
  for name, mean, i in zip(names, means, indices, strict=True):
    style = report.LINE_STYLES[i % len(report.LINE_STYLES)]
    ax.plot(np.arange(first + 1, epochs + 1), mean[first:], color=f"C{i % 10}", ls=style, label=name)
  ax.set_xlabel("epoch")
  ax.set_ylabel("test accuracy (%), mean of seeds")
  ax.set_title(f"zoom: the methods within {ZOOM_POINTS:g} points of the best", fontsize=9)
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def write(
  results: dict[str, Any],
  config: dict[str, Any],
  out: Path,
  seconds: float,
  compilations: dict[str, float] | None = None,
  name: str | None = None,
) -> tuple[Path, Path]:
  """The job's JSON (settings, machine, wall seconds, XLA compilations, results) and figure under ``out``, as
  ``name.json`` and ``name.png`` (default: ``<dataset>_results``): their paths."""
  stem = name or f"{config['dataset']}_results"
  data = {
    "config": config,
    "seconds": seconds,
    "compilations": compilations,
    "date_utc": report.utc_now(),
    "machine": report.machine(),
    "results": results,
  }
  json_path = report.write_json(out / f"{stem}.json", data)
  return json_path, plot(results, out / f"{stem}.png", title(config))
