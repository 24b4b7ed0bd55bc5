"""Checks of what a user's function returns: a loss, and what comes with it (aux, statistics, gradients).

They read structures, shapes and dtypes only, so under ``jit`` they fire at trace time, before JAX's own
error (``'float' object has no attribute 'astype'``, ``iteration over a 0-d array``) would.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class _Shown:
  """A leaf shown as ``float32[8,2]``; ``repr`` of a tree of them reads like the tree itself."""

  def __init__(self, leaf: Any) -> None:
    if hasattr(leaf, "dtype") or isinstance(leaf, (bool, int, float, complex, np.generic)):
      self.text = f"{jnp.result_type(leaf)}[{','.join(map(str, np.shape(leaf)))}]"
    else:
      self.text = type(leaf).__name__

  def __repr__(self) -> str:
    return self.text


def describe(tree: Any, limit: int = 300) -> str:
  """``tree`` with each leaf shown by its dtype and shape, e.g. ``(float32[], {'w': float32[3]})``, cut at
  ``limit`` characters (a model's whole tree would bury the message)."""
  text = repr(jax.tree.map(_Shown, tree))
  return text if len(text) <= limit else text[: limit - 3] + "..."


def check_pair(out: Any, name: str, form: str, returned: Any = None) -> tuple[Any, Any]:
  """``out`` as its two parts if it is a tuple (or list) of two; TypeError naming ``name`` otherwise.

  ``returned``: what ``name`` returned, shown in the message, when ``out`` is a part of it.
  """
  if not isinstance(out, (tuple, list)) or len(out) != 2:
    raise TypeError(f"{name} must return {form}; got {describe(out if returned is None else returned)}.")
  return out[0], out[1]


def check_scalar_loss(loss: Any, name: str) -> None:
  """Raises TypeError/ValueError unless ``loss`` is a real floating scalar, as ``jax.grad`` needs."""
  if not (hasattr(loss, "dtype") or isinstance(loss, (int, float))):
    raise TypeError(f"{name} must be a real floating scalar; got {describe(loss)}.")
  if not jnp.issubdtype(jnp.result_type(loss), jnp.floating):
    raise TypeError(f"{name} must be a real floating scalar; got dtype {jnp.result_type(loss)}.")
  if np.ndim(loss) != 0:
    raise ValueError(f"{name} must be a scalar (a mean over the batch); got shape {np.shape(loss)}.")


def check_loss_output(out: Any, has_aux: bool, name: str, form: str, returned: Any = None) -> tuple[Any, Any]:
  """``(loss, aux)`` of what ``name`` returned: with ``has_aux`` the pair ``out``, else ``(out, None)``.

  The loss must be a real floating scalar, as ``jax.grad`` needs. ``form``: what ``name`` returns with
  ``has_aux``, for the message; ``returned``: what ``name`` returned, shown in the messages, when ``out`` is a
  part of it (the value of ``(value, gradients)``).

  Raises:
    TypeError: with ``has_aux``, ``out`` is not a pair; without, it is a tuple or list (the message points to
      ``has_aux=True``); or the loss is not real floating.
    ValueError: the loss is not a scalar.
  """
  if has_aux:
    loss, aux = check_pair(out, name, form, returned=returned)
  elif isinstance(out, (tuple, list)):
    raise TypeError(
      f"{name} returns {describe(out if returned is None else returned)}, but with has_aux=False the loss "
      f"{name} returns must be a real floating scalar, not a {type(out).__name__}: pass has_aux=True if it "
      "comes with an aux."
    )
  else:
    loss, aux = out, None
  check_scalar_loss(loss, f"the loss {name} returns")
  return loss, aux


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
  return {
    jax.tree_util.keystr(path): np.shape(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def check_like(tree: Any, reference: Any, name: str, hint: str) -> None:
  """Raises ValueError unless ``tree`` has the key paths and shapes of ``reference``, which ``hint`` names.

  Key paths, not tree definitions: a ``FrozenDict`` reference (a state built from ``flax.core.freeze``) and
  the plain dict ``model.apply(..., mutable=...)`` returns are alike. Dtypes may differ.
  """
  if _shapes_by_path(tree) != _shapes_by_path(reference):
    raise ValueError(f"{name} must have the structure and shapes of {hint}; got {describe(tree)}.")
