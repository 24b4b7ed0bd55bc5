r"""The learning rates of Khanh et al.'s CIFAR experiments, epoch by epoch, as the authors' code runs them.

Their experiments compare a constant learning rate with three diminishing
rules, "Diminish 1/2/3", each changed once per epoch. :func:`diminish_schedule`
gives any of the four as an optax schedule of the step count.

Public as ``optax_usam.theory.<name>``.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp
import optax

from optax_usam import _validation

__all__ = ["diminish_schedule"]

_RULES = ("constant", "diminish1", "diminish2", "diminish3")
# Diminish 2's power in the authors' code: just above 1/2, so that the squares sum to a finite value.
_DIMINISH2_POWER = 0.5001


def diminish_schedule(rule: str, init_value: chex.Numeric, steps_per_epoch: int) -> optax.Schedule:
  r"""Khanh et al.'s "Constant" and "Diminish 1/2/3" learning rates, one value per epoch.

  This reproduces the authors' public code, `lhchau/fundamental-sam
  <https://github.com/lhchau/fundamental-sam>`_ (its README names the four
  authors and links arXiv 2401.08060): ``fundamental_sam/utils/get_scheduler.py``
  picks the rule, ``fundamental_sam/scheduler/diminish2.py`` and
  ``fundamental_sam/scheduler/diminish3.py`` hold rules 2 and 3, and
  ``fundamental_sam/train_sam.py`` starts SGD at the configured learning rate
  :math:`\gamma` (``init_value``) and steps the scheduler once after each
  epoch. So epoch :math:`e = \lfloor k / n \rfloor` (0-based, :math:`k` the
  optax count, :math:`n` = ``steps_per_epoch``) trains with

  ================  ==========================================================
  ``rule``          learning rate in epoch :math:`e`
  ================  ==========================================================
  ``"constant"``    :math:`\gamma`
  ``"diminish1"``   :math:`\gamma / (e+1)`
  ``"diminish2"``   :math:`\gamma` for :math:`e = 0`, :math:`\gamma / e^{0.5001}` for :math:`e \ge 1`
  ``"diminish3"``   :math:`\gamma` for :math:`e = 0`, :math:`\gamma / (s \ln s)` with
                    :math:`s = 3 + \lfloor (e-1)/5 \rfloor` for :math:`e \ge 1`
  ================  ==========================================================

  "Constant" is torch's ``ConstantLR`` with the factor of each configuration file, which is 1 in the
  ones read (e.g. ``config/cifar10_resnet18_sam_constant_01.yaml``), so the rate stays :math:`\gamma`.
  The first epochs are the code's: Diminish 2 trains epochs 0 and 1 both at
  :math:`\gamma`, and Diminish 3 drops by :math:`3 \ln 3 \approx 3.30` after
  epoch 0, then moves to the next :math:`s` every five epochs. The paper's
  own statement of these rules could not be checked (its text is not
  available to this project), so where the two might differ this follows the
  code. In the configuration files read for this (one per rule) the radius
  stays constant (e.g. ``config/cifar10_resnet18_sam_diminish3.yaml``:
  learning rate 0.1, :math:`\rho = 0.05`, 200 epochs, batch size 128).

  Our remark, not the paper's: over epochs, each diminishing rule sums to
  :math:`\infty` while its squares sum to a finite value (for Diminish 2
  barely, :math:`2 \times 0.5001 > 1`; for Diminish 3 each :math:`s` lasts
  five epochs and :math:`\sum_s 1/(s \ln s)` diverges). Per step the sums
  only gain the factor ``steps_per_epoch``.

  Args:
    rule: one of ``"constant"``, ``"diminish1"``, ``"diminish2"``,
      ``"diminish3"``.
    init_value: :math:`\gamma > 0`, the learning rate of epoch 0; may be
      traced (concrete values are checked here).
    steps_per_epoch: the number of updates in one epoch, an int
      :math:`\ge 1` (the length of the training loader).

  Returns:
    ``count -> learning rate``, constant within each epoch, in the default
    float dtype; for ``optax.sgd(learning_rate=...)``.

  Raises:
    ValueError: for an unknown ``rule``, ``init_value <= 0`` or
      ``steps_per_epoch < 1``.
    TypeError: for a ``rule`` that is not a string, or a
      ``steps_per_epoch`` that is not an int.

  Examples:
    >>> from optax_usam import theory
    >>> lr = theory.diminish_schedule("diminish2", 0.1, steps_per_epoch=100)
    >>> print(lr(0), lr(199), lr(200), lr(400))  # epochs 0 and 1 at 0.1, then 0.1 / e^0.5001
    0.1 0.1 0.070705... 0.049993...
    >>> lr = theory.diminish_schedule("diminish3", 0.1, steps_per_epoch=100)
    >>> print(lr(99), lr(100), lr(500), lr(600))  # 0.1, then 0.1 / (s ln s) for s = 3, 3, 4
    0.1 0.030341... 0.030341... 0.018033...
  """
  rule = _validation.check_choice(rule, "rule", _RULES)
  _validation.check_positive(init_value, "init_value", traced=True)
  # At most int32's maximum: optax counts are int32, and a larger divisor would overflow when called.
  steps_per_epoch = _validation.check_int(
    steps_per_epoch, "steps_per_epoch", 1, 2**31 - 1, bounds="an int in [1, 2**31 - 1]"
  )

  def schedule(count: chex.Numeric) -> chex.Numeric:
    dtype = jnp.result_type(float)
    # The epoch in integers first: a float32 count would round past 2^24 steps.
    epoch = (jnp.asarray(count) // steps_per_epoch).astype(dtype)
    if rule == "constant":
      factor = jnp.ones_like(epoch)
    elif rule == "diminish1":
      factor = 1.0 / (epoch + 1)
    elif rule == "diminish2":
      # The first step() call, after epoch 0, sets gamma / 1^0.5001: epoch 1 repeats epoch 0's rate.
      factor = jnp.maximum(epoch, 1.0) ** -_DIMINISH2_POWER
    else:
      s = 3 + (jnp.maximum(epoch, 1.0) - 1) // 5
      factor = jnp.where(epoch == 0, 1.0, 1.0 / (s * jnp.log(s)))
    return init_value * factor

  return schedule
