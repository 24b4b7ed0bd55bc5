"""Bad inputs and faults that examples/train.py (and benchmarks/theory.py) once met with a traceback, or
worse, with a normal-looking result from a broken run.

Each bad input must end in one line on stderr, ``train.py: error: ...``, and a non-zero exit status (2 for
usage and configuration errors, 1 for a run that diverged); each fault of a run directory (kill -9 during a
checkpoint write, a damaged checkpoint) must either be survived, with the same final parameters and results
as an uninterrupted run, or be refused that way.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.train_helpers import (
  EXAMPLES,
  cifar,
  cifar_subprocess,
  data_lib,
  final_checkpoint,
  progress,
  run_dir,
  train,
)

SCRIPT = os.path.join(EXAMPLES, "train.py")
DIGITS_1_EPOCH = ["--epochs", "1", "--seeds", "1", "--no-progress"]
METHOD = ["--methods", "1-1/t"]


def _only_line(err: str, *needles: str) -> str:
  """The single line of ``err``, checked to be train.py's error line containing ``needles``."""
  assert err.count("\n") == 1 and err.startswith("train.py: error: "), err
  assert all(n in err for n in needles), err
  return err


def _last_line(err: str, *needles: str) -> str:
  """The last line of ``err``, checked as above, with no traceback or orbax log line before it."""
  assert "Traceback" not in err and "absl" not in err, err
  return _only_line(err.splitlines()[-1] + "\n", *needles)


# ---------------------------------------------------------------- runs that diverge (item 6)


@pytest.mark.parametrize(
  "argv",
  [
    ["--methods", "sgd", "--lr", "1e39"],  # finite, legal, and diverges at once
    ["--methods", "sam", "--weight-decay", "inf"],  # optax accepts an infinite decay
  ],
)
def test_a_diverged_digits_run_is_an_error_not_a_table(argv, tmp_path, capsys):
  assert train.main([*argv, *DIGITS_1_EPOCH, "--out", str(tmp_path)]) == 1
  captured = capsys.readouterr()
  _only_line(captured.err, "seed 0 diverged in epoch 1", "training loss nan")
  assert captured.out == "" and not list(tmp_path.iterdir())  # no table, no JSON, no PNG


@pytest.mark.parametrize(
  ("method", "status", "message"),
  [
    # The shared Unified SAM optimizer keeps rho in float32, where 1e39 is inf: refused before training.
    ("sam", 2, "argument --rho: rho must be a finite float"),
    # VaSSO's own optimizer takes 1e39 as a float64; it becomes inf in the float32 step, and the run stops.
    ("vasso", 1, "vasso seed 0 diverged in epoch 1"),
  ],
)
def test_a_rho_beyond_float32_from_the_command_line_is_one_line(tmp_path, method, status, message):
  # numpy's overflow warnings about the cast stay quiet.
  argv = [SCRIPT, "--methods", method, "--rho", "1e39", *DIGITS_1_EPOCH, "--out", str(tmp_path)]
  proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300)
  assert proc.returncode == status and proc.stdout == ""
  _only_line(proc.stderr, message)
  assert not list(tmp_path.iterdir())


def test_a_diverged_cifar_run_stops_before_it_checkpoints(tmp_path, capsys):
  assert cifar(["--methods", "sgd", "--lr", "1e39"], tmp_path) == 1
  _last_line(capsys.readouterr().err, "diverged in epoch 1")
  # A diverged state is never checkpointed (--resume would carry on from NaN), nor reported as a result.
  assert not any((run_dir(tmp_path) / "checkpoints").glob("*"))
  assert not (run_dir(tmp_path) / "result.json").exists() and not (tmp_path / "cifar10_results.json").exists()


# ---------------------------------------------------------------- BatchNorm models on the digits (item 9)


def test_resnet18_trains_on_the_digits(tmp_path, capsys, monkeypatch):
  # The whole digits set takes a minute or more for ResNet-18 on 2 CPU cores, and its compilation most of the
  # rest: 128 images and SAM only (SGD takes the same path with another optimizer; the tiny model's test
  # runs both). What used to fail (no BatchNorm statistics were created) fails on any number of images.
  load = data_lib.load_digits

  def few_digits(seed, noise):
    full = load(seed, noise)
    train_split = data_lib.Split(full.train.x[:128], full.train.y[:128])
    return data_lib.Dataset(train_split, data_lib.Split(full.test.x[:64], full.test.y[:64]), 10)

  monkeypatch.setattr(data_lib, "load_digits", few_digits)
  argv = ["--model", "resnet18", "--methods", "sam", *DIGITS_1_EPOCH, "--out", str(tmp_path)]
  assert train.main(argv) == 0
  assert "digits (resnet18)" in capsys.readouterr().out
  results = json.loads((tmp_path / "digits_results.json").read_text())["results"]
  assert set(results) == {"SAM"}
  assert all(0 <= r["final_test_acc"][0] <= 100 for r in results.values())


