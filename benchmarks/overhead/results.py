"""What ``overhead.json`` says: the targets met or missed, the markdown table and the chart.

Everything here reads the ``models`` entry of ``overhead.json`` only, so the table and the chart can be
made again from a committed results file (``python -m benchmarks.overhead --replot``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.overhead.steps import CHEAPER_PREFIXES, FAMILY, LAMBDAS, ONE_GRADIENT

# Models whose step is all fixed cost: reported, but the targets are about real models.
NOT_TARGETED = ("tiny_mlp",)
TIME_TARGET = 1.02  # unified_sam's step time over the limit's
CHEAPER_TARGET = 1.3  # a cheaper variant's step time over SGD's
ONE_GRADIENT_TARGET = 1.10  # a one-gradient SAM-family member's step time over SGD's
# The chart's windows: the interesting ratios are near 1; taller bars are cut and marked with their value.
# The memory axis starts lower when a row needs less than 0.7x the limit's (momentum SAM: one gradient).
TIME_AXIS = (0.0, 2.5)
MEMORY_AXIS = (0.7, 1.15)


def targets(results: dict[str, dict]) -> list[dict[str, Any]]:
  """The issue's targets; times on the median of the per-round paired ratios."""
  checks = []

  def check(model: str, target: str, value: float, met: bool, note: str = "") -> None:
    checks.append({"model": model, "target": target, "value": value, "met": bool(met), "note": note})

  for model, r in results.items():
    if model in NOT_TARGETED:
      continue
    ratio, compiled = r["time_ratio_to_limit"], r["compiled"]
    limit = compiled["limit"]
    for name in [n for n in r["time_ratio_to_sgd"] if n.startswith(CHEAPER_PREFIXES)]:
      q = r["time_ratio_to_sgd"][name]
      check(
        model,
        f"{name} / sgd, time <= {CHEAPER_TARGET}",
        q["median"],
        q["median"] <= CHEAPER_TARGET,
        f"IQR {q['q25']:.3f}-{q['q75']:.3f}",
      )
    for name in [n for n in LAMBDAS if n in ratio]:
      q = ratio[name]
      check(
        model,
        f"{name} / limit, time <= {TIME_TARGET}",
        q["median"],
        q["median"] <= TIME_TARGET,
        f"IQR {q['q25']:.3f}-{q['q75']:.3f}, ratio of minima {q['of_minima']:.3f}",
      )
      extra = compiled[name]["temp_bytes"] - limit["temp_bytes"]
      mem = compiled[name]["temp_bytes"] / limit["temp_bytes"]
      # The target has two decimals; the bytes say what a scalar schedule adds.
      check(model, f"{name} / limit, temp memory <= 1.00", mem, round(mem, 2) <= 1.0, f"{extra:+d} bytes")
      same = compiled[name]["hlo"]["array_ops"] == limit["hlo"]["array_ops"]
      check(
        model,
        f"{name}: same array-valued HLO ops as limit",
        float(same),
        same,
        f"scalar ops {compiled[name]['hlo']['scalar_ops']} vs {limit['hlo']['scalar_ops']}",
      )
    for name in [n for n in FAMILY if n in ratio]:
      for target, value, met, note in _family_checks(r, name):
        check(model, target, value, met, note)
    for peer, models_ in (("optax_sam", None), ("torch_usam", "mlp")):
      key = f"usam[1]_over_{peer}"
      if key in r and (models_ is None or model.endswith(models_)):
        v = r[key]["median"]
        iqr = f"IQR {r[key]['q25']:.3f}-{r[key]['q75']:.3f}"
        check(model, f"usam[1] / {peer}, time <= 1", v, v <= 1.0, iqr)
  return checks


def _family_checks(r: dict[str, Any], name: str) -> list[tuple[str, float, bool, str]]:
  """A SAM-family row's checks: the gradients it takes (its products: one pass, SGD's; two passes, the
  limit's) and, for a one-gradient member, its step time against SGD's; ``(target, value, met, note)``."""
  products = {
    n: (r["compiled"][n]["hlo"]["dot"], r["compiled"][n]["hlo"]["convolution"])
    for n in ("sgd", "limit", name)
  }
  reference = "sgd" if name in ONE_GRADIENT else "limit"
  same = products[name] == products[reference]
  gradients = "one gradient" if reference == "sgd" else "two gradients"
  checks = [
    (
      f"{name}: {reference}'s dots and convolutions ({gradients})",
      float(same),
      same,
      f"(dot, convolution) {products[name]} vs {products[reference]}",
    )
  ]
  if name in ONE_GRADIENT:
    q, of_limit = r["time_ratio_to_sgd"][name], r["time_ratio_to_limit"][name]["median"]
    note = f"IQR {q['q25']:.3f}-{q['q75']:.3f}, {of_limit:.3f} x limit"
    checks.append(
      (f"{name} / sgd, time <= {ONE_GRADIENT_TARGET}", q["median"], q["median"] <= ONE_GRADIENT_TARGET, note)
    )
  return checks


def verdicts(checks: list[dict[str, Any]]) -> str:
  """One line per target: met or MISSED, the value and its note."""
  lines = []
  for c in checks:
    verdict = "met   " if c["met"] else "MISSED"
    lines.append(f"- {verdict} {c['model']}: {c['target']}: {c['value']:.3f} ({c['note']})")
  return "\n".join(lines)


