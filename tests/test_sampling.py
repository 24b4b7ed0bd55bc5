"""Tests of optax_usam.sampling: ER constants, unbiasedness, the samplers' draws.

The batches they return and the batch loss are tested in tests/test_batches.py.
"""

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
    # With replacement, b = 3: L_max / b = 6/3 and L_avg / b = 3/3, B = 1 - 1/3.
    (lambda: sampling.with_replacement(SMOOTHNESS, 3, delta_inf=DELTA_INF), 2.0, 2.0 / 3.0),
    (lambda: sampling.with_replacement(SMOOTHNESS, 3, importance=True, delta_inf=DELTA_INF), 1.0, 2 / 3),
    # b = 8 > n = 4 is allowed: L_max / 8, 1 - 1/8.
    (lambda: sampling.with_replacement(SMOOTHNESS, 8, delta_inf=DELTA_INF), 0.75, 0.875),
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
    (lambda: sampling.with_replacement(SMOOTHNESS, 0), ValueError, "batch_size must be an int >= 1"),
    (lambda: sampling.with_replacement(SMOOTHNESS, -3), ValueError, "batch_size"),
    (lambda: sampling.with_replacement(SMOOTHNESS, 2.0), TypeError, "batch_size"),
    (lambda: sampling.with_replacement(SMOOTHNESS, True), TypeError, "batch_size"),
    (lambda: sampling.with_replacement(SMOOTHNESS, 2, importance=1), TypeError, "importance"),
    (lambda: sampling.with_replacement(SMOOTHNESS, 2, delta_inf=-0.1), ValueError, "delta_inf"),
    (lambda: sampling.with_replacement([0.0, 1.0], 2), ValueError, "positive"),
    (lambda: sampling.with_replacement([[1.0]], 2), ValueError, "smoothness"),
  ],
)
def test_bad_arguments_are_rejected_at_construction(call, error, match):
  with pytest.raises(error, match=match):
    call()


# -- sampling with replacement -----------------------------------------------------------------------


def _least_squares(seed: int, n: int, d: int, equal_norms: bool = False):
  """f_i(x) = (a_i.x - b_i)^2 / 2 (NumPy): L_i = |a_i|^2, f_i^inf = 0, and f^inf of the mean (n > d)."""
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((n, d)) * np.geomspace(0.3, 3.0, n)[:, None]
  if equal_norms:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = rng.standard_normal(n)
  x_star = np.linalg.lstsq(a, b, rcond=None)[0]
  f_inf = 0.5 * np.mean((a @ x_star - b) ** 2)
  return a, b, np.sum(a**2, axis=1), f_inf


def _enumerated_second_moment(grads: np.ndarray, probs: np.ndarray, batch_size: int) -> float:
  """E||(1/b) sum_j grad f_{i_j} / (n p_{i_j})||^2 over every ordered tuple of b i.i.d. draws."""
  n = grads.shape[0]
  total = 0.0
  for draw in itertools.product(range(n), repeat=batch_size):
    draw = list(draw)
    batch_grad = np.mean(grads[draw] / (n * probs[draw])[:, None], axis=0)
    total += np.prod(probs[draw]) * np.sum(batch_grad**2)
  return total


def _er_gap(sampler: sampling.Sampler, a, b, f_inf, x) -> tuple[float, float]:
  """(right side - left side of the ER inequality, left side) at x, the left side by enumeration."""
  grads = a * (a @ x - b)[:, None]
  lhs = _enumerated_second_moment(grads, sampler.probabilities, sampler.batch_size)
  f = 0.5 * np.mean((a @ x - b) ** 2)
  rhs = 2 * sampler.A * (f - f_inf) + sampler.B * np.sum(grads.mean(axis=0) ** 2) + sampler.C
  return rhs - lhs, lhs


@pytest.mark.parametrize("batch_size", [1, 2, 3, 6])
@pytest.mark.parametrize("importance", [False, True], ids=["uniform", "importance"])
def test_with_replacement_satisfies_the_er_inequality_exactly_where_expected(importance, batch_size):
  # n = 5 > d = 3: an inconsistent least-squares problem, so f^inf > 0 and Delta^inf = f^inf - 0 > 0.
  a, b, smoothness, f_inf = _least_squares(seed=batch_size, n=5, d=3)
  assert smoothness.max() > 2 * smoothness.mean() and f_inf > 0.01
  sampler = sampling.with_replacement(smoothness, batch_size, importance=importance, delta_inf=f_inf)
  rng = np.random.default_rng(100 + batch_size)
  for scale in (0.1, 1.0, 10.0):
    x = scale * rng.standard_normal(a.shape[1])
    gap, lhs = _er_gap(sampler, a, b, f_inf, x)
    if importance:
      # ||grad f_i||^2 = 2 L_i f_i and L_i / (n p_i) = L_avg for every i: the bound is an equality.
      assert gap == pytest.approx(0.0, abs=1e-10 * lhs)
    else:
      # L_i / (n p_i) = L_i < L_max for some i: strictly loose.
      assert gap > 1e-3 * lhs


def test_uniform_with_replacement_is_tight_when_all_l_i_are_equal():
  a, b, smoothness, f_inf = _least_squares(seed=7, n=4, d=2, equal_norms=True)
  np.testing.assert_allclose(smoothness, 1.0, rtol=1e-12)
  sampler = sampling.with_replacement(smoothness, 3, delta_inf=f_inf)
  for x in (np.array([0.3, -2.0]), np.array([5.0, 1.0])):
    gap, lhs = _er_gap(sampler, a, b, f_inf, x)
    assert gap == pytest.approx(0.0, abs=1e-10 * lhs)