def test_tiny_on_the_digits_into_files_writes_no_progress_bar(tmp_path):
  # The command line with stdout and stderr in files, as under CI or nohup: the table, a line per run,
  # and none of the bar's carriage-return redraws (once ~135 KB for the default job).
  out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
  argv = [SCRIPT, "--model", "tiny", "--methods", "sgd,sam", "--epochs", "1", "--seeds", "1"]
  argv += ["--out", str(tmp_path)]
  with out.open("w") as stdout, err.open("w") as stderr:
    proc = subprocess.run([sys.executable, *argv], stdout=stdout, stderr=stderr, timeout=300)
  assert proc.returncode == 0, err.read_text()
  text = out.read_text() + err.read_text()
  assert "digits (tiny)" in out.read_text() and "\r" not in text and len(text) < 2000, text
  lines = err.read_text().splitlines()
  assert len(lines) == 2 and all(line.startswith("digits: ") and "final test acc" in line for line in lines)


def test_the_progress_bar_is_drawn_on_a_terminal_only(monkeypatch):
  class Terminal(io.StringIO):
    def isatty(self):
      return True

  for stream, drawn in ((Terminal(), True), (io.StringIO(), False)):
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress.Progress(3, "digits", disable=False)
    for _ in range(3):
      bar.update(status="SAM seed 0")
    bar.close()
    assert ("\r" in stream.getvalue()) == drawn, stream.getvalue()


# ---------------------------------------------------------------- CIFAR run directories (items 7, 8)


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
  """An uninterrupted run (checkpoints 3, 6; finished) and one stopped at step 4 (checkpoints 3, 4)."""
  root = tmp_path_factory.mktemp("reference")
  assert cifar(METHOD, root / "straight") == 0
  assert cifar([*METHOD, "--stop-after-steps", "4"], root / "stopped") == 0
  return root


def _copy(reference_runs: Path, which: str, dest: Path) -> Path:
  shutil.copytree(reference_runs / which, dest)
  return dest


def _logged_epochs(out: Path) -> list[int]:
  return [json.loads(line)["epoch"] for line in (run_dir(out) / "log.jsonl").read_text().splitlines()]


def _assert_same_as_straight(out: Path, reference_runs: Path) -> None:
  assert _logged_epochs(out) == [1, 2]
  step, state = final_checkpoint(out)
  step_ref, state_ref = final_checkpoint(reference_runs / "straight")
  assert step == step_ref == 6
  jax.tree.map(np.testing.assert_array_equal, state, state_ref)
  results = json.loads((out / "cifar10_results.json").read_text())["results"]
  assert results == json.loads((reference_runs / "straight" / "cifar10_results.json").read_text())["results"]


@pytest.mark.parametrize(
  ("which", "change", "named"),
  [
    ("straight", ["--epochs", "3"], "--epochs 2, this command has --epochs 3"),
    ("straight", ["--lr", "0.2"], "--lr 0.1, this command has --lr 0.2"),
    ("straight", ["--noise", "0.2"], "--noise 0, this command has --noise 0.2"),
    ("stopped", ["--batch-size", "8"], "--batch-size 16, this command has --batch-size 8"),
  ],
)
def test_resume_under_changed_settings_is_refused(which, change, named, reference_runs, tmp_path, capsys):
  out = _copy(reference_runs, which, tmp_path / which)
  before = {p: p.read_bytes() for p in run_dir(out).rglob("*") if p.is_file()}
  assert cifar([*METHOD, "--resume", *change], out) == 2
  _only_line(capsys.readouterr().err, "cannot --resume cifar10-tiny-rho0.1-lambda1-1_t-seed0", named)
  assert {p: p.read_bytes() for p in run_dir(out).rglob("*") if p.is_file()} == before


def test_resume_on_another_device_count_is_refused(reference_runs, tmp_path):
  n_dev = jax.local_device_count()
  other = 2 if n_dev != 2 else 4
  out = _copy(reference_runs, "stopped", tmp_path / "stopped")
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={other}"}
  proc = cifar_subprocess([*METHOD, "--resume"], out, env=env)
  assert proc.returncode == 2
  _only_line(proc.stderr, f"local device count {n_dev}, this command has local device count {other}")


