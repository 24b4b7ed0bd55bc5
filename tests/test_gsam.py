"""Tests of optax_usam.gsam: the surrogate gap step on the SAM gradient.

GSAM's whole trajectories and its alpha = 0 case run with the rest of the family (tests/test_ascent.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_usam
from tests import mlp_problem
from tests import numpy_reference as ref

RHO = 0.2


def test_gsam_output_is_the_surrogate_gap_step():
  p0, x, y = mlp_problem.problem(1)
  alpha = 0.3
  grad = jax.grad(mlp_problem.jax_loss)
  grad_fn = lambda q: grad(q, x, y)
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.asarray, p0)
    g = grad(params, x, y)
    tx, sam = optax_usam.gsam(RHO, alpha), optax_usam.sam(RHO)
    out, _ = tx.update(g, tx.init(params), params, grad_fn=grad_fn)
    sam_out, _ = sam.update(g, sam.init(params), params, grad_fn=grad_fn)
  as_numpy = lambda tree: {k: np.asarray(v) for k, v in tree.items()}
  want = ref.gsam_output(as_numpy(g), as_numpy(sam_out), alpha)
  for k in want:
    np.testing.assert_allclose(out[k], want[k], rtol=1e-13, atol=1e-16, err_msg=k)


@pytest.mark.parametrize(
  "make,error,match",
  [
    (lambda: optax_usam.gsam(RHO, alpha=-0.1), ValueError, "alpha"),
    (lambda: optax_usam.gsam(RHO, alpha="0.1"), TypeError, "alpha"),
  ],
)
def test_bad_arguments_are_refused_with_their_name(make, error, match):
  with pytest.raises(error, match=match):
    make()
