r"""Step sizes for PL functions: Theorems 3.2 (constant) and 3.5 (decreasing) of Oikonomou & Loizou.

For an :math:`L`-smooth :math:`\mu`-PL function and a sampler satisfying the
Expected Residual condition with constants :math:`(A, B)` (see
:mod:`optax_usam.sampling`), constant steps converge linearly to a
neighbourhood of the minimum, and :math:`\rho_t, \gamma_t = O(1/t)` at an
:math:`O(1/t)` rate to the minimum itself. The formulas are those of the
official experiment script (with :math:`L` the smoothness constant the
theorems ask for: :math:`L_{\max}` for single-sample stochastic runs).

Public as ``optax_usam.theory.<name>``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax.numpy as jnp
import optax

from optax_usam import _validation

__all__ = ["StepSchedules", "StepSizes", "pl_constant_steps", "pl_decreasing_schedules"]


class StepSizes(NamedTuple):
  """Constant perturbation radius ``rho`` and learning rate ``gamma``."""

  rho: float
  gamma: float


class StepSchedules(NamedTuple):
  """Optax schedules ``count -> rho_t`` and ``count -> gamma_t`` (count starts at 0)."""

  rho: optax.Schedule
  gamma: optax.Schedule


def pl_constant_steps(mu: float, L: float, A: float, B: float, lambd: float) -> StepSizes:
  r"""Theorem 3.2's constant :math:`\rho` and :math:`\gamma`.

  .. math::
    \rho = \frac{1}{4L} \min\left(1, \frac{\mu}{2 (B\mu + A)(1-\lambda)^2}\right),
    \qquad
    \gamma = \frac{1}{L} \min\left(2, \frac{\mu}{8 (B\mu + A)}\right),

  where a zero denominator counts as :math:`+\infty` (so :math:`\lambda = 1`
  gives :math:`\rho = 1/(4L)`, and a noiseless full batch with
  :math:`A = 0, B = 1` gives :math:`\min(2, 1/8)/L`).

  Args:
    mu: the PL constant :math:`\mu > 0`.
    L: the smoothness constant, :math:`L \ge \mu` (:math:`L_{\max}` for
      single-sample stochastic runs, as in the paper's experiments).
    A: ER constant :math:`A \ge 0` of the sampler.
    B: ER constant :math:`B \ge 0` of the sampler.
    lambd: the Unified SAM :math:`\lambda \in [0, 1]`.

  Returns:
    :class:`StepSizes` ``(rho, gamma)`` as Python floats.

  Examples:
    >>> from optax_usam import theory
    >>> theory.pl_constant_steps(mu=1.0, L=4.0, A=4.0, B=0.0, lambd=0.0)
    StepSizes(rho=0.0078125, gamma=0.0078125)
    >>> theory.pl_constant_steps(mu=1.0, L=4.0, A=4.0, B=0.0, lambd=1.0)  # SAM: rho = 1/(4L)
    StepSizes(rho=0.0625, gamma=0.0078125)
  """
  mu, L, A, B, lambd = _validation.check_pl_constants(mu, L, A, B, lambd)
  noise = B * mu + A
  rho_den = 2 * noise * (1 - lambd) ** 2
  rho = min(1.0, mu / rho_den if rho_den > 0 else math.inf) / (4 * L)
  gamma = min(2.0, mu / (8 * noise) if noise > 0 else math.inf) / L
  return StepSizes(rho, gamma)


def pl_decreasing_schedules(rho: chex.Numeric, gamma: chex.Numeric, mu: chex.Numeric) -> StepSchedules:
  r"""Theorem 3.5's decreasing steps, capped by the constant ones, as optax schedules.

  For the k-th update (optax count k = 0, 1, ...):

  .. math::
    \rho_k = \min\left(\rho, \frac{1}{2k+1}\right), \qquad
    \gamma_k = \min\left(\gamma, \frac{2k+1}{(k+1)^2 \mu}\right),

  so both start at the constant values of :func:`pl_constant_steps` and decay
  as :math:`O(1/k)`. ``rho``, ``gamma`` and ``mu`` may be traced (to
  ``vmap`` over hyperparameters); concrete values are checked here.

  Args:
    rho: the cap :math:`\rho \ge 0`.
    gamma: the cap :math:`\gamma > 0`.
    mu: the PL constant :math:`\mu > 0`.

  Returns:
    :class:`StepSchedules`; pass ``.rho`` to :func:`optax_usam.unified_sam`
    and ``.gamma`` to ``optax.sgd(learning_rate=...)``.

  Examples:
    >>> from optax_usam import theory
    >>> sched = theory.pl_decreasing_schedules(rho=0.03125, gamma=0.0078125, mu=1.0)
    >>> print(sched.rho(0), sched.rho(100))  # min(rho, 1/(2k+1))
    0.03125 0.0049751243
  """
  _validation.check_pl_caps(rho, gamma, mu)

  def rho_schedule(count: chex.Numeric) -> chex.Numeric:
    k = jnp.asarray(count, jnp.result_type(float))
    return jnp.minimum(rho, 1.0 / (2 * k + 1))

  def gamma_schedule(count: chex.Numeric) -> chex.Numeric:
    k = jnp.asarray(count, jnp.result_type(float))
    return jnp.minimum(gamma, (2 * k + 1) / ((k + 1) ** 2 * mu))

  return StepSchedules(rho_schedule, gamma_schedule)
