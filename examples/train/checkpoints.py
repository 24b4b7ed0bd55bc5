"""The run directories of the CIFAR runner: one per (method, seed), with its settings, log and checkpoints.

A run continues (``--resume``) only under the settings it was started with, from its newest checkpoint that
restores completely; a damaged newer one is moved aside and reported in one line. A file where the run keeps
a folder (or the reverse) is refused before the first step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from examples.train.cli import UsageError, error_chain, os_error_code
from examples.train.methods import Method
from examples.train.training import all_finite
from optax_usam.flax_linen import SAMTrainState

# How a refused --resume names each setting stored in a run's config.json.
CONFIG_NAMES = {
  "dataset": "--dataset",
  "model": "--model",
  "method": "method",
  "lambd": "lambda",
  "seed": "seed",
  "rho": "--rho",
  "epochs": "--epochs",
  "batch_size": "--batch-size",
  "lr": "--lr",
  "momentum": "--momentum",
  "weight_decay": "--weight-decay",
  "noise": "--noise",
  "devices": "local device count",
  "train_images": "training images",
}


# What a run directory holds: each entry, and whether it is a folder. Anything else in its place is refused.
RUN_DIR_ENTRIES = {
  "config.json": False,
  "log.jsonl": False,
  "result.json": False,
  "checkpoints": True,
  "corrupt-checkpoints": True,
}


@dataclasses.dataclass(frozen=True)
class CifarRun:
  """One (method, seed) run: its directory and the configuration it stores there as config.json."""

  method: Method
  seed: int
  dir: Path
  config: dict[str, Any]


def cifar_runs(args: argparse.Namespace, n_train: int, n_dev: int) -> list[CifarRun]:
  runs = []
  for method in args.methods:
    for seed in range(args.seeds):
      # Everything that changes the sequence of states a run goes through: the cosine schedule spans
      # epochs x (train_images // batch_size) steps, and each device augments its own shard.
      config = {
        "dataset": args.dataset,
        "model": args.model,
        "method": method.name,
        "lambd": method.lambd,
        "seed": seed,
        "rho": args.rho,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "noise": args.noise,
        "devices": n_dev,
        "train_images": n_train,
      }
      name = f"{args.dataset}-{args.model}-rho{args.rho:g}-{method.slug}-seed{seed}"
      runs.append(CifarRun(method, seed, Path(args.out).absolute() / "runs" / name, config))
  return runs


def check_run_dir(run: CifarRun, resume: bool) -> None:
  """Refuses to mix two runs in one directory: without --resume, or under settings other than its own.

  No setting may change on --resume, not even --epochs of an unfinished run: the cosine schedule is laid over
  the total number of steps, so the steps already taken followed another schedule than the new command's,
  and the run would match neither an uninterrupted run of the old settings nor one of the new.
  """
  expected = [
    (run.dir.parent, True),
    (run.dir, True),
    *((run.dir / n, f) for n, f in RUN_DIR_ENTRIES.items()),
  ]
  for path, folder in expected:
    if path.exists() and path.is_dir() != folder:
      found, kept = ("a file", "a folder") if folder else ("a folder", "a file")
      raise UsageError(f"{path} is {found} where the run keeps {kept}: move it away, or use another --out")
  has_checkpoints = any((run.dir / "checkpoints").glob("*"))
  if not resume:
    if has_checkpoints:
      raise UsageError(
        f"{run.dir} holds checkpoints of an earlier run: pass --resume, or delete it to start over"
      )
    return
  if not has_checkpoints and not (run.dir / "result.json").exists():
    return  # nothing to continue: the run starts afresh
  try:
    stored = json.loads((run.dir / "config.json").read_text())
  except (OSError, ValueError) as err:
    raise UsageError(
      f"cannot --resume {run.dir}: its config.json is missing or unreadable ({type(err).__name__}), so its "
      "settings cannot be checked against this command's; delete the directory to start over"
    ) from err
  changed = [key for key in run.config if not isinstance(stored, dict) or stored.get(key) != run.config[key]]
  if changed:
    old = ", ".join(f"{CONFIG_NAMES[k]} {_setting(stored, k)}" for k in changed)
    new = ", ".join(f"{CONFIG_NAMES[k]} {_setting(run.config, k)}" for k in changed)
    raise UsageError(
      f"cannot --resume {run.dir.name}: it was started with {old}, this command has {new}; a run continues "
      "only under its own settings (its schedule, batches and augmentation depend on them): repeat them, "
      "or use another --out"
    )


def _setting(config: Any, key: str) -> str:
  value = config.get(key, "(unset)") if isinstance(config, dict) else "(unreadable)"
  if not isinstance(value, float):
    return str(value)
  short = f"{value:g}"
  return short if float(short) == value else repr(value)  # 0.1 vs 0.1000001 must not both read 0.1


def write_atomic(path: Path, text: str) -> None:
  # A kill mid-write leaves the old file or the new one, never part of one.
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


@contextlib.contextmanager
def quiet_absl() -> Iterator[None]:
  """orbax logs its own warnings and errors about a damaged checkpoint; the one-line report says it."""
  from absl import logging as absl_logging

  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.FATAL)
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)


def _drop_orbax_teardown_reports() -> None:
  """Silences what a failed orbax restore leaves behind: its exception is handled where it is raised.

  The tensorstore reads still in flight when one read fails complete later on orbax's closed event loop and
  report "Event loop is closed" through ``sys.unraisablehook``: a multi-line traceback at a random moment.
  Only that exact report is dropped; every other one goes to the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "drops_orbax_teardown", False):
    return

  def hook(unraisable: Any) -> None:
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return
    previous(unraisable)

  hook.drops_orbax_teardown = True  # type: ignore[attr-defined]
  sys.unraisablehook = hook