@pytest.mark.parametrize("batch_size", [2, 5])
@pytest.mark.parametrize("importance", [False, True], ids=["uniform", "importance"])
def test_with_replacement_satisfies_er_on_ridge_terms(importance, batch_size):
  # Ridge terms: f_i^inf > 0 and ||grad f_i||^2 < 2 L_i (f_i - f_i^inf), so the bound holds with slack.
  a, b, reg, smoothness, f_inf, delta_inf = _ridge_terms(seed=batch_size, n=4)
  sampler = sampling.with_replacement(smoothness, batch_size, importance=importance, delta_inf=delta_inf)
  rng = np.random.default_rng(batch_size)
  for _ in range(5):
    x = rng.standard_normal(a.shape[1])
    grads = a * (a @ x - b)[:, None] + reg * x
    lhs = _enumerated_second_moment(grads, sampler.probabilities, batch_size)
    f = 0.5 * np.mean((a @ x - b) ** 2) + 0.5 * reg * x @ x
    rhs = 2 * sampler.A * (f - f_inf) + sampler.B * np.sum(grads.mean(axis=0) ** 2) + sampler.C
    assert lhs < rhs


@pytest.mark.parametrize("importance", [False, True], ids=["uniform", "importance"])
def test_with_replacement_draws_match_probabilities_and_weights(importance):
  sampler = sampling.with_replacement(SMOOTHNESS, 5, importance=importance)
  n = SMOOTHNESS.size
  p = SMOOTHNESS / SMOOTHNESS.sum() if importance else np.full(n, 1 / n)
  np.testing.assert_allclose(sampler.probabilities, p, rtol=1e-15)
  assert sampler.unbiased and sampler.n == n and sampler.batch_size == 5
  keys = 4000
  with jax.enable_x64(True):
    batches = jax.jit(jax.vmap(sampler.sample))(jax.random.split(jax.random.key(4), keys))
  indices, weights = np.asarray(batches.indices), np.asarray(batches.weights)
  assert indices.shape == weights.shape == (keys, 5) and indices.dtype == np.int32
  assert weights.dtype == np.float64
  np.testing.assert_allclose(weights, 1 / (n * p[indices]), rtol=1e-15)
  # Five draws from four indices: every batch repeats one.
  assert all(len(set(row)) < 5 for row in indices)
  # Pearson's chi-square over all 20,000 draws, 3 degrees of freedom: P(stat > 25) is about 1.6e-5.
  counts = np.bincount(indices.ravel(), minlength=n)
  expected = indices.size * p
  assert np.sum((counts - expected) ** 2 / expected) < 25
  # Within a batch the draws are independent: pairs of positions spread as p_i p_j (15 degrees of freedom,
  # P(stat > 45) is about 7e-5).
  pairs = np.bincount(n * indices[:, 0] + indices[:, 1], minlength=n * n)
  expected_pairs = keys * np.outer(p, p).ravel()
  assert np.sum((pairs - expected_pairs) ** 2 / expected_pairs) < 45


@pytest.mark.parametrize("importance", [False, True], ids=["uniform", "importance"])
def test_with_replacement_gradient_is_unbiased(importance):
  with jax.enable_x64(True):
    a, b, reg, smoothness, _, _ = _ridge_terms(seed=5)
    batch_size = 4
    sampler = sampling.with_replacement(smoothness, batch_size, importance=importance)
    x = np.linspace(-1.0, 1.0, a.shape[1])

    def loss(params, example):
      row, target = example
      return 0.5 * (row @ params - target) ** 2 + 0.5 * reg * params @ params

    grads = a * (a @ x - b)[:, None] + reg * x
    draws = 20_000
    mc = _mean_sampled_gradient(sampler, (a, b), loss, jnp.asarray(x), draws, jax.random.key(6))
  full = grads.mean(axis=0)
  n = a.shape[0]
  p = sampler.probabilities
  per_draw = grads / (n * p)[:, None]
  spread = np.sqrt(np.sum(p[:, None] * (per_draw - full) ** 2, axis=0))  # std of one weighted draw
  np.testing.assert_array_less(np.abs(mc - full), 5 * spread / np.sqrt(draws * batch_size))


@pytest.mark.parametrize("importance", [False, True], ids=["uniform", "importance"])
def test_with_replacement_of_one_is_the_single_sample_sampler(importance):
  single = (sampling.importance if importance else sampling.uniform)(SMOOTHNESS, delta_inf=DELTA_INF)
  one = sampling.with_replacement(SMOOTHNESS, 1, importance=importance, delta_inf=DELTA_INF)
  assert (one.A, one.B, one.C, one.n, one.batch_size) == (single.A, single.B, single.C, single.n, 1)
  np.testing.assert_array_equal(one.probabilities, single.probabilities)
  # The same key draws the same index and weight.
  for seed in range(5):
    ours, theirs = one.sample(jax.random.key(seed)), single.sample(jax.random.key(seed))
    np.testing.assert_array_equal(ours.indices, theirs.indices)
    np.testing.assert_array_equal(ours.weights, theirs.weights)
