"""Tests of optax_usam.random_smoothing: RSAM's noise, drawn from the keys its docstring documents.

RSAM's whole trajectories and its noise_std = 0 case run with the rest of the family
(tests/test_ascent.py).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_usam
from optax_usam.random_smoothing import noise
from tests import mlp_problem

RHO = 0.2


def test_random_smoothing_noise_follows_the_documented_keys():
  p0, x, y = mlp_problem.problem(2)
  grad = jax.grad(mlp_problem.jax_loss)
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.asarray, p0)
    tx = optax_usam.random_smoothing_sam(RHO, 0.05, seed=7)
    points = []
    grad_fn = lambda q: points.append(q) or grad(q, x, y)
    state = tx.init(params)
    keys = jax.random.key(7)
    for _ in range(2):
      _, state = tx.update(None, state, params, grad_fn=grad_fn)
      keys, draw = jax.random.split(keys)
      want = jax.tree.map(lambda p, n: p + n, params, noise(params, draw, 0.05, filter_wise=True))
      chex.assert_trees_all_close(points[-2], want, rtol=1e-15, atol=0)
  # Filter-wise: each output unit's noise scales with that unit's weight norm; b2 = 0 gets none.
  assert np.all(np.asarray(points[-2]["b2"]) == 0)
  assert not np.allclose(points[-2]["w1"], params["w1"])


@pytest.mark.parametrize(
  "make,error,match",
  [
    (lambda: optax_usam.random_smoothing_sam(RHO, -0.01), ValueError, "noise_std"),
    (lambda: optax_usam.random_smoothing_sam(RHO, float("inf")), ValueError, "noise_std"),
    (lambda: optax_usam.random_smoothing_sam(RHO, 0.1, gradient_weight=0), ValueError, "gradient_weight"),
    (lambda: optax_usam.random_smoothing_sam(RHO, 0.01, seed=1.5), TypeError, "seed"),
    # Accepted, then an OverflowError at init; 2**31 would be the key of seed -2**31 (JAX keeps 32 bits).
    (
      lambda: optax_usam.random_smoothing_sam(RHO, 0.01, seed=2**70),
      ValueError,
      r"seed must be an int in \[",
    ),
    (
      lambda: optax_usam.random_smoothing_sam(RHO, 0.01, seed=2**31),
      ValueError,
      r"seed must be an int in \[-2147483648, 2147483647\]",
    ),
    (lambda: optax_usam.random_smoothing_sam(RHO, 0.01, filter_wise=1), TypeError, "filter_wise"),
  ],
)
def test_bad_arguments_are_refused_with_their_name(make, error, match):
  with pytest.raises(error, match=match):
    make()