class _DropFailedWrites(logging.Filter):
  """Drops asyncio's report of a task whose write failed in the operating system (a full disk): orbax leaves
  such tasks of a failed checkpoint unretrieved, and asyncio logs each one with its traceback when it is
  collected, after the job has said it in one line (:func:`examples.train.cli.write_errors`)."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return exc is None or os_error_code(exc) is None


# How long a failed checkpoint's other writers are waited for: one stuck for good must not hold the command.
WRITERS_WAIT_S = 60.0


def _wait_for_writers(threads: set[threading.Thread]) -> None:
  """Joins those of ``threads`` that a checkpoint write may have started, with absl's log quiet."""
  deadline = time.monotonic() + WRITERS_WAIT_S
  with quiet_absl():
    for thread in threads:
      if thread.daemon:
        continue  # no writer (a progress bar's monitor), and it may never end
      with contextlib.suppress(Exception):  # orbax's threads raise the error of their write from join
        thread.join(max(0.0, deadline - time.monotonic()))


@contextlib.contextmanager
def quiet_failed_writes() -> Iterator[None]:
  """Keeps a checkpoint write that fails in the operating system (a full disk) to the one line that reports
  it, for the runs inside and no longer.

  A failed checkpoint leaves orbax's tasks with their errors unretrieved, which asyncio reports with a
  traceback when it collects them, and writer threads that fail in turn and log it through absl. Inside,
  asyncio's reports of failed writes are dropped (:class:`_DropFailedWrites`). When the error of a failed
  write leaves, the writers still running are waited for, absl quiet, and the tasks collected before the
  filter goes: the error holds them through its traceback's frames, whose variables are cleared (not its
  lines).
  """
  logger = logging.getLogger("asyncio")
  drop = _DropFailedWrites()
  before = set(threading.enumerate())
  logger.addFilter(drop)
  try:
    yield
  except Exception as err:
    if os_error_code(err) is not None:
      _wait_for_writers(set(threading.enumerate()) - before)
      for error in error_chain(err):
        traceback.clear_frames(error.__traceback__)
    raise
  finally:
    gc.collect()
    logger.removeFilter(drop)


