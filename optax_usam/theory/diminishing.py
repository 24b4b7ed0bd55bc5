r"""Diminishing step sizes with an almost constant radius: SAM as inexact gradient descent.

Without the PL condition, Khanh et al. read SAM as inexact gradient descent
and show the role of diminishing step sizes, with a radius that may stay
almost constant: :func:`diminishing_step_size`, :func:`almost_constant_radius`
and both together, checked against the rule that makes the perturbation's
error summable, in :func:`almost_constant_schedules`. Each is a power law of
the optax count.

Public as ``optax_usam.theory.<name>``.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp
import optax

from optax_usam import _validation
from optax_usam.theory.pl import StepSchedules

__all__ = ["almost_constant_radius", "almost_constant_schedules", "diminishing_step_size"]


def _power_law(scale: chex.Numeric, power: chex.Numeric) -> optax.Schedule:
  """``count -> scale / (count + 1)^power``, in the default float dtype (float64 under x64)."""

  def schedule(count: chex.Numeric) -> chex.Numeric:
    k = jnp.asarray(count, jnp.result_type(float))
    return scale / (k + 1) ** power

  return schedule


def almost_constant_radius(C: chex.Numeric, p: chex.Numeric) -> optax.Schedule:
  r"""The "almost constant" perturbation radius :math:`\rho_k = C / (k+1)^p`, as an optax schedule.

  Khanh et al. (NeurIPS 2024, Remark 3.6 and the experiment of its appendix)
  compare SAM with a constant radius :math:`\rho = C` against the radius
  :math:`\rho_k = C / k^p`, which that form needs to index from :math:`k = 1`;
  here the optax count :math:`k = 0, 1, \dots` stands for their :math:`k + 1`.
  The form is quoted in a figure caption of the text available to this
  project; the paper's own equation number could not be checked there. A
  small :math:`p` keeps the radius close to :math:`C` for any realistic number
  of steps (:math:`p = 10^{-3}` loses under 1.4% in :math:`10^6` steps) while
  still tending to 0, which is what diminishing step sizes need (see
  :func:`almost_constant_schedules`). :math:`p = 0` is the constant radius.

  ``C`` and ``p`` may be traced (to ``vmap`` over them); concrete values are
  checked here.

  Args:
    C: the radius at the first update, :math:`C \ge 0`, finite.
    p: the decay power, :math:`p \ge 0`, finite.

  Returns:
    ``count -> rho_count``, for :func:`optax_usam.unified_sam`'s ``rho``.

  Examples:
    >>> from optax_usam import theory
    >>> rho = theory.almost_constant_radius(C=0.05, p=0.5)
    >>> print(rho(0), rho(3))  # C / 1^p, C / 4^p
    0.05 0.025
  """
  _validation.check_nonnegative(C, "C", traced=True)
  _validation.check_nonnegative(p, "p", traced=True)
  return _power_law(C, p)


def diminishing_step_size(init_value: chex.Numeric, power: chex.Numeric = 1.0) -> optax.Schedule:
  r"""The step size :math:`\gamma_k = \gamma_0 / (k+1)^a`, :math:`0 < a \le 1`, as an optax schedule.

  For the optax count :math:`k = 0, 1, \dots`. The range of ``power``
  gives both conditions of a diminishing step size: :math:`\gamma_k \to 0`
  (:math:`a > 0`) and :math:`\sum_k \gamma_k = \infty` (:math:`a \le 1`), so
  the iterates can still travel any distance.
  ``init_value`` and ``power`` may be traced; concrete values are checked here.

  Args:
    init_value: :math:`\gamma_0 > 0`, the learning rate of the first update.
    power: :math:`a \in (0, 1]`.

  Returns:
    ``count -> gamma_count``, for ``optax.sgd(learning_rate=...)``.

  Examples:
    >>> from optax_usam import theory
    >>> gamma = theory.diminishing_step_size(0.1)
    >>> print(gamma(0), gamma(4))  # 0.1 / (k + 1)
    0.1 0.02
  """
  _validation.check_positive(init_value, "init_value", traced=True)
  _validation.check_interval(power, "power", 0.0, 1.0, open_low=True)
  return _power_law(init_value, power)


def almost_constant_schedules(
  gamma: chex.Numeric,
  rho: chex.Numeric,
  *,
  step_power: chex.Numeric = 1.0,
  radius_power: chex.Numeric = 1e-3,
) -> StepSchedules:
  r"""Diminishing steps with an almost constant radius, for SAM without the PL condition.

  For the optax count :math:`k = 0, 1, \dots`:

  .. math::
    \gamma_k = \frac{\gamma}{(k+1)^{a}}, \qquad \rho_k = \frac{\rho}{(k+1)^{p}},
    \qquad 0 < a \le 1, \quad p \ge 0, \quad a + p > 1,

  with :math:`a` = ``step_power`` and :math:`p` = ``radius_power``
  (:func:`diminishing_step_size` and :func:`almost_constant_radius`). Pairs
  outside the rule are refused. The defaults, :math:`1/(k+1)` steps and a
  radius that falls by 1.4% over :math:`10^6` steps, satisfy it.

  **Where the rule comes from** (our derivation, for :math:`\lambda = 1`,
  SAM). For an :math:`L`-smooth :math:`f`, the gradient SAM uses at
  :math:`x + \rho\, d/\|d\|` is within :math:`L\rho` of :math:`\nabla f(x)`,
  whatever the direction :math:`d`. So SAM is inexact gradient descent,
  :math:`x_{k+1} = x_k - \gamma_k (\nabla f(x_k) + e_k)`, with an *absolute*
  error :math:`\|e_k\| \le \epsilon_k = L \rho_k`. Khanh et al. analyse SAM
  as such a method (their abstract says so). The usual conditions for
  inexact gradient descent with absolute errors are

  .. math::
    \sum_k \gamma_k = \infty, \qquad \sum_k \gamma_k \epsilon_k < \infty,

  the first so that the steps do not stop short of a stationary point, the
  second so that the errors move the iterates by a finite total,
  :math:`\sum_k \gamma_k \|e_k\| < \infty`. It also bounds the error term of
  the descent lemma: once :math:`L\gamma_k \le 1/2` (for all large
  :math:`k`, as :math:`\gamma_k \to 0`),

  .. math::
    f(x_{k+1}) \le f(x_k) - \frac{\gamma_k}{4} \|\nabla f(x_k)\|^2
    + \frac{3}{2} \gamma_k \epsilon_k^2,

  and :math:`\sum_k \gamma_k \epsilon_k^2 \le \epsilon_0 \sum_k \gamma_k
  \epsilon_k`; so, for :math:`f` bounded below,
  :math:`\sum_k \gamma_k \|\nabla f(x_k)\|^2 < \infty` and
  :math:`\liminf_k \|\nabla f(x_k)\| = 0`. For power laws,
  :math:`\sum_k (k+1)^{-a} = \infty` is :math:`a \le 1` and
  :math:`\sum_k (k+1)^{-(a+p)} < \infty` is :math:`a + p > 1`: the rule above.
  A constant radius (:math:`p = 0`) never satisfies it, in line with Si & Yun
  (2023): with a constant radius, stochastic SAM (and deterministic SAM on
  nonconvex functions) may only reach a neighbourhood of the optimum. The
  rule is sufficient, not necessary: they also show deterministic SAM with a
  constant radius (and suitable step sizes) converging on smooth strongly convex
  functions. For :math:`\lambda < 1` the perturbation adds
  a relative error of at most :math:`(1-\lambda) L \rho_k \|\nabla f(x_k)\|`,
  which falls below :math:`\|\nabla f(x_k)\|/2` once
  :math:`\rho_k \le 1/(2(1-\lambda)L)`. With sampled gradients the noise
  needs its own conditions (such as :math:`\sum_k \gamma_k^2 < \infty`,
  i.e. :math:`a > 1/2`), which are not checked here.

  The exact statements of Khanh et al.'s theorems are not in any text
  available to this project, so this rule is not quoted from them. The
  epoch-wise "Diminish 1/2/3" schedules of their CIFAR experiments, as the
  authors' public code applies them, are :func:`diminish_schedule`.

  ``gamma``, ``rho`` and the powers may be traced (to ``vmap`` over them);
  concrete values are checked here, the pair rule only when both powers are
  concrete.

  Args:
    gamma: :math:`\gamma > 0`, the learning rate of the first update.
    rho: :math:`\rho \ge 0`, the radius of the first update.
    step_power: :math:`a \in (0, 1]`.
    radius_power: :math:`p \ge 0`, with :math:`a + p > 1`.

  Returns:
    :class:`StepSchedules`; pass ``.rho`` to :func:`optax_usam.unified_sam`
    and ``.gamma`` to ``optax.sgd(learning_rate=...)``.

  Raises:
    ValueError: when a value is out of its range, or the powers break
      :math:`a + p > 1`.

  Examples:
    >>> from optax_usam import theory
    >>> sched = theory.almost_constant_schedules(gamma=0.1, rho=0.05)
    >>> print(sched.gamma(9), sched.rho(9))  # 0.1 / 10, 0.05 / 10^0.001
    0.01 0.049885
    >>> theory.almost_constant_schedules(gamma=0.1, rho=0.05, step_power=0.5, radius_power=0.25)
    Traceback (most recent call last):
    ...
    ValueError: step_power + radius_power must be > 1 ...
  """
  _validation.check_positive(gamma, "gamma", traced=True)
  _validation.check_nonnegative(rho, "rho", traced=True)
  _validation.check_summable_powers(step_power, radius_power)
  return StepSchedules(rho=_power_law(rho, radius_power), gamma=_power_law(gamma, step_power))
