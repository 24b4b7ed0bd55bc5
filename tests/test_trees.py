"""Tests of optax_usam._trees: which leaves SAM moves, the dtype of the norm, masks, and the global norm."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_usam import _trees
from tests import numpy_reference as ref


@pytest.mark.parametrize(
  ("leaf", "moved"),
  [
    (jnp.ones(2, jnp.bfloat16), True),
    (np.ones(2, np.float64), True),
    (jnp.ones(2, jnp.complex64), True),
    (1.5, True),
    (jnp.ones(2, jnp.int32), False),
    (3, False),
    (jnp.ones(2, bool), False),
  ],
)
def test_float_leaves_are_the_inexact_ones(leaf, moved):
  assert _trees.is_float_leaf(leaf) is moved


def test_accumulation_dtype_is_float32_unless_a_leaf_is_wider():
  low = {"a": jnp.ones(2, jnp.bfloat16), "step": jnp.ones((), jnp.int32)}
  assert _trees.accumulation_dtype(low) == jnp.float32
  assert _trees.accumulation_dtype({"step": jnp.ones((), jnp.int32)}) == jnp.float32
  # NumPy float64 leaves are float32 arrays once JAX has them, with x64 off.
  assert _trees.accumulation_dtype({"a": np.ones(2)}) == jnp.float32
  with jax.enable_x64(True):
    assert _trees.accumulation_dtype({**low, "b": jnp.ones(2, jnp.float64)}) == jnp.float64


class _BoolModule(NamedTuple):
  """A callable pytree of bools, as an Equinox module's mask is."""

  w: bool
  b: bool

  def __call__(self, x):
    return x


def test_a_mask_function_is_not_a_callable_tree_of_bools():
  assert _trees.is_mask_function(lambda params: params)
  assert not _trees.is_mask_function(_BoolModule(True, False))
  assert not _trees.is_mask_function({"w": True})
  assert not _trees.is_mask_function(None)


def test_global_norm_accumulates_bfloat16_in_float32():
  tree = {"a": jnp.ones((4096,), jnp.bfloat16), "b": jnp.ones((2, 2), jnp.bfloat16)}
  norm = _trees.global_norm(tree)
  assert norm.dtype == jnp.float32
  # A bfloat16 running sum stalls at 256 (8 significant bits); the exact value is sqrt(4100).
  np.testing.assert_allclose(norm, np.sqrt(4100.0), rtol=1e-6)


@pytest.mark.parametrize("magnitude", [1e-15, 1.0, 1e18, 1e30])
def test_global_norm_beyond_float32_squares_is_exact(magnitude):
  rng = np.random.default_rng(0)
  tree = {"w": rng.normal(size=(64,)) * magnitude, "b": rng.normal(size=(3,)) * magnitude, "n": 7}
  tree32 = {k: jnp.asarray(v, jnp.float32) if k != "n" else v for k, v in tree.items()}
  want = ref.global_norm(np.asarray(tree32[k], np.float64) for k in ("w", "b"))  # the int leaf is ignored
  np.testing.assert_allclose(_trees.global_norm(tree32), want, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64])
def test_global_norm_sums_in_a_floating_dtype_only(dtype):
  with pytest.raises(TypeError, match="global_norm: dtype must be a floating dtype"):
    _trees.global_norm({"w": jnp.ones(3)}, dtype)