def test_kill_9_during_a_checkpoint_write_then_resume_equals_a_straight_run(reference_runs, tmp_path, capsys):
  out = tmp_path / "killed"
  proc = cifar_subprocess(METHOD, out, kill_at_checkpoint=6)
  assert proc.returncode == -signal.SIGKILL, proc.stderr
  checkpoints = run_dir(out) / "checkpoints"
  # The kill landed inside the write of step 6: its files are in orbax's temporary directory, uncommitted.
  assert sorted(p.name for p in checkpoints.iterdir()) == ["3", "6.orbax-checkpoint-tmp"]
  assert _logged_epochs(out) == [1, 2]  # the log ran ahead of the last checkpoint
  assert cifar([*METHOD, "--resume"], out) == 0
  err = capsys.readouterr().err
  assert "resumed cifar10-tiny-rho0.1-lambda1-1_t-seed0 at step 3\n" in err and "Traceback" not in err
  _assert_same_as_straight(out, reference_runs)  # including a log without a second epoch 2


def _array_item(step: Path) -> Path:
  """The directory of orbax's item of arrays in a checkpoint step (the one with a _METADATA file)."""
  (item,) = [path.parent for path in step.glob("*/_METADATA")]
  return item


def _truncate_metadata(step: Path) -> None:
  path = _array_item(step) / "_METADATA"
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(step: Path) -> None:
  data_files = list((_array_item(step) / "d").iterdir())  # the arrays' data, as tensorstore reads it
  assert data_files
  for path in data_files:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, min(len(data), len(data) // 2 + 16)):
      data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _empty(step: Path) -> None:
  for entry in step.iterdir():
    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


@pytest.mark.parametrize("damage", [_truncate_metadata, _flip_bytes, _empty], ids=lambda f: f.__name__[1:])
def test_a_damaged_latest_checkpoint_resumes_from_the_one_before(damage, reference_runs, tmp_path, capsys):
  out = _copy(reference_runs, "stopped", tmp_path / "stopped")
  damage(run_dir(out) / "checkpoints" / "4")
  assert cifar([*METHOD, "--resume"], out) == 0
  err = capsys.readouterr().err
  assert "Traceback" not in err and "absl" not in err, err
  (line,) = [line for line in err.splitlines() if line.startswith("resumed ")]
  run = "cifar10-tiny-rho0.1-lambda1-1_t-seed0"
  assert line.startswith(f"resumed {run} at step 3, the newest intact checkpoint (step 4 unreadable: ")
  (aside,) = (run_dir(out) / "corrupt-checkpoints").iterdir()
  assert aside.name.startswith("4-")
  _assert_same_as_straight(out, reference_runs)


def test_no_intact_checkpoint_is_one_line_and_exit_2(reference_runs, tmp_path, capsys):
  out = _copy(reference_runs, "stopped", tmp_path / "stopped")
  checkpoints = run_dir(out) / "checkpoints"
  _empty(checkpoints / "4")
  _flip_bytes(checkpoints / "3")
  assert cifar([*METHOD, "--resume"], out) == 2
  err = capsys.readouterr().err
  _last_line(err, "no intact checkpoint (step 4, 3: ", f"delete {run_dir(out)} to start over")
  assert sorted(p.name for p in checkpoints.iterdir()) == ["3", "4"]  # left as they were


# ---------------------------------------------------------------- benchmarks/theory.py --quick (item 14)


def test_theory_quick_leaves_the_committed_results_alone(tmp_path, monkeypatch, capsys):
  from benchmarks import theory

  committed = tmp_path / "results"
  committed.mkdir()
  files = {name: f"committed {name}".encode() for name in ("theory.json", "theory_ridge_steps.png")}
  for name, content in files.items():
    (committed / name).write_bytes(content)
  monkeypatch.setattr(theory, "RESULTS", committed)
  theory.main(["--quick", "--epochs", "1", "--trials", "1", "--n", "2"])  # its smallest settings
  assert {name: (committed / name).read_bytes() for name in files} == files
  quick = json.loads((committed / "quick" / "theory.json").read_text())
  assert quick["config"]["quick"] and (committed / "quick" / "theory_ridge_steps.png").stat().st_size > 0
  assert f"wrote {committed / 'quick' / 'theory.json'}" in capsys.readouterr().out

  def default_out(**changes):
    args = theory.parser().parse_args([])
    vars(args).update({"quick": False, "no_plots": False, "out": None, **theory.FULL_RUN, **changes})
    return theory.output_dir(args)

  assert default_out() == committed  # only the full run replaces the committed results
  for change in ({"quick": True}, {"epochs": 50}, {"trials": 2}, {"n": 50}, {"seed": 1}, {"no_plots": True}):
    assert default_out(**change) == committed / "quick", change
  assert default_out(quick=True, out=tmp_path / "mine") == tmp_path / "mine"
