"""Shared by the tests of the main job (``examples.train``): its CIFAR path on tfds's mock data, here or in a
child process, and the checks of its one-line errors.

Run as a module from the repository's root, this file is that child process::

  python -m tests.train_helpers [--kill-at-checkpoint STEP] JOB_ARGS...

runs ``job.main(CIFAR_ARGS + JOB_ARGS)`` on the mock data and exits with its status. With
``--kill-at-checkpoint STEP`` the process SIGKILLs itself in the middle of writing checkpoint STEP: after
orbax has written every file of it into its temporary directory, before the rename that commits it. The kill
lands there on every run, which a timer or a watcher of the directory could not promise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from examples.train import job, models

ROOT = Path(__file__).resolve().parent.parent
# 48 mock images at batch 16: 3 steps per epoch, 2 epochs, checkpoints at steps 3 and 6.
CIFAR_ARGS = [
  "--dataset",
  "cifar10",
  "--model",
  "tiny",
  "--seeds",
  "1",
  "--epochs",
  "2",
  "--batch-size",
  "16",
  "--no-progress",
  "--data-dir",
  "/nonexistent",
]
NUM_EXAMPLES = 48
DIGITS_1_EPOCH = ["--epochs", "1", "--seeds", "1", "--no-progress"]


def small_models(monkeypatch: Any) -> None:
  """Makes ``--model resnet18`` and ``--model wrn28-10`` build their classes narrow (and WRN shallow), to
  train in seconds on a CPU: the same modules with BatchNorm statistics, fewer channels."""
  monkeypatch.setitem(models.MODELS, "resnet18", lambda n: models.ResNet18(num_classes=n, width=4))
  monkeypatch.setitem(models.MODELS, "wrn28-10", lambda n: models.WideResNet(10, 1, num_classes=n))


def only_line(err: str, *needles: str) -> str:
  """The single line of ``err``, checked to be the job's error line containing ``needles``."""
  assert err.count("\n") == 1 and err.startswith(f"{job.PROG}: error: "), err
  assert all(n in err for n in needles), err
  return err


def last_line(err: str, *needles: str) -> str:
  """The last line of ``err``, checked as above, with no traceback or orbax log line before it."""
  assert "Traceback" not in err and "absl" not in err, err
  return only_line(err.splitlines()[-1] + "\n", *needles)


def run_job(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
  """``python -m examples.train ARGV`` from the repository's root, its output captured (``kwargs`` go to
  ``subprocess.run``)."""
  kwargs = {"capture_output": True, "text": True, "timeout": 300, **kwargs}
  return subprocess.run([sys.executable, "-m", "examples.train", *argv], cwd=ROOT, **kwargs)


def cifar(argv: list[str], out: Path, num_examples: int = NUM_EXAMPLES) -> int:
  """``job.main`` in this process on the mock CIFAR-10, with the small settings above."""
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=num_examples):
    return job.main([*CIFAR_ARGS, *argv, "--out", str(out)])


def cifar_subprocess(
  argv: list[str], out: Path, kill_at_checkpoint: int | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
  """The same in a child process (see the module docstring), its output captured."""
  kill = [] if kill_at_checkpoint is None else ["--kill-at-checkpoint", str(kill_at_checkpoint)]
  return subprocess.run(
    [sys.executable, "-m", "tests.train_helpers", *kill, *argv, "--out", str(out)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )


def run_dir(out: Path) -> Path:
  (run,) = (out / "runs").iterdir()
  return run


def final_checkpoint(out: Path, step: int | None = None) -> tuple[int, dict[str, Any]]:
  """(step, state tree) of the latest checkpoint of the only run under ``out`` (or of ``step``)."""
  import orbax.checkpoint as ocp

  manager = ocp.CheckpointManager(run_dir(out) / "checkpoints")
  step = manager.latest_step() if step is None else step
  args = ocp.args.Composite(state=ocp.args.StandardRestore(), history=ocp.args.JsonRestore())
  return step, manager.restore(step, args=args)["state"]


def _kill_while_writing(step: int) -> None:
  from orbax.checkpoint._src.path import atomicity

  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def killing_finalize(self: Any) -> None:
    if self.get_final().name == str(step):
      os.kill(os.getpid(), signal.SIGKILL)
    await finalize(self)

  atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize


if __name__ == "__main__":
  args = sys.argv[1:]
  if args[:1] == ["--kill-at-checkpoint"]:
    _kill_while_writing(int(args[1]))
    args = args[2:]
  out = Path(args[args.index("--out") + 1])
  del args[args.index("--out") : args.index("--out") + 2]
  sys.exit(cifar(args, out))
