"""Checks of numbers and schedules: hyperparameters, and the constants of the theory and the samplers.

Hyperparameters that may be numbers or schedules become functions of the optax
``count`` (int32, 0 on the first update), rejected when a transformation is
built rather than turning into NaN inside a trace. A value known only when the
step runs (a traced hyperparameter, a schedule's value after count 0) is
checked then, with ``check_values=True``: :func:`check_at_run_time`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

Schedule = Callable[[chex.Numeric], chex.Numeric]

# Whether a range check given a traced value adds its run-time check (see checking_traced_values).
_CHECK_TRACED = contextvars.ContextVar("optax_usam_check_traced", default=False)


@contextlib.contextmanager
def checking_traced_values(enabled: bool) -> Iterator[None]:
  """Within it, the range checks below given a traced value check it when the step runs.

  ``unified_sam(..., check_values=True)`` and every member of the SAM family built with it check their
  hyperparameters inside it: under ``optax.inject_hyperparams`` in ``jit`` the transformation is rebuilt in
  each step's trace from traced hyperparameters, which only the run can read.
  """
  token = _CHECK_TRACED.set(bool(enabled))
  try:
    yield
  finally:
    _CHECK_TRACED.reset(token)


def _interval(low: float, high: float, open_low: bool = False, open_high: bool = False) -> str:
  right = ", inf)" if math.isinf(high) else f", {high}{')' if open_high else ']'}"
  return f"{'(' if open_low else '['}{low}{right}"


def _inside(x: Any, low: float, high: float, open_low: bool = False, open_high: bool = False) -> Any:
  """Whether ``x`` (a float, or an array: then elementwise) is finite and in the interval."""
  finite = math.isfinite(x) if isinstance(x, float) else jnp.isfinite(x)
  above = x > low if open_low else x >= low
  below = x < high if open_high else x <= high
  return finite & above & below


def check_at_run_time(
  value: chex.Numeric,
  name: str,
  low: float,
  high: float,
  *,
  open_low: bool = False,
  open_high: bool = False,
  allowed: str | None = None,
) -> None:
  """Checks that ``value`` is finite and in the interval when the step runs (``check_values=True``).

  The run-time form of this module's range checks, for a value no check can read when the step is built: a
  traced hyperparameter, a schedule's value after count 0. It is a ``checkify.debug_check``: it reports under
  ``checkify.checkify(step, errors=checkify.user_checks)`` and does nothing otherwise, but a jitted step that
  holds it loses JAX's fast dispatch path, so callers add it only with ``check_values``. ``allowed`` words
  the range (default: a finite float in the interval). A Python number is skipped: check it when the step
  is built.
  """
  if isinstance(value, numbers.Real):
    return
  allowed = allowed or f"a finite float in {_interval(low, high, open_low, open_high)}"
  value = jnp.asarray(value)
  checkify.debug_check(
    _inside(value, low, high, open_low, open_high),
    f"{name} must be {allowed}; got {{}} when the step ran (check_values=True).",
    value,
  )


def _is_real(value: Any) -> bool:
  """Whether ``value`` is a real number, or an array (traced or not) of bools, integers or floats."""
  if isinstance(value, numbers.Real):
    return True
  dtype = getattr(value, "dtype", None)
  return dtype is not None and any(
    jnp.issubdtype(dtype, kind) for kind in (jnp.bool_, jnp.integer, jnp.floating)
  )


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


def _schedule_value(value: Any, name: str) -> Any:
  """``value``, one a schedule returned, if it is a real scalar; raises naming the schedule otherwise."""
  if not _is_real(value):
    raise TypeError(
      f"{name}: a schedule must return a real number or a real scalar array; got {value!r} of type "
      f"{type(value).__name__}."
    )
  if np.ndim(value) != 0:
    raise ValueError(f"{name}: a schedule must return a scalar; got shape {np.shape(value)}.")
  return value


def _concrete_at_zero(schedule: Schedule) -> float | None:
  """The schedule's value at count 0, or None when it closes over traced values (a vmapped sweep)."""
  value = schedule(jnp.zeros((), jnp.int32))
  try:
    return float(np.asarray(value))
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    return None


def bounded_schedule(value: float | Schedule, name: str, low: float, high: float) -> Schedule:
  """``count -> value`` for a number in [low, high] or a schedule whose value at count 0 is.

  Every value a schedule returns must be a real scalar, checked as it is traced (at no run-time cost). Built
  inside :func:`checking_traced_values`, the schedule also checks the range of each value when the step runs,
  and a traced number is checked then.

  The returned function's ``first`` is its value at count 0 as a float when that is concrete (a number, or a
  schedule that does not close over traced values), else None: the step checks it against the dtype it
  computes in (:func:`check_representable`), which is not known here.
  """
  bounds = _interval(low, high)
  allowed = f"a finite float in {bounds} or a schedule (callable count -> {name})"
  at_run_time = _CHECK_TRACED.get()
  if callable(value):
    schedule = value

    def checked(count: chex.Numeric) -> chex.Numeric:
      result = _schedule_value(schedule(count), name)
      if at_run_time:
        check_at_run_time(result, name, low, high)
      return result

    first = _concrete_at_zero(checked)
    if first is not None and not _inside(first, low, high):
      raise ValueError(f"{name} schedule must give values in {bounds}; {name}(0) = {first}.")
  else:
    number = _check_range(value, name, allowed, low, high, traced=True)
    first = number if isinstance(number, float) else None

    def checked(count: chex.Numeric) -> chex.Numeric:
      del count
      return number

  checked.first = first  # type: ignore[attr-defined]
  return checked


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
  if isinstance(constant, float) and isinstance(per_t, float) and not _inside(constant + per_t, 0.0, 1.0):
    raise ValueError(
      "constant + per_t is lambda at t = 1 and must be in [0, 1]; "
      f"got {constant} + {per_t} = {constant + per_t}."
    )


