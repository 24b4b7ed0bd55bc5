"""The CIFAR part of the main job: data parallel over the local devices, a checkpoint per epoch.

Each (method, seed) run lives in its own directory under ``--out``/runs (see :mod:`checkpoints`), so a job
stopped by ``--stop-after-steps`` or killed can continue with ``--resume``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from examples.train import data as data_lib
from examples.train import models
from examples.train.checkpoints import (
  CifarRun,
  check_run_dir,
  cifar_runs,
  open_manager,
  quiet_absl,
  quiet_failed_writes,
  restore_newest_intact,
  save_args,
  write_atomic,
)
from examples.train.cli import UsageError, write_errors
from examples.train.methods import make_tx
from examples.train.progress import Progress
from examples.train.training import check_finite, diagnostics, make_loss_fn, model_variables
from optax_usam.flax_linen import SAMTrainState, linen_train_step

AXIS = "data"


def make_cifar_step(model: Any, mesh: jax.sharding.Mesh) -> Callable[..., Any]:
  """One jitted data-parallel step: augmentation, both SAM passes, averaged gradients and statistics."""
  from jax.sharding import PartitionSpec as P

  loss_fn = make_loss_fn(model)

  def step(state, images, labels, key):
    # Each device augments its own shard differently.
    key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
    batch = {"x": data_lib.normalize(data_lib.augment(key, images)), "y": labels}
    state, out = linen_train_step(state, batch, loss_fn, axis_name=AXIS)
    acc = jax.lax.pmean(jnp.mean(jnp.argmax(out.aux, -1) == labels), AXIS)
    return state, {"loss": out.loss, "acc": acc}

  # check_vma=False: per-device gradients stay local until unified_sam averages them.
  sharded = jax.shard_map(
    step, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P()), out_specs=(P(), P()), check_vma=False
  )
  return jax.jit(sharded, donate_argnums=0)


def make_evaluate(model: Any) -> Callable[[SAMTrainState, data_lib.Split], float]:
  """``evaluate(state, split)``: test accuracy in %, through a function compiled once, not at every call."""

  @jax.jit
  def correct(params, batch_stats, x, y):
    logits = model.apply(model_variables(params, batch_stats), data_lib.normalize(x), train=False)
    return jnp.sum(jnp.argmax(logits, -1) == y)

  return functools.partial(_evaluate, correct)


def _evaluate(
  correct: Callable[..., Any], state: SAMTrainState, split: data_lib.Split, batch: int = 1000
) -> float:
  total = sum(
    int(correct(state.params, state.batch_stats, split.x[i : i + batch], split.y[i : i + batch]))
    for i in range(0, len(split.y), batch)
  )
  return 100.0 * total / len(split.y)


def run_cifar_one(
  args: argparse.Namespace, dataset: data_lib.Dataset, run: CifarRun, mesh: jax.sharding.Mesh
) -> dict[str, Any] | None:
  """One (method, seed) run with a checkpoint per epoch; None if stopped by --stop-after-steps."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  done = run.dir / "result.json"
  if args.resume and done.exists():
    try:
      return json.loads(done.read_text())
    except ValueError:
      pass  # unreadable: evaluated again from the final checkpoint below
  method, seed = run.method, run.seed
  n_train = len(dataset.train.y)
  steps = n_train // args.batch_size
  total_steps = steps * args.epochs
  train_labels = dataset.train.y
  if args.noise > 0:
    rng = np.random.default_rng([seed, len(train_labels)])
    train_labels = data_lib.symmetric_noise(train_labels, args.noise, dataset.num_classes, rng)
  model = models.get_model(args.model, dataset.num_classes)
  variables = model.init(jax.random.key(seed), jnp.zeros((1, *dataset.train.x.shape[1:])), train=False)
  tx = make_tx(method, args, total_steps, axis_name=AXIS)
  state = SAMTrainState.create(
    apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables.get("batch_stats")
  )
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  state = jax.device_put(state, replicated)

  manager = open_manager(run)
  bar = None
  try:
    history: dict[int, dict[str, Any]] = {}
    restored = restore_newest_intact(manager, state, run, steps) if args.resume else None
    if restored is not None:
      state, history = restored
    else:
      run.dir.mkdir(parents=True, exist_ok=True)
      write_atomic(run.dir / "config.json", json.dumps(run.config, indent=1) + "\n")
    # Rewritten from the checkpoint: epochs logged after it (killed between the log line and the
    # checkpoint) are trained again and must not appear twice.
    log_path = run.dir / "log.jsonl"
    write_atomic(log_path, "".join(json.dumps(history[e]) + "\n" for e in sorted(history)))

    train_step, evaluate = make_cifar_step(model, mesh), make_evaluate(model)
    key = jax.random.key(seed)
    bar = Progress(total_steps, f"{method.name} seed {seed}", args.no_progress)
    bar.update(int(state.step))
    epoch_order = None
    while int(state.step) < total_steps:
      step = int(state.step)
      epoch, i = divmod(step, steps)
      if i == 0 or epoch_order is None:
        # The data order depends on (seed, epoch) only, so a resumed run sees the same batches.
        epoch_order = np.random.default_rng([seed, epoch]).permutation(n_train)[: steps * args.batch_size]
        epoch_order = epoch_order.reshape(steps, args.batch_size)
      idx = epoch_order[i]
      images = jax.device_put(dataset.train.x[idx], sharded)
      labels = jax.device_put(train_labels[idx], sharded)
      state, metrics = train_step(state, images, labels, jax.random.fold_in(key, step))
      bar.update()
      stop = args.stop_after_steps is not None and step + 1 >= args.stop_after_steps
      end_of_epoch = i == steps - 1
      if not (end_of_epoch or stop):
        continue
      # Once per epoch, and before every checkpoint: a diverged state is never saved.
      loss = float(metrics["loss"])
      check_finite(run.dir.name, epoch + 1, loss, state)
      if end_of_epoch:
        entry = {
          "epoch": epoch + 1,
          "step": step + 1,
          "loss": loss,
          "train_acc": 100 * float(metrics["acc"]),
          "test_acc": evaluate(state, dataset.test),
          **diagnostics(state),
        }
        history[epoch + 1] = entry
        with log_path.open("a") as f:
          f.write(json.dumps(entry) + "\n")
        bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
      manager.save(step + 1, args=save_args(state, history))
      if stop and step + 1 < total_steps:
        bar.close()
        print(f"stopped {run.dir.name} after step {step + 1}; continue with --resume", file=sys.stderr)
        return None
  finally:
    if bar is not None:
      bar.close()
    # An error above must not cut short the write of the last good checkpoint; one of that write must not
    # leave the manager's threads running.
    try:
      manager.wait_until_finished()
    finally:
      manager.close()
  curve = [history[e]["test_acc"] for e in sorted(history)]
  result = {
    "final_test_acc": evaluate(state, dataset.test),
    "test_acc_curve": curve,
    "last_diagnostics": diagnostics(state),
  }
  write_atomic(done, json.dumps(result))
  return result


