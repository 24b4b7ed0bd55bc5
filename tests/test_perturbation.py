"""Tests of the functional core, optax_usam.perturb and optax_usam.global_norm."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam
from tests import numpy_reference as ref


def _tree(seed: int):
  rng = np.random.default_rng(seed)
  shapes = {"w": (4, 3), "b": (3,), "c": ()}
  params = {k: rng.normal(size=s) for k, s in shapes.items()}
  grads = {k: rng.normal(size=s) for k, s in shapes.items()}
  return params, grads


@pytest.mark.parametrize("mask", [None, {"w": True, "b": False, "c": True}], ids=["all", "masked"])
@pytest.mark.parametrize("lambd", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("rho", [0.0, 0.05, 2.0])
def test_perturb_matches_numpy(rho, lambd, mask):
  """Masked-out leaves stay put and leave the norm; None leaves (Equinox fields) stay None."""
  params, grads = _tree(0)
  e, norm = ref.perturbation(grads, rho, lambd, mask=mask)
  with jax.enable_x64(True):
    p = {**jax.tree.map(jnp.asarray, params), "act": None}
    g = {**jax.tree.map(jnp.asarray, grads), "act": None}
    out = optax_usam.perturb(p, g, rho, lambd, mask=None if mask is None else {**mask, "act": None})
    assert out.grad_norm.dtype == jnp.float64
    assert out.params["act"] is None
    for k in params:
      np.testing.assert_allclose(out.params[k], params[k] + e[k], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(out.grad_norm, norm, rtol=1e-13)
    np.testing.assert_allclose(out.perturbation_norm, ref.global_norm(e.values()), rtol=1e-13, atol=1e-15)


def test_sam_perturbation_has_norm_rho():
  params, grads = _tree(1)
  out = optax_usam.perturb(params, grads, 0.37, 1.0)
  diff = jax.tree.map(lambda a, b: a - b, out.params, params)
  np.testing.assert_allclose(optax_usam.global_norm(diff), 0.37, rtol=1e-5)


def test_global_norm_accumulates_bfloat16_in_float32():
  tree = {"a": jnp.ones((4096,), jnp.bfloat16), "b": jnp.ones((2, 2), jnp.bfloat16)}
  norm = optax_usam.global_norm(tree)
  assert norm.dtype == jnp.float32
  # A bfloat16 running sum stalls at 256 (8 significant bits); the exact value is sqrt(4100).
  np.testing.assert_allclose(norm, np.sqrt(4100.0), rtol=1e-6)


def test_perturb_keeps_leaf_dtypes():
  params = {"a": jnp.ones((3,), jnp.bfloat16), "b": jnp.ones((2,), jnp.float32)}
  grads = jax.tree.map(jnp.ones_like, params)
  out = optax_usam.perturb(params, grads, 0.1, 1.0)
  chex.assert_trees_all_equal_dtypes(out.params, params)
  np.testing.assert_allclose(out.params["b"], 1 + 0.1 / np.sqrt(5.0), rtol=1e-6)


def test_two_pass_loop_equals_transformation():
  """The docstring's hand-written loop and the transformation give the same step."""
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8,)).astype(np.float32)
  loss = lambda p: jnp.mean((jnp.tanh(x @ p["w"]) + p["b"] - y) ** 2)
  params = {"w": jnp.asarray(rng.normal(size=(3,)), jnp.float32), "b": jnp.zeros(())}
  base = optax.sgd(0.1, momentum=0.9)

  g = jax.grad(loss)(params)
  ascent = optax_usam.perturb(params, g, rho=0.05, lambd=0.5)
  by_hand, _ = base.update(jax.grad(loss)(ascent.params), base.init(params), params)

  tx = optax.chain(optax_usam.unified_sam(0.05, 0.5), base)
  chained, _ = tx.update(g, tx.init(params), params, grad_fn=jax.grad(loss))
  chex.assert_trees_all_equal(by_hand, chained)