def _one_line(err: BaseException, limit: int = 160) -> str:
  text = " ".join(str(err).split()) or "no message"
  text = f"{type(err).__name__}: {text}"
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _checkpoint_tree(state: SAMTrainState) -> dict[str, Any]:
  return {
    "step": state.step,
    "params": state.params,
    "batch_stats": state.batch_stats,
    "opt_state": state.opt_state,
  }


def save_args(state: SAMTrainState, history: dict[int, dict[str, Any]]) -> Any:
  """What ``CheckpointManager.save`` writes: the state, and the epoch log up to it."""
  import orbax.checkpoint as ocp

  # The epoch log travels inside the checkpoint, so a resumed run's log is exactly that of its checkpoint.
  epochs = [history[e] for e in sorted(history)]
  return ocp.args.Composite(
    state=ocp.args.StandardSave(_checkpoint_tree(state)), history=ocp.args.JsonSave({"epochs": epochs})
  )


def restore_newest_intact(
  manager: Any, state: SAMTrainState, run: CifarRun, steps_per_epoch: int
) -> tuple[SAMTrainState, dict[int, dict[str, Any]]] | None:
  """The newest checkpoint that restores completely, or None if there is none to restore.

  A damaged newer checkpoint (a truncated file, flipped bytes, an emptied directory) is moved to
  ``corrupt-checkpoints/`` so that the run can write that step again, and the fallback is reported in one
  line. If every checkpoint is damaged, a usage error says so.
  """
  import orbax.checkpoint as ocp

  _drop_orbax_teardown_reports()  # before the first attempt: the reports may come as soon as one fails
  target = _checkpoint_tree(state)
  failed: list[tuple[int, str]] = []
  with quiet_absl():
    steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      with quiet_absl():
        restored = manager.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore()),
        )
      tree, epochs = restored["state"], restored["history"]["epochs"]
      # What orbax cannot tell: a checkpoint is whole only if it holds the step it is named after, one log
      # entry per finished epoch, and (being written only after the finiteness check) finite numbers.
      history = {int(entry["epoch"]): entry for entry in epochs}
      if int(tree["step"]) != step or sorted(history) != list(range(1, step // steps_per_epoch + 1)):
        raise ValueError(f"holds step {int(tree['step'])} and epochs {sorted(history)}")
      if not bool(all_finite(tree)):
        raise ValueError("holds non-finite numbers")
    except Exception as err:  # orbax and tensorstore raise many types for damage; all mean "unusable"
      failed.append((step, _one_line(err)))
      continue
    note = ""
    if failed:
      aside = run.dir / "corrupt-checkpoints"
      aside.mkdir(exist_ok=True)
      for bad, _ in failed:
        dest = aside / f"{bad}-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(run.dir / "checkpoints" / str(bad), dest)
      manager.reload()
      bad_steps = ", ".join(str(bad) for bad, _ in failed)
      note = (
        f", the newest intact checkpoint (step {bad_steps} unreadable: {failed[0][1]}; moved to "
        f"{aside.name}/)"
      )
    print(f"resumed {run.dir.name} at step {step}{note}", file=sys.stderr)
    return state.replace(**tree), history
  if failed:
    steps = ", ".join(str(bad) for bad, _ in failed)
    raise UsageError(
      f"cannot --resume {run.dir.name}: no intact checkpoint (step {steps}: {failed[0][1]}); "
      f"delete {run.dir} to start over"
    )
  return None


def open_manager(run: CifarRun) -> Any:
  """The orbax ``CheckpointManager`` of ``run``: the two newest checkpoints are kept."""
  import orbax.checkpoint as ocp

  # cleanup_tmp_directories: a write cut short by a kill leaves a temporary directory, never a step. Quiet:
  # orbax warns about damaged steps as it lists them; restore_newest_intact reports them in one line.
  with quiet_absl():
    return ocp.CheckpointManager(
      run.dir / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=2, cleanup_tmp_directories=True),
    )
