"""examples/train/checkpoints.py: the CIFAR run directories under faults.

Each fault of a run directory (kill -9 during a checkpoint write, a damaged checkpoint, a full disk, a file
where a folder belongs) must either be survived, with the same final parameters and results as an
uninterrupted run, or be refused in one line, as must a --resume under other settings.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from examples.train.checkpoints import RUN_DIR_ENTRIES, quiet_failed_writes
from examples.train.cli import CommandError, write_errors
from tests.train_helpers import cifar, cifar_subprocess, final_checkpoint, last_line, only_line, run_dir

METHOD = ["--methods", "1-1/t"]


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
  only_line(capsys.readouterr().err, "cannot --resume cifar10-tiny-rho0.1-lambda1-1_t-seed0", named)
  assert {p: p.read_bytes() for p in run_dir(out).rglob("*") if p.is_file()} == before


def test_resume_on_another_device_count_is_refused(reference_runs, tmp_path):
  n_dev = jax.local_device_count()
  other = 2 if n_dev != 2 else 4
  out = _copy(reference_runs, "stopped", tmp_path / "stopped")
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={other}"}
  proc = cifar_subprocess([*METHOD, "--resume"], out, env=env)
  assert proc.returncode == 2
  only_line(proc.stderr, f"local device count {n_dev}, this command has local device count {other}")


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
  last_line(err, "no intact checkpoint (step 4, 3: ", f"delete {run_dir(out)} to start over")
  assert sorted(p.name for p in checkpoints.iterdir()) == ["3", "4"]  # left as they were


@pytest.mark.parametrize(
  "entry", ["runs", "run", *RUN_DIR_ENTRIES], ids=lambda entry: entry.replace(".", "_").replace("-", "_")
)
def test_a_file_where_the_run_keeps_a_folder_or_the_reverse_is_one_line_and_exit_2(
  entry, reference_runs, tmp_path, capsys
):
  out = _copy(reference_runs, "stopped", tmp_path / "stopped")
  run = run_dir(out)
  path = {"runs": run.parent, "run": run}.get(entry, run / entry)
  folder = RUN_DIR_ENTRIES.get(entry, True)
  shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
  path.mkdir() if not folder else path.write_text("")
  before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  assert cifar([*METHOD, "--resume"], out) == 2
  kinds = "is a file where the run keeps a folder" if folder else "is a folder where the run keeps a file"
  only_line(capsys.readouterr().err, f"{path} {kinds}: move it away, or use another --out")
  assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing trained or written


@pytest.mark.parametrize(
  "error",
  [
    OSError(errno.ENOSPC, "No space left on device"),
    # How tensorstore, orbax's writer, reports it (a full tmpfs, by hand): a ValueError with the OS's code.
    ValueError(
      'RESOURCE_EXHAUSTED: Error writing local file "_sharding": Failed to write 366 bytes to file 17: No '
      "space left on device [os_error_code='28']"
    ),
  ],
  ids=["oserror", "tensorstore"],
)
def test_a_full_disk_during_a_resume_is_one_line_and_the_next_resume_equals_a_straight_run(
  error, reference_runs, tmp_path, capsys, monkeypatch
):
  # orbax's public module of the commit of a checkpoint: its TemporaryPath.finalize runs in orbax's thread.
  from orbax.checkpoint.path import atomicity

  out = _copy(reference_runs, "stopped", tmp_path / "stopped")
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def full_disk(self):
    # The disk fills while the checkpoint of step 6 is written, in one of orbax's threads.
    if self.get_final().name == "6":
      raise error
    await finalize(self)

  asyncio_filters = list(logging.getLogger("asyncio").filters)
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", full_disk)
  assert cifar([*METHOD, "--resume"], out) == 1
  last_line(
    capsys.readouterr().err,
    f"cannot write into {run_dir(out)}: No space left on device (OSError ENOSPC); ",
    "the checkpoints written before are intact: continue with --resume",
  )
  assert "6" not in {p.name for p in (run_dir(out) / "checkpoints").iterdir()}
  assert logging.getLogger("asyncio").filters == asyncio_filters  # nothing left behind in this process
  monkeypatch.undo()  # space freed
  assert cifar([*METHOD, "--resume"], out) == 0
  _assert_same_as_straight(out, reference_runs)


class _AbandonedTask:
  """Stands for a task that orbax leaves with the error of its write unretrieved: asyncio reports such a task,
  with its traceback, when it is collected. Held in a reference cycle, as orbax's are: only the garbage
  collector frees it."""

  def __init__(self, error: BaseException, collected: list[BaseException]) -> None:
    self.error, self.collected, self.cycle = error, collected, self

  def __del__(self) -> None:
    self.collected.append(self.error)
    _report_unretrieved(self.error)


def _report_unretrieved(error: BaseException) -> None:
  logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=error)


def _write_failing(error: BaseException, collected: list[BaseException]) -> None:
  task = _AbandonedTask(error, collected)  # held by this frame, which the error's traceback holds
  raise task.error


def test_reports_of_failed_writes_are_dropped_while_the_runs_last_and_no_longer(tmp_path):
  logger = logging.getLogger("asyncio")
  filters = list(logger.filters)
  reports: list[logging.LogRecord] = []
  handler = logging.Handler()
  handler.emit = reports.append
  logger.addHandler(handler)
  full_disk, bug = OSError(errno.ENOSPC, "No space left on device"), ValueError("not a write")
  collected: list[BaseException] = []
  try:
    with pytest.raises(CommandError), quiet_failed_writes(), write_errors(tmp_path):
      _report_unretrieved(bug)  # not a failed write: reported as ever
      # Another writer of the failed checkpoint fails after the first error has left.
      late = threading.Thread(target=lambda: (time.sleep(0.2), _report_unretrieved(full_disk)))
      late.start()
      _write_failing(full_disk, collected)
    # The failed writes' reports came before the error left, and were dropped.
    assert collected == [full_disk] and not late.is_alive()
    assert [r.exc_info[1] for r in reports] == [bug]
    assert logger.filters == filters
    _report_unretrieved(full_disk)  # after the runs: reported
    assert [r.exc_info[1] for r in reports] == [bug, full_disk]
  finally:
    logger.removeHandler(handler)
