"""Checks of the trees ``update`` receives, and of masks over them.

They run on structures, shapes and dtypes only, so under ``jit`` they fire at
trace time with a message naming the offending leaf or argument.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_usam.perturbation import is_float_leaf, is_mask_function


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


_INJECT_HINT = (
    "A callable mask given to optax.inject_hyperparams must be listed in its static_args, or "
    "inject_hyperparams calls it with the step count, as a schedule."
)


def check_mask(mask: Any, name: str) -> Any:
  """Returns ``mask`` if it is None, a callable, or a tree of bools selecting something; raises otherwise."""
  if mask is None or is_mask_function(mask):
    return mask
  leaves = jax.tree.leaves(mask)
  if not leaves or not all(isinstance(m, (bool, np.bool_)) for m in leaves):
    raise TypeError(
        f"{name} must be None, a tree of bools like params (or a prefix of it), or a callable "
        f"params -> such a tree; got {mask!r}. {_INJECT_HINT}"
    )
  check_selects_some(leaves, name)
  return mask


def check_selects_some(flags: list[bool], name: str) -> None:
  """Raises ValueError if a mask selects no leaf: always a mistake, and the one an unlisted mask makes."""
  if not any(flags):
    what = "nothing is adapted: use adaptive=False" if name == "adaptive_mask" else (
        "nothing is perturbed: use rho=0 for plain gradients"
    )
    raise ValueError(f"{name} selects no floating parameter, so {what}. {_INJECT_HINT}")


def check_no_masked_nodes(params: Any) -> None:
  """Raises ValueError if ``params`` holds ``optax.MaskedNode`` leaves.

  They come from ``optax.masked``, ``optax.partition`` or ``optax.multi_transform``
  around the transformation; ``grad_fn`` would receive them and fail inside the
  user's loss.
  """
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  if any(is_masked(x) for x in jax.tree.leaves(params, is_leaf=is_masked)):
    raise ValueError(
        "unified_sam received parameters with optax.MaskedNode leaves: it is inside optax.masked, "
        "optax.partition or optax.multi_transform, which hide parameters from grad_fn. Put unified_sam "
        "outside them, first in the chain, and choose the perturbed parameters with "
        "unified_sam(..., perturb_mask=mask); the base optimizer may still be masked or partitioned."
    )


def check_positive_int(value: Any, name: str) -> int:
  """Returns ``value`` if it is an int >= 1; raises TypeError or ValueError naming ``name``."""
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"{name} must be a positive int; got {value!r}.")
  if value < 1:
    raise ValueError(f"{name} must be a positive int; got {value!r}.")
  return value


def check_eps(eps: Any, dtype: Any) -> None:
  """Raises ValueError if a concrete ``eps`` is below ``dtype``'s smallest normal number.

  Below it ``eps`` is flushed to 0 (XLA:CPU flushes subnormals), and a zero
  gradient with lambda > 0 would give 0/0. A traced ``eps`` is not checked.
  """
  tiny = float(jnp.finfo(dtype).tiny)
  if isinstance(eps, float) and eps < tiny:
    raise ValueError(
        f"eps={eps:g} is below the smallest normal {jnp.dtype(dtype).name} ({tiny:.3g}), the dtype the "
        f"norm is accumulated in for these parameters: it would act as 0. Use eps >= {tiny:.3g}."
    )
