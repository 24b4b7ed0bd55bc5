"""``python -m benchmarks.main_job``: our job against the PyTorch one.

The quick run of the harness runs here without torch (CI never installs it): our job serially and with
threads, its compilations, the steady-state step times, and the tables; the PyTorch column reads n/a. The
committed full results are the ones docs/benchmarks.md quotes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import main_job

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
  out = tmp_path_factory.mktemp("main_job")
  assert main_job.main(["--quick", "--skip-torch", "--out", str(out)]) == 0
  return json.loads((out / "main_job.json").read_text())


def test_the_quick_run_measures_our_job(quick_run: dict[str, Any]) -> None:
  assert quick_run["torch"] == "skipped" and quick_run["settings"] == main_job.QUICK
  ours = quick_run["rounds"][0]["ours"]
  # The job's own clock holds its compilations; the memory is a whole JAX process's.
  assert ours["wall_s"] >= ours["compilations"]["seconds"] and ours["peak_rss_mib"] > 100
  assert set(ours["results"]) == {"SGD", "SAM"}
  # One SGD step, one Unified SAM step, the evaluation and the initialization at least.
  assert ours["compilations"]["count"] >= 4
  steps = ours["step_ms"]
  assert 0 < steps["sgd"] < steps["sam"]


def test_threads_give_the_serial_runs_numbers(quick_run: dict[str, Any]) -> None:
  assert quick_run["identical_to_serial"] is True
  assert quick_run["serial_run"]["results"] == quick_run["rounds"][0]["ours"]["results"]


def test_tables_put_the_two_jobs_side_by_side() -> None:
  summary = {
    "ours": {
      "wall_s": 40.0,
      "cpu_s": 80.0,
      "peak_rss_mib": 600.0,
      "sgd_step_ms": 2.0,
      "sam_step_ms": 4.0,
      "compilations": {"count": 24, "seconds": 4.0},
      "serial_wall_s": 60.0,
    },
    "torch": {"wall_s": 80.0, "cpu_s": 160.0, "peak_rss_mib": 500.0, "sgd_step_ms": 2.0, "sam_step_ms": 3.0},
  }
  costs = main_job.cost_table(summary)
  assert "| wall time (median of rounds) | 40.0 s | 80.0 s | 2.00x |" in costs
  assert "| Unified SAM step, steady state | 4.00 ms | 3.00 ms | 0.75x |" in costs
  assert "| XLA compilations | 24 (4.0 s) |" in costs and "| 60.0 s |" in costs
  accuracy = main_job.accuracy_table({"SGD": [70.0, 72.0]}, {"SGD": [71.0, 71.0]})
  assert "| SGD | 71.00 +- 1.00 | 71.00 +- 0.00 |" in accuracy
  assert "| SGD | 71.00 +- 1.00 | n/a |" in main_job.accuracy_table({"SGD": [70.0, 72.0]}, None)


def test_docs_quote_the_committed_results() -> None:
  committed = json.loads((ROOT / "benchmarks" / "results" / "main_job" / "main_job.json").read_text())
  page = (ROOT / "docs" / "benchmarks.md").read_text()
  assert main_job.cost_table(committed["summary"]) in page
  first = committed["rounds"][0]
  assert main_job.accuracy_table(first["ours"]["results"], first["torch"]["results"]) in page
  assert committed["identical_to_serial"] is True


def test_only_a_full_run_with_torch_writes_the_committed_folder(
  quick_run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
  assert main_job.RESULTS == ROOT / "benchmarks" / "results" / "main_job"
  monkeypatch.setattr(main_job, "RESULTS", tmp_path)
  measured = {**quick_run, "torch": "measured"}
  for argv, data, where in [
    (["--quick"], measured, tmp_path / "quick"),
    (["--rounds", "2"], measured, tmp_path / "quick"),
    ([], quick_run, tmp_path / "quick"),  # PyTorch not measured
    ([], measured, tmp_path),
  ]:
    monkeypatch.setattr(main_job, "run", lambda args, data=data: data)
    assert main_job.main(argv) == 0
    assert (where / "main_job.json").is_file(), argv
    (where / "main_job.json").unlink()


@pytest.mark.parametrize(
  ("args", "flag"), [(["--rounds", "0"], "--rounds"), (["--step-times", "mxnet"], "--step-times")]
)
def test_bad_arguments_exit_2_with_one_line(
  capsys: pytest.CaptureFixture[str], args: list[str], flag: str
) -> None:
  assert main_job.main(args) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("main_job: error: ") and flag in lines[0]
