"""Tests of optax_usam.directions: what only VaSSO, F-SAM or Momentum-SAM does.

The three run through the family's shared machinery with GSAM and RSAM, and are checked against their
float64 NumPy references there (tests/test_ascent.py).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import optax_usam
from tests import mlp_problem
from tests import numpy_reference as ref

RHO = 0.2


def test_momentum_sam_first_step_is_plain_gradient_descent_and_reads_no_fresh_gradient():
  with jax.enable_x64(True):
    _, history = mlp_problem.run_chain(optax_usam.momentum_sam(RHO), 2)
  assert len(history[0]["points"]) == len(history[1]["points"]) == 1  # one gradient per step
  for k, v in history[0]["params"].items():
    np.testing.assert_array_equal(history[0]["points"][0][k], v)  # e_1 = 0


def test_momentum_sam_is_the_papers_algorithm():
  """Without weight decay and with the optimizer's momentum, MSAM is Becker et al.'s Fig. 1 literally."""
  steps, rho, lr, mu = 6, 0.3, 0.1, 0.9
  p0, x, y = mlp_problem.problem(2)
  want = ref.momentum_sam_paper(p0, lambda p: ref.mlp_grad(p, x, y), steps, rho, lr, mu)
  with jax.enable_x64(True):
    got, _ = mlp_problem.run_chain(
      optax_usam.momentum_sam(rho, momentum=mu), steps, 2, fresh=False, lr=lr, momentum=mu, weight_decay=0.0
    )
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.mark.parametrize(
  "make,error,match",
  [
    (lambda: optax_usam.vasso(RHO, theta=1.5), ValueError, "theta"),
    (lambda: optax_usam.vasso(RHO, theta=-0.1), ValueError, "theta"),
    (lambda: optax_usam.vasso(RHO, theta="0.5"), TypeError, "theta"),
    (lambda: optax_usam.vasso(RHO, theta=True), TypeError, "theta"),
    (lambda: optax_usam.vasso(-1.0), ValueError, "rho"),
    (lambda: optax_usam.friendly_sam(RHO, sigma=-1.0), ValueError, "sigma"),
    (lambda: optax_usam.friendly_sam(RHO, sigma=float("nan")), ValueError, "sigma"),
    (lambda: optax_usam.friendly_sam(RHO, momentum=1.0), ValueError, "momentum"),
    (lambda: optax_usam.momentum_sam(RHO, momentum=-0.1), ValueError, "momentum"),
    (lambda: optax_usam.momentum_sam(RHO, momentum=None), TypeError, "momentum"),
    (lambda: optax_usam.momentum_sam(RHO, lambd_schedule=2.0), ValueError, "lambd_schedule"),
  ],
)
def test_bad_arguments_are_refused_with_their_name(make, error, match):
  with pytest.raises(error, match=match):
    make()