def run_cifar(args: argparse.Namespace) -> dict[str, Any] | None:
  """Every (method, seed) run in turn; None if --stop-after-steps stopped any of them."""
  try:
    dataset = data_lib.load_tfds(args.dataset, args.data_dir)
  except data_lib.DataMissingError as err:
    raise UsageError(str(err)) from err
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))
  n_dev = mesh.devices.size
  if args.batch_size % n_dev:
    raise UsageError(f"--batch-size {args.batch_size} must be a multiple of the {n_dev} local devices")
  if len(dataset.train.y) < args.batch_size:
    raise UsageError(
      f"--batch-size {args.batch_size} is larger than the {len(dataset.train.y)} training images"
    )
  steps = len(dataset.train.y) // args.batch_size
  if args.stop_after_steps is not None and args.stop_after_steps >= steps * args.epochs:
    raise UsageError(
      f"--stop-after-steps {args.stop_after_steps} stops nothing: the runs end at step {steps * args.epochs} "
      f"(--epochs {args.epochs} x {steps} steps of --batch-size {args.batch_size})"
    )
  runs = cifar_runs(args, len(dataset.train.y), n_dev)
  # Every run directory is checked before the first step, not after hours of the runs before it.
  for run in runs:
    check_run_dir(run, args.resume)
  print(
    f"{args.dataset}: {len(dataset.train.y)} train / {len(dataset.test.y)} test images, "
    f"{args.model}, data parallel over {n_dev} device(s)",
    file=sys.stderr,
  )
  # A write that fails (a full disk) ends the job in one line naming the run's folder and the cause; orbax's
  # threads, which log each failure with its traceback, and the tasks it leaves behind stay quiet. The
  # checkpoint being written stays uncommitted (orbax commits a step by renaming its temporary folder, and
  # removes such folders when it opens the run again), so --resume continues from the one before.
  advice = "; the checkpoints written before are intact: continue with --resume once it can be written"
  results: dict[str, Any] = {}
  stopped = False
  for method in args.methods:
    per_seed = []
    for run in runs:
      if run.method == method:
        with quiet_failed_writes(), write_errors(run.dir, advice), quiet_absl():
          per_seed.append(run_cifar_one(args, dataset, run, mesh))
    if any(r is None for r in per_seed):
      stopped = True
      continue
    results[method.name] = {
      "lambda": method.lambd,
      "final_test_acc": [r["final_test_acc"] for r in per_seed],
      "test_acc_curve": [r["test_acc_curve"] for r in per_seed],
      "last_diagnostics_seed0": per_seed[0]["last_diagnostics"],
    }
  return None if stopped else results