@pytest.mark.parametrize("lambd", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("adapted", [{"w": True, "b": True, "c": True}, {"w": True, "b": False, "c": False}])
def test_adaptive_perturbation_matches_asam_reference(lambd, adapted):
  """ASAM (Kwon et al. 2021) with the unified lambda: T = |w| + eta on the adapted leaves."""
  params, grads = _tree(3)
  scales = {k: np.abs(v) + 0.01 if adapted[k] else None for k, v in params.items()}
  e, norm = ref.perturbation(grads, 0.5, lambd, scales=scales)
  with jax.enable_x64(True):
    p, g = jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, grads)
    out = optax_usam.perturb(p, g, 0.5, lambd, scales=optax_usam.adaptive_scales(p, 0.01, adapted))
    for k in params:
      np.testing.assert_allclose(out.params[k], params[k] + e[k], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(out.grad_norm, norm, rtol=1e-13)
    np.testing.assert_allclose(out.perturbation_norm, ref.global_norm(e.values()), rtol=1e-12)


def test_adaptive_with_unit_scales_is_unified_sam():
  params, grads = _tree(4)
  ones = jax.tree.map(np.ones_like, params)
  a = optax_usam.perturb(params, grads, 0.2, 0.5, scales=ones)
  b = optax_usam.perturb(params, grads, 0.2, 0.5)
  chex.assert_trees_all_close(a, b, rtol=1e-6)


@pytest.mark.parametrize("magnitude", [1e-30, 1e-15, 1e15, 1e20, 1e30, 1e33])
@pytest.mark.parametrize("lambd", [0.0, 0.5, 1.0])
def test_large_and_tiny_gradient_scales_are_exact(magnitude, lambd):
  """Norms from 1e-30 to beyond float32's squares (1e20 and up): logged and used exactly."""
  rng = np.random.default_rng(5)
  direction = {"w": rng.normal(size=(64,)), "b": rng.normal(size=(3,))}
  grads = {k: jnp.asarray(v * magnitude, jnp.float32) for k, v in direction.items()}
  params = {k: jnp.zeros(v.shape, jnp.float32) for k, v in direction.items()}
  out = optax_usam.perturb(params, grads, 1e-3, lambd)
  chex.assert_tree_all_finite(out)
  # Reference in float64 from the float32 gradients actually passed.
  g64 = {k: np.asarray(v, np.float64) for k, v in grads.items()}
  e, norm = ref.perturbation(g64, 1e-3, lambd)
  for k in e:
    np.testing.assert_allclose(out.params[k], e[k], rtol=1e-5, atol=1e-45)
  # Below 1e-19 the float32 sum of squares underflows: the logged norms read 0, while e
  # itself stays exact because eps = 1e-12 dominates the denominator there anyway.
  if magnitude > 1e-19:
    np.testing.assert_allclose(out.grad_norm, norm, rtol=1e-5)
    np.testing.assert_allclose(out.perturbation_norm, ref.global_norm(e.values()), rtol=1e-5)


@pytest.mark.parametrize("lambd", [0.0, 0.5, 1.0])
def test_norm_whose_square_overflows_is_exact(lambd):
  """Gradients of 1e30 in float32: ||g||^2 overflows, ||g|| does not; e is the formula's, never NaN."""
  grads = {"w": jnp.full((8,), 1e30, jnp.float32)}
  params = {"w": jnp.zeros((8,), jnp.float32)}
  out = optax_usam.perturb(params, grads, 1e-3, lambd)
  e, norm = ref.perturbation({"w": np.asarray(grads["w"], np.float64)}, 1e-3, lambd)
  np.testing.assert_allclose(norm, np.sqrt(8) * 1e30, rtol=1e-6)
  np.testing.assert_allclose(out.grad_norm, norm, rtol=1e-6)
  chex.assert_tree_all_finite(out)
  np.testing.assert_allclose(out.params["w"], e["w"], rtol=1e-6)
  np.testing.assert_allclose(out.perturbation_norm, ref.global_norm(e.values()), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_large_and_small(dtype):
  # 6e4 squared overflows float16 and 1e20 squared overflows bfloat16 (and float32): the float32 sum of
  # squares with its 2^-64-scaled twin does not.
  big = 1e20 if dtype == jnp.bfloat16 else 6e4
  for magnitude in (big, 1e-6):
    grads = {"w": jnp.full((1000,), magnitude, dtype)}
    out = optax_usam.perturb({"w": jnp.zeros((1000,), dtype)}, grads, 0.1, 1.0)
    chex.assert_tree_all_finite(out)
    assert out.params["w"].dtype == dtype
    np.testing.assert_allclose(out.perturbation_norm, 0.1, rtol=1e-3)


def test_adaptive_mask_may_be_a_prefix():
  params = {"enc": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, "head": jnp.ones(3)}
  scales = optax_usam.adaptive_scales(params, 0.5, {"enc": False, "head": True})
  assert scales["enc"]["w"] is None and scales["enc"]["b"] is None
  np.testing.assert_allclose(scales["head"], 1.5)
