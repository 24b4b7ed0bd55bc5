"""Predicates and the global norm on pytrees, shared by the algorithm and its checks.

They raise nothing, except :func:`global_norm` when asked to sum in a dtype that is not floating.
"""

from __future__ import annotations

from typing import Any

import chex
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


def global_norm(tree: Any, dtype: jnp.dtype | None = None) -> chex.Array:
  r"""Global L2 norm over the floating leaves of ``tree``, exact up to the largest representable norm.

  Each leaf is squared and summed in ``dtype`` (default: float32, or float64
  if a leaf is), so bfloat16 and float16 gradients neither
  overflow at float16's 65504 nor lose the sum to rounding. The same pass
  also sums the squares of the leaves scaled by :math:`2^{-e}` (:math:`e`
  half the exponent range, 64 in float32: an exact scaling), and the norm is
  read from it when the plain sum of squares overflows (in float32: norms
  above about 1.8e19), so a norm of 1e30 is exact, not ``inf``. An infinite
  entry gives ``inf``, a NaN gives NaN. Norms below about 1e-19 (float32)
  read 0: their squares underflow, and there ``eps`` = 1e-12 dominates the
  denominator of :func:`optax_usam.perturb` anyway. Non-floating leaves are ignored.
  A ``dtype`` given must be a floating dtype (TypeError otherwise).
  """
  if dtype is None:
    dtype = accumulation_dtype(tree)
  elif not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"global_norm: dtype must be a floating dtype to sum squares in; got {jnp.dtype(dtype)}.")
  finfo = jnp.finfo(dtype)
  shift = 2.0 ** (int(finfo.maxexp) // 2)
  plain = scaled = jnp.zeros((), dtype)
  for x in jax.tree.leaves(tree):
    if is_float_leaf(x):
      x = jnp.abs(x).astype(dtype)
      plain = plain + jnp.sum(jnp.square(x))
      scaled = scaled + jnp.sum(jnp.square(x * (1 / shift)))
  return jnp.where(plain < jnp.inf, jnp.sqrt(plain), shift * jnp.sqrt(scaled))