def _check_range(
  value: Any,
  name: str,
  allowed: str,
  low: float,
  high: float,
  *,
  open_low: bool = False,
  open_high: bool = False,
  traced: bool,
) -> float | jax.Array:
  """``value`` as a float in the interval, or ValueError; with ``traced``, a traced scalar as is.

  Traced values come from ``optax.inject_hyperparams`` or a vmapped sweep: inside
  :func:`checking_traced_values` they are checked when the step runs.
  """
  number = _as_number(value, name, allowed, traced)
  if isinstance(number, float):
    if not _inside(number, low, high, open_low, open_high):
      raise ValueError(f"{name} must be {allowed}; got {number}.")
  elif _CHECK_TRACED.get():
    check_at_run_time(number, name, low, high, open_low=open_low, open_high=open_high, allowed=allowed)
  return number


def check_nonnegative(value: Any, name: str, *, traced: bool = False) -> float | jax.Array:
  """``value`` as a float after checking it is finite and non-negative (traced: as is)."""
  return _check_range(value, name, "a non-negative finite float", 0.0, math.inf, traced=traced)


def check_positive(value: Any, name: str, *, traced: bool = False) -> float | jax.Array:
  """``value`` as a float after checking it is finite and positive (traced: as is)."""
  return _check_range(value, name, "a positive finite float", 0.0, math.inf, open_low=True, traced=traced)


def check_interval(
  value: Any, name: str, low: float, high: float, *, open_low: bool = False, open_high: bool = False
) -> float | jax.Array:
  """``value`` as a float in [low, high], either end open on request; a traced scalar as is."""
  allowed = f"a float in {_interval(low, high, open_low, open_high)}"
  return _check_range(value, name, allowed, low, high, open_low=open_low, open_high=open_high, traced=True)


def check_unit_interval(value: Any, name: str, *, open_at_zero: bool = False) -> float:
  """``value`` as a float in [0, 1], or in (0, 1] with ``open_at_zero``."""
  number = check_nonnegative(value, name)
  if number > 1 or (open_at_zero and number == 0):
    raise ValueError(f"{name} must be in {'(0' if open_at_zero else '[0'}, 1]; got {number}.")
  return number


def check_int(value: Any, name: str, low: float = -math.inf, high: float = math.inf, *, bounds: str) -> int:
  """``value`` as an int (a bool is not one; a concrete 0-d integer array is) in [low, high]; ``bounds``
  words that range."""
  if isinstance(value, jax.core.Tracer) and jnp.issubdtype(value.dtype, jnp.integer):
    # The user passed an int: optax.inject_hyperparams made it an array, traced under jit.
    raise TypeError(
      f"{name} must be {bounds}, fixed when the transformation is built; got a traced {value.dtype} value. "
      f"Under optax.inject_hyperparams, list {name!r} in static_args."
    )
  if (
    isinstance(value, (jax.Array, np.ndarray))
    and value.shape == ()
    and jnp.issubdtype(value.dtype, jnp.integer)
  ):
    value = int(value)
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be {bounds}; got {value!r}.")
  if not low <= value <= high:
    raise ValueError(f"{name} must be {bounds}; got {int(value)}.")
  return int(value)


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
  """``value`` if it is one of the strings ``choices``; TypeError for a non-string, ValueError otherwise."""
  if not isinstance(value, str):
    raise TypeError(f"{name} must be one of {choices}; got {value!r} of type {type(value).__name__}.")
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}; got {value!r}.")
  return value


def check_seed(seed: Any) -> int | jax.Array:
  """A PRNG seed: an int that gives a key no other accepted seed gives, or a scalar integer array
  (``optax.inject_hyperparams`` turns ints into those).

  Without ``jax_enable_x64`` JAX keeps the low 32 bits of a seed, so -1 and 2**32 - 1 give one key: the
  int32 range [-2**31, 2**31 - 1] (what inject_hyperparams makes of a seed anyway) holds each key once. With
  it, the int64 range, beyond which a seed overflows.
  """
  is_array = isinstance(seed, (jax.Array, np.ndarray))
  if is_array and seed.shape == () and jnp.issubdtype(seed.dtype, jnp.integer):
    return seed
  if jax.config.jax_enable_x64:
    low, high, kept = -(2**63), 2**63 - 1, "64-bit seeds"
  else:
    low, high, kept = -(2**31), 2**31 - 1, "32 bits of a seed without jax_enable_x64"
  return check_int(seed, "seed", low, high, bounds=f"an int in [{low}, {high}] (JAX keeps {kept})")


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
  """Raises naming the first of ``values`` that is not a real scalar: TypeError for a string, None or a
  complex number, ValueError for an array that is not 0-d (traced scalars pass)."""
  for name, value in values.items():
    if not _is_real(value):
      raise TypeError(
        f"{name} must be a real number or a real scalar array; got {value!r} of type {type(value).__name__}."
      )
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
