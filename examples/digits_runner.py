"""The digits job of examples/train.py: every method on every seed, a few seconds each on a CPU."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

import data as data_lib
import jax
import jax.numpy as jnp
import models
import numpy as np
from cli import UsageError
from methods import ascent_fraction, make_tx
from progress import Progress
from training import check_finite, diagnostics, make_loss_fn

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


def run_digits(args: argparse.Namespace) -> dict[str, Any]:
  """All methods on the digits, one jitted step per method reused for every seed."""
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
  init_variables = [model.init(jax.random.key(seed), splits[0].train.x[:1], train=False) for seed in seeds]

  def batches(seed: int, epoch: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(n_train)
    return order[: steps * args.batch_size].reshape(steps, args.batch_size)

  @jax.jit
  def test_accuracy(params, batch_stats, x, y):
    variables = {"params": params} if batch_stats is None else {"params": params, "batch_stats": batch_stats}
    return 100.0 * jnp.mean(jnp.argmax(model.apply(variables, x, train=False), -1) == y)

  train_step = make_train_step(loss_fn)
  results: dict[str, Any] = {}
  bar = Progress(len(args.methods) * len(seeds) * args.epochs, "digits", args.no_progress)
  try:
    for method in args.methods:
      fraction = ascent_fraction(method, args)
      tx = make_tx(method, args, total_steps)
      curves, losses, finals, finite = [], [], [], []
      for seed, split, variables in zip(seeds, splits, init_variables, strict=True):
        state = SAMTrainState.create(
          apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables.get("batch_stats")
        )
        x, y = jnp.asarray(split.train.x), jnp.asarray(split.train.y)
        x_test, y_test = jnp.asarray(split.test.x), jnp.asarray(split.test.y)
        curve, loss_curve = [], []
        for epoch in range(args.epochs):
          epoch_losses = []
          for idx in batches(seed, epoch):
            state, loss = train_step(state, x, y, idx, fraction)
            epoch_losses.append(loss)
          loss_curve.append(float(np.mean(epoch_losses)))
          check_finite(f"{method.name} seed {seed}", epoch + 1, loss_curve[-1], state)
          curve.append(float(test_accuracy(state.params, state.batch_stats, x_test, y_test)))
          bar.update(status=f"{method.name} seed {seed} test acc {curve[-1]:.1f}")
        bar.milestone(f"digits: {method.name} seed {seed}: final test acc {curve[-1]:.1f}")
        curves.append(curve)
        losses.append(loss_curve)
        finals.append(diagnostics(state))
        finite.append(True)  # check_finite stopped the job otherwise
      results[method.name] = {
        "lambda": method.lambd,
        "variant": method.variant,
        "all_finite": finite,
        "final_test_acc": [c[-1] for c in curves],
        "test_acc_curve": np.round(curves, 3).tolist(),
        "train_loss_curve": np.round(losses, 5).tolist(),
        "last_diagnostics": finals,
      }
  finally:
    bar.close()
  return results
