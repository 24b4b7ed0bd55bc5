"""The argument checks of the core; ``perturbation.py`` keeps its own few, as this module uses its predicates.

Hyperparameters that may be numbers or schedules become functions of the optax
``count`` (int32, 0 on the first update), rejected when a transformation is
built rather than turning into NaN inside a trace. Checks of trees read
structures, shapes and dtypes only, so under ``jit`` they fire at trace time.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Hashable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_usam.perturbation import is_float_leaf, is_mask_function, leaf_mask

Schedule = Callable[[chex.Numeric], chex.Numeric]

# Numbers, schedules and batches.


def _as_number(value: Any, name: str, allowed: str, traced: bool) -> float | jax.Array:
  """A Python or 0-d array number as a float, or raises TypeError.

  With ``traced``, a traced scalar (``optax.inject_hyperparams`` under ``jit``) is returned unchecked.
  """
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be {allowed}; got the bool {value!r}.")
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (np.ndarray, jax.Array)):
    if value.shape != ():
      raise TypeError(f"{name} must be a scalar; got an array of shape {value.shape}.")
    if jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer):
      if not isinstance(value, jax.core.Tracer):
        return float(value)
      if traced:
        return value
      raise TypeError(f"{name} must be a concrete number; got a traced value.")
  raise TypeError(f"{name} must be {allowed}; got {value!r} of type {type(value).__name__}.")


def _concrete_at_zero(schedule: Schedule) -> float | None:
  """The schedule's value at count 0, or None when it closes over traced values (a vmapped sweep)."""
  value = schedule(jnp.zeros((), jnp.int32))
  if np.ndim(value) != 0:
    raise ValueError(f"a schedule must return a scalar; got shape {np.shape(value)} at count 0.")
  try:
    return float(np.asarray(value))
  except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    return None


def _in_range(value: float, low: float, high: float) -> bool:
  return math.isfinite(value) and low <= value <= high


def bounded_schedule(value: float | Schedule, name: str, low: float, high: float) -> Schedule:
  """``count -> value`` for a number in [low, high] or a schedule whose value at count 0 is."""
  bounds = f"[{low}, {high}]" if math.isfinite(high) else f"[{low}, inf)"
  allowed = f"a finite float in {bounds} or a schedule (callable count -> {name})"
  if callable(value):
    first = _concrete_at_zero(value)
    if first is not None and not _in_range(first, low, high):
      raise ValueError(f"{name} schedule must give values in {bounds}; {name}(0) = {first}.")
    return value
  number = _as_number(value, name, allowed, traced=True)
  if isinstance(number, float) and not _in_range(number, low, high):
    raise ValueError(f"{name} must be {allowed}; got {number}.")
  return lambda count: number


#: The strings ``lambd_schedule`` accepts besides numbers and callables: ``("1/t", "1-1/t")``.
LAMBDA_STRINGS = ("1/t", "1-1/t")


def lambda_schedule(lambd: float | str | Schedule) -> Schedule:
  """``count -> lambda_t`` for a float in [0, 1], one of ``LAMBDA_STRINGS`` or a callable.

  For the strings t = count + 1, as in the official code: ``'1/t'`` starts as SAM, ``'1-1/t'`` as USAM.
  """
  if isinstance(lambd, str):
    if lambd == "1/t":
      return lambda count: 1.0 / (count + 1.0)
    if lambd == "1-1/t":
      return lambda count: 1.0 - 1.0 / (count + 1.0)
    raise ValueError(
        f"lambd_schedule must be a float in [0, 1], one of {LAMBDA_STRINGS}, or a callable "
        f"count -> lambda; got the unknown string {lambd!r}."
    )
  return bounded_schedule(lambd, "lambd_schedule", 0.0, 1.0)


def check_nonnegative(value: Any, name: str, *, traced: bool = False) -> float | jax.Array:
  """``value`` as a float after checking it is finite and non-negative (traced: as is)."""
  number = _as_number(value, name, "a non-negative finite float", traced)
  if isinstance(number, float) and not _in_range(number, 0.0, math.inf):
    raise ValueError(f"{name} must be a non-negative finite float; got {number}.")
  return number


def check_positive(value: Any, name: str, *, traced: bool = False) -> float | jax.Array:
  """``value`` as a float after checking it is finite and positive (traced: as is)."""
  number = _as_number(value, name, "a positive finite float", traced)
  if isinstance(number, float) and not (math.isfinite(number) and number > 0):
    raise ValueError(f"{name} must be a positive finite float; got {number}.")
  return number


def check_unit_interval(value: Any, name: str, *, open_at_zero: bool = False) -> float:
  """``value`` as a float in [0, 1], or in (0, 1] with ``open_at_zero``."""
  number = check_nonnegative(value, name)
  if number > 1 or (open_at_zero and number == 0):
    raise ValueError(f"{name} must be in {'(0' if open_at_zero else '[0'}, 1]; got {number}.")
  return number


