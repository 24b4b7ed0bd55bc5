"""The passes of one training step: the first gradient, at the parameters, only where the optimizer reads it.

The Flax Linen and NNX steps and the sharded trainer all take their passes through :func:`sam_passes`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import optax

from optax_usam.diagnostics import needs_fresh_gradient

ValueAndGrad = Callable[[optax.Params], tuple[Any, optax.Updates]]
_R = TypeVar("_R")


class _LastPass:
  """``grad_fn`` keeping the value its last call computed (the loss, and whatever else the pass returns).

  ``unified_sam`` calls ``grad_fn`` in the step's own trace (the wrappers that would call it inside
  ``lax.cond`` make :func:`optax_usam.needs_fresh_gradient` True), so that value belongs to the same
  computation: with a one-gradient direction it is the step's only pass, at the ascent point.
  """

  def __init__(self, value_and_grad: ValueAndGrad) -> None:
    self._value_and_grad = value_and_grad
    self.value: Any = None

  def __call__(self, params: optax.Params) -> optax.Updates:
    self.value, grads = self._value_and_grad(params)
    return grads


def sam_passes(
  opt_state: optax.OptState,
  first_pass: Callable[[], tuple[Any, optax.Updates]],
  value_and_grad: ValueAndGrad,
  update: Callable[[optax.Updates | None, Callable[[optax.Params], optax.Updates]], _R],
) -> tuple[_R, Any]:
  """Runs ``update(grads, grad_fn)`` with the first pass only where ``opt_state``'s optimizer needs it.

  Args:
    opt_state: the optimizer state; :func:`optax_usam.needs_fresh_gradient` reads it.
    first_pass: ``() -> (value, grads)`` at the current parameters.
    value_and_grad: ``params -> (value, grads)`` on the step's batch; ``grad_fn`` is its gradient.
    update: the optimizer step, given the first pass's gradients (None without one) and ``grad_fn``.

  Returns:
    ``(update's result, value)``: the first pass's value, or without a first pass that of the last
    ``grad_fn`` call, at the ascent point.
  """
  if needs_fresh_gradient(opt_state):
    value, grads = first_pass()
    return update(grads, lambda params: value_and_grad(params)[1]), value
  grad_fn = _LastPass(value_and_grad)
  return update(None, grad_fn), grad_fn.value
