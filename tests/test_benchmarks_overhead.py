"""``python -m benchmarks.overhead`` runs end to end, draws its chart again from a results file, writes where
its docs say and rejects bad input in one line (a timed run in a subprocess: it pins threads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "overhead"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  return subprocess.run(
    [sys.executable, "-m", "benchmarks.overhead", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )


@pytest.mark.parametrize(
  ("args", "flag"),
  [
    (("--models", "resnet1000"), "--models"),
    (("--budget-s", "nan"), "--budget-s"),
    (("--rows", "family,msam"), "--rows"),
    (("--name", "../sam_family"), "--name"),
  ],
)
def test_bad_arguments_exit_2_with_one_line(args: tuple[str, ...], flag: str) -> None:
  done = _run(*args)
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1
  assert flag in lines[0]


def test_tiny_run_writes_consistent_results(tmp_path: Path) -> None:
  done = _run(
    "--models",
    "tiny_mlp",
    "--rounds",
    "1",
    "--min-rounds",
    "1",
    "--target-s",
    "0.01",
    "--no-torch",
    "--out",
    str(tmp_path),
  )
  assert done.returncode == 0, done.stderr
  result = json.loads((tmp_path / "overhead.json").read_text())
  assert (tmp_path / "overhead.png").stat().st_size > 0
  model = result["models"]["tiny_mlp"]
  # 3 dense layers: 3 forward, 3 weight-gradient and 2 input-gradient products per pass.
  assert model["compiled"]["sgd"]["hlo"]["dot"] == 8
  for name in ("limit", "usam[0]", "usam[1]", "usam[1-1/t]", "optax_sam"):
    assert model["compiled"][name]["hlo"]["dot"] == 16
  assert model["compiled"]["usam[1]"]["hlo"]["array_ops"] == model["compiled"]["limit"]["hlo"]["array_ops"]
  # The SAM family: momentum SAM takes SGD's one gradient, the others the limit's two (RSAM's both through
  # grad_fn, GSAM's reused).
  assert model["compiled"]["momentum_sam"]["hlo"]["dot"] == 8
  for name in ("vasso", "friendly_sam", "random_smoothing_sam", "gsam"):
    assert model["compiled"][name]["hlo"]["dot"] == 16
  assert model["time_ratio_to_limit"]["limit"]["median"] == 1.0
  assert "| tiny_mlp | usam[1] |" in done.stdout
  assert "| tiny_mlp | momentum_sam |" in done.stdout
  # tiny_mlp is all fixed cost: no target is checked on it.
  assert result["targets"] == []


def test_rows_choose_the_timed_groups_and_the_targets_follow(tmp_path: Path) -> None:
  done = _run(
    "--models",
    "mlp",
    "--rows",
    "family",
    "--rounds",
    "1",
    "--min-rounds",
    "1",
    "--target-s",
    "0.01",
    "--no-torch",
    "--out",
    str(tmp_path),
  )
  assert done.returncode == 0, done.stderr
  result = json.loads((tmp_path / "overhead.json").read_text())
  assert list(result["models"]["mlp"]["time"]) == [
    "sgd",
    "limit",
    "vasso",
    "friendly_sam",
    "momentum_sam",
    "random_smoothing_sam",
    "gsam",
  ]
  targets = {c["target"]: c for c in result["targets"]}
  assert targets["momentum_sam: sgd's dots and convolutions (one gradient)"]["met"]
  assert "momentum_sam / sgd, time <= 1.1" in targets
  for name in ("vasso", "friendly_sam", "random_smoothing_sam", "gsam"):
    assert targets[f"{name}: limit's dots and convolutions (two gradients)"]["met"]
  assert not any(t.startswith("usam[") for t in targets)  # no usam row, no usam target
  assert "- met    mlp: momentum_sam: sgd's dots" in done.stdout


@pytest.mark.parametrize("name", ["overhead", "sam_family", "sam_family_mlp", "cheaper_k6_p05"])
def test_replot_draws_the_committed_results_again(
  tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
  from benchmarks.overhead import cli, results

  committed = json.loads((RESULTS / f"{name}.json").read_text())
  (tmp_path / f"{name}.json").write_text(json.dumps(committed))
  cli.main(["--replot", "--name", name, "--out", str(tmp_path)])  # times nothing: safe in the test process
  assert (tmp_path / f"{name}.png").stat().st_size > 0
  out = capsys.readouterr().out
  assert results.table(committed["models"]) in out
  assert out.count("- met") + out.count("- MISSED") == len(committed["targets"])


@pytest.mark.parametrize(("name", "page"), [("overhead", "benchmarks.md"), ("sam_family", "sam_family.md")])
def test_the_docs_table_is_the_committed_results(name: str, page: str) -> None:
  from benchmarks.overhead import results

  committed = json.loads((RESULTS / f"{name}.json").read_text())
  assert results.table(committed["models"]) in (ROOT / "docs" / page).read_text()


def test_the_full_run_and_named_runs_write_the_committed_folder(tmp_path: Path) -> None:
  from benchmarks.overhead import cli

  def out(*argv: str) -> Path:
    return cli.parse_args(list(argv)).out

  assert cli.RESULTS == RESULTS
  assert out() == out("--replot") == RESULTS
  # A run the docs quote under a name of its own, whatever its settings.
  assert out("--models", "mlp", "--rows", "family", "--no-torch", "--name", "sam_family_mlp") == RESULTS
  for argv in (
    ["--quick"],
    ["--models", "mlp"],
    ["--no-torch"],
    ["--reuse-every", "6"],
    ["--quick", "--name", "x"],
  ):
    assert out(*argv) == RESULTS / "quick", argv  # ignored by git: never the committed results
  assert out("--quick", "--out", str(tmp_path)) == tmp_path


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
