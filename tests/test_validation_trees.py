"""Tests of optax_usam._validation.trees: the checks of parameters, gradients, masks and batches.

They read structures, shapes and dtypes only, so they fire at trace time; each names the leaf at fault.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam
from optax_usam._validation import trees

PARAMS = {"enc": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, "head": jnp.ones(3), "step": jnp.asarray(1)}


def test_leading_size_is_shared_by_every_leaf():
  assert trees.leading_size((np.ones((6, 2)), np.ones(6))) == 6
  for batch in [(np.ones((6, 2)), np.ones(5)), (np.ones(6), np.float32(1.0)), ()]:
    with pytest.raises(ValueError, match="sharing their leading axis"):
      trees.leading_size(batch)


def test_leaf_mask_expands_a_prefix_calls_a_function_and_names_a_bad_mask():
  assert trees.leaf_mask(None, PARAMS) == [True] * 4
  # jax.tree.leaves order: enc.b, enc.w, head, step.
  assert trees.leaf_mask({"enc": False, "head": True, "step": False}, PARAMS) == [False, False, True, False]
  by_rank = lambda p: jax.tree.map(lambda v: v.ndim > 1, p)
  assert trees.leaf_mask(by_rank, PARAMS) == [False, True, False, False]
  with pytest.raises(TypeError, match=r"perturb_mask must hold bools; got \['str'"):
    trees.leaf_mask({"enc": "yes", "head": True, "step": True}, PARAMS, "perturb_mask")
  with pytest.raises(ValueError, match="tree structure of params or of a prefix of it"):
    trees.leaf_mask({"encoder": True}, PARAMS)


def test_a_mask_must_select_a_floating_parameter():
  with pytest.raises(ValueError, match="perturb_mask selects no floating parameter, so nothing is perturbed"):
    trees.check_mask({"a": False}, "perturb_mask")
  with pytest.raises(ValueError, match="adaptive_mask selects no floating parameter, so nothing is adapted"):
    trees.check_mask({"a": False}, "adaptive_mask")
  # Only the integer leaf is selected: still nothing to perturb.
  with pytest.raises(ValueError, match="selects no floating parameter"):
    trees.expand_perturb_mask({"enc": False, "head": False, "step": True}, PARAMS)
  with pytest.raises(TypeError, match="static_args"):  # the hint for a mask inject_hyperparams called
    trees.check_mask({"a": 0.5}, "perturb_mask")


def test_updates_must_match_params_leaf_by_leaf():
  grads = jax.tree.map(jnp.zeros_like, PARAMS)
  trees.check_matches_params({**grads, "step": np.zeros(7)}, PARAMS, "updates", dtypes=True)  # int: skipped
  with pytest.raises(ValueError, match=r"grads leaf \['enc'\]\['w'\] has shape \(2,\)"):
    trees.check_matches_params(
      {**grads, "enc": {"w": jnp.ones(2), "b": jnp.ones(2)}}, PARAMS, "grads", dtypes=True
    )
  with pytest.raises(TypeError, match=r"grads leaf \['head'\] has dtype bfloat16"):
    trees.check_matches_params({**grads, "head": jnp.ones(3, jnp.bfloat16)}, PARAMS, "grads", dtypes=True)
  trees.check_matches_params({**grads, "head": jnp.ones(3, jnp.bfloat16)}, PARAMS, "grads", dtypes=False)


def test_update_args_refuse_masked_parameters_and_read_absent_updates():
  grad_fn = lambda p: p
  with pytest.raises(ValueError, match=r"inside optax\.masked"):
    trees.check_update_args(None, {"a": optax.MaskedNode(), "b": jnp.ones(2)}, grad_fn)
  # A direction that reads no fresh gradient takes None, or a tree without leaves, as no updates.
  assert trees.check_update_args({}, PARAMS, grad_fn, fresh_gradient=False) is None
  with pytest.raises(ValueError, match="updates=None"):
    trees.check_update_args(None, PARAMS, grad_fn)


@pytest.mark.parametrize("entry", ["unified_sam.update", "perturb"])
def test_complex_parameters_are_refused_where_they_enter(entry):
  """jax.grad of a real loss gives the conjugate ascent direction for them: the step would descend."""
  params = {"z": jnp.array([1 + 1j], jnp.complex64), "w": jnp.ones(2)}
  grad = jax.grad(lambda p: jnp.sum(jnp.abs(p["z"]) ** 2) + jnp.sum(p["w"] ** 2))
  with pytest.raises(TypeError, match=r"\['z'\].*complex"):
    if entry == "perturb":
      optax_usam.perturb(params, grad(params), 0.1, 1.0)
    else:
      tx = optax_usam.sam(0.1)
      tx.update(grad(params), tx.init(params), params, grad_fn=grad)


def _integer_direction() -> optax_usam.AscentDirection:
  to_int = lambda g, state, params=None: (jax.tree.map(lambda x: jnp.round(x).astype(jnp.int32), g), state)
  return optax_usam.AscentDirection(optax.GradientTransformation(optax.init_empty_state, to_int), "gradient")


@pytest.mark.parametrize(
  ("tx", "updates", "name"),
  [
    # The norm skips a non-floating leaf, so an integer gradient would be moved by rho * g unnormalized.
    (optax_usam.sam(0.1), {"w": jnp.array([1, 2, 3])}, "updates"),
    (optax_usam.unified_sam(0.1, 1.0, direction=_integer_direction()), None, "the direction's output d_t"),
  ],
)
def test_an_integer_gradient_of_a_float_parameter_is_refused(tx, updates, name):
  params = {"w": jnp.array([0.3, -0.2, 0.1])}
  calls = []
  grad_fn = lambda p: calls.append(p) or jax.tree.map(jnp.ones_like, p)
  updates = {"w": jnp.array([1.0, 2.0, 3.0])} if updates is None else updates
  with pytest.raises(TypeError, match=rf"{name} leaf \['w'\] has dtype int32, but the parameter is floating"):
    tx.update(updates, tx.init(params), params, grad_fn=grad_fn)
  assert not calls  # refused before any ascent point is evaluated


@pytest.mark.parametrize("jit", [False, True])
def test_a_complex_gradient_of_a_real_parameter_is_refused(jit):
  """Its imaginary part was dropped without a word; under jit the dtype is known at trace time."""
  params = {"w": jnp.array([0.3, -0.2])}
  calls = []
  grad_fn = lambda p: calls.append(p) or jax.tree.map(jnp.ones_like, p)
  tx = optax_usam.sam(0.1)
  update = lambda g: tx.update(g, tx.init(params), params, grad_fn=grad_fn)
  with pytest.raises(
    TypeError, match=r"updates leaf \['w'\] is complex \(complex64\), but the parameter is real"
  ):
    (jax.jit(update) if jit else update)({"w": jnp.array([1 + 1j, 2 - 1j], jnp.complex64)})
  assert not calls


def test_params_must_be_arrays():
  """A function among the leaves (an Equinox model passed whole) is named, with what to pass instead."""
  with pytest.raises(TypeError, match=r"params leaf \['act'\] is a function, not an array.*eqx.filter"):
    trees.check_params_given({"w": jnp.ones(2), "act": jnp.tanh}, "init")
  with pytest.raises(TypeError, match=r"params leaf \['name'\] is a str"):
    trees.check_params_given({"w": jnp.ones(2), "name": "dense"}, "update")
  trees.check_params_given({"w": jnp.ones(2), "n": 3, "x": 0.5, "np": np.ones(2), "none": None}, "init")
