"""Tests of optax_usam._passes: a step's first pass runs only where the optimizer reads its gradient."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam
from optax_usam._passes import sam_passes

PARAMS = {"w": jnp.array([3.0, 4.0])}


def _loss_and_grad(params):
  return jnp.sum(params["w"] ** 2), {"w": 2 * params["w"]}


def _grad_fn(params):
  return _loss_and_grad(params)[1]


@pytest.mark.parametrize(
  ("tx", "first"),
  [(optax_usam.sam(0.1), True), (optax_usam.momentum_sam(0.1), False), (optax.sgd(0.1), True)],
  ids=["sam", "momentum_sam", "sgd"],
)
def test_first_pass_only_where_the_optimizer_reads_it(tx, first):
  """With a first pass its value is returned; without one, that of the last grad_fn call (the ascent
  point), from the same computation as the update."""
  state = tx.init(PARAMS)
  # One step first, so that momentum_sam's ascent point is not x itself (e_1 = 0).
  _, state = tx.update(_grad_fn(PARAMS) if first else None, state, PARAMS, grad_fn=_grad_fn)
  first_calls, given, points = [], [], []

  def first_pass():
    first_calls.append(1)
    return _loss_and_grad(PARAMS)

  def value_and_grad(params):
    points.append(params)
    return _loss_and_grad(params)

  def update(grads, grad_fn):
    given.append(grads)
    return tx.update(grads, state, PARAMS, grad_fn=grad_fn)

  (updates, _), value = sam_passes(state, first_pass, value_and_grad, update)
  assert len(first_calls) == int(first)
  assert (given[0] is None) is not first
  assert np.all(np.isfinite(updates["w"]))
  if first:
    assert float(value) == 25.0
  else:
    assert len(points) == 1 and not np.allclose(points[0]["w"], PARAMS["w"])
    assert float(value) == float(_loss_and_grad(points[0])[0])
