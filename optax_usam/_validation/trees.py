"""Checks of trees: parameters, gradients, masks and batches.

They read structures, shapes and dtypes only, so under ``jit`` they fire at trace time.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import checkify

from optax_usam._trees import is_float_leaf, is_mask_function
from optax_usam._validation.scalars import check_callable, check_eps, check_representable


def leading_size(batch: Any) -> int:
  """The leading-axis size every leaf of ``batch`` shares; ValueError if they differ, a leaf is 0-d, or 0."""
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(batch)}
  if not sizes or None in sizes or len(sizes) != 1:
    got = f"got leading sizes {sorted(sizes, key=str)}"
    raise ValueError(f"batch must be a pytree of arrays sharing their leading axis; {got}.")
  if sizes == {0}:
    # A mean over no examples is 0/0: every gradient would be NaN.
    raise ValueError("batch has no examples (its leading axis has size 0).")
  return sizes.pop()


def check_divides(num_microbatches: int, size: int) -> None:
  if size % num_microbatches:
    raise ValueError(
      f"num_microbatches={num_microbatches} must divide the batch size {size}: unequal micro-batches "
      "would weight their examples unequally."
    )


_INJECT_HINT = (
  "A callable mask given to optax.inject_hyperparams must be listed in its static_args, or "
  "inject_hyperparams calls it with the step count, as a schedule."
)


def leaf_mask(mask: Any, params: Any, name: str = "mask") -> list[bool]:
  """``mask`` as one bool per leaf of ``params``, in ``jax.tree.leaves`` order.

  ``mask`` is None (every leaf), a tree of bools with the structure of
  ``params`` or a prefix of it (``{"encoder": False}`` covers every leaf below
  it), or a callable ``params -> such a tree``, as in :func:`optax.masked`.
  ``None`` leaves of ``params`` (Equinox's filtered fields) are absent, as in optax.
  """
  if is_mask_function(mask):
    mask = mask(params)
  if mask is None:
    return [True] * len(jax.tree.leaves(params))
  flags = jax.tree.leaves(mask)
  if not all(isinstance(m, (bool, np.bool_)) for m in flags):
    raise TypeError(f"{name} must hold bools; got {[type(m).__name__ for m in flags]}.")
  try:
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask, params)
    return jax.tree.structure(params).flatten_up_to(full)
  except (ValueError, TypeError) as err:
    raise ValueError(f"{name} must have the tree structure of params or of a prefix of it: {err}") from None


def check_mask(mask: Any, name: str) -> Any:
  """``mask`` if it is None, a callable, or a tree of bools selecting something; raises otherwise."""
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
    what = (
      "nothing is adapted: use adaptive=False"
      if name == "adaptive_mask"
      else "nothing is perturbed: use rho=0 for plain gradients"
    )
    raise ValueError(f"{name} selects no floating parameter, so {what}. {_INJECT_HINT}")


def expand_perturb_mask(perturb_mask: Any, params: Any) -> Any:
  """``perturb_mask`` as a full tree of bools over ``params``, checked to select some floating leaf."""
  if perturb_mask is None:
    return None
  flags = leaf_mask(perturb_mask, params, "perturb_mask")
  floats = [is_float_leaf(x) for x in jax.tree.leaves(params)]
  check_selects_some([f and is_float for f, is_float in zip(flags, floats, strict=True)], "perturb_mask")
  return jax.tree.unflatten(jax.tree.structure(params), flags)


def check_matches_params(tree: Any, params: Any, name: str, *, dtypes: bool) -> None:
  """Raises ValueError/TypeError if ``tree`` differs from ``params`` in structure, shape or dtype.

  Non-floating parameters are skipped: their gradients are ``float0`` and SAM leaves them untouched.
  """
  tree_def, params_def = jax.tree.structure(tree), jax.tree.structure(params)
  if tree_def != params_def:
    raise ValueError(f"{name} must have the tree structure of params; got {tree_def}, expected {params_def}.")
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, p), t in zip(paths, jax.tree.leaves(tree), strict=True):
    if not is_float_leaf(p):
      continue
    where = jax.tree_util.keystr(path) or "<root>"
    if np.shape(t) != np.shape(p):
      shapes = f"has shape {np.shape(t)}, but the parameter has shape {np.shape(p)}"
      raise ValueError(f"{name} leaf {where} {shapes}.")
    if not jnp.issubdtype(jnp.result_type(t), jnp.inexact):
      # The norm skips non-floating leaves, so such a leaf would be moved by an unnormalized step.
      raise TypeError(
        f"{name} leaf {where} has dtype {jnp.result_type(t)}, but the parameter is floating "
        f"({jnp.result_type(p)}): its gradient must be floating too."
      )
    if jnp.issubdtype(jnp.result_type(t), jnp.complexfloating) and not jnp.issubdtype(
      jnp.result_type(p), jnp.complexfloating
    ):
      # Casting to the parameter's dtype would drop the imaginary part without a word.
      raise TypeError(
        f"{name} leaf {where} is complex ({jnp.result_type(t)}), but the parameter is real "
        f"({jnp.result_type(p)}): the gradient of a real parameter must be real."
      )
    if dtypes and jnp.result_type(t) != jnp.result_type(p):
      raise TypeError(
        f"{name} leaf {where} has dtype {jnp.result_type(t)}, but the parameter has dtype "
        f"{jnp.result_type(p)}; grad_fn must return gradients in the parameters' dtypes."
      )


def check_real(params: Any) -> None:
  """Refuses complex leaves: for them jax.grad returns the conjugate of the ascent direction."""
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    if is_float_leaf(x) and jnp.issubdtype(jnp.result_type(x), jnp.complexfloating):
      raise TypeError(
        f"parameter {jax.tree_util.keystr(path) or '<root>'} is complex ({jnp.result_type(x)}): "
        "Unified SAM supports real parameters only (jax.grad of a real loss returns the conjugate of the "
        "ascent direction for complex ones, so the step would descend). Keep real and imaginary parts as "
        "two real arrays, e.g. {'re': z.real, 'im': z.imag}."
      )


def check_params_given(params: Any, method: str) -> None:
  """``params`` given, and a pytree of arrays: a function or another object among its leaves is refused.

  The usual such leaf is an Equinox model's activation function, when the model is passed whole.
  """
  if params is None:
    raise ValueError(f"unified_sam.{method} needs params (where the gradients are taken); got params=None.")
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not isinstance(x, (jax.Array, np.ndarray, np.generic, numbers.Number)):
      raise TypeError(
        f"unified_sam.{method}: params leaf {jax.tree_util.keystr(path) or '<root>'} is "
        f"{'a function' if callable(x) else 'a ' + type(x).__name__}, not an array; params must be a pytree "
        "of arrays. For an Equinox "
        "model pass its arrays, eqx.filter(model, eqx.is_array), and let grad_fn recombine them with the "
        "rest (eqx.partition, eqx.combine)."
      )


def check_state(state: Any, state_type: type) -> None:
  """Raises TypeError unless ``state`` is a ``state_type``, the state this transformation's init returns."""
  if not isinstance(state, state_type):
    got = "None" if state is None else f"a state of type {type(state).__name__}"
    raise TypeError(
      f"unified_sam.update: state must be the {state_type.__name__} its init returned; got {got}. "
      "In a chain, give the chain's state to the chain's update."
    )


def check_scales(scales: Any, params: Any) -> None:
  """``scales`` (ASAM's T): a tree like ``params`` whose leaves are None or real arrays scaling theirs."""
  try:
    leaves = jax.tree.structure(params).flatten_up_to(scales)
  except (ValueError, TypeError) as err:
    raise ValueError(f"scales must have the tree structure of params (None leaves allowed): {err}") from None
  for (path, p), t in zip(jax.tree_util.tree_flatten_with_path(params)[0], leaves, strict=True):
    if t is None or not is_float_leaf(p):
      continue
    where = jax.tree_util.keystr(path) or "<root>"
    if jnp.issubdtype(jnp.result_type(t), jnp.complexfloating):
      raise TypeError(f"scales leaf {where} is complex ({jnp.result_type(t)}); scales must be real.")
    try:
      shape = np.broadcast_shapes(np.shape(t), np.shape(p))
    except ValueError:
      shape = None
    if shape != np.shape(p):
      raise ValueError(
        f"scales leaf {where} has shape {np.shape(t)}, which does not scale the parameter's {np.shape(p)} "
        "elementwise."
      )


def check_ascent_point(params: Any, perturbed: Any) -> None:
  """Checks, when the step runs, that each floating leaf of ``params + e`` is finite where ``params`` is.

  A perturbation beyond the parameters' dtype (65504 in float16) or a non-finite gradient makes it inf or
  NaN, and ``grad_fn`` would be evaluated there. A ``checkify.debug_check`` per leaf, added with
  ``check_values`` as :func:`optax_usam._validation.scalars.check_at_run_time` is.
  """
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, x), y in zip(paths, jax.tree.leaves(perturbed), strict=True):
    if not is_float_leaf(x):
      continue
    dtype = jnp.result_type(x)
    # checkify formats the message: braces in a key must not read as fields.
    where = (jax.tree_util.keystr(path) or "<root>").replace("{", "{{").replace("}", "}}")
    checkify.debug_check(
      jnp.all(jnp.isfinite(y) | ~jnp.isfinite(x)),
      f"the ascent point params + e is not finite at leaf {where} where params are: e overflowed "
      f"{dtype.name} (largest finite value {float(jnp.finfo(dtype).max):.5g}), or the gradient is not "
      "finite. Use a smaller rho, or a wider parameter dtype (check_values=True).",
    )