def table(results: dict[str, dict]) -> str:
  header = [
    "model",
    "step",
    "median ms",
    "IQR %",
    "time / limit",
    "min / min",
    "time / sgd",
    "temp MiB",
    "temp - limit (B)",
    "array ops",
    "compile s",
  ]
  rows = []
  for model, r in results.items():
    limit = r["compiled"]["limit"]
    for name, t in r["time"].items():
      c = r["compiled"].get(name)
      ratio = r["time_ratio_to_limit"][name]
      compiled = ["-"] * 4
      if c:
        compiled = [
          f"{c['temp_bytes'] / 2**20:.2f}",
          f"{c['temp_bytes'] - limit['temp_bytes']:+d}",
          str(sum(c["hlo"]["array_ops"].values())),
          f"{c['trace_lower_s'] + c['compile_s']:.1f}",
        ]
      rows.append(
        [
          model,
          name,
          f"{t['median'] * 1e3:.2f}",
          f"{100 * (t['q75'] - t['q25']) / t['median']:.0f}",
          f"{ratio['median']:.3f}",
          f"{ratio['of_minima']:.3f}",
          f"{r['time_ratio_to_sgd'][name]['median']:.3f}",
          *compiled,
        ]
      )
  return report.markdown_table(header, rows, align="ll" + "r" * 9)


def _color(name: str, names: list[str]) -> Any:
  """One colour family per kind of row (references grey, unified_sam blue, optax orange, PyTorch purple,
  cheaper variants green, the SAM family red), a shade per row within it: sixteen rows stay told apart."""
  import matplotlib

  families = (
    (("sgd", "limit"), "Greys"),
    (("usam[",), "Blues"),
    (("optax_sam",), "Oranges"),
    (CHEAPER_PREFIXES, "Greens"),
    (("torch_",), "Purples"),
    (tuple(FAMILY), "Reds"),
  )
  for prefixes, cmap in families:
    members = [n for n in names if n.startswith(prefixes)]
    if name in members:
      return matplotlib.colormaps[cmap](0.45 + 0.45 * members.index(name) / max(len(members) - 1, 1))
  return "k"


def chart(results: dict[str, dict], path: Path) -> Path:
  """Bars per model and row: step time and compiled temporary memory, each over the limit's."""
  plt = report.pyplot()
  names = list(dict.fromkeys(n for r in results.values() for n in r["time"]))
  fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(13, 5.8))
  width = 0.8 / len(names)
  xs = np.arange(len(results))
  ax_time.set_ylim(*TIME_AXIS)
  lowest = min(
    c["temp_bytes"] / max(r["compiled"]["limit"]["temp_bytes"], 1)
    for r in results.values()
    for c in r["compiled"].values()
  )
  memory_from = min(MEMORY_AXIS[0], np.floor(10 * lowest - 0.5) / 10)
  ax_mem.set_ylim(memory_from, MEMORY_AXIS[1])
  handles = []
  for i, name in enumerate(names):
    time_ratio, lo, hi, mem = [], [], [], []
    for r in results.values():
      q = r["time_ratio_to_limit"].get(name)
      time_ratio.append(q["median"] if q else np.nan)
      lo.append(q["median"] - q["q25"] if q else 0)
      hi.append(q["q75"] - q["median"] if q else 0)
      c = r["compiled"].get(name)
      mem.append(c["temp_bytes"] / max(r["compiled"]["limit"]["temp_bytes"], 1) if c else np.nan)
    at = xs + i * width
    color = _color(name, names)
    handles.append(
      ax_time.bar(
        at, time_ratio, width, yerr=[lo, hi], color=color, error_kw={"capsize": 1.5, "elinewidth": 0.7}
      )
    )
    ax_mem.bar(at, mem, width, color=color)
    report.mark_cut_bars(ax_time, at, time_ratio)
    report.mark_cut_bars(ax_mem, at, mem)
  report.reference_line(ax_time, 1.0, "limit: two gradients by hand (= 1)")
  report.reference_line(ax_time, TIME_TARGET, f"target for usam[...]: {TIME_TARGET} x limit", "r", "--")
  report.error_bars_legend(ax_time, "interquartile range over rounds")
  report.reference_line(ax_mem, 1.0, "limit (= 1)")
  report.mark_axis_break(ax_mem)
  # The titles leave room for the values printed above cut bars.
  ax_time.set_title("step time / limit (median of per-round ratios)", pad=24)
  ax_mem.set_title(f"compiled temporary memory / limit (axis from {memory_from:g})", pad=24)
  for ax in (ax_time, ax_mem):
    ax.set_xticks(xs + 0.4 - width / 2, list(results))
    # Below the panel: inside, it would hide bars.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=2, frameon=False)
  # The rows' colours, once for both panels; each panel's legend says what its lines and marks are.
  # Eleven names fit on one line of the figure's width.
  lines = -(-len(names) // 11)
  fig.legend(handles, names, loc="lower center", ncol=-(-len(names) // lines), fontsize=7, frameon=False)
  return report.save(fig, path, dpi=110, rect=(0, 0.04 * lines, 1, 1))
