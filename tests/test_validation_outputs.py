"""Tests of optax_usam._validation.outputs: what a user's loss or gradient function returns, in one line."""

from __future__ import annotations

import flax.core
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_usam._validation import outputs


def test_describe_shows_each_leaf_by_dtype_and_shape_and_cuts_a_long_tree():
  tree = (jnp.zeros(()), {"w": np.ones((2, 3), np.float32), "n": 3, "s": "text"}, None)
  assert outputs.describe(tree) == "(float32[], {'n': int32[], 's': str, 'w': float32[2,3]}, None)"
  long = outputs.describe({f"layer{i}": jnp.zeros(4) for i in range(100)}, limit=50)
  assert len(long) == 50 and long.endswith("...")


def test_describe_works_at_trace_time():
  shown = []
  jax.jit(lambda x: shown.append(outputs.describe((x, x.sum()))) or x)(jnp.ones((2, 2)))
  assert shown == ["(float32[2,2], float32[])"]


@pytest.mark.parametrize("out", [(1.0, 2.0), [1.0, 2.0]])
def test_check_pair_splits_a_pair(out):
  assert outputs.check_pair(out, "f", "(a, b)") == (1.0, 2.0)


@pytest.mark.parametrize(
  ("out", "returned", "shown"),
  [
    (jnp.zeros(()), None, r"float32\[\]"),
    ((1.0, 2.0, 3.0), None, r"\(float32\[\], float32\[\], float32\[\]\)"),
    (jnp.zeros(3), (jnp.zeros(()), jnp.zeros(3)), r"\(float32\[\], float32\[3\]\)"),  # the whole is shown
  ],
)
def test_check_pair_names_the_function_and_the_form(out, returned, shown):
  with pytest.raises(TypeError, match=rf"^loss_fn must return \(loss, aux\); got {shown}\.$"):
    outputs.check_pair(out, "loss_fn", "(loss, aux)", returned=returned)


@pytest.mark.parametrize("loss", [jnp.zeros(()), np.float64(1.0), 1.0, jnp.zeros((), jnp.bfloat16)])
def test_check_scalar_loss_accepts_real_floating_scalars(loss):
  outputs.check_scalar_loss(loss, "the loss")


@pytest.mark.parametrize(
  ("loss", "error", "match"),
  [
    (jnp.zeros(3), ValueError, r"the loss must be a scalar \(a mean over the batch\); got shape \(3,\)"),
    (jnp.zeros((), jnp.int32), TypeError, "real floating scalar; got dtype int32"),
    (jnp.zeros((), jnp.complex64), TypeError, "real floating scalar; got dtype complex64"),
    (True, TypeError, "real floating scalar; got dtype bool"),
    ("0.5", TypeError, "real floating scalar; got str"),
    (None, TypeError, "real floating scalar; got None"),
  ],
)
def test_check_scalar_loss_refuses_the_rest(loss, error, match):
  with pytest.raises(error, match=match):
    outputs.check_scalar_loss(loss, "the loss")


@pytest.mark.parametrize(
  ("out", "has_aux", "want"),
  [
    (jnp.zeros(()), False, (0.0, None)),
    (1.0, False, (1.0, None)),
    ((jnp.zeros(()), {"logits": 2.0}), True, (0.0, {"logits": 2.0})),
    ([1.0, None], True, (1.0, None)),
  ],
)
def test_check_loss_output_gives_the_loss_and_aux(out, has_aux, want):
  assert outputs.check_loss_output(out, has_aux, "loss_fn", "(loss, aux)") == want


@pytest.mark.parametrize(
  ("out", "has_aux", "returned", "error", "match"),
  [
    (jnp.zeros(()), True, None, TypeError, r"^loss_fn must return \(loss, aux\); got float32\[\]\.$"),
    (
      (jnp.zeros(()), jnp.zeros(3)),
      False,
      None,
      TypeError,
      r"^loss_fn returns \(float32\[\], float32\[3\]\), but with has_aux=False the loss loss_fn returns must "
      r"be a real floating scalar, not a tuple: pass has_aux=True if it comes with an aux\.$",
    ),
    # A part of what was returned (the value of (value, gradients)): the whole is shown.
    ([1.0, None], False, ([1.0, None], {"w": 0.0}), TypeError, r"returns \(\[float32\[\], None\], \{'w'"),
    ((jnp.zeros(3), None), True, None, ValueError, r"^the loss loss_fn returns must be a scalar"),
    (jnp.zeros((), jnp.int32), False, None, TypeError, r"^the loss loss_fn returns must be a real floating"),
  ],
)
def test_check_loss_output_refuses_the_rest(out, has_aux, returned, error, match):
  with pytest.raises(error, match=match):
    outputs.check_loss_output(out, has_aux, "loss_fn", "(loss, aux)", returned=returned)


def test_check_like_compares_structure_and_shapes():
  reference = {"mean": jnp.zeros(4), "var": jnp.ones(4)}
  outputs.check_like(
    {"mean": jnp.ones(4), "var": jnp.ones(4, jnp.bfloat16)}, reference, "stats", "the state's"
  )
  for tree, shown in [({"mean": jnp.zeros(4)}, r"\{'mean': float32\[4\]\}"), (None, "None")]:
    with pytest.raises(
      ValueError, match=rf"^stats must have the structure and shapes of the state's; got {shown}\.$"
    ):
      outputs.check_like(tree, reference, "stats", "the state's")
  with pytest.raises(ValueError, match=r"got \{'mean': float32\[5\], 'var': float32\[4\]\}"):
    outputs.check_like({"mean": jnp.zeros(5), "var": jnp.ones(4)}, reference, "stats", "the state's")


def test_check_like_compares_key_paths_not_containers():
  """A FrozenDict state (flax.core.freeze(variables)) and the plain dict model.apply returns are alike."""
  stats = {"BatchNorm_0": {"mean": jnp.zeros(4), "var": jnp.ones(4)}}
  outputs.check_like(stats, flax.core.freeze(stats), "stats", "the state's")
  outputs.check_like(flax.core.freeze(stats), stats, "stats", "the state's")
  with pytest.raises(ValueError, match=r"got \{'BatchNorm_1'"):
    outputs.check_like({"BatchNorm_1": stats["BatchNorm_0"]}, flax.core.freeze(stats), "stats", "the state's")
