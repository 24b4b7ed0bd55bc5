"""Validation of hyperparameters that may be numbers or schedules.

Each becomes a function of the optax step ``count`` (an int32, 0 on the first
update). Bad values are rejected here, when a transformation is built, not
inside a trace where they would surface as NaN.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

Schedule = Callable[[chex.Numeric], chex.Numeric]

LAMBDA_STRINGS = ("1/t", "1-1/t")


def _as_number(value: Any, name: str, allowed: str, traced: bool) -> float | jax.Array:
  """A Python or 0-d array number as a float, or raises TypeError.

  With ``traced``, a traced scalar is returned as it is: that is how
  ``optax.inject_hyperparams`` passes hyperparameters under ``jit`` (and
  ``vmap`` over a sweep). Its value cannot be read, so it is not range-checked.
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
  """The schedule's value at count 0 when it can be read eagerly, else None.

  None when the schedule closes over traced values, e.g. a lambda vmapped
  over in a sweep: its values can only be checked by the caller.
  """
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
  """Returns ``count -> value`` for a number in [low, high] or a schedule whose value at 0 is.

  A schedule is checked at count 0 when that value can be computed eagerly;
  later values are the schedule's responsibility.
  """
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


def rho_schedule(rho: float | Schedule) -> Schedule:
  """Returns ``count -> rho_t`` for a non-negative number or a schedule."""
  return bounded_schedule(rho, "rho", 0.0, math.inf)


def lambda_schedule(lambd: float | str | Schedule) -> Schedule:
  """Returns ``count -> lambda_t`` for a float in [0, 1], ``'1/t'``, ``'1-1/t'`` or a callable.

  For the strings, t = count + 1, so t = 1 on the first update as in the
  official implementation: ``'1/t'`` starts as SAM and ``'1-1/t'`` as USAM.
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
  """Returns ``value`` as a float after checking it is finite and non-negative (traced: as is)."""
  number = _as_number(value, name, "a non-negative finite float", traced)
  if isinstance(number, float) and not _in_range(number, 0.0, math.inf):
    raise ValueError(f"{name} must be a non-negative finite float; got {number}.")
  return number


def check_positive(value: Any, name: str, *, traced: bool = False) -> float | jax.Array:
  """Returns ``value`` as a float after checking it is finite and positive (traced: as is)."""
  number = _as_number(value, name, "a positive finite float", traced)
  if isinstance(number, float) and not (math.isfinite(number) and number > 0):
    raise ValueError(f"{name} must be a positive finite float; got {number}.")
  return number
