"""``benchmarks/report.py``: results files, markdown tables and the figure rules shared by the benchmarks
and ``examples/train.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import report


def test_markdown_table() -> None:
  table = report.markdown_table(["model", "ms"], [["mlp", 1.5], ["wide", "-"]], align="lr")
  assert table.splitlines() == ["| model | ms |", "|---|---:|", "| mlp | 1.5 |", "| wide | - |"]
  with pytest.raises(ValueError, match="2 columns"):
    report.markdown_table(["model", "ms"], [["mlp"]])


def test_results_file_round_trip(tmp_path: Path) -> None:
  info = report.machine(threads=2)
  assert info["threads"] == 2 and {"cpu", "platform", "jax", "optax", "optax_usam", "backend"} <= set(info)
  path = report.write_json(tmp_path / "new" / "r.json", {"machine": info, "date_utc": report.utc_now()})
  assert path.read_text().endswith("}\n")
  assert report.read_json(path)["machine"]["threads"] == 2


def _axes() -> tuple[Any, Any]:
  return report.pyplot().subplots()


def test_cut_bars_are_marked_once_in_the_legend(tmp_path: Path) -> None:
  fig, ax = _axes()
  xs, heights = [0, 1, 2], [0.5, 3.0, np.nan]
  ax.bar(xs, heights)
  ax.set_ylim(0, 2)
  assert report.mark_cut_bars(ax, xs, heights) == 1
  assert report.mark_cut_bars(ax, xs, [5.0, 0.1, 0.1]) == 1
  assert ax.get_ylim() == (0, 2)
  labels = ax.get_legend_handles_labels()[1]
  assert labels.count("bar cut by the axis (value above it)") == 1
  assert [t.get_text() for t in ax.texts] == ["3", "5"]
  report.save(fig, tmp_path / "cut.png")
  assert (tmp_path / "cut.png").stat().st_size > 0


def test_no_cut_bar_no_legend_entry() -> None:
  _, ax = _axes()
  ax.set_ylim(0, 2)
  assert report.mark_cut_bars(ax, [0], [1.0]) == 0
  assert ax.get_legend_handles_labels()[1] == []


@pytest.mark.parametrize(("low", "high", "starts_at_zero"), [(10.0, 95.0, True), (88.0, 97.0, False)])
def test_bar_axis_starts_at_zero_or_marks_its_break(low: float, high: float, starts_at_zero: bool) -> None:
  _, ax = _axes()
  report.y_from_zero_or_break(ax, low, high)
  bottom, top = ax.get_ylim()
  assert top > high
  assert (bottom == 0) == starts_at_zero
  assert len(ax.lines) == (0 if starts_at_zero else 2)  # the two strokes of the break mark
  if not starts_at_zero:
    assert bottom < low


def test_every_mark_says_what_it_is() -> None:
  _, ax = _axes()
  report.reference_line(ax, 1.0, "limit")
  report.error_bars_legend(ax, "IQR over rounds")
  report.band_legend(ax, "+-1 std over 3 seeds")
  x = np.arange(3.0)
  for i in range(2):
    report.line_with_band(ax, x, x + i, x + i - 0.1, x + i + 0.1, f"curve {i}", i)
  labels = ax.get_legend_handles_labels()[1]
  assert sorted(labels) == [
    "bands: +-1 std over 3 seeds",
    "curve 0",
    "curve 1",
    "error bars: IQR over rounds",
    "limit",
  ]
  curves = [line for line in ax.lines if line.get_label().startswith("curve")]
  assert curves[0].get_linestyle() != curves[1].get_linestyle()  # overlapping curves stay apart