def check_update_args(
  updates: Any,
  params: Any,
  grad_fn: Any,
  eps: Any = None,
  dtype: Any = None,
  rho: Any = None,
  *,
  fresh_gradient: bool = True,
) -> Any:
  """Params and ``grad_fn`` given, no ``optax.MaskedNode`` in params (``grad_fn`` would fail on them).

  ``eps`` and ``rho``, when given, are checked against ``dtype``, the dtype of the step; ``rho`` is the
  concrete value at count 0 of a constant or a schedule (the ``first`` of
  :func:`~optax_usam._validation.scalars.bounded_schedule`).

  Returns ``updates``, or None when they are absent: None, or, where the ascent direction does not read
  them (``fresh_gradient=False``), a tree without leaves (``nnx.Optimizer.update(model, None)`` passes one).
  """
  check_params_given(params, "update")
  if eps is not None:
    check_eps(eps, dtype)
  if rho is not None:
    check_representable(rho, "rho", dtype)
  if grad_fn is None:
    raise ValueError(
      "unified_sam.update needs grad_fn=, a function params -> gradients on the current batch, to evaluate "
      "the gradient at the perturbed point. A wrapper that passes no extra arguments to the optimizer inside "
      "it (optax.lookahead) drops grad_fn: bind it for the step instead, optax.GradientTransformation("
      "tx.init, functools.partial(tx.update, grad_fn=grad_fn)) (docs/recipes.md, Lookahead)."
    )
  check_callable(grad_fn, "grad_fn", "params -> gradients")
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  if any(is_masked(x) for x in jax.tree.leaves(params, is_leaf=is_masked)):
    raise ValueError(
      "unified_sam received parameters with optax.MaskedNode leaves: it is inside optax.masked, "
      "optax.partition or optax.multi_transform, which hide parameters from grad_fn. Put unified_sam "
      "outside them, first in the chain, and choose the perturbed parameters with "
      "unified_sam(..., perturb_mask=mask); the base optimizer may still be masked or partitioned."
    )
  if updates is None or (not fresh_gradient and not jax.tree.leaves(updates)):
    if fresh_gradient:
      raise ValueError(
        "unified_sam.update got updates=None, but its ascent direction is built from the gradient at "
        "the current parameters: pass that gradient as updates. Only directions that do not read it "
        "(source 'previous_sam_gradient' or 'grad_fn': momentum_sam, random_smoothing_sam) take "
        "updates=None; optax_usam.needs_fresh_gradient(opt_state) says which an optimizer state needs."
      )
    return None
  check_matches_params(updates, params, "updates", dtypes=False)
  return updates
