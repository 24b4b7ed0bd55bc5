"""Tests of optax_usam.theory.pl: Theorem 3.2's constant steps and Theorem 3.5's decreasing schedules.

Against hand-computed values and the formulas, driving unified_sam + optax.sgd, and the convergence the
theorems predict on a small ridge regression: an O(1/t) rate with decreasing steps, a plateau with
constant ones, and importance sampling ahead of uniform sampling when the smoothness constants vary.
"""

from __future__ import annotations

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
