"""``benchmarks/overhead.py`` runs end to end and rejects bad input (subprocesses: it pins threads)."""

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
