"""Tests for optax_usam.sampling: ER constants, unbiasedness, batch semantics."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_usam import sampling

# L_max = 6, L_avg = 3, sum = 12, n = 4.
SMOOTHNESS = np.array([1.0, 2.0, 3.0, 6.0])
DELTA_INF = 0.5


@pytest.mark.parametrize(
    ("make", "a", "b"),
    [
        (lambda: sampling.uniform(SMOOTHNESS, delta_inf=DELTA_INF), 6.0, 0.0),
        # (n - tau) / (tau (n - 1)) L_max = 2/6 * 6, n (tau - 1) / (tau (n - 1)) = 4/6.
        (lambda: sampling.tau_nice(SMOOTHNESS, 2, delta_inf=DELTA_INF), 2.0, 2.0 / 3.0),
        (lambda: sampling.tau_nice(SMOOTHNESS, 1, delta_inf=DELTA_INF), 6.0, 0.0),
        (lambda: sampling.tau_nice(SMOOTHNESS, 4, delta_inf=DELTA_INF), 0.0, 1.0),
        (lambda: sampling.importance(SMOOTHNESS, delta_inf=DELTA_INF), 3.0, 0.0),
        # max_i n p_i L_i = 4 * (6/12) * 6 = L_max^2 / L_avg.
        (lambda: sampling.importance(SMOOTHNESS, reweight=False, delta_inf=DELTA_INF), 12.0, 0.0),
    ],
)
def test_er_constants_match_hand_computed_values(make, a, b):
  sampler = make()
  assert sampler.A == pytest.approx(a, rel=1e-12)
  assert sampler.B == pytest.approx(b, rel=1e-12)
  assert sampler.C == pytest.approx(2 * a * DELTA_INF, rel=1e-12)


def test_c_is_none_without_delta_inf():
  assert sampling.uniform(SMOOTHNESS).C is None


def _ridge_terms(seed: int, n: int = 6, d: int = 3, reg: float = 0.2):
  """NumPy ridge terms f_i(x) = (a_i.x - b_i)^2/2 + reg/2 |x|^2 with L_i, f_i^inf and f^inf."""
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((n, d)) * np.geomspace(0.3, 3.0, n)[:, None]
  b = rng.standard_normal(n)
  sq = np.sum(a**2, axis=1)
  smoothness = sq + reg
  fi_inf = reg * b**2 / (2 * (sq + reg))  # min over x of one term, in closed form
  x_star = np.linalg.solve(a.T @ a / n + reg * np.eye(d), a.T @ b / n)
  f_inf = 0.5 * np.mean((a @ x_star - b) ** 2) + 0.5 * reg * x_star @ x_star
  return a, b, reg, smoothness, f_inf, f_inf - fi_inf.mean()


def _exact_second_moment(kind: str, grads: np.ndarray, smoothness: np.ndarray, tau: int) -> float:
  """E||grad f_S||^2 by enumerating every batch (independent of the sampler code)."""
  n = grads.shape[0]
  if kind == "uniform":
    return float(np.mean(np.sum(grads**2, axis=1)))
  if kind == "importance":
    p = smoothness / smoothness.sum()
    return float(sum(p[i] * np.sum((grads[i] / (n * p[i])) ** 2) for i in range(n)))
  subsets = list(itertools.combinations(range(n), tau))
  return float(np.mean([np.sum(grads[list(s)].mean(axis=0) ** 2) for s in subsets]))


@pytest.mark.parametrize(
    ("kind", "tau"), [("uniform", 1), ("importance", 1), ("tau_nice", 2), ("tau_nice", 4)]
)
def test_expected_residual_inequality_holds(kind, tau):
  a, b, reg, smoothness, f_inf, delta_inf = _ridge_terms(seed=tau)
  sampler = {
      "uniform": lambda: sampling.uniform(smoothness, delta_inf=delta_inf),
      "importance": lambda: sampling.importance(smoothness, delta_inf=delta_inf),
      "tau_nice": lambda: sampling.tau_nice(smoothness, tau, delta_inf=delta_inf),
  }[kind]()
  rng = np.random.default_rng(10 + tau)
  slack = []
  for scale in (0.1, 1.0, 10.0):
    for _ in range(10):
      x = scale * rng.standard_normal(a.shape[1])
      grads = a * (a @ x - b)[:, None] + reg * x
      f = 0.5 * np.mean((a @ x - b) ** 2) + 0.5 * reg * x @ x
      lhs = _exact_second_moment(kind, grads, smoothness, tau)
      rhs = 2 * sampler.A * (f - f_inf) + sampler.B * np.sum(grads.mean(axis=0) ** 2) + sampler.C
      slack.append(rhs - lhs)
  assert min(slack) >= -1e-9 * max(1.0, max(slack))


def _mean_sampled_gradient(sampler: sampling.Sampler, data, loss, x, draws: int, key) -> np.ndarray:
  def one(k):
    return sampling.batch_grad_fn(loss, data, sampler.sample(k))(x)

  return np.asarray(jnp.mean(jax.vmap(one)(jax.random.split(key, draws)), axis=0))


@pytest.mark.parametrize(
    "make",
    [
        lambda s: sampling.uniform(s),
        lambda s: sampling.tau_nice(s, 3),
        lambda s: sampling.importance(s),
    ],
    ids=["uniform", "tau_nice", "importance"],
)
def test_sampled_gradient_is_unbiased(make):
  with jax.enable_x64(True):
    a, b, reg, smoothness, _, _ = _ridge_terms(seed=3)
    sampler = make(smoothness)
    x = np.linspace(-1.0, 1.0, a.shape[1])

    def loss(params, example):
      row, target = example
      return 0.5 * (row @ params - target) ** 2 + 0.5 * reg * params @ params

    grads = a * (a @ x - b)[:, None] + reg * x
    draws = 40_000
    mc = _mean_sampled_gradient(sampler, (a, b), loss, jnp.asarray(x), draws, jax.random.key(0))
    full = grads.mean(axis=0)
    # Standard error of the estimator, from the exact per-batch spread.
    if sampler.name == "importance":
      per = grads / (a.shape[0] * (smoothness / smoothness.sum()))[:, None]
      spread = np.sqrt(np.sum((smoothness / smoothness.sum())[:, None] * (per - full) ** 2, axis=0))
    else:
      spread = grads.std(axis=0)
    np.testing.assert_array_less(np.abs(mc - full), 5 * spread / np.sqrt(draws) + 1e-12)


def test_unweighted_importance_is_biased_towards_large_l():
  with jax.enable_x64(True):
    a, b, reg, smoothness, _, _ = _ridge_terms(seed=4)
    sampler = sampling.importance(smoothness, reweight=False)
    assert not sampler.unbiased
    x = np.ones(a.shape[1])

    def loss(params, example):
      row, target = example
      return 0.5 * (row @ params - target) ** 2 + 0.5 * reg * params @ params

    grads = a * (a @ x - b)[:, None] + reg * x
    mc = _mean_sampled_gradient(sampler, (a, b), loss, jnp.asarray(x), 40_000, jax.random.key(1))
    p = smoothness / smoothness.sum()
    np.testing.assert_allclose(mc, p @ grads, rtol=0.05, atol=0.05 * np.abs(p @ grads).max())
    assert np.max(np.abs(mc - grads.mean(axis=0))) > 10 * np.max(np.abs(mc - p @ grads))


@pytest.mark.parametrize(
    "make", [lambda: sampling.importance(SMOOTHNESS), lambda: sampling.uniform(SMOOTHNESS)]
)
def test_index_frequencies_match_probabilities(make):
  sampler = make()
  draws = 20_000
  batches = jax.jit(jax.vmap(sampler.sample))(jax.random.split(jax.random.key(2), draws))
  counts = np.bincount(np.asarray(batches.indices).ravel(), minlength=sampler.n)
  expected = draws * sampler.probabilities
  np.testing.assert_array_less(np.abs(counts - expected), 5 * np.sqrt(expected))


def test_tau_nice_draws_distinct_indices_and_every_subset():
  sampler = sampling.tau_nice(SMOOTHNESS, 2)
  batches = jax.vmap(sampler.sample)(jax.random.split(jax.random.key(3), 3000))
  indices = np.sort(np.asarray(batches.indices), axis=1)
  assert np.all(indices[:, 0] != indices[:, 1])
  counts = {}
  for row in map(tuple, indices):
    counts[row] = counts.get(row, 0) + 1
  assert set(counts) == set(itertools.combinations(range(4), 2))
  np.testing.assert_array_less(np.abs(np.array(list(counts.values())) - 500), 5 * np.sqrt(500))


def test_batch_loss_uses_the_same_examples_at_every_point():
  data = (jnp.arange(12.0).reshape(6, 2), jnp.arange(6.0))
  batch = sampling.Batch(jnp.array([4, 1], jnp.int32), jnp.array([1.0, 3.0]))
  loss = sampling.batch_loss_fn(lambda p, ex: jnp.sum(ex[0] * p) + ex[1], data, batch)
  for p in (jnp.zeros(2), jnp.array([1.0, -2.0])):
    expected = (1.0 * (np.dot([8.0, 9.0], p) + 4.0) + 3.0 * (np.dot([2.0, 3.0], p) + 1.0)) / 2
    assert float(loss(p)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: sampling.uniform([]), ValueError, "smoothness"),
        (lambda: sampling.uniform([[1.0, 2.0]]), ValueError, "smoothness"),
        (lambda: sampling.uniform([1.0, -2.0]), ValueError, "positive"),
        (lambda: sampling.uniform(["a"]), TypeError, "smoothness"),
        (lambda: sampling.tau_nice(SMOOTHNESS, 0), ValueError, "tau"),
        (lambda: sampling.tau_nice(SMOOTHNESS, 5), ValueError, "tau"),
        (lambda: sampling.tau_nice(SMOOTHNESS, 2.0), TypeError, "tau"),
        (lambda: sampling.importance(SMOOTHNESS, reweight=1), TypeError, "reweight"),
        (lambda: sampling.uniform(SMOOTHNESS, delta_inf=-1.0), ValueError, "delta_inf"),
        (lambda: sampling.uniform(SMOOTHNESS, delta_inf="1"), TypeError, "delta_inf"),
    ],
)
def test_bad_arguments_are_rejected_at_construction(call, error, match):
  with pytest.raises(error, match=match):
    call()
