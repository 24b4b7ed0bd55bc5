"""Tests of optax_usam.schedules: lambda_t for every form lambd_schedule takes, against the float64 reference.

``numpy_reference.lambda_at`` and ``numpy_reference.inverse_t`` are the one place the tests compute lambda_t.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam
from optax_usam import schedules
from tests import numpy_reference as ref

COUNTS = [0, 1, 2, 9, 99, 10_000, 2**31 - 1]
COEFFICIENTS = [(0.0, 1.0), (1.0, -1.0), (0.5, 0.5), (0.25, 0.0), (0.2, -0.2)]


def _at_counts(schedule) -> np.ndarray:
  """The schedule at COUNTS, called with int32 counts as optax does."""
  return np.array([float(schedule(jnp.asarray(k, jnp.int32))) for k in COUNTS])


def test_the_strings_are_the_papers():
  assert schedules.LAMBDA_STRINGS == ("1/t", "1-1/t") == tuple(ref.NAMED_LAMBDAS)


@pytest.mark.parametrize("lambd", [0.0, 0.3, 1.0, "1/t", "1-1/t"])
def test_lambda_schedule_matches_the_reference(lambd):
  with jax.enable_x64(True):
    values = _at_counts(schedules.lambda_schedule(lambd))
  np.testing.assert_allclose(values, [ref.lambda_at(lambd, k) for k in COUNTS], rtol=1e-15)


def test_a_callable_gives_its_own_values():
  schedule = lambda count: 0.25 + 0.5 * (count % 2)
  np.testing.assert_array_equal(_at_counts(schedules.lambda_schedule(schedule)), _at_counts(schedule))


@pytest.mark.parametrize(("constant", "per_t"), COEFFICIENTS)
def test_inverse_t_matches_the_reference(constant, per_t):
  with jax.enable_x64(True):
    values = _at_counts(schedules.inverse_t(constant, per_t))
  np.testing.assert_allclose(values, [ref.inverse_t(constant, per_t, k) for k in COUNTS], rtol=1e-15)


@pytest.mark.parametrize("name", sorted(ref.NAMED_LAMBDAS))
def test_the_strings_are_inverse_t_schedules(name):
  with jax.enable_x64(True):
    named = _at_counts(schedules.lambda_schedule(name))
    spelled = _at_counts(schedules.inverse_t(*ref.NAMED_LAMBDAS[name]))
  np.testing.assert_array_equal(named, spelled)


def test_traced_coefficients_serve_every_schedule_with_one_compilation():
  """inject_hyperparams over a factory taking the coefficients: changing them mid-run does not retrace."""
  traces = []
  factory = lambda rho, constant, per_t: optax_usam.unified_sam(rho, schedules.inverse_t(constant, per_t))
  tx = optax.inject_hyperparams(factory)(rho=0.1, constant=1.0, per_t=-1.0)
  params = {"w": jnp.array([3.0, 4.0])}
  grad_fn = lambda p: {"w": 2 * p["w"]}

  @jax.jit
  def update(state):
    traces.append(1)
    return tx.update(grad_fn(params), state, params, grad_fn=grad_fn)[1]

  state = tx.init(params)
  for count, (constant, per_t) in enumerate([(1.0, -1.0), (1.0, -1.0), (0.0, 1.0), (0.5, 0.5)]):
    state.hyperparams.update(constant=jnp.asarray(constant), per_t=jnp.asarray(per_t))
    state = update(state)
    lambd = optax_usam.get_diagnostics(state)["lambd"]
    np.testing.assert_allclose(lambd, ref.inverse_t(constant, per_t, count), rtol=1e-6)
  assert len(traces) == 1
  swept = jax.vmap(lambda c: schedules.inverse_t(c, 0.5)(jnp.asarray(3, jnp.int32)))(jnp.array([0.0, 0.5]))
  np.testing.assert_allclose(swept, [0.125, 0.625], rtol=1e-6)


@pytest.mark.parametrize(
  ("call", "error", "match"),
  [
    (lambda: schedules.lambda_schedule("1/t^2"), ValueError, r"one of \('1/t', '1-1/t'\).*'1/t\^2'"),
    (lambda: schedules.lambda_schedule(1.5), ValueError, "lambd_schedule"),
    (lambda: schedules.lambda_schedule(float("nan")), ValueError, "lambd_schedule"),
    (lambda: schedules.lambda_schedule(None), TypeError, "lambd_schedule"),
    (lambda: schedules.lambda_schedule(lambda c: -0.5 + 0 * c), ValueError, r"lambd_schedule\(0\) = -0.5"),
    (lambda: schedules.lambda_schedule(lambda c: jnp.ones(2)), ValueError, "must return a scalar"),
    (lambda: schedules.inverse_t(1.5, -1.0), ValueError, r"constant must be a float in \[0.0, 1.0\]"),
    (lambda: schedules.inverse_t(0.5, 1.0), ValueError, r"constant \+ per_t is lambda at t = 1"),
    (lambda: schedules.inverse_t(0.5, -0.75), ValueError, "0.5 \\+ -0.75 = -0.25"),
    (lambda: schedules.inverse_t(0.0, "1"), TypeError, "per_t"),
  ],
)
def test_bad_schedules_are_refused_with_their_name(call, error, match):
  with pytest.raises(error, match=match):
    call()
