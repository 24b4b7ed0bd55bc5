"""Tests for optax_usam.theory, and the convergence behaviour the theorems predict."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam
from optax_usam import sampling, theory


@pytest.mark.parametrize(
  ("mu", "L", "A", "B", "lambd", "rho", "gamma"),
  [
    # B mu + A = 4: rho = min(1, 1/(2*4)) / 16, gamma = min(2, 1/32) / 4.
    (1.0, 4.0, 4.0, 0.0, 0.0, 1 / 128, 1 / 128),
    # (1 - lambda)^2 = 1/4: rho = min(1, 1/2) / 16.
    (1.0, 4.0, 4.0, 0.0, 0.5, 1 / 32, 1 / 128),
    # lambda = 1: rho = 1/(4L).
    (1.0, 4.0, 4.0, 0.0, 1.0, 1 / 16, 1 / 128),
    # Full batch (A = 0, B = 1): rho = min(1, 1/2) / 16, gamma = min(2, 1/8) / 4.
    (1.0, 4.0, 0.0, 1.0, 0.0, 1 / 32, 1 / 32),
    # Little noise: both minima hit their caps, rho = 1/8, gamma = 2/2.
    (0.5, 2.0, 0.01, 0.0, 0.0, 0.125, 1.0),
    # No noise at all: zero denominators count as +inf.
    (1.0, 1.0, 0.0, 0.0, 0.3, 0.25, 2.0),
  ],
)
def test_constant_steps_match_hand_computed_values(mu, L, A, B, lambd, rho, gamma):
  steps = theory.pl_constant_steps(mu, L, A, B, lambd)
  assert steps.rho == pytest.approx(rho, rel=1e-14)
  assert steps.gamma == pytest.approx(gamma, rel=1e-14)


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    ({"mu": 0.0}, ValueError, "mu"),
    ({"mu": 2.0, "L": 1.0}, ValueError, "L must be >= mu"),
    ({"A": -1.0}, ValueError, "A"),
    ({"B": float("nan")}, ValueError, "B"),
    ({"lambd": 1.5}, ValueError, "lambd"),
    ({"lambd": True}, TypeError, "lambd"),
    ({"mu": "1"}, TypeError, "mu"),
    ({"L": [4.0]}, TypeError, "L"),
  ],
)
def test_constant_steps_reject_bad_arguments(kwargs, error, match):
  args = {"mu": 1.0, "L": 4.0, "A": 4.0, "B": 0.0, "lambd": 0.5} | kwargs
  with pytest.raises(error, match=match):
    theory.pl_constant_steps(**args)


def test_decreasing_schedules_match_the_formula():
  rho, gamma, mu = 0.1, 0.05, 2.0
  sched = theory.pl_decreasing_schedules(rho, gamma, mu)
  for k in (0, 1, 4, 10, 100, 10_000):
    assert float(sched.rho(k)) == pytest.approx(min(rho, 1 / (2 * k + 1)), rel=1e-6)
    assert float(sched.gamma(k)) == pytest.approx(min(gamma, (2 * k + 1) / ((k + 1) ** 2 * mu)), rel=1e-6)
  # Capped at first, O(1/k) later.
  assert float(sched.gamma(10)) == pytest.approx(gamma, rel=1e-7)
  assert float(sched.gamma(100)) == pytest.approx(201 / (101**2 * 2), rel=1e-6)


@pytest.mark.parametrize(
  ("args", "error"),
  [((-0.1, 0.05, 1.0), ValueError), ((0.1, 0.0, 1.0), ValueError), ((0.1, 0.05, "x"), TypeError)],
)
def test_decreasing_schedules_reject_bad_arguments(args, error):
  with pytest.raises(error):
    theory.pl_decreasing_schedules(*args)


def test_schedules_drive_unified_sam_and_sgd():
  sched = theory.pl_decreasing_schedules(0.2, 0.1, 1.0)
  tx = optax.chain(optax_usam.unified_sam(rho=sched.rho, lambd_schedule=0.0), optax.sgd(sched.gamma))
  x = jnp.array([1.0, -2.0])
  state = tx.init(x)
  grad_fn = jax.grad(lambda p: 0.5 * p @ p)
  expected = np.array([1.0, -2.0])
  for k in range(6):
    updates, state = tx.update(grad_fn(x), state, x, grad_fn=grad_fn)
    x = optax.apply_updates(x, updates)
    rho_k, gamma_k = min(0.2, 1 / (2 * k + 1)), min(0.1, (2 * k + 1) / (k + 1) ** 2)
    expected = expected - gamma_k * (expected + rho_k * expected)  # USAM on |x|^2/2
    assert float(optax_usam.get_diagnostics(state)["rho"]) == pytest.approx(rho_k, rel=1e-6)
  np.testing.assert_allclose(np.asarray(x), expected, rtol=1e-5)


def test_lambda_and_rho_can_be_vmapped_through_unified_sam():
  def run(lam, rho):
    tx = optax.chain(
      optax_usam.unified_sam(rho=lambda count: rho, lambd_schedule=lambda count: lam), optax.sgd(0.1)
    )
    x = jnp.array([1.0, -0.5])
    state = tx.init(x)
    grad_fn = jax.grad(lambda p: jnp.sum(p**4) / 4)
    for _ in range(3):
      updates, state = tx.update(grad_fn(x), state, x, grad_fn=grad_fn)
      x = optax.apply_updates(x, updates)
    return x

  lams, rhos = jnp.array([0.0, 0.5, 1.0]), jnp.array([0.05, 0.1, 0.2])
  batched = jax.jit(jax.vmap(run))(lams, rhos)
  for i in range(3):
    np.testing.assert_allclose(batched[i], run(float(lams[i]), float(rhos[i])), rtol=1e-6)


# -- behaviour predicted by the theorems, on a small ridge regression --------------------------------


def _ridge(seed: int, n: int, d: int, reg: float, row_scales: np.ndarray | None = None):
  """Inconsistent ridge regression with its exact minimum value (NumPy, float64)."""
  rng = np.random.default_rng(seed)
  a = 0.5 * rng.standard_normal((n, d))
  if row_scales is not None:
    a = a * row_scales[:, None]
  b = a @ rng.standard_normal(d) + 0.5 * rng.standard_normal(n)
  hess = a.T @ a / n + reg * np.eye(d)
  x_star = np.linalg.solve(hess, a.T @ b / n)
  f_star = 0.5 * np.mean((a @ x_star - b) ** 2) + 0.5 * reg * x_star @ x_star
  return a, b, reg, np.sum(a**2, axis=1) + reg, float(np.linalg.eigvalsh(hess).min()), f_star


def _relative_suboptimality(problem, sampler, lambd, decreasing, iterations, trials, seed=0):
  """Mean over trials of (f(x_t) - f*)/(f(x_0) - f*) for t = 1..iterations, with Theorem 3.2/3.5 steps."""
  a, b, reg, smoothness, mu, f_star = problem
  steps = theory.pl_constant_steps(mu, float(smoothness.max()), sampler.A, sampler.B, lambd)
  if decreasing:
    rho, gamma = theory.pl_decreasing_schedules(steps.rho, steps.gamma, mu)
  else:
    rho, gamma = steps
  tx = optax.chain(optax_usam.unified_sam(rho, lambd), optax.sgd(gamma))
  data = (jnp.asarray(a), jnp.asarray(b))

  def loss(x, example):
    row, target = example
    return 0.5 * (row @ x - target) ** 2 + 0.5 * reg * x @ x

  def full(x):
    return 0.5 * jnp.mean((data[0] @ x - data[1]) ** 2) + 0.5 * reg * x @ x

  x0 = jnp.full(a.shape[1], 3.0)

  def one(key):
    def step(carry, step_key):
      x, state = carry
      grad_fn = sampling.batch_grad_fn(loss, data, sampler.sample(step_key))
      updates, state = tx.update(grad_fn(x), state, x, grad_fn=grad_fn)
      x = optax.apply_updates(x, updates)
      return (x, state), full(x)

    return jax.lax.scan(step, (x0, tx.init(x0)), jax.random.split(key, iterations))[1]

  losses = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), trials)))
  return ((losses - f_star) / (float(full(x0)) - f_star)).mean(axis=0)


def _window(curve: np.ndarray, t: int) -> float:
  """Mean over iterations (t/2, t]: averages out the per-step noise; a 1/t decay stays 1/t."""
  return float(curve[t // 2 : t].mean())


def test_decreasing_steps_converge_at_rate_one_over_t_and_constant_steps_plateau():
  with jax.enable_x64(True):
    problem = _ridge(seed=0, n=10, d=5, reg=1.0)
    sampler = sampling.uniform(problem[3])
    t = 20_000
    decreasing = _relative_suboptimality(problem, sampler, 1.0, True, t, trials=12)
    constant = _relative_suboptimality(problem, sampler, 1.0, False, t, trials=12)
  slope = np.log(_window(decreasing, t) / _window(decreasing, t // 10)) / np.log(10)
  assert slope <= -0.8
  # Constant steps stop improving: the last decade is flat, at a level well above the decreasing run.
  assert _window(constant, t) > 0.3 * _window(constant, t // 10)
  assert _window(constant, t) > 10 * _window(decreasing, t)


def test_importance_sampling_beats_uniform_when_smoothness_varies():
  with jax.enable_x64(True):
    problem = _ridge(seed=1, n=20, d=4, reg=0.5, row_scales=np.geomspace(0.2, 6.0, 20))
    smoothness = problem[3]
    assert smoothness.max() / smoothness.mean() > 5
    t = 3000
    uniform = _relative_suboptimality(problem, sampling.uniform(smoothness), 0.5, False, t, trials=8)
    importance = _relative_suboptimality(problem, sampling.importance(smoothness), 0.5, False, t, trials=8)
  assert _window(importance, t) < 0.5 * _window(uniform, t)


# -- closed forms for deterministic Unified SAM on f(x) = h x^2 / 2 ------------------------------------


def _quadratic_run(h: float, gamma: float, rho: float, lambd: float, steps: int, x0: float = 1.0):
  """The iterates x_1..x_steps of Unified SAM + SGD on h x^2 / 2, in float64."""
  with jax.enable_x64(True):
    tx = optax.chain(optax_usam.unified_sam(rho, lambd), optax.sgd(gamma))
    grad_fn = lambda x: h * x

    def step(carry, _):
      x, state = carry
      updates, state = tx.update(grad_fn(x), state, x, grad_fn=grad_fn)
      x = optax.apply_updates(x, updates)
      return (x, state), x

    x = jnp.asarray(x0)
    return np.asarray(jax.lax.scan(step, (x, tx.init(x)), None, length=steps)[1])


@pytest.mark.parametrize("threshold", [1.9, 1.99, 2.01, 2.1])
@pytest.mark.parametrize(("h", "rho"), [(4.0, 0.05), (1.0, 0.5)])
def test_usam_on_a_quadratic_converges_iff_gamma_h_one_plus_rho_h_below_two(threshold, h, rho):
  gamma = threshold / (h * (1 + rho * h))
  path = _quadratic_run(h, gamma, rho, 0.0, 3000)
  if threshold < 2:
    assert abs(path[-1]) < 1e-10
  else:
    assert abs(path[-1]) > 1e10


@pytest.mark.parametrize(("h", "gamma", "rho"), [(4.0, 0.1, 0.05), (2.0, 0.3, 0.5), (10.0, 0.05, 0.05)])
def test_usam_on_a_quadratic_contracts_by_one_minus_gamma_h_one_plus_rho_h(h, gamma, rho):
  path = _quadratic_run(h, gamma, rho, 0.0, 30, x0=1.5)
  factor = 1 - gamma * h - gamma * rho * h**2
  np.testing.assert_allclose(path, 1.5 * factor ** np.arange(1, 31), rtol=1e-12)


@pytest.mark.parametrize(("lambd", "xbar"), [(1.0, 0.0125), (0.5, 0.00641)])
def test_normalized_sam_on_a_quadratic_ends_on_the_period_two_orbit(lambd, xbar):
  h, gamma, rho = 4.0, 0.1, 0.05
  closed_form = gamma * h * rho * lambd / (2 - gamma * h - gamma * rho * (1 - lambd) * h**2)
  assert closed_form == pytest.approx(xbar, rel=1e-3)
  path = _quadratic_run(h, gamma, rho, lambd, 200)
  np.testing.assert_allclose(np.abs(path[-10:]), closed_form, rtol=1e-9)
  assert np.all(np.sign(path[-10:-1]) == -np.sign(path[-9:]))


# -- diminishing steps and an almost constant radius (Khanh et al.) -----------------------------------

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


def _numpy_sam(hess, center, x0, gammas, rhos, eps=1e-12):
  """SAM (lambda = 1) + plain SGD on (x - c)^T H (x - c) / 2, in float64 NumPy."""
  x, path = np.array(x0, np.float64), []
  for gamma, rho in zip(gammas, rhos, strict=True):
    g = hess @ (x - center)
    ascent = x + rho * g / (np.linalg.norm(g) + eps)
    x = x - gamma * (hess @ (ascent - center))
    path.append(x)
  return np.array(path)


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
  np.testing.assert_allclose(path, _numpy_sam(hess, center, x0, gammas, rhos), rtol=1e-12, atol=1e-14)


def test_diminishing_steps_take_sam_to_the_minimizer_where_constant_steps_stall():
  # SAM on 2 x^2 with gamma = 0.1, rho = 0.05 ends on the period-two orbit |x| = 0.0125 (see the closed form
  # above); with gamma_k = 0.1/(k+1) and rho_k = 0.05/(k+1)^0.001 it keeps closing in, |x_k| = O(1/k).
  hess, center, x0, steps = np.array([[4.0]]), np.zeros(1), np.ones(1), 2000
  constant = theory.StepSchedules(rho=lambda count: 0.05, gamma=lambda count: 0.1)
  stalled = _optax_sam(constant, hess, center, x0, steps)[0][:, 0]
  diminishing = _optax_sam(theory.almost_constant_schedules(0.1, 0.05), hess, center, x0, steps)[0][:, 0]
  k = np.arange(1, steps + 1)
  np.testing.assert_allclose(np.abs(stalled[-10:]), 0.0125, rtol=1e-9)
  reference = _numpy_sam(hess, center, x0, 0.1 / k, 0.05 / k**1e-3)[:, 0]
  np.testing.assert_allclose(diminishing, reference, rtol=1e-9, atol=1e-15)
  assert np.max(np.abs(diminishing[-100:]) * k[-100:]) < 0.02  # |x_k| <= 0.02 / k at the end
  assert abs(diminishing[-1]) < 1e-3 * abs(stalled[-1])


# -- Khanh et al.'s epoch-wise learning rates, as the authors' code runs them --------------------------

RULES = ("constant", "diminish1", "diminish2", "diminish3")


class _AuthorsLoop:
  """The authors' training loop in miniature: SGD starts at ``base``; ``step()`` runs after each epoch.

  Written from the description of their scheduler classes, not from the library's formulas.
  """

  def __init__(self, rule: str, base: float):
    self.rule, self.base, self.lr, self.calls, self.s = rule, base, base, 0, 2

  def step(self) -> None:
    j = self.calls
    if self.rule == "diminish1":  # LambdaLR(1/(epoch+1)): the (j+1)-th step() applies factor(j+1)
      self.lr = self.base / (j + 2)
    elif self.rule == "diminish2":
      self.lr = self.base / (j + 1) ** 0.5001
    elif self.rule == "diminish3" and j % 5 == 0:
      self.s += 1
      self.lr = self.base / (self.s * math.log(self.s))
    self.calls += 1


def _authors_rates(rule: str, base: float, epochs: int, steps_per_epoch: int) -> np.ndarray:
  loop, rates = _AuthorsLoop(rule, base), []
  for _ in range(epochs):
    rates += [loop.lr] * steps_per_epoch
    loop.step()
  return np.array(rates)


@pytest.mark.parametrize("steps_per_epoch", [1, 3, 7])
@pytest.mark.parametrize("rule", RULES)
def test_diminish_schedule_follows_the_authors_loop_step_by_step(rule, steps_per_epoch):
  epochs, base = 30, 0.1
  expected = _authors_rates(rule, base, epochs, steps_per_epoch)
  with jax.enable_x64(True):
    schedule = theory.diminish_schedule(rule, base, steps_per_epoch)
    counts = jnp.arange(epochs * steps_per_epoch, dtype=jnp.int32)
    values = np.asarray(schedule(counts))
    assert values.dtype == np.float64
  np.testing.assert_allclose(values, expected, rtol=1e-14)
  # Constant within each epoch, and in line with the closed forms of the docstring.
  per_epoch = values.reshape(epochs, steps_per_epoch)
  assert np.all(per_epoch == per_epoch[:, :1])
  e = np.arange(1, epochs)
  s = 3 + (e - 1) // 5
  later = {
    "constant": np.full(e.shape, base),
    "diminish1": base / (e + 1),
    "diminish2": base / e**0.5001,
    "diminish3": base / (s * np.log(s)),
  }[rule]
  assert per_epoch[0, 0] == base
  np.testing.assert_allclose(per_epoch[1:, 0], later, rtol=1e-14)


def test_diminish_schedule_first_epochs_are_the_codes():
  base = 0.5
  rates = {rule: _authors_rates(rule, base, 12, 1) for rule in RULES}
  assert rates["diminish2"][0] == rates["diminish2"][1] == base  # epoch 1 repeats epoch 0
  assert rates["diminish3"][1] == pytest.approx(base / (3 * math.log(3)), rel=1e-15)
  assert len(set(rates["diminish3"][1:6])) == 1 and rates["diminish3"][6] < rates["diminish3"][5]
  for rule in RULES:
    schedule = theory.diminish_schedule(rule, base, 1)
    np.testing.assert_allclose([float(schedule(k)) for k in range(12)], rates[rule], rtol=1e-6)


def test_diminish_schedule_under_jit_vmap_and_large_counts():
  with jax.enable_x64(True):

    @jax.jit
    def rates(base, count):
      return jnp.stack([theory.diminish_schedule(rule, base, 4)(count) for rule in RULES])

    out = np.asarray(rates(0.2, jnp.asarray(29, jnp.int32)))  # epoch 7: s = 3 + 6 // 5 = 4
    np.testing.assert_allclose(out, [0.2, 0.2 / 8, 0.2 / 7**0.5001, 0.2 / (4 * math.log(4))], rtol=1e-14)
    bases = jnp.array([0.1, 0.3])
    swept = jax.vmap(lambda b: theory.diminish_schedule("diminish1", b, 10)(25))(bases)
    np.testing.assert_allclose(np.asarray(swept), np.asarray(bases) / 3, rtol=1e-14)
    big = theory.diminish_schedule("diminish1", 1.0, 1000)(jnp.asarray(2_000_000_999, jnp.int32))
    assert float(big) == pytest.approx(1 / 2_000_001, rel=1e-14)
  assert theory.diminish_schedule("diminish3", 0.1, 2)(5).dtype == jnp.float32


def test_diminish_schedule_drives_sgd_epoch_by_epoch():
  # Plain SGD on x^2 / 2: x_{k+1} = (1 - lr_k) x_k, with lr_k from the authors' loop.
  steps_per_epoch, epochs = 3, 8
  rates = _authors_rates("diminish3", 0.5, epochs, steps_per_epoch)
  with jax.enable_x64(True):
    tx = optax.sgd(theory.diminish_schedule("diminish3", 0.5, steps_per_epoch))
    x = jnp.asarray(2.0)
    state, path = tx.init(x), []
    for _ in range(epochs * steps_per_epoch):
      updates, state = tx.update(x, state)
      x = optax.apply_updates(x, updates)
      path.append(float(x))
  np.testing.assert_allclose(path, 2.0 * np.cumprod(1 - rates), rtol=1e-13)


@pytest.mark.parametrize(
  ("args", "error", "match"),
  [
    (("diminish4", 0.1, 10), ValueError, r"rule must be one of \('constant', 'diminish1'"),
    (("Diminish1", 0.1, 10), ValueError, "rule must be one of"),
    ((1, 0.1, 10), TypeError, "rule must be one of .* got 1 of type int"),
    (("diminish1", 0.0, 10), ValueError, "init_value must be a positive finite"),
    (("diminish1", -0.1, 10), ValueError, "init_value"),
    (("diminish1", float("inf"), 10), ValueError, "init_value"),
    (("diminish1", "0.1", 10), TypeError, "init_value"),
    (("diminish1", 0.1, 0), ValueError, r"steps_per_epoch must be an int in \[1, 2\*\*31 - 1\]"),
    (("diminish1", 0.1, 2**31), ValueError, "steps_per_epoch must be an int in"),
    (("diminish1", 0.1, 2.0), TypeError, "steps_per_epoch must be an int in"),
    (("diminish1", 0.1, True), TypeError, "steps_per_epoch"),
  ],
)
def test_diminish_schedule_rejects_bad_arguments(args, error, match):
  with pytest.raises(error, match=match):
    theory.diminish_schedule(*args)