def check_int(value: Any, name: str, low: float = -math.inf, high: float = math.inf, *, bounds: str) -> int:
  """``value`` as an int (a bool is not one) in [low, high]; ``bounds`` words that range."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be {bounds}; got {value!r}.")
  if not low <= value <= high:
    raise ValueError(f"{name} must be {bounds}; got {value!r}.")
  return int(value)


def check_bools(**flags: Any) -> None:
  """Raises TypeError naming the first of ``flags`` that is not a bool."""
  for name, flag in flags.items():
    if not isinstance(flag, bool):
      raise TypeError(f"{name} must be a bool; got {flag!r}.")


def check_callable(fn: Any, name: str, signature: str) -> None:
  if not callable(fn):
    raise TypeError(f"{name} must be callable ({signature}); got {type(fn).__name__}.")


def leading_size(batch: Any) -> int:
  """The leading-axis size every leaf of ``batch`` shares; ValueError if they differ or one is a scalar."""
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(batch)}
  if not sizes or None in sizes or len(sizes) != 1:
    got = f"got leading sizes {sorted(sizes, key=str)}"
    raise ValueError(f"batch must be a pytree of arrays sharing their leading axis; {got}.")
  return sizes.pop()


# Trees: masks, and the gradients unified_sam's update receives.

_INJECT_HINT = (
    "A callable mask given to optax.inject_hyperparams must be listed in its static_args, or "
    "inject_hyperparams calls it with the step count, as a schedule."
)


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
    what = ("nothing is adapted: use adaptive=False" if name == "adaptive_mask"
            else "nothing is perturbed: use rho=0 for plain gradients")
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
    if dtypes and jnp.result_type(t) != jnp.result_type(p):
      raise TypeError(
          f"{name} leaf {where} has dtype {jnp.result_type(t)}, but the parameter has dtype "
          f"{jnp.result_type(p)}; grad_fn must return gradients in the parameters' dtypes."
      )


def check_eps(eps: Any, dtype: Any = jnp.float64) -> float | jax.Array:
  """A positive ``eps`` (traced: as is), refused below ``dtype``'s smallest normal.

  There XLA:CPU flushes it to 0, and a zero gradient with lambda > 0 would give 0/0.
  """
  eps = check_positive(eps, "eps", traced=True)
  tiny = float(jnp.finfo(dtype).tiny)
  if isinstance(eps, float) and eps < tiny:
    raise ValueError(
        f"eps={eps:g} is below the smallest normal {jnp.dtype(dtype).name} ({tiny:.3g}), the dtype the "
        f"norm is accumulated in for these parameters: it would act as 0. Use eps >= {tiny:.3g}."
    )
  return eps


def check_sam_options(axis_name: Any, adaptive: Any, adaptive_mask: Any, perturb_mask: Any) -> tuple:
  """Checks the axis name and the masks of :func:`optax_usam.unified_sam`; returns the masks."""
  if axis_name is not None and not isinstance(axis_name, Hashable):
    raise TypeError(f"axis_name must be None or a hashable axis name; got {axis_name!r}.")
  if adaptive_mask is not None and not adaptive:
    raise ValueError("adaptive_mask only applies with adaptive=True.")
  return check_mask(adaptive_mask, "adaptive_mask"), check_mask(perturb_mask, "perturb_mask")


def check_params_given(params: Any, method: str) -> None:
  if params is None:
    raise ValueError(f"unified_sam.{method} needs params (where the gradients are taken); got params=None.")


def check_update_args(updates: Any, params: Any, grad_fn: Any) -> None:
  """Params and ``grad_fn`` given, no ``optax.MaskedNode`` in params (``grad_fn`` would fail on them)."""
  check_params_given(params, "update")
  if grad_fn is None:
    raise ValueError(
        "unified_sam.update needs grad_fn=, a function params -> gradients on the "
        "current batch, to evaluate the gradient at the perturbed point."
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
  check_matches_params(updates, params, "updates", dtypes=False)


# Samplers and the step sizes of the theory.


def check_smoothness(smoothness: Any) -> np.ndarray:
  """The per-sample smoothness constants L_i as a non-empty 1-D float64 array of positive finite values."""
  try:
    values = np.asarray(smoothness, dtype=np.float64)
  except (TypeError, ValueError) as err:
    raise TypeError(
        f"smoothness must be a 1-D array of per-sample smoothness constants L_i; got {smoothness!r}."
    ) from err
  if values.ndim != 1 or values.size < 1:
    raise ValueError(f"smoothness must be a non-empty 1-D array of L_i; got shape {values.shape}.")
  if not np.all(np.isfinite(values)) or np.any(values <= 0):
    raise ValueError("smoothness must hold positive finite L_i values.")
  return values


def check_pl_constants(mu: Any, L: Any, A: Any, B: Any, lambd: Any) -> tuple[float, ...]:
  """``(mu, L, A, B, lambd)`` as floats, with mu, L > 0, A, B >= 0, L >= mu and lambd in [0, 1]."""
  mu, L = check_positive(mu, "mu"), check_positive(L, "L")
  A, B, lambd = check_nonnegative(A, "A"), check_nonnegative(B, "B"), check_unit_interval(lambd, "lambd")
  if L < mu:
    raise ValueError(f"L must be >= mu (an L-smooth mu-PL function has mu <= L); got L={L}, mu={mu}.")
  return mu, L, A, B, lambd


def check_pl_caps(rho: Any, gamma: Any, mu: Any) -> None:
  """Checks rho >= 0, gamma > 0 and mu > 0 where concrete; traced ones (a vmapped sweep) pass unread."""
  checks = ((rho, "rho", check_nonnegative), (gamma, "gamma", check_positive), (mu, "mu", check_positive))
  for value, name, check in checks:
    if not isinstance(value, jax.core.Tracer):
      check(value, name)
