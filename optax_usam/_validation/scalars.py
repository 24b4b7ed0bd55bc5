"""Checks of numbers and schedules: hyperparameters, and the constants of the theory and the samplers.

Hyperparameters that may be numbers or schedules become functions of the optax
``count`` (int32, 0 on the first update), rejected when a transformation is
built rather than turning into NaN inside a trace.
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


def check_lambda_string(lambd: str, allowed: tuple[str, ...]) -> str:
  """``lambd`` if it names a lambda schedule in ``allowed``."""
  if lambd not in allowed:
    raise ValueError(
      f"lambd_schedule must be a float in [0, 1], one of {allowed}, or a callable "
      f"count -> lambda; got the unknown string {lambd!r}."
    )
  return lambd


def check_inverse_t(constant: Any, per_t: Any) -> None:
  """lambda_t = constant + per_t / t stays in [0, 1] for t >= 1: its ends constant + per_t and constant do."""
  constant = check_interval(constant, "constant", 0.0, 1.0)
  per_t = _as_number(per_t, "per_t", "a finite float", traced=True)
  if isinstance(constant, float) and isinstance(per_t, float) and not _in_range(constant + per_t, 0.0, 1.0):
    raise ValueError(
      "constant + per_t is lambda at t = 1 and must be in [0, 1]; "
      f"got {constant} + {per_t} = {constant + per_t}."
    )


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


def check_interval(
  value: Any, name: str, low: float, high: float, *, open_low: bool = False, open_high: bool = False
) -> float | jax.Array:
  """``value`` as a float in [low, high], either end open on request; a traced scalar as is.

  Traced values come from ``optax.inject_hyperparams`` or a vmapped sweep: they cannot be range-checked.
  """
  bounds = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
  number = _as_number(value, name, f"a float in {bounds}", traced=True)
  if isinstance(number, float) and (
    not _in_range(number, low, high) or (open_low and number == low) or (open_high and number == high)
  ):
    raise ValueError(f"{name} must be a float in {bounds}; got {number}.")
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


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
  """``value`` if it is one of the strings ``choices``; TypeError for a non-string, ValueError otherwise."""
  if not isinstance(value, str):
    raise TypeError(f"{name} must be one of {choices}; got {value!r} of type {type(value).__name__}.")
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}; got {value!r}.")
  return value


def check_seed(seed: Any) -> int | jax.Array:
  """A PRNG seed: an int, or a scalar integer array (``optax.inject_hyperparams`` turns ints into those)."""
  is_array = isinstance(seed, (jax.Array, np.ndarray))
  if is_array and seed.shape == () and jnp.issubdtype(seed.dtype, jnp.integer):
    return seed
  return check_int(seed, "seed", bounds="an int")


def check_bools(**flags: Any) -> None:
  """Raises TypeError naming the first of ``flags`` that is not a bool."""
  for name, flag in flags.items():
    if not isinstance(flag, bool):
      raise TypeError(f"{name} must be a bool; got {flag!r}.")


def check_callable(fn: Any, name: str, signature: str) -> None:
  if not callable(fn):
    raise TypeError(f"{name} must be callable ({signature}); got {type(fn).__name__}.")


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


def check_representable(value: Any, name: str, dtype: Any) -> None:
  """A concrete ``value`` must be finite in ``dtype``, the dtype it is computed in (traced: unchecked)."""
  if isinstance(value, numbers.Real) and math.isfinite(value) and abs(value) > float(jnp.finfo(dtype).max):
    raise ValueError(
      f"{name}={value:g} is beyond the largest {jnp.dtype(dtype).name} ({float(jnp.finfo(dtype).max):.3g}), "
      "the dtype these parameters' step is computed in: it would be inf. Use a smaller value, or float64 "
      "parameters."
    )


def check_perturb_values(rho: Any, lambd: Any, eps: Any, dtype: Any) -> None:
  """The ranges of :func:`optax_usam.perturb`'s Python numbers; arrays (a step's rho_t, lambda_t) are the
  caller's to check (``check_values``)."""
  if isinstance(rho, numbers.Real):
    check_nonnegative(rho, "rho")
    check_representable(rho, "rho", dtype)
  if isinstance(lambd, numbers.Real):
    check_interval(lambd, "lambd", 0.0, 1.0)
  if isinstance(eps, numbers.Real):
    check_eps(eps, dtype)


def check_scalars(**values: Any) -> None:
  """Raises ValueError naming the first of ``values`` that is not a scalar (traced scalars pass)."""
  for name, value in values.items():
    if np.shape(value) != ():
      raise ValueError(f"{name} must be a scalar; got shape {np.shape(value)}.")


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


def check_summable_powers(step_power: Any, radius_power: Any) -> None:
  """0 < step_power <= 1, radius_power >= 0 and step_power + radius_power > 1, where concrete.

  The rule of ``theory.almost_constant_schedules``: with gamma_k ~ 1/k^step_power and
  rho_k ~ 1/k^radius_power, sum gamma_k = inf and sum gamma_k rho_k < inf. Traced powers (a vmapped sweep)
  pass unread.
  """
  step_power = check_interval(step_power, "step_power", 0.0, 1.0, open_low=True)
  radius_power = check_nonnegative(radius_power, "radius_power", traced=True)
  if isinstance(step_power, float) and isinstance(radius_power, float) and step_power + radius_power <= 1:
    raise ValueError(
      "step_power + radius_power must be > 1 (with 0 < step_power <= 1 and radius_power >= 0), so that "
      "sum_k gamma_k = inf while sum_k gamma_k rho_k < inf; got step_power + radius_power = "
      f"{step_power} + {radius_power} = {step_power + radius_power}."
    )
