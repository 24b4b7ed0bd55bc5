"""Tests of optax_usam.theory.diminishing: diminishing steps and an almost constant radius (Khanh et al.).

Values against the power laws (float64, int32 counts, jit, vmap, traced arguments), the summability rule's
refusals, and SAM driven by them against the float64 NumPy loop of tests/numpy_reference.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam
from optax_usam import theory
from tests import numpy_reference as ref

COUNTS = np.array([0, 1, 2, 9, 99, 10_000])


def _at_counts(schedule) -> np.ndarray:
  """The schedule at COUNTS, called with int32 counts as optax does."""
  return np.array([float(schedule(jnp.asarray(k, jnp.int32))) for k in COUNTS])


@pytest.mark.parametrize(("C", "p"), [(0.05, 0.0), (0.05, 1e-3), (0.2, 0.5), (1.5, 2.0), (0.0, 0.3)])
def test_almost_constant_radius_is_c_over_k_plus_one_to_the_p(C, p):
  with jax.enable_x64(True):
    rho = theory.almost_constant_radius(C, p)
    assert rho(0).dtype == jnp.float64
    values = _at_counts(rho)
  np.testing.assert_allclose(values, C / (COUNTS + 1.0) ** p, rtol=1e-14)


@pytest.mark.parametrize(("init_value", "power"), [(0.1, 1.0), (0.5, 0.5), (2.0, 0.75), (1e-3, 1e-6)])
def test_diminishing_step_size_is_gamma_over_k_plus_one_to_the_power(init_value, power):
  with jax.enable_x64(True):
    values = _at_counts(theory.diminishing_step_size(init_value, power))
  np.testing.assert_allclose(values, init_value / (COUNTS + 1.0) ** power, rtol=1e-14)


@pytest.mark.parametrize(
  ("step_power", "radius_power"), [(1.0, 1e-3), (1.0, 1e-12), (0.5, 0.51), (0.25, 2.0)]
)
def test_almost_constant_schedules_combine_both_power_laws(step_power, radius_power):
  with jax.enable_x64(True):
    sched = theory.almost_constant_schedules(0.3, 0.07, step_power=step_power, radius_power=radius_power)
    gamma, rho = _at_counts(sched.gamma), _at_counts(sched.rho)
  np.testing.assert_allclose(gamma, 0.3 / (COUNTS + 1.0) ** step_power, rtol=1e-14)
  np.testing.assert_allclose(rho, 0.07 / (COUNTS + 1.0) ** radius_power, rtol=1e-14)


def test_default_powers_are_one_over_k_steps_and_a_radius_within_two_percent_of_constant():
  with jax.enable_x64(True):
    sched = theory.almost_constant_schedules(0.1, 0.05)
    assert float(sched.gamma(999)) == pytest.approx(0.1 / 1000, rel=1e-14)
    assert float(sched.rho(999_999)) == pytest.approx(0.05 * 1e6**-1e-3, rel=1e-14)
    assert 0.98 * 0.05 < float(sched.rho(999_999)) < 0.05


def test_schedules_take_traced_values_under_jit_and_vmap():
  with jax.enable_x64(True):

    @jax.jit
    def values(c, p, g, a, k):
      sched = theory.almost_constant_schedules(g, c, step_power=a, radius_power=p)
      radius, step = theory.almost_constant_radius(c, p), theory.diminishing_step_size(g, a)
      return jnp.stack([radius(k), step(k), sched.rho(k), sched.gamma(k)])

    out = np.asarray(values(0.3, 0.25, 0.1, 0.9, jnp.asarray(7, jnp.int32)))
    np.testing.assert_allclose(out, [0.3 / 8**0.25, 0.1 / 8**0.9, 0.3 / 8**0.25, 0.1 / 8**0.9], rtol=1e-14)
    cs = jnp.array([0.0, 0.1, 0.2])
    swept = jax.vmap(lambda c: theory.almost_constant_radius(c, 0.5)(3))(cs)
  np.testing.assert_allclose(np.asarray(swept), np.asarray(cs) / 2.0, rtol=1e-14)


@pytest.mark.parametrize(
  ("call", "error", "match"),
  [
    (lambda: theory.almost_constant_radius(-0.1, 0.5), ValueError, "C must be a non-negative finite"),
    (lambda: theory.almost_constant_radius(float("inf"), 0.5), ValueError, "C must"),
    (lambda: theory.almost_constant_radius(0.1, -1.0), ValueError, "p must be a non-negative finite"),
    (lambda: theory.almost_constant_radius(0.1, float("nan")), ValueError, "p must"),
    (lambda: theory.almost_constant_radius("0.1", 0.5), TypeError, "C must"),
    (lambda: theory.almost_constant_radius(0.1, True), TypeError, "p must"),
    (lambda: theory.almost_constant_radius(jnp.ones(2), 0.5), TypeError, "C must be a scalar"),
    (lambda: theory.diminishing_step_size(0.0), ValueError, "init_value must be a positive finite"),
    (lambda: theory.diminishing_step_size(-0.1), ValueError, "init_value"),
    (lambda: theory.diminishing_step_size(float("inf")), ValueError, "init_value"),
    (lambda: theory.diminishing_step_size(0.1, 0.0), ValueError, r"power must be a float in \(0.0, 1.0]"),
    (lambda: theory.diminishing_step_size(0.1, 1.5), ValueError, r"power must be a float in \(0.0, 1.0]"),
    (lambda: theory.diminishing_step_size(0.1, -0.5), ValueError, "power"),
    (lambda: theory.diminishing_step_size(0.1, "1"), TypeError, "power"),
    (lambda: theory.almost_constant_schedules(0.0, 0.05), ValueError, "gamma must be a positive"),
    (lambda: theory.almost_constant_schedules(0.1, -0.05), ValueError, "rho must be a non-negative"),
    (
      lambda: theory.almost_constant_schedules(0.1, 0.05, step_power=0.0),
      ValueError,
      r"step_power must be a float in \(0.0, 1.0\]",
    ),
    (lambda: theory.almost_constant_schedules(0.1, 0.05, step_power=1.2), ValueError, "step_power"),
    (
      lambda: theory.almost_constant_schedules(0.1, 0.05, radius_power=-0.1),
      ValueError,
      "radius_power must be a non-negative",
    ),
    (lambda: theory.almost_constant_schedules(0.1, 0.05, radius_power=None), TypeError, "radius_power"),
  ],
)
def test_power_law_schedules_reject_bad_values(call, error, match):
  with pytest.raises(error, match=match):
    call()


@pytest.mark.parametrize(
  ("step_power", "radius_power"),
  # A constant radius never qualifies; a + p = 1 exactly is the boundary, refused.
  [(1.0, 0.0), (0.5, 0.5), (0.75, 0.25), (0.6, 0.2), (0.1, 0.0)],
)
def test_pairs_breaking_the_summability_rule_are_refused(step_power, radius_power):
  with pytest.raises(ValueError, match=r"step_power \+ radius_power must be > 1") as info:
    theory.almost_constant_schedules(0.1, 0.05, step_power=step_power, radius_power=radius_power)
  assert f"{step_power + radius_power}" in str(info.value)


def _optax_sam(sched, hess, center, x0, steps):
  """The same run through optax.chain(unified_sam, sgd), in float64, with the rho it logged."""
  with jax.enable_x64(True):
    tx = optax.chain(optax_usam.unified_sam(rho=sched.rho, lambd_schedule=1.0), optax.sgd(sched.gamma))
    hess_j, center_j = jnp.asarray(hess), jnp.asarray(center)
    grad_fn = lambda x: hess_j @ (x - center_j)

    def step(carry, _):
      x, state = carry
      updates, state = tx.update(grad_fn(x), state, x, grad_fn=grad_fn)
      x = optax.apply_updates(x, updates)
      return (x, state), (x, optax_usam.get_diagnostics(state)["rho"])

    x = jnp.asarray(x0, jnp.float64)
    path, rhos = jax.lax.scan(step, (x, tx.init(x)), None, length=steps)[1]
    return np.asarray(path), np.asarray(rhos)


def test_almost_constant_schedules_drive_sam_as_a_numpy_loop_does():
  rng = np.random.default_rng(0)
  q = np.linalg.qr(rng.standard_normal((3, 3)))[0]
  hess = q @ np.diag([0.5, 2.0, 4.0]) @ q.T
  center, x0 = np.array([1.0, -1.0, 0.5]), np.array([2.0, 0.0, -1.0])
  sched = theory.almost_constant_schedules(0.2, 0.1, step_power=0.8, radius_power=0.3)
  steps = 12
  k = np.arange(steps)
  gammas, rhos = 0.2 / (k + 1.0) ** 0.8, 0.1 / (k + 1.0) ** 0.3
  path, logged = _optax_sam(sched, hess, center, x0, steps)
  np.testing.assert_allclose(logged, rhos, rtol=1e-14)
  np.testing.assert_allclose(
    path, ref.sam_on_quadratic(hess, center, x0, gammas, rhos), rtol=1e-12, atol=1e-14
  )


def test_diminishing_steps_take_sam_to_the_minimizer_where_constant_steps_stall():
  # SAM on 2 x^2 with gamma = 0.1, rho = 0.05 ends on the period-two orbit |x| = 0.0125 (the closed form
  # of tests/test_transform.py); with gamma_k = 0.1/(k+1) and rho_k = 0.05/(k+1)^0.001 it keeps closing
  # in, |x_k| = O(1/k).
  hess, center, x0, steps = np.array([[4.0]]), np.zeros(1), np.ones(1), 2000
  constant = theory.StepSchedules(rho=lambda count: 0.05, gamma=lambda count: 0.1)
  stalled = _optax_sam(constant, hess, center, x0, steps)[0][:, 0]
  diminishing = _optax_sam(theory.almost_constant_schedules(0.1, 0.05), hess, center, x0, steps)[0][:, 0]
  k = np.arange(1, steps + 1)
  np.testing.assert_allclose(np.abs(stalled[-10:]), 0.0125, rtol=1e-9)
  reference = ref.sam_on_quadratic(hess, center, x0, 0.1 / k, 0.05 / k**1e-3)[:, 0]
  np.testing.assert_allclose(diminishing, reference, rtol=1e-9, atol=1e-15)
  assert np.max(np.abs(diminishing[-100:]) * k[-100:]) < 0.02  # |x_k| <= 0.02 / k at the end
  assert abs(diminishing[-1]) < 1e-3 * abs(stalled[-1])
