"""Validation of the ``rho`` and ``lambd_schedule`` hyperparameters.

Both become functions of the optax step ``count`` (0 on the first update).
Bad values are rejected here, when the transformation is built, not inside a
trace where they would surface as NaN.
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


def _as_float(value: Any, name: str, allowed: str) -> float:
  """Converts a Python or 0-d array number to float, or raises TypeError."""
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be {allowed}; got the bool {value!r}.")
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (np.ndarray, jax.Array)) and value.shape == ():
    if isinstance(value, jax.core.Tracer):
      raise TypeError(
          f"{name} must be a concrete number when the transformation is built; "
          "pass a schedule (a callable of the step count) for a traced value."
      )
    if jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(
        value.dtype, jnp.integer
    ):
      return float(value)
  raise TypeError(f"{name} must be {allowed}; got {value!r} of type {type(value).__name__}.")


def _concrete_at_zero(schedule: Schedule) -> float | None:
  """The schedule's value at count 0 when it can be read eagerly, else None."""
  value = schedule(jnp.zeros((), jnp.int32))
  try:
    return float(np.asarray(value))
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def rho_schedule(rho: float | Schedule) -> Schedule:
  """Returns ``count -> rho_t`` after checking ``rho`` is a non-negative number or a schedule."""
  allowed = "a non-negative finite float or a schedule (callable count -> rho)"
  if callable(rho):
    first = _concrete_at_zero(rho)
    if first is not None and not (math.isfinite(first) and first >= 0):
      raise ValueError(f"rho schedule must give non-negative finite values; rho(0) = {first}.")
    return rho
  value = _as_float(rho, "rho", allowed)
  if not (math.isfinite(value) and value >= 0):
    raise ValueError(f"rho must be {allowed}; got {value}.")
  return lambda count: value


def lambda_schedule(lambd: float | str | Schedule) -> Schedule:
  """Returns ``count -> lambda_t`` for a float in [0, 1], ``'1/t'``, ``'1-1/t'`` or a callable.

  For the strings, t = count + 1, so t = 1 on the first update as in the
  official implementation: ``'1/t'`` starts as SAM and ``'1-1/t'`` as USAM.
  """
  allowed = f"a float in [0, 1], one of {LAMBDA_STRINGS}, or a callable count -> lambda"
  if isinstance(lambd, str):
    if lambd == "1/t":
      return lambda count: 1.0 / (count + 1.0)
    if lambd == "1-1/t":
      return lambda count: 1.0 - 1.0 / (count + 1.0)
    raise ValueError(f"lambd_schedule must be {allowed}; got the unknown string {lambd!r}.")
  if callable(lambd):
    first = _concrete_at_zero(lambd)
    if first is not None and not 0.0 <= first <= 1.0:
      raise ValueError(f"lambd_schedule must give values in [0, 1]; lambd_schedule(0) = {first}.")
    return lambd
  value = _as_float(lambd, "lambd_schedule", allowed)
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"lambd_schedule must be {allowed}; got {value}.")
  return lambda count: value


def check_eps(eps: Any) -> float:
  """Returns ``eps`` as a float after checking it is finite and positive."""
  value = _as_float(eps, "eps", "a positive finite float")
  if not (math.isfinite(value) and value > 0):
    raise ValueError(f"eps must be a positive finite float; got {value}.")
  return value


def check_nonnegative(value: Any, name: str) -> float:
  """Returns ``value`` as a float after checking it is finite and non-negative."""
  number = _as_float(value, name, "a non-negative finite float")
  if not (math.isfinite(number) and number >= 0):
    raise ValueError(f"{name} must be a non-negative finite float; got {number}.")
  return number
