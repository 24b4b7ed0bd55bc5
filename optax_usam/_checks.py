"""Checks that a gradient tree matches the parameter tree it belongs to.

They run on shapes and dtypes only, so under ``jit`` they fire at trace time
with a message naming the offending leaf.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_usam.perturbation import is_float_leaf


def check_matches_params(tree: Any, params: Any, name: str, *, dtypes: bool) -> None:
  """Raises ValueError/TypeError if ``tree`` differs from ``params`` in structure, shape or dtype.

  Leaves of non-floating parameters are not compared: their gradients are
  ``float0`` (or absent in meaning) and SAM leaves those parameters untouched.
  """
  tree_def, params_def = jax.tree.structure(tree), jax.tree.structure(params)
  if tree_def != params_def:
    raise ValueError(
        f"{name} must have the tree structure of params; got {tree_def}, expected {params_def}."
    )
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, p), t in zip(paths, jax.tree.leaves(tree), strict=True):
    if not is_float_leaf(p):
      continue
    where = jax.tree_util.keystr(path) or "<root>"
    if np.shape(t) != np.shape(p):
      raise ValueError(
          f"{name} leaf {where} has shape {np.shape(t)}, but the parameter has shape {np.shape(p)}."
      )
    if dtypes and jnp.result_type(t) != jnp.result_type(p):
      raise TypeError(
          f"{name} leaf {where} has dtype {jnp.result_type(t)}, but the parameter has dtype "
          f"{jnp.result_type(p)}; grad_fn must return gradients in the parameters' dtypes."
      )
