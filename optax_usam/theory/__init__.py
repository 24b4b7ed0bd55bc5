r"""Step sizes from the convergence theory of SAM: PL functions, and diminishing steps.

For an :math:`L`-smooth :math:`\mu`-PL function and a sampler satisfying the
Expected Residual condition with constants :math:`(A, B)` (see
:mod:`optax_usam.sampling`), Oikonomou & Loizou give:

* Theorem 3.2 (constant steps): linear convergence to a neighbourhood of the
  minimum, with :func:`pl_constant_steps`.
* Theorem 3.5 (decreasing steps): :math:`\rho_t, \gamma_t = O(1/t)` give an
  :math:`O(1/t)` rate to the exact minimum, with :func:`pl_decreasing_schedules`.

The formulas are those of the official experiment script (with :math:`L` the
smoothness constant the theorems ask for: :math:`L_{\max}` for single-sample
stochastic runs). Both plug into the library and into optax directly.

Without the PL condition, Khanh et al. read SAM as inexact gradient descent and
show the role of diminishing step sizes, with a radius that may stay almost
constant: :func:`diminishing_step_size`, :func:`almost_constant_radius` and
both together, checked against the rule that makes the perturbation's error
summable, in :func:`almost_constant_schedules`. The learning rates of their
CIFAR experiments ("Constant", "Diminish 1/2/3"), as their public code runs
them, are :func:`diminish_schedule`.

Three modules, one idea each: :mod:`~optax_usam.theory.pl` (the PL theorems),
:mod:`~optax_usam.theory.diminishing` (power-law steps and radius) and
:mod:`~optax_usam.theory.epoch_schedules` (the experiments' epoch-wise rules).
Their public names are all here, e.g. ``optax_usam.theory.pl_constant_steps``.

Examples:
  >>> sampler = optax_usam.sampling.uniform([1.0, 2.0, 4.0])  # A = L_max = 4, B = 0
  >>> steps = optax_usam.theory.pl_constant_steps(mu=1.0, L=4.0, A=sampler.A, B=sampler.B, lambd=0.5)
  >>> steps
  StepSizes(rho=0.03125, gamma=0.0078125)
  >>> sched = optax_usam.theory.pl_decreasing_schedules(steps.rho, steps.gamma, mu=1.0)
  >>> tx = optax.chain(
  ...     optax_usam.unified_sam(rho=sched.rho, lambd_schedule=0.5),
  ...     optax.sgd(learning_rate=sched.gamma),
  ... )

References:
  Oikonomou & Loizou, `Sharpness-Aware Minimization: General Analysis and
  Improved Rates <https://arxiv.org/abs/2410.03345>`_, ICLR 2025.
  Khanh, Luong, Mordukhovich & Tran, `Fundamental Convergence Analysis of
  Sharpness-Aware Minimization <https://openreview.net/forum?id=PuXYI4HOQU>`_,
  NeurIPS 2024; code: `lhchau/fundamental-sam
  <https://github.com/lhchau/fundamental-sam>`_.
  Si & Yun, `Practical Sharpness-Aware Minimization Cannot Converge All the
  Way to Optima <https://arxiv.org/abs/2306.09850>`_, NeurIPS 2023.
"""

from __future__ import annotations

from optax_usam.theory.diminishing import (
  almost_constant_radius,
  almost_constant_schedules,
  diminishing_step_size,
)
from optax_usam.theory.epoch_schedules import diminish_schedule
from optax_usam.theory.pl import StepSchedules, StepSizes, pl_constant_steps, pl_decreasing_schedules

__all__ = [
  "StepSchedules",
  "StepSizes",
  "almost_constant_radius",
  "almost_constant_schedules",
  "diminish_schedule",
  "diminishing_step_size",
  "pl_constant_steps",
  "pl_decreasing_schedules",
]
