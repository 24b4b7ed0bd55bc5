"""Edge inputs of the core that used to give wrong numbers with no error: each is now right or refused.

Rounding noise in reuse_sam, eps below what the accumulation dtype holds, out-of-range schedule values,
overflowing and underflowing norms in the diagnostics, complex parameters.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import optax_usam
from tests import mlp_problem
from tests import numpy_reference as ref

QUADRATIC = {"w": jnp.array([1.0, -2.0, 3.0, 0.7]), "b": jnp.array([0.3, 0.1])}
quadratic_grad = jax.grad(lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2))


# ---------------------------------------------------------------------------- reuse_sam and rounding noise


def test_reuse_sam_on_a_quadratic_adds_no_correction():
  """On a quadratic the SAM gradient is parallel to g: the stored orthogonal part is rounding noise, so 0."""
  tx = optax_usam.reuse_sam(optax_usam.sam(0.05), 4)
  state = tx.init(QUADRATIC)
  _, state = tx.update(quadratic_grad(QUADRATIC), state, QUADRATIC, grad_fn=quadratic_grad)
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


# ---------------------------------------------------------------------------- eps


@pytest.mark.parametrize("eps", [1e-50, 1e-40])
def test_eps_below_float32_is_refused_for_float32_parameters(eps):
  tx = optax_usam.sam(0.1, eps=eps)
  zero = jax.tree.map(jnp.zeros_like, QUADRATIC)
  with pytest.raises(ValueError, match=r"eps=1e-[45]0 .* float32"):
    tx.update(zero, tx.init(QUADRATIC), QUADRATIC, grad_fn=lambda p: zero)


def test_tiny_eps_is_fine_in_float64():
  with jax.enable_x64(True):
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), QUADRATIC)
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = optax_usam.sam(0.1, eps=1e-50)
    out, state = tx.update(zero, tx.init(params), params, grad_fn=lambda p: p)
    chex.assert_trees_all_equal(out, params)  # e = 0: grad_fn saw params unchanged
    assert float(optax_usam.get_diagnostics(state)["perturbation_norm"]) == 0.0


@pytest.mark.parametrize("eps", [0.0, -1.0, 1e-320])
def test_eps_unrepresentable_anywhere_is_refused_at_construction(eps):
  with pytest.raises(ValueError, match="eps"):
    optax_usam.sam(0.1, eps=eps)


def test_zero_gradient_with_traced_eps_that_underflows_gives_no_nan():
  """Under inject_hyperparams + jit eps is traced and cannot be checked: a zero gradient still gives e = 0."""
  tx = optax.inject_hyperparams(optax_usam.sam)(rho=0.1, eps=1e-12)
  state = tx.init(QUADRATIC)
  state.hyperparams["eps"] = jnp.asarray(0.0, jnp.float32)
  zero = jax.tree.map(jnp.zeros_like, QUADRATIC)
  out, state = jax.jit(lambda s: tx.update(zero, s, QUADRATIC, grad_fn=lambda p: p))(state)
  chex.assert_trees_all_equal(out, QUADRATIC)
  chex.assert_tree_all_finite(optax_usam.get_diagnostics(state))


# ---------------------------------------------------------------------------- out-of-range values


@pytest.mark.parametrize(
  "rho,lambd",
  [
    (0.1, lambda c: jnp.where(c >= 2, 1.5, 0.5)),
    (lambda c: jnp.where(c >= 2, -0.1, 0.1), 1.0),
    (lambda c: jnp.where(c >= 2, jnp.nan, 0.1), 0.5),
  ],
  ids=["lambda-1.5", "rho-negative", "rho-nan"],
)
def test_out_of_range_schedule_values_are_caught_by_checkify(rho, lambd):
  tx = optax_usam.unified_sam(rho, lambd, check_values=True)
  grad = quadratic_grad

  def step(state):
    return tx.update(grad(QUADRATIC), state, QUADRATIC, grad_fn=grad)[1]

  checked = jax.jit(checkify.checkify(step, errors=checkify.user_checks))
  state = tx.init(QUADRATIC)
  for _ in range(2):
    err, state = checked(state)
    err.throw()
  err, state = checked(state)
  with pytest.raises(checkify.JaxRuntimeError, match=r"rho_t|lambd_t"):
    err.throw()
  # Not checkified (and without check_values), the same step runs; the logged ||e|| is still a norm.
  unchecked = optax_usam.unified_sam(rho, lambd)
  _, plain = unchecked.update(grad(QUADRATIC), state, QUADRATIC, grad_fn=grad)
  assert not float(optax_usam.get_diagnostics(plain)["perturbation_norm"]) < 0


def test_perturbation_norm_is_never_negative():
  """lambda = 1.5 on a large gradient makes the coefficient negative: ||e|| = |coefficient| ||g||."""
  g = {"w": jnp.full((4,), 10.0)}
  out = optax_usam.perturb({"w": jnp.zeros(4)}, g, 0.1, 1.5)
  e = np.asarray(out.params["w"])
  np.testing.assert_allclose(out.perturbation_norm, np.linalg.norm(e), rtol=1e-6)
  assert float(out.perturbation_norm) > 0


@pytest.mark.parametrize("name", ["rho", "lambd", "eps"])
def test_perturb_refuses_non_scalar_hyperparameters(name):
  args = {"rho": 0.1, "lambd": 1.0, "eps": 1e-12, name: jnp.array([0.1, 0.2])}
  with pytest.raises(ValueError, match=f"{name} must be a scalar"):
    optax_usam.perturb(QUADRATIC, QUADRATIC, args["rho"], args["lambd"], args["eps"])


def test_vmapped_traced_hyperparameters_are_per_member():
  rhos, lambds = jnp.array([0.0, 0.1, 0.3]), jnp.array([1.0, 0.5, 0.0])
  outs = jax.vmap(lambda r, lam: optax_usam.perturb(QUADRATIC, QUADRATIC, r, lam))(rhos, lambds)
  g = {k: np.asarray(v, np.float64) for k, v in QUADRATIC.items()}
  for i in range(3):
    e, _ = ref.perturbation(g, float(rhos[i]), float(lambds[i]))
    for k in g:
      np.testing.assert_allclose(outs.params[k][i], g[k] + e[k], rtol=1e-6)


# ---------------------------------------------------------------------------- overflow


@pytest.mark.parametrize("lambd", [0.0, 0.5, 1.0])
def test_infinite_gradient_is_logged_as_it_is(lambd):
  """An inf gradient: ||g|| = inf, and ||e|| is NaN exactly when the output is (0 * inf for SAM)."""
  grads = {"w": jnp.array([jnp.inf, 1.0])}
  out = optax_usam.perturb({"w": jnp.zeros(2)}, grads, 0.1, lambd)
  assert np.isinf(out.grad_norm)
  assert np.isnan(out.perturbation_norm) == bool(np.isnan(out.params["w"]).any())
  if not np.isnan(out.perturbation_norm):
    assert np.isinf(out.perturbation_norm)


def test_nan_gradient_is_logged_as_nan():
  out = optax_usam.perturb({"w": jnp.zeros(2)}, {"w": jnp.array([jnp.nan, 1.0])}, 0.1, 1.0)
  assert np.isnan(out.grad_norm) and np.isnan(out.perturbation_norm)


@pytest.mark.parametrize("lambd", [0.0, 0.5, 1.0])
def test_zero_gradient_is_a_minimum_not_an_error(lambd):
  zero = {"w": jnp.zeros(3, jnp.float32), "b": jnp.zeros((), jnp.bfloat16)}
  out = optax_usam.perturb(zero, zero, 0.1, lambd)
  chex.assert_trees_all_equal(out.params, zero)
  assert float(out.grad_norm) == 0.0 and float(out.perturbation_norm) == 0.0


# ---------------------------------------------------------------------------- complex parameters


@pytest.mark.parametrize("dtype", [jnp.complex64])
def test_complex_parameters_are_refused(dtype):
  params = {"z": jnp.array([1 + 1j], dtype), "w": jnp.ones(2)}
  grad = jax.grad(lambda p: jnp.sum(jnp.abs(p["z"]) ** 2) + jnp.sum(p["w"] ** 2))
  tx = optax_usam.sam(0.1)
  with pytest.raises(TypeError, match=r"\['z'\].*complex"):
    tx.update(grad(params), tx.init(params), params, grad_fn=grad)
  with pytest.raises(TypeError, match="complex"):
    optax_usam.perturb(params, grad(params), 0.1, 1.0)
