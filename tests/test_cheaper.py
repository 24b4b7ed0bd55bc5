"""Tests of optax_usam.cheaper: reuse_sam (LookSAM) and randomized_sam.

reuse_sam against a float64 NumPy LookSAM, and the rounding noise that its stored correction once
amplified (a quadratic, rho = 0, a vmapped sweep).
"""

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


@pytest.mark.parametrize("every_k", [1, 3])
def test_reuse_sam_matches_numpy_looksam(every_k):
  p0, x, y = mlp_problem.problem()
  steps = 7
  want = ref.looksam_sgd(p0, x, y, steps, every_k, 0.7, 0.2)
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


# ---------------------------------------------------------------------------- reuse_sam and rounding noise

QUADRATIC = {"w": jnp.array([1.0, -2.0, 3.0, 0.7]), "b": jnp.array([0.3, 0.1])}
quadratic_grad = jax.grad(lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2))


def test_reuse_sam_on_a_quadratic_adds_no_correction():
  """On a quadratic the SAM gradient is parallel to g: the stored orthogonal part is rounding noise, so 0."""
  tx = optax_usam.reuse_sam(optax_usam.sam(0.05), 4)
  state = tx.init(QUADRATIC)
  _, state = tx.update(quadratic_grad(QUADRATIC), state, QUADRATIC, grad_fn=quadratic_grad)
  assert isinstance(state, optax_usam.cheaper.ReuseState)
  for leaf in jax.tree.leaves(state.correction):
    np.testing.assert_array_equal(leaf, 0.0)
  out, _ = tx.update(quadratic_grad(QUADRATIC), state, QUADRATIC, grad_fn=quadratic_grad)
  chex.assert_trees_all_equal(out, quadratic_grad(QUADRATIC))


def test_reuse_sam_with_rho_zero_is_plain_sgd():
  """rho = 0: the SAM step returns grad_fn(x), reuse steps the incoming gradient, nothing else.

  The incoming gradient is summed over micro-batches and grad_fn over the whole batch: equal up to
  rounding, which the old correction amplified to alpha ||g|| (loss 0.458 instead of 0.496 here).
  """
  p0, x, y = mlp_problem.float32_problem()
  full = jax.grad(lambda p: mlp_problem.jax_loss(p, x, y))
  micro = optax_usam.microbatch_grad_fn(jax.grad(lambda p, b: mlp_problem.jax_loss(p, *b)), (x, y), 4)
  every_k = 4

  def train(tx, reuse):
    @jax.jit
    def step(params, state, t):
      if reuse:
        return tx.update(micro(params), state, params, grad_fn=full)
      return tx.update(jax.lax.cond(t % every_k == 0, full, micro, params), state, params)

    params, state = p0, tx.init(p0)
    for t in range(40):
      updates, state = step(params, state, t)
      params = optax.apply_updates(params, updates)
    return params

  base = lambda: optax.sgd(0.1, momentum=0.9)
  reuse = train(optax.chain(optax_usam.reuse_sam(optax_usam.usam(0.0), every_k), base()), reuse=True)
  chex.assert_trees_all_equal(reuse, train(base(), reuse=False))


def test_reuse_sam_vmapped_over_members_matches_single_runs():
  p0, x, y = mlp_problem.float32_problem()
  members = [jax.tree.map(lambda v, s=s: v * (1 + 0.1 * s), p0) for s in range(3)]
  tx = optax.chain(optax_usam.reuse_sam(optax_usam.sam(0.1), 3), optax.sgd(0.1, momentum=0.9))
  grad = jax.grad(lambda p: mlp_problem.jax_loss(p, x, y))

  def run(params):
    def body(carry, _):
      params, state = carry
      updates, state = tx.update(grad(params), state, params, grad_fn=grad)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(body, (params, tx.init(params)), None, length=12)[0][0]

  stacked = jax.tree.map(lambda *v: jnp.stack(v), *members)
  swept = jax.jit(jax.vmap(run))(stacked)
  for i, member in enumerate(members):
    single = jax.jit(run)(member)
    # Float32 reduction order differs under vmap; amplified noise would differ by ~alpha ||g||.
    chex.assert_trees_all_close(jax.tree.map(lambda v, i=i: v[i], swept), single, rtol=1e-4, atol=1e-5)
