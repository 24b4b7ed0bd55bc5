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
import optax
from flax import nnx

from optax_usam.ascent import LastPass
from optax_usam.diagnostics import needs_fresh_gradient


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
      ``grad_fn`` (e.g. contains :func:`optax_usam.unified_sam`); its ``wrt``
      filter selects the perturbed and trained variables.
    loss_fn: ``loss_fn(model, *args) -> loss``, or ``(loss, aux)`` with
      ``has_aux=True``.
    *args: the batch and anything else ``loss_fn`` takes.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

  Returns:
    What the first pass of ``loss_fn`` returned (the loss, or ``(loss, aux)``);
    without a first pass, what the pass at the ascent point returned.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_usam
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
  wrt = optimizer.wrt
  graphdef, _, rest = nnx.split(model, wrt, ...)
  # Arrays are immutable: this snapshot keeps the pre-step statistics and RNG
  # counts while the first pass updates the model's own variables.
  rest = nnx.as_pure(rest)
  if not needs_fresh_gradient(optimizer.opt_state):
    return _one_pass_update(model, optimizer, loss_fn, args, (graphdef, rest), has_aux)

  def perturbed_loss(params: nnx.State) -> Any:
    return loss_fn(nnx.merge(graphdef, params, rest), *args)

  def grad_fn(params: nnx.State) -> optax.Updates:
    grads = jax.grad(perturbed_loss, has_aux=has_aux)(params)
    return grads[0] if has_aux else grads

  diff = nnx.DiffState(0, wrt)
  out, grads = nnx.value_and_grad(loss_fn, argnums=diff, has_aux=has_aux)(model, *args)
  optimizer.update(model, grads, grad_fn=grad_fn)
  return out


def _one_pass_update(
  model: nnx.Module,
  optimizer: nnx.Optimizer,
  loss_fn: Callable[..., Any],
  args: tuple[Any, ...],
  snapshot: tuple[Any, nnx.State],
  has_aux: bool,
) -> Any:
  """:func:`sam_update` without the first pass: the model keeps what the last ``grad_fn`` pass wrote."""
  graphdef, rest = snapshot

  def loss_and_state(params: nnx.State) -> Any:
    copy = nnx.merge(graphdef, params, rest)
    out = loss_fn(copy, *args)
    # What the pass wrote to the copy (statistics, RNG counts), without the parameters.
    new_rest = nnx.as_pure(nnx.split(copy, optimizer.wrt, ...)[2])
    return (out[0] if has_aux else out), (out, new_rest)

  grad_fn = LastPass(lambda p: jax.grad(loss_and_state, has_aux=True)(p)[::-1])
  # nnx.Optimizer.update turns grads=None into an empty state, which unified_sam reads as no gradient.
  optimizer.update(model, None, grad_fn=grad_fn)
  out, new_rest = grad_fn.value
  nnx.update(model, new_rest)
  return out
