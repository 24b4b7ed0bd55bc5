"""Tests of optax_usam.perturbation: the functional core, perturb, and ASAM's scales.

Against the float64 NumPy reference, including the inputs that once gave wrong numbers with no error:
norms beyond float32's squares and below them, infinite and NaN gradients, traced hyperparameters.
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
from optax_usam import distributed, perturbation
from tests import mlp_problem
from tests import numpy_reference as ref
from tests._hlo import collectives


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
  np.testing.assert_allclose(ref.global_norm(out.params[k] - params[k] for k in params), 0.37, rtol=1e-5)


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
    out = optax_usam.perturb(p, g, 0.5, lambd, scales=perturbation.adaptive_scales(p, 0.01, adapted))
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
  scales = perturbation.adaptive_scales(params, 0.5, {"enc": False, "head": True})
  assert scales["enc"]["w"] is None and scales["enc"]["b"] is None
  np.testing.assert_allclose(scales["head"], 1.5)


@pytest.mark.parametrize(("num_devices", "num_model"), [(4, 2), (8, 4)])
def test_global_norm_needs_one_scalar_all_reduce(num_devices, num_model):
  """On FSDP-sharded parameters each device squares and sums its own shards: no parameter is gathered."""
  params, _, _ = mlp_problem.float32_problem()
  mesh = distributed.make_mesh(num_model, jax.devices()[:num_devices])
  p = jax.device_put(params, distributed.fsdp_shardings(params, mesh, min_size=0))
  text = jax.jit(lambda p, g: optax_usam.perturb(p, g, 0.2, 0.5)).lower(p, p).compile().as_text()
  assert collectives(text, "all-gather") == []
  reduces = collectives(text, "all-reduce")
  assert reduces, "the norm of sharded leaves needs a cross-device sum"
  assert all(shape == () for shapes in reduces for shape in shapes)


# ---------------------------------------------------------------------------- edge inputs


def test_perturbation_norm_is_never_negative():
  """lambda = 1.5 on a large gradient makes the coefficient negative: ||e|| = |coefficient| ||g||.

  A Python 1.5 is refused (below); an array, as a step's lambda_t, is unchecked unless ``check_values``.
  """
  g = {"w": jnp.full((4,), 10.0)}
  out = optax_usam.perturb({"w": jnp.zeros(4)}, g, 0.1, jnp.asarray(1.5))
  e = np.asarray(out.params["w"])
  np.testing.assert_allclose(out.perturbation_norm, np.linalg.norm(e), rtol=1e-6)
  assert float(out.perturbation_norm) > 0


QUADRATIC = {"w": jnp.array([1.0, -2.0, 3.0, 0.7]), "b": jnp.array([0.3, 0.1])}


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


@pytest.mark.parametrize("eta", [-1.0, float("nan"), float("inf")])
def test_adaptive_scales_refuse_a_negative_or_non_finite_eta(eta):
  with pytest.raises(ValueError, match="eta must be a non-negative finite float"):
    perturbation.adaptive_scales({"w": jnp.ones(2)}, eta)


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"rho": -1.0}, "rho must be a non-negative finite float"),  # it would descend, reporting ||e|| = 1
    ({"rho": float("nan")}, "rho must be a non-negative finite float"),
    ({"rho": 1e39}, r"rho=1e\+39 is beyond the largest float32"),
    ({"lambd": 1.5}, r"lambd must be a float in \[0.0, 1.0\]"),
    ({"eps": 0.0}, "eps must be a positive finite float"),  # unified_sam refuses it too
  ],
)
def test_perturb_refuses_out_of_range_numbers(kwargs, message):
  params = {"w": jnp.array([3.0, 4.0])}
  with pytest.raises(ValueError, match=message):
    optax_usam.perturb(params, params, **{"rho": 0.1, "lambd": 1.0, **kwargs})


@pytest.mark.parametrize(
  ("kwargs", "error", "message"),
  [
    ({"grads": {"v": jnp.ones(2)}}, ValueError, "grads must have the tree structure of params"),
    ({"grads": {"w": jnp.ones(3)}}, ValueError, r"grads leaf \['w'\] has shape \(3,\)"),
    ({"grads": {"w": jnp.array([1 + 1j, 2j])}}, TypeError, r"grads leaf \['w'\] is complex"),
    ({"scales": {"v": jnp.ones(2)}}, ValueError, "scales must have the tree structure of params"),
    ({"scales": {"w": jnp.ones(3)}}, ValueError, r"scales leaf \['w'\] has shape \(3,\)"),
    ({"lambd": "1/t"}, TypeError, "lambd must be a real number or a real scalar array; got '1/t'"),
    ({"rho": None}, TypeError, "rho must be a real number or a real scalar array; got None"),
    ({"rho": "0.1"}, TypeError, "rho must be a real number"),  # it was used as 0.1
  ],
)
def test_perturb_names_a_bad_argument(kwargs, error, message):
  params = {"w": jnp.array([3.0, 4.0])}
  args = {"grads": params, "rho": 0.1, "lambd": 1.0, **kwargs}
  with pytest.raises(error, match=message):
    optax_usam.perturb(params, **args)


def test_scales_may_be_none_or_broadcast_to_their_leaf():
  params = {"w": jnp.array([[3.0, 4.0]]), "b": jnp.ones(2)}
  out = optax_usam.perturb(params, params, 0.1, 0.0, scales={"w": jnp.asarray(2.0), "b": None})
  np.testing.assert_allclose(out.params["w"], params["w"] * (1 + 0.1 * 4), rtol=1e-6)  # x + rho T^2 g


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"rho": 10.0}, r"params \+ e is not finite at leaf \['w'\] where params are: e overflowed float16"),
    ({"eps": -1.0}, r"eps must be a finite float in \(0.0, inf\); got -1.0 when the step ran"),
    ({"lambd": 1.5}, r"lambd must be a finite float in \[0.0, 1.0\]; got 1.5"),
  ],
)
def test_check_values_reports_at_run_time(kwargs, message):
  """Traced values (as a step's rho_t) and a perturbation float16 cannot hold: reported under checkify."""
  params = {"w": jnp.array([1.0, 2.0], jnp.float16)}
  grads = {"w": jnp.array([1e4, 0.0], jnp.float16)}
  args = {"rho": 1.0, "lambd": 0.0, "eps": 1e-12, **kwargs}

  def run(values, check_values=True):
    return optax_usam.perturb(params, grads, **values, check_values=check_values).params

  checked = jax.jit(checkify.checkify(run, errors=checkify.user_checks), static_argnums=1)
  traced = {k: jnp.asarray(v) for k, v in args.items()}
  with pytest.raises(checkify.JaxRuntimeError, match=message):
    checked(traced, True)[0].throw()
  assert checked(traced, False)[0].get() is None
  assert (
    checked({k: jnp.asarray(v) for k, v in {"rho": 1.0, "lambd": 0.0, "eps": 1e-12}.items()}, True)[0].get()
    is None
  )
