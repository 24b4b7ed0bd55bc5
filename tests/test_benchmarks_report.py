"""``benchmarks/report.py``: results files and where they go, markdown tables and the figure rules shared by
the benchmarks and ``python -m examples.train``.

Where results go is checked against the committed files: every file under ``benchmarks/results/`` lies in a
benchmark's folder and is named after a run whose command the docs show.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import report
from tests._markdown import shell_commands

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)]
PYTHONS = {"python", "python3", ".venv/bin/python"}
# Flags that make a run write elsewhere than its benchmark's committed folder, or write nothing.
ELSEWHERE = {"--quick", "--out", "--replot", "--help"}


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


def _namespace(**changes: Any) -> argparse.Namespace:
  return argparse.Namespace(**{"out": None, "quick": False, "no_plots": False, "seed": 0, **changes})


def test_only_the_full_run_writes_the_committed_folder(tmp_path: Path) -> None:
  results = report.results_dir("theory")
  assert results == RESULTS / "theory"
  assert report.output_dir(_namespace(), {"seed": 0}, results) == results
  for changes in ({"quick": True}, {"no_plots": True}, {"seed": 1}):
    assert report.output_dir(_namespace(**changes), {"seed": 0}, results) == results / "quick", changes
  assert report.output_dir(_namespace(quick=True, out=tmp_path), {}, results) == tmp_path
  # A benchmark without --no-plots (it always draws, or never does).
  assert report.output_dir(argparse.Namespace(out=None, quick=False), {}, results) == results


@pytest.mark.parametrize(
  ("module", "benchmark"),
  [
    ("benchmarks.overhead.cli", "overhead"),
    ("benchmarks.main_job", "main_job"),
    ("benchmarks.xla_cpu_ops", "xla_cpu_ops"),
    ("benchmarks.theory", "theory"),
    ("benchmarks.seed_claims.cli", "seed_claims"),
  ],
)
def test_each_benchmark_writes_a_folder_of_its_own(module: str, benchmark: str) -> None:
  assert importlib.import_module(module).RESULTS == RESULTS / benchmark


def test_short_runs_are_ignored_by_git() -> None:
  if shutil.which("git") is None or not (ROOT / ".git").exists():
    pytest.skip("not a git checkout")
  quick, committed = "benchmarks/results/theory/quick/theory.json", "benchmarks/results/theory/theory.json"
  check = ["git", "check-ignore", "-q", "--no-index"]
  assert subprocess.run([*check, quick], cwd=ROOT, check=False).returncode == 0
  assert subprocess.run([*check, committed], cwd=ROOT, check=False).returncode == 1


def _documented_runs() -> tuple[dict[str, set[str]], set[tuple[str, ...]]]:
  """The docs' commands ``python -m benchmarks.<benchmark> ...`` that write the committed folder: the names of
  their runs by benchmark (``--name``, else the benchmark's), and their words after ``python``."""
  names: dict[str, set[str]] = {}
  commands: set[tuple[str, ...]] = set()
  for page in PAGES:
    for _, words in shell_commands(page.read_text()):
      if words[0] not in PYTHONS or words[1:2] != ["-m"] or not words[2].startswith("benchmarks."):
        continue
      flags = {w.split("=")[0] for w in words if w.startswith("--")}
      if flags & ELSEWHERE:
        continue
      benchmark = words[2].removeprefix("benchmarks.")
      named = [w.split("=", 1)[1] for w in words if w.startswith("--name=")]
      named += [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--name"]
      names.setdefault(benchmark, set()).update(named or [benchmark])
      commands.add(tuple(words[1:]))
  return names, commands


def _is_benchmark(name: str) -> bool:
  package = ROOT / "benchmarks" / name
  return (package.with_suffix(".py")).is_file() or (package / "__main__.py").is_file()


def test_every_results_file_is_written_by_a_documented_command() -> None:
  names, commands = _documented_runs()
  # Short runs (quick/) are ignored by git; everything else here is committed and quoted.
  files = [p for p in RESULTS.rglob("*") if p.is_file() and "quick" not in p.relative_to(RESULTS).parts]
  assert len(files) >= 10, files
  errors = []
  for path in files:
    where = path.relative_to(RESULTS)
    if len(where.parts) != 2 or not _is_benchmark(where.parts[0]):
      errors.append(f"{where}: not in the folder of a benchmark (benchmarks/results/<benchmark>/<file>)")
      continue
    # One run may write several files (theory_ridge_steps.png): its name, then _ and what the file holds.
    benchmark, stem = where.parts[0], path.name.split(".")[0]
    runs = names.get(benchmark, set())
    if not any(stem == name or stem.startswith(f"{name}_") for name in runs):
      errors.append(f"{where}: named after no run of the docs' `python -m benchmarks.{benchmark}` ({runs})")
    # A results file that records its command (the overhead runs) was written by that very command.
    if path.suffix == ".json":
      command = json.loads(path.read_text()).get("command")
      if command is not None and tuple(command.split()[1:]) not in commands:
        errors.append(f"{where}: its command `{command}` is in no shell block of the docs")
  assert not errors, "\n".join(errors)
