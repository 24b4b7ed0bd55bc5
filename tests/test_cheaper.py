"""Tests of the cheaper variants: reuse_sam, randomized_sam, sub_batch."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam
from tests import mlp_problem
from tests import numpy_reference as ref


def _run(tx, p0, x, y, steps):
  """Runs tx -> sgd(0.1) eagerly; returns params and how many times grad_fn actually ran."""
  calls = []
  grad = jax.grad(mlp_problem.jax_loss)

  def grad_fn(q):
    jax.debug.callback(lambda: calls.append(1))
    return grad(q, x, y)

  chain = optax.chain(tx, optax.sgd(0.1))
  params = jax.tree.map(jnp.asarray, p0)
  state = chain.init(params)
  step = jax.jit(lambda p, s: chain.update(grad(p, x, y), s, p, grad_fn=grad_fn))
  for _ in range(steps):
    u, state = step(params, state)
    params = optax.apply_updates(params, u)
  jax.effects_barrier()
  return params, len(calls), state


def _numpy_looksam(p0, x, y, steps, every_k, alpha, rho, lr=0.1):
  p = {k: v.copy() for k, v in p0.items()}
  g_v = None
  flat = lambda t: np.concatenate([t[k].ravel() for k in sorted(t)])
  for t in range(steps):
    g = ref.mlp_grad(p, x, y)
    if t % every_k == 0:
      e, _ = ref.perturbation(g, rho, 1.0)
      g_s = ref.mlp_grad({k: p[k] + e[k] for k in p}, x, y)
      coef = flat(g_s) @ flat(g) / (flat(g) @ flat(g))
      g_v = {k: g_s[k] - coef * g[k] for k in p}
      out = g_s
    else:
      ratio = np.linalg.norm(flat(g)) / np.linalg.norm(flat(g_v))
      out = {k: g[k] + alpha * ratio * g_v[k] for k in p}
    p = {k: p[k] - lr * out[k] for k in p}
  return p


@pytest.mark.parametrize("every_k", [1, 3])
def test_reuse_sam_matches_numpy_looksam(every_k):
  p0, x, y = mlp_problem.problem()
  steps = 7
  want = _numpy_looksam(p0, x, y, steps, every_k, 0.7, 0.2)
  with jax.enable_x64(True):
    params, calls, _ = _run(optax_usam.reuse_sam(optax_usam.sam(0.2), every_k), p0, x, y, steps)
  assert calls == len(range(0, steps, every_k))
  for k in want:
    np.testing.assert_allclose(params[k], want[k], rtol=1e-10, atol=1e-13)


def test_reuse_sam_every_step_is_sam():
  p0, x, y = mlp_problem.problem(1)
  a, _, _ = _run(optax_usam.reuse_sam(optax_usam.unified_sam(0.1, "1-1/t"), 1), p0, x, y, 4)
  b, _, _ = _run(optax_usam.unified_sam(0.1, "1-1/t"), p0, x, y, 4)
  chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_randomized_sam_extremes(probability):
  p0, x, y = mlp_problem.problem(2)
  a, calls, state = _run(optax_usam.randomized_sam(optax_usam.sam(0.1), probability), p0, x, y, 5)
  b, _, _ = _run(optax_usam.sam(0.1) if probability else optax.identity(), p0, x, y, 5)
  chex.assert_trees_all_close(a, b, rtol=1e-6)
  assert calls == (5 if probability else 0)
  assert int(optax_usam.get_diagnostics(state)["count"]) == calls


def test_randomized_sam_frequency_and_reproducibility():
  p0, x, y = mlp_problem.problem(3)
  steps, p = 200, 0.3
  tx = optax_usam.randomized_sam(optax_usam.sam(0.1), p, seed=7)
  a, calls_a, _ = _run(tx, p0, x, y, steps)
  b, calls_b, _ = _run(tx, p0, x, y, steps)
  chex.assert_trees_all_equal(a, b)
  assert calls_a == calls_b
  # Binomial(200, 0.3): mean 60, std 6.5.
  assert abs(calls_a - steps * p) < 4 * np.sqrt(steps * p * (1 - p))


def test_sub_batch():
  batch = {"x": jnp.arange(20).reshape(10, 2), "y": jnp.arange(10)}
  out = optax_usam.sub_batch(batch, 0.25)
  np.testing.assert_array_equal(out["y"], np.arange(3))
  assert out["x"].shape == (3, 2)
  with pytest.raises(ValueError, match="fraction"):
    optax_usam.sub_batch(batch, 0.0)
  with pytest.raises(ValueError, match="leading axis"):
    optax_usam.sub_batch({"x": jnp.ones((4,)), "y": jnp.ones((5,))}, 0.5)


@pytest.mark.parametrize(
  "build,error,match",
  [
    (lambda s: optax_usam.reuse_sam(s, 0), ValueError, "every_k"),
    (lambda s: optax_usam.reuse_sam(s, 2.5), TypeError, "every_k"),
    (lambda s: optax_usam.reuse_sam(s, 2, alpha=-1.0), ValueError, "alpha"),
    (lambda s: optax_usam.randomized_sam(s, 1.5), ValueError, "probability"),
    (lambda s: optax_usam.randomized_sam(s, lambda c: -0.5 + 0 * c), ValueError, "probability"),
    (lambda s: optax_usam.randomized_sam(s, 0.5, seed="a"), TypeError, "seed"),
  ],
)
def test_bad_arguments(build, error, match):
  with pytest.raises(error, match=match):
    build(optax_usam.sam(0.1))


@pytest.mark.parametrize(
  "wrap", [lambda s: optax_usam.reuse_sam(s, 2), lambda s: optax_usam.randomized_sam(s, 0.5)]
)
def test_wrappers_leave_integer_leaves_alone(wrap):
  params = {"w": jnp.array([1.0, -2.0]), "step": jnp.array(3, jnp.int32)}
  grad = jax.grad(lambda p: jnp.sum(p["w"] ** 2) * p["step"], allow_int=True)
  tx = wrap(optax_usam.sam(0.1))
  state = tx.init(params)
  for _ in range(4):
    out, state = tx.update(grad(params), state, params, grad_fn=grad)
    chex.assert_tree_all_finite(out["w"])
    assert out["step"].dtype == jax.dtypes.float0


@pytest.mark.parametrize(
  "wrap",
  [
    lambda s: optax_usam.reuse_sam(s, 2, axis_name="batch"),
    lambda s: optax_usam.randomized_sam(s, 0.3, axis_name="batch"),
  ],
)
def test_wrappers_average_one_gradient_steps_over_devices(wrap):
  """Inside pmap every step, SAM or not, returns the device-averaged gradient: replicas stay equal."""
  p0, x, y = mlp_problem.problem(4)
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), p0)
  xs, ys = x.reshape(4, 4, 5).astype(np.float32), y.reshape(4, 4, 3).astype(np.float32)
  tx = optax.chain(wrap(optax_usam.sam(0.1, axis_name="batch")), optax.sgd(0.1))
  grad = jax.grad(mlp_problem.jax_loss)

  def step(params, state, xb, yb):
    u, state = tx.update(grad(params, xb, yb), state, params, grad_fn=lambda q: grad(q, xb, yb))
    return optax.apply_updates(params, u), state

  replicate = lambda t: jax.tree.map(lambda v: jnp.stack([v] * 4), t)
  p, s = replicate(params), replicate(tx.init(params))
  pstep = jax.pmap(step, axis_name="batch", devices=jax.devices()[:4])
  for _ in range(8):
    p, s = pstep(p, s, xs, ys)
  # Both kinds of step happened.
  assert 0 < int(optax_usam.get_diagnostics(jax.tree.map(lambda v: v[0], s))["count"]) < 8
  for leaf in jax.tree.leaves(p):
    np.testing.assert_array_equal(leaf, jnp.broadcast_to(leaf[0], leaf.shape))
