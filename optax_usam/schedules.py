r"""Schedules of :math:`\lambda_t`, the weight of the normalized part of the Unified SAM perturbation.

:math:`\lambda = 1` is SAM, :math:`\lambda = 0` USAM. Oikonomou & Loizou (ICLR 2025) also run
:math:`\lambda_t = 1/t` (SAM first, USAM later) and :math:`1 - 1/t`, with t = 1 on the first update; their
official code spells them ``"1/t"`` and ``"1-1/t"``. Every ``lambd_schedule`` argument of the library takes a
float in [0, 1], one of :data:`LAMBDA_STRINGS`, or a callable ``count -> lambda`` (optax's count: 0 on the
first update), such as :func:`inverse_t`.
"""

from __future__ import annotations

import chex

from optax_usam import _validation
from optax_usam._validation.scalars import Schedule

#: What a ``lambd_schedule`` argument takes.
LambdaSchedule = float | str | Schedule

#: The named schedules as the coefficients ``(constant, per_t)`` of :func:`inverse_t`.
LAMBDA_FORMS = {"1/t": (0.0, 1.0), "1-1/t": (1.0, -1.0)}
#: The strings ``lambd_schedule`` accepts besides numbers and callables.
LAMBDA_STRINGS = tuple(LAMBDA_FORMS)

__all__ = ["LAMBDA_FORMS", "LAMBDA_STRINGS", "inverse_t", "lambda_schedule"]


def inverse_t(constant: chex.Numeric = 0.0, per_t: chex.Numeric = 1.0) -> Schedule:
  r""":math:`\lambda_t = c + b / t`, with t = count + 1: ``"1/t"`` is (0, 1), ``"1-1/t"`` is (1, -1).

  The values run from :math:`c + b` at t = 1 to :math:`c` as t grows, so both must lie in [0, 1]. Traced
  coefficients (``optax.inject_hyperparams`` over a factory that takes them) are used as they are: one
  compiled step then serves every such schedule (``docs/recipes.md``).

  Examples:
    >>> from optax_usam import schedules
    >>> lambd = schedules.inverse_t(1.0, -1.0)  # 1 - 1/t
    >>> [float(lambd(count)) for count in range(3)]
    [0.0, 0.5, 0.6666666666666667]
  """
  _validation.check_inverse_t(constant, per_t)
  return lambda count: constant + per_t / (count + 1.0)


_NAMED = {name: inverse_t(*form) for name, form in LAMBDA_FORMS.items()}


def lambda_schedule(lambd: LambdaSchedule) -> Schedule:
  """``count -> lambda_t`` for a float in [0, 1], one of :data:`LAMBDA_STRINGS`, or a callable.

  A callable must give real scalars in [0, 1]: its value at count 0 is checked here when it can be computed,
  the type and shape of each value as it is traced.

  Examples:
    >>> from optax_usam import schedules
    >>> [float(schedules.lambda_schedule("1/t")(count)) for count in range(3)]
    [1.0, 0.5, 0.3333333333333333]
  """
  if isinstance(lambd, str):
    return _NAMED[_validation.check_lambda_string(lambd, LAMBDA_STRINGS)]
  return _validation.bounded_schedule(lambd, "lambd_schedule", 0.0, 1.0)
