"""Predicates on pytrees, shared by the algorithm and its checks; they raise nothing."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def is_float_leaf(leaf: Any) -> bool:
  """Whether ``leaf`` is a floating (or complex) array, i.e. a parameter SAM moves."""
  dtype = getattr(leaf, "dtype", None)
  if dtype is None:
    dtype = jnp.result_type(leaf)
  return jnp.issubdtype(dtype, jnp.inexact)


def accumulation_dtype(tree: Any) -> jnp.dtype:
  """The dtype the global norm is accumulated in: float32, or float64 if any leaf is."""
  dtypes = [jnp.result_type(x) for x in jax.tree.leaves(tree) if is_float_leaf(x)]
  widest = jnp.result_type(jnp.float32, *dtypes) if dtypes else jnp.dtype(jnp.float32)
  # NumPy float64 leaves become float32 arrays when x64 is off; accumulate in what JAX will use.
  return jax.dtypes.canonicalize_dtype(widest)


def is_mask_function(mask: Any) -> bool:
  """Whether ``mask`` is a function ``params -> mask`` rather than a tree of bools.

  ``callable(mask)`` is not enough: an Equinox module of bools (the mask of an
  ``eqx.Module`` model) is callable too. A function is a pytree leaf, so it is
  one exactly when every leaf of ``mask`` is callable.
  """
  leaves = jax.tree.leaves(mask)
  return bool(leaves) and all(callable(leaf) for leaf in leaves)
