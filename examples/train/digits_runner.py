"""The digits part of the main job: every method on every seed, a few seconds each on a CPU."""

from __future__ import annotations

import argparse
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from examples.train import data as data_lib
from examples.train import models
from examples.train.cli import UsageError
from examples.train.methods import (
  Method,
  ascent_fraction,
  make_shared_sam_tx,
  make_tx,
  set_lambda,
  shares_sam_step,
)
from examples.train.progress import Progress
from examples.train.training import check_finite, diagnostics, make_loss_fn, model_variables
from optax_usam.flax_linen import SAMTrainState, linen_train_step


def make_train_step(loss_fn: Callable[..., Any]) -> Callable[..., Any]:
  """The jitted step ``(state, x, y, idx, fraction) -> (state, loss)`` on the batch ``x[idx], y[idx]``.

  :func:`linen_train_step` skips the first pass when the optimizer does not need the fresh gradient
  (``optax_usam.needs_fresh_gradient``: momentum SAM), so such a step takes one gradient, as SGD's; its loss
  is then the one at the ascent point.
  """

  # A Python loop of jitted steps, not lax.scan: XLA:CPU runs convolutions inside a while loop an order of
  # magnitude slower.
  @functools.partial(jax.jit, static_argnames="fraction")
  def train_step(state, x, y, idx, fraction):
    state, out = linen_train_step(state, {"x": x[idx], "y": y[idx]}, loss_fn, ascent_fraction=fraction)
    return state, out.loss

  return train_step


class Run(NamedTuple):
  """What one (method, seed) run of the digits job returns."""

  curve: list[float]  # test accuracy after each epoch
  loss_curve: list[float]  # mean training loss of each epoch
  diagnostics: dict[str, float]


def workers(requested: int | None, runs: int) -> int:
  """How many runs train at once: ``--workers``, else one per core this process may use (never more than
  there are runs)."""
  return max(1, min(requested or len(os.sched_getaffinity(0)), runs))


class _Stopped(Exception):
  """A run stopped because another one failed."""


def run_digits(args: argparse.Namespace) -> dict[str, Any]:
  """All methods on the digits: every (method, seed) run, up to ``--workers`` at a time.

  Each kind of step compiles once: SGD, one Unified SAM step for every plain lambda (its rho and lambda are
  arrays in the optimizer state, :func:`methods.make_shared_sam_tx`), one per cheaper variant or SAM-family
  member, and one evaluation. Runs are independent and each one's arithmetic is the same whichever thread runs
  it and whatever runs beside it, so the table does not depend on ``--workers``.
  """
  seeds = list(range(args.seeds))
  splits = [data_lib.load_digits(seed, args.noise) for seed in seeds]
  n_train = len(splits[0].train.y)
  steps = n_train // args.batch_size
  if steps == 0:
    raise UsageError(f"--batch-size {args.batch_size} is larger than the {n_train} training images")
  total_steps = steps * args.epochs
  model = models.get_model(args.model, 10, dtype=jnp.dtype(args.dtype))
  loss_fn = make_loss_fn(model)
  # One data order and one initialization per seed, shared by all methods. The BatchNorm models (tiny,
  # resnet18, wrn28-10) also carry running statistics; the digits CNN has none (None below).
  init = jax.jit(model.init, static_argnames="train")  # one compile, not one per operation and shape
  init_variables = [init(jax.random.key(seed), splits[0].train.x[:1], train=False) for seed in seeds]
  shared_sam_tx = make_shared_sam_tx(args, total_steps)
  txs = {m.name: shared_sam_tx if shares_sam_step(m) else make_tx(m, args, total_steps) for m in args.methods}

  def batches(seed: int, epoch: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(n_train)
    return order[: steps * args.batch_size].reshape(steps, args.batch_size)

  @jax.jit
  def test_accuracy(params, batch_stats, x, y):
    logits = model.apply(model_variables(params, batch_stats), x, train=False)
    return 100.0 * jnp.mean(jnp.argmax(logits, -1) == y)

  train_step = make_train_step(loss_fn)
  bar = Progress(len(args.methods) * len(seeds) * args.epochs, "digits", args.no_progress)

  def run(method: Method, seed: int) -> Run:
    split, variables = splits[seed], init_variables[seed]
    fraction = ascent_fraction(method, args)
    state = SAMTrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      tx=txs[method.name],
      batch_stats=variables.get("batch_stats"),
    )
    if shares_sam_step(method):
      state = state.replace(opt_state=set_lambda(state.opt_state, method))
    x, y = jnp.asarray(split.train.x), jnp.asarray(split.train.y)
    x_test, y_test = jnp.asarray(split.test.x), jnp.asarray(split.test.y)
    curve, loss_curve = [], []
    for epoch in range(args.epochs):
      if stop.is_set():
        raise _Stopped
      epoch_losses = []
      for idx in batches(seed, epoch):
        state, loss = train_step(state, x, y, idx, fraction)
        epoch_losses.append(loss)
      loss_curve.append(float(np.mean(epoch_losses)))
      check_finite(f"{method.name} seed {seed}", epoch + 1, loss_curve[-1], state)
      curve.append(float(test_accuracy(state.params, state.batch_stats, x_test, y_test)))
      with bar_lock:
        bar.update(status=f"{method.name} seed {seed} test acc {curve[-1]:.1f}")
    bar.milestone(f"digits: {method.name} seed {seed}: final test acc {curve[-1]:.1f}")
    return Run(curve, loss_curve, diagnostics(state))

  jobs = [(method, seed) for method in args.methods for seed in seeds]
  args.workers = workers(args.workers, len(jobs))  # the JSON records the number used
  # The first failure (a diverged run, Ctrl-C) ends the job at once: the runs not started are cancelled and
  # the running ones stop at their next epoch.
  stop, bar_lock = threading.Event(), threading.Lock()
  pool = ThreadPoolExecutor(args.workers)
  try:
    futures = [pool.submit(run, method, seed) for method, seed in jobs]
    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    failed = [f for f in futures if f in done and f.exception() is not None]
    if failed:
      raise failed[0].exception()
    runs = [future.result() for future in futures]
  except BaseException:
    stop.set()
    raise
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
  results: dict[str, Any] = {}
  for i, method in enumerate(args.methods):
    mine = runs[i * len(seeds) : (i + 1) * len(seeds)]
    results[method.name] = {
      "lambda": method.lambd,
      "variant": method.variant,
      "all_finite": [True] * len(seeds),  # check_finite stopped the job otherwise
      "final_test_acc": [r.curve[-1] for r in mine],
      "test_acc_curve": np.round([r.curve for r in mine], 3).tolist(),
      "train_loss_curve": np.round([r.loss_curve for r in mine], 5).tolist(),
      "last_diagnostics": [r.diagnostics for r in mine],
    }
  return results
