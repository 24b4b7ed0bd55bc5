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

BatchGradFn = Callable[[optax.Params, Any], Any]


def microbatch_grad_fn(
  batch_grad_fn: BatchGradFn,
  batch: Any,
  num_microbatches: int,
  *,
  with_loss: bool = False,
  has_aux: bool = False,
) -> Callable[[optax.Params], Any]:
  r"""``params -> `` the mean of ``batch_grad_fn(params, micro_batch)`` over equal micro-batches.

  The batch (every leaf has the same leading axis ``n``) is cut into
  ``num_microbatches`` consecutive micro-batches of ``n / num_microbatches``
  examples, and a ``lax.scan`` runs ``batch_grad_fn`` on one at a time, so only
  one micro-batch's activations are alive at once. For a loss that is a mean
  over examples the result is the full-batch gradient (up to rounding).

  Used for both gradients of a step, it gives exact Unified SAM on the whole
  batch: the perturbation comes from the full-batch gradient and the returned
  gradient is the mean over all micro-batches at the perturbed point.

  With ``with_loss=True`` the same passes give the loss too, as
  ``jax.value_and_grad`` does: ``batch_grad_fn`` is
  ``jax.value_and_grad(loss_fn)`` (``(params, batch) -> (loss, gradients)``)
  and the result ``params -> (loss, gradients)``, the loss being the mean over
  micro-batches (the full-batch loss). With ``has_aux=True`` as well,
  ``batch_grad_fn`` is ``jax.value_and_grad(loss_fn, has_aux=True)`` and the
  result ``params -> ((loss, aux), gradients)``, where ``aux`` holds each
  micro-batch's aux, stacked on a new leading axis of size
  ``num_microbatches``.

  ``optax.MultiSteps`` cannot do this: it sees each micro-batch once, so the
  ``grad_fn`` of its last micro-step only knows the last micro-batch (see the
  recipes in ``docs/recipes.md``).

  Gradients and the loss are summed in float32 (float64 for float64 leaves)
  and returned in the dtype ``batch_grad_fn`` gives. On XLA:CPU a convolution
  inside ``lax.scan`` can run several times slower than outside it: there, use
  this when memory, not time, is the limit.

  Args:
    batch_grad_fn: ``(params, batch) -> gradients`` of a loss that is a mean
      over the examples of ``batch``, e.g. ``jax.grad(loss_fn)``; with
      ``with_loss``, ``jax.value_and_grad(loss_fn)`` (``has_aux``: with
      ``has_aux=True``).
    batch: a pytree of arrays sharing their leading (example) axis.
    num_microbatches: how many micro-batches; must divide the batch size.
    with_loss: whether ``batch_grad_fn`` returns ``(loss, gradients)`` and
      the result the mean loss with the gradients.
    has_aux: whether the loss comes with an aux, ``((loss, aux),
      gradients)``; needs ``with_loss``.

  Returns:
    A function ``params -> gradients``, usable as ``grad_fn`` and for the
    first gradient of the step; with ``with_loss``, ``params -> (loss,
    gradients)`` (``((loss, aux), gradients)`` with ``has_aux``).

  Raises:
    ValueError: the batch's leaves differ in leading size or have none,
      ``num_microbatches`` does not divide it, or ``has_aux`` comes without
      ``with_loss``; when the returned function is traced, ``batch_grad_fn``
      returns gradients unlike ``params`` or a loss that is not a scalar.
    TypeError: a non-callable ``batch_grad_fn``, a non-int
      ``num_microbatches``, non-bool flags; when traced, ``batch_grad_fn``
      returns something else than the form above.

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

    The loss from the same passes, for logging:

    >>> value_and_grad = optax_usam.microbatch_grad_fn(
    ...     jax.value_and_grad(loss_fn), batch, num_microbatches=4, with_loss=True)
    >>> loss, grads = value_and_grad(params)
    >>> print(loss, loss_fn(params, batch))  # the full-batch loss
    17.5 17.5
  """
  _validation.check_callable(batch_grad_fn, "batch_grad_fn", "(params, batch) -> gradients")
  num_microbatches = _validation.check_int(num_microbatches, "num_microbatches", 1, bounds="a positive int")
  _validation.check_bools(with_loss=with_loss, has_aux=has_aux)
  if has_aux and not with_loss:
    raise ValueError(
      "has_aux=True says that the loss batch_grad_fn returns comes with an aux; set with_loss=True too, "
      "with batch_grad_fn = jax.value_and_grad(loss_fn, has_aux=True)."
    )
  size = _validation.leading_size(batch)
  _validation.check_divides(num_microbatches, size)
  split = lambda x: jnp.reshape(x, (num_microbatches, size // num_microbatches, *np.shape(x)[1:]))
  micro = jax.tree.map(split, batch)
  parts = _parts(with_loss, has_aux)

  def value_and_grad(params: optax.Params) -> Any:
    loss_shape, _, grad_shapes = parts(
      jax.eval_shape(batch_grad_fn, params, jax.tree.map(lambda x: x[0], micro))
    )
    if not with_loss and _looks_like_value_and_grad(grad_shapes, params):
      raise TypeError(
        "batch_grad_fn returns (value, gradients), as jax.value_and_grad does: pass with_loss=True "
        "(and has_aux=True for ((loss, aux), gradients)), or give jax.grad(loss_fn)."
      )
    _validation.check_matches_params(grad_shapes, params, "the gradients batch_grad_fn returns", dtypes=False)
    leaves, treedef = jax.tree.flatten(grad_shapes)
    wide = lambda s: jnp.promote_types(s.dtype, jnp.float32)

    def add(total: tuple[list[Any], Any], mb: Any) -> tuple[tuple[list[Any], Any], Any]:
      grad_total, loss_total = total
      loss, aux, grads = parts(batch_grad_fn(params, mb))
      grads = treedef.flatten_up_to(grads)
      grad_total = [
        None if t is None else t + g.astype(t.dtype) for t, g in zip(grad_total, grads, strict=True)
      ]
      if loss is not None:
        loss_total = loss_total + jnp.asarray(loss).astype(loss_total.dtype)
      return (grad_total, loss_total), aux

    # Non-floating leaves (float0 gradients of integer parameters) carry nothing to average.
    zeros = [jnp.zeros(s.shape, wide(s)) if is_float_leaf(s) else None for s in leaves]
    zero_loss = None if loss_shape is None else jnp.zeros((), wide(loss_shape))
    (grad_total, loss_total), aux = jax.lax.scan(add, (zeros, zero_loss), micro)
    mean = [
      (t / num_microbatches).astype(s.dtype) if t is not None else np.zeros(s.shape, s.dtype)
      for t, s in zip(grad_total, leaves, strict=True)
    ]
    grads = treedef.unflatten(mean)
    if loss_shape is None:
      return grads
    loss = (loss_total / num_microbatches).astype(loss_shape.dtype)
    return ((loss, aux) if has_aux else loss), grads

  return value_and_grad


def _looks_like_value_and_grad(out: Any, params: optax.Params) -> bool:
  params_def = jax.tree.structure(params)
  pair = isinstance(out, tuple) and len(out) == 2
  return pair and jax.tree.structure(out) != params_def and jax.tree.structure(out[1]) == params_def


def _parts(with_loss: bool, has_aux: bool) -> Callable[[Any], tuple[Any, Any, optax.Updates]]:
  """``out -> (loss, aux, gradients)`` of what ``batch_grad_fn`` returns (None for what it does not)."""
  if has_aux:
    form = "((loss, aux), gradients) with has_aux=True, as jax.value_and_grad(loss_fn, has_aux=True) does"
  else:
    form = "(loss, gradients) with with_loss=True, as jax.value_and_grad(loss_fn) does"

  def parts(out: Any) -> tuple[Any, Any, optax.Updates]:
    if not with_loss:
      return None, None, out
    value, grads = _validation.check_pair(out, "batch_grad_fn", form)
    loss, aux = _validation.check_loss_output(value, has_aux, "batch_grad_fn", form, returned=out)
    return loss, aux, grads

  return parts
