"""``python -m benchmarks.overhead`` runs end to end, draws its chart again from a results file and rejects
bad input in one line (a timed run in a subprocess: it pins threads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  return subprocess.run(
      [sys.executable, "-m", "benchmarks.overhead", *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
  )


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--models", "resnet1000"), "--models"),
        (("--budget-s", "nan"), "--budget-s"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: tuple[str, ...], flag: str) -> None:
  done = _run(*args)
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1
  assert flag in lines[0]


def test_tiny_run_writes_consistent_results(tmp_path: Path) -> None:
  done = _run("--models", "tiny_mlp", "--rounds", "1", "--min-rounds", "1", "--target-s", "0.01",
              "--no-torch", "--out", str(tmp_path))
  assert done.returncode == 0, done.stderr
  result = json.loads((tmp_path / "overhead.json").read_text())
  assert (tmp_path / "overhead.png").stat().st_size > 0
  model = result["models"]["tiny_mlp"]
  # 3 dense layers: 3 forward, 3 weight-gradient and 2 input-gradient products per pass.
  assert model["compiled"]["sgd"]["hlo"]["dot"] == 8
  for name in ("limit", "usam[0]", "usam[1]", "usam[1-1/t]", "optax_sam"):
    assert model["compiled"][name]["hlo"]["dot"] == 16
  assert model["compiled"]["usam[1]"]["hlo"]["array_ops"] == model["compiled"]["limit"]["hlo"]["array_ops"]
  assert model["time_ratio_to_limit"]["limit"]["median"] == 1.0
  assert "| tiny_mlp | usam[1] |" in done.stdout


def test_replot_draws_the_committed_results_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
  from benchmarks.overhead import cli, results

  committed = json.loads((ROOT / "benchmarks" / "results" / "overhead.json").read_text())
  (tmp_path / "overhead.json").write_text(json.dumps(committed))
  cli.main(["--replot", "--out", str(tmp_path)])  # times nothing: safe in the test process
  assert (tmp_path / "overhead.png").stat().st_size > 0
  out = capsys.readouterr().out
  assert results.table(committed["models"]) in out
  assert out.count("- met") + out.count("- MISSED") == len(committed["targets"])


def test_the_docs_table_is_the_committed_results() -> None:
  from benchmarks.overhead import results

  committed = json.loads((ROOT / "benchmarks" / "results" / "overhead.json").read_text())
  assert results.table(committed["models"]) in (ROOT / "docs" / "benchmarks.md").read_text()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--sam-probability", "1.5"), "--sam-probability"),
        (("--reuse-every", "0"), "--reuse-every"),
        (("--replot",), "--replot"),
    ],
)
def test_bad_arguments_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], flag: str
) -> None:
  from benchmarks.overhead import cli

  with pytest.raises(SystemExit) as exit_:
    cli.main([*args, "--out", str(tmp_path)])
  assert exit_.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("overhead: error: ") and flag in lines[0]
