"""Flax NNX glue: one Unified SAM step with ``nnx.Optimizer``.

``nnx.Optimizer.update(model, grads, **kwargs)`` forwards its keyword arguments
to ``tx.update``, so :func:`optax_usam.unified_sam` works with it as is: pass
``grad_fn=`` taking the pure parameter state (``nnx.State`` of arrays, as
``nnx.as_pure(nnx.state(model, nnx.Param))``) to its gradient.

Writing that ``grad_fn`` by hand has two traps, which :func:`sam_update`
handles: the first pass mutates the model (BatchNorm running statistics, the
dropout RNG counter), so the perturbed pass must start from a snapshot taken
before it; and the perturbed pass must not write its statistics back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from optax_usam import _validation
from optax_usam._passes import sam_passes
from optax_usam.chain_order import check_sam_order

__all__ = ["sam_update"]


def sam_update(
  model: nnx.Module,
  optimizer: nnx.Optimizer,
  loss_fn: Callable[..., Any],
  *args: Any,
  has_aux: bool = False,
) -> Any:
  """One Unified SAM step: two passes of ``loss_fn(model, *args)``, then ``optimizer.update``.

  * the first pass runs on ``model`` itself: its BatchNorm statistics and RNG
    counters move on exactly as in a plain step;
  * the perturbed pass runs on a copy rebuilt from the state held before the
    first pass, so it draws the same dropout mask and reads the same
    statistics, and whatever it writes is discarded.

  When ``optimizer.tx`` does not need the gradient at the parameters
  (:func:`optax_usam.needs_fresh_gradient` is False: :func:`optax_usam.momentum_sam`,
  :func:`optax_usam.random_smoothing_sam`), there is no first pass: one
  forward/backward pass per step for ``momentum_sam``, as SGD. The returned
  loss (and aux) and the model's new statistics and RNG counts then come
  from the pass at the ascent point (the last ``grad_fn`` call).

  Args:
    model: the model, in training mode; updated in place.
    optimizer: an ``nnx.Optimizer`` over ``model`` whose ``tx`` accepts
      ``grad_fn`` (e.g. contains :func:`optax_usam.unified_sam`, first in its
      chain); its ``wrt`` filter selects the perturbed and trained variables.
    loss_fn: ``loss_fn(model, *args) -> loss``, or ``(loss, aux)`` with
      ``has_aux=True``.
    *args: the batch and anything else ``loss_fn`` takes.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

  Returns:
    What the first pass of ``loss_fn`` returned (the loss, or ``(loss, aux)``);
    without a first pass, what the pass at the ascent point returned.

  Raises:
    TypeError: ``model`` is not an ``nnx.Module``, ``optimizer`` not an
      ``nnx.Optimizer``, ``loss_fn`` not callable, ``has_aux`` not a bool, or
      ``loss_fn`` returns other than ``has_aux`` says.
    ValueError: the Unified SAM transformation is not first in
      ``optimizer.tx``, or the loss is not a scalar.

  Examples:
    >>> class Net(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.dense, self.bn = nnx.Linear(3, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
    ...     self.dropout, self.out = nnx.Dropout(0.5, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.out(self.dropout(nnx.relu(self.bn(self.dense(x)))))
    >>> model = Net(nnx.Rngs(0, dropout=1))
    >>> tx = optax.chain(optax_usam.unified_sam(0.05, "1/t"), optax.sgd(0.1, momentum=0.9))
    >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    >>> def loss_fn(model, x, y):
    ...   return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    >>> @nnx.jit
    ... def train_step(model, optimizer, x, y):
    ...   return optax_usam.flax_nnx.sam_update(model, optimizer, loss_fn, x, y)
    >>> x, y = jnp.arange(24.0).reshape(8, 3), jnp.zeros(8, jnp.int32)
    >>> losses = [float(train_step(model, optimizer, x, y)) for _ in range(3)]
    >>> losses[-1] < losses[0], int(optimizer.step[...])
    (True, 3)
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be an nnx.Module; got {type(model).__name__}.")
  if not isinstance(optimizer, nnx.Optimizer):
    raise TypeError(f"optimizer must be an nnx.Optimizer over model; got {type(optimizer).__name__}.")
  _validation.check_callable(loss_fn, "loss_fn", "loss_fn(model, *args) -> loss, or (loss, aux)")
  _validation.check_bools(has_aux=has_aux)
  check_sam_order(optimizer.opt_state, "optimizer.tx", required=False)
  loss_fn = _checked(loss_fn, has_aux)
  wrt = optimizer.wrt
  graphdef, _, rest = nnx.split(model, wrt, ...)
  # Arrays are immutable: this snapshot keeps the pre-step statistics and RNG
  # counts while the first pass updates the model's own variables.
  rest = nnx.as_pure(rest)

  def loss_and_writes(params: nnx.State) -> tuple[Any, tuple[Any, nnx.State]]:
    copy = nnx.merge(graphdef, params, rest)
    out = loss_fn(copy, *args)
    # What the pass wrote to the copy (statistics, RNG counts), without the parameters.
    writes = nnx.as_pure(nnx.split(copy, wrt, ...)[2])
    return (out[0] if has_aux else out), (out, writes)

  def first_pass() -> tuple[tuple[Any, None], nnx.State]:
    out, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=has_aux)(model, *args)
    return (out, None), grads

  # nnx.Optimizer.update turns grads=None into an empty state, which unified_sam reads as no gradient.
  _, (out, writes) = sam_passes(
    optimizer.opt_state,
    first_pass,
    lambda params: jax.grad(loss_and_writes, has_aux=True)(params)[::-1],
    lambda grads, grad_fn: optimizer.update(model, grads, grad_fn=grad_fn),
  )
  if writes is not None:
    # No first pass: the model keeps what the pass at the ascent point wrote.
    nnx.update(model, writes)
  return out


def _checked(loss_fn: Callable[..., Any], has_aux: bool) -> Callable[..., Any]:
  """``loss_fn``, checked to return a scalar loss, or ``(loss, aux)`` with ``has_aux``."""

  def checked(model: nnx.Module, *args: Any) -> Any:
    out = loss_fn(model, *args)
    _validation.check_loss_output(out, has_aux, "loss_fn", "(loss, aux) with has_aux=True")
    return out

  return checked
