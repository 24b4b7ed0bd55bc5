"""Tests of optax_usam._passes: a step's first pass runs only where the optimizer reads its gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam
from optax_usam._passes import sam_passes

PARAMS = {"w": jnp.array([3.0, 4.0])}


def _loss_and_grad(params):
  return jnp.sum(params["w"] ** 2), {"w": 2 * params["w"]}


@pytest.mark.parametrize(
  ("tx", "first"),
  [(optax_usam.sam(0.1), True), (optax_usam.momentum_sam(0.1), False), (optax.sgd(0.1), True)],
  ids=["sam", "momentum_sam", "sgd"],
)
def test_first_pass_only_where_the_optimizer_reads_it(tx, first):
  """With a first pass its loss is reported; without one, the loss of the last grad_fn call (the ascent
  point), from the same computation as the update."""
  state = tx.init(PARAMS)
  first_calls, at = [], []

  def first_pass():
    first_calls.append(1)
    return _loss_and_grad(PARAMS)

  def value_and_grad(params):
    at.append(params)
    return _loss_and_grad(params)

  def update(grads, grad_fn):
    return tx.update(grads, state, PARAMS, grad_fn=grad_fn) if grads is not None or not first else None

  (updates, _), loss = sam_passes(state, first_pass, value_and_grad, update)
  assert len(first_calls) == int(first)
  chex_free = jax.tree.map(np.asarray, updates)
  assert np.all(np.isfinite(chex_free["w"]))
  if first:
    assert float(loss) == 25.0
  else:
    assert len(at) == 1  # momentum_sam's only pass: at x_1 + e_1 = x_1 (e_1 = 0)
    assert float(loss) == float(_loss_and_grad(at[-1])[0])
