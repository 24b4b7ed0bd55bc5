"""Gradient accumulation for Unified SAM: a ``grad_fn`` that walks a batch in micro-batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_usam import _validation
from optax_usam._trees import is_float_leaf

__all__ = ["microbatch_grad_fn"]

BatchGradFn = Callable[[optax.Params, Any], optax.Updates]


def microbatch_grad_fn(
  batch_grad_fn: BatchGradFn, batch: Any, num_microbatches: int
) -> Callable[[optax.Params], optax.Updates]:
  r"""``params -> `` the mean of ``batch_grad_fn(params, micro_batch)`` over equal micro-batches.

  The batch (every leaf has the same leading axis ``n``) is cut into
  ``num_microbatches`` consecutive micro-batches of ``n / num_microbatches``
  examples, and a ``lax.scan`` runs ``batch_grad_fn`` on one at a time, so only
  one micro-batch's activations are alive at once. For a loss that is a mean
  over examples the result is the full-batch gradient (up to rounding).

  Used for both gradients of a step, it gives exact Unified SAM on the whole
  batch: the perturbation comes from the full-batch gradient and the returned
  gradient is the mean over all micro-batches at the perturbed point.

  ``optax.MultiSteps`` cannot do this: it sees each micro-batch once, so the
  ``grad_fn`` of its last micro-step only knows the last micro-batch (see the
  recipes in ``docs/recipes.md``).

  Gradients are summed in float32 (float64 for float64 leaves) and returned in
  the dtype ``batch_grad_fn`` gives. On XLA:CPU a convolution inside
  ``lax.scan`` can run several times slower than outside it: there, use this
  when memory, not time, is the limit.

  Args:
    batch_grad_fn: ``(params, batch) -> gradients`` of a loss that is a mean
      over the examples of ``batch``, e.g. ``jax.grad(loss_fn)``.
    batch: a pytree of arrays sharing their leading (example) axis.
    num_microbatches: how many micro-batches; must divide the batch size.

  Returns:
    A function ``params -> gradients``, usable as ``grad_fn`` and for the
    first gradient of the step.

  Examples:
    >>> def loss_fn(params, batch):
    ...   return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
    >>> batch = {"x": jnp.ones((8, 2)), "y": jnp.arange(8.0)}
    >>> params = {"w": jnp.zeros(2)}
    >>> grad_fn = optax_usam.microbatch_grad_fn(jax.grad(loss_fn), batch, num_microbatches=4)
    >>> print(grad_fn(params)["w"], jax.grad(loss_fn)(params, batch)["w"])  # the same
    [-7. -7.] [-7. -7.]
    >>> tx = optax.chain(optax_usam.sam(0.05), optax.sgd(0.1))
    >>> opt_state = tx.init(params)
    >>> update = jax.jit(lambda params, state: tx.update(grad_fn(params), state, params, grad_fn=grad_fn))
    >>> updates, opt_state = update(params, opt_state)
  """
  _validation.check_callable(batch_grad_fn, "batch_grad_fn", "(params, batch) -> gradients")
  num_microbatches = _validation.check_int(num_microbatches, "num_microbatches", 1, bounds="a positive int")
  size = _validation.leading_size(batch)
  _validation.check_divides(num_microbatches, size)
  split = lambda x: jnp.reshape(x, (num_microbatches, size // num_microbatches, *np.shape(x)[1:]))
  micro = jax.tree.map(split, batch)

  def grad_fn(params: optax.Params) -> optax.Updates:
    shapes = jax.eval_shape(batch_grad_fn, params, jax.tree.map(lambda x: x[0], micro))
    leaves, treedef = jax.tree.flatten(shapes)
    wide = lambda s: jnp.promote_types(s.dtype, jnp.float32)

    def add(total: list[Any], mb: Any) -> tuple[list[Any], None]:
      grads = treedef.flatten_up_to(batch_grad_fn(params, mb))
      return [None if t is None else t + g.astype(t.dtype) for t, g in zip(total, grads, strict=True)], None

    # Non-floating leaves (float0 gradients of integer parameters) carry nothing to average.
    zeros = [jnp.zeros(s.shape, wide(s)) if is_float_leaf(s) else None for s in leaves]
    total, _ = jax.lax.scan(add, zeros, micro)
    mean = [
      (t / num_microbatches).astype(s.dtype) if t is not None else np.zeros(s.shape, s.dtype)
      for t, s in zip(total, leaves, strict=True)
    ]
    return treedef.unflatten(mean)

  return grad_fn
