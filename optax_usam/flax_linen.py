"""Flax Linen glue: a ``TrainState`` that forwards ``grad_fn``, and a SAM train step.

The stock :class:`flax.training.train_state.TrainState` calls
``tx.update(grads, opt_state, params)`` with no extra arguments, so the
``grad_fn`` that :func:`optax_usam.unified_sam` needs never reaches it.
:class:`SAMTrainState` passes it on. :func:`linen_train_step` is the whole step
for Linen models with BatchNorm and dropout (one device, or one device's part
inside ``pmap``/``shard_map``; :func:`optax_usam.distributed.make_sharded_trainer`
is the step for a whole mesh).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import chex
import flax.errors
import jax
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from optax_usam import _validation
from optax_usam._batches import first_fraction
from optax_usam._collectives import pmean
from optax_usam._passes import sam_passes
from optax_usam.chain_order import check_sam_order
from optax_usam.diagnostics import needs_fresh_gradient

__all__ = ["SAMTrainState", "StepOutput", "linen_train_step"]

Params = Any
BatchStats = Any
# loss_fn(params, batch_stats, batch, rng) -> (loss, (new_batch_stats, aux))
LossFn = Callable[[Params, BatchStats, Any, chex.PRNGKey | None], tuple[chex.Numeric, tuple[BatchStats, Any]]]

_LOSS_FORM = "(loss, (new_batch_stats, aux)), new_batch_stats None for a model without BatchNorm"
_NO_BATCH_STATS = (
  "state.batch_stats is {}, but loss_fn's model has batch statistics (BatchNorm): create the state "
  "with SAMTrainState.create(..., batch_stats=variables['batch_stats'])."
)
# What Flax raises when a model with BatchNorm is applied with batch_stats None, or without them.
_MISSING_COLLECTION = (flax.errors.ApplyScopeInvalidVariablesTypeError, flax.errors.ScopeCollectionNotFound)


class SAMTrainState(train_state.TrainState):
  """A :class:`~flax.training.train_state.TrainState` for SAM-style optimizers.

  Identical to the stock class except that :meth:`apply_gradients` forwards
  ``grad_fn`` (and any other optimizer keyword argument) to ``tx.update``,
  that it has an optional ``batch_stats`` field for models with BatchNorm, and
  that ``create`` and :meth:`apply_gradients` refuse a ``tx`` whose Unified SAM
  transformation is not first in its chain (:func:`optax_usam.check_sam_first`;
  a ``tx`` without one is fine).

  Attributes:
    batch_stats: the model's ``batch_stats`` collection, or None.

  Examples:
    >>> import flax.linen as nn
    >>> from optax_usam.flax_linen import SAMTrainState
    >>> model = nn.Dense(2)
    >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
    >>> loss_fn = lambda params: jnp.mean((model.apply({"params": params}, x) - y) ** 2)
    >>> tx = optax.chain(optax_usam.unified_sam(0.05, "1-1/t"), optax.sgd(0.1, momentum=0.9))
    >>> params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    >>> state = SAMTrainState.create(apply_fn=model.apply, params=params, tx=tx)
    >>> grad_fn = jax.grad(loss_fn)
    >>> step = jax.jit(lambda state: state.apply_gradients(grads=grad_fn(state.params), grad_fn=grad_fn))
    >>> new_state = step(state)
    >>> int(new_state.step), bool(loss_fn(new_state.params) < loss_fn(state.params))
    (1, True)
  """

  batch_stats: BatchStats = None

  @classmethod
  def create(
    cls, *, apply_fn: Callable[..., Any], params: Params, tx: optax.GradientTransformation, **kwargs: Any
  ) -> SAMTrainState:
    """The stock ``create``, refusing a ``tx`` whose Unified SAM transformation is not first."""
    state = super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs)
    check_sam_order(state.opt_state, "tx", required=False)
    return state

  def apply_gradients(
    self,
    *,
    grads: optax.Updates,
    grad_fn: Callable[[Params], optax.Updates] | None = None,
    update_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
  ) -> SAMTrainState:
    """Applies one optimizer step; ``step`` grows by one.

    Args:
      grads: gradients at ``self.params``, same tree.
      grad_fn: ``params -> gradients`` on the current batch, passed to
        ``tx.update`` (required by :func:`optax_usam.unified_sam`).
      update_kwargs: further keyword arguments for ``tx.update``.
      **kwargs: fields to replace, e.g. ``batch_stats=``, as in the stock class.

    Returns:
      The new state.

    Raises:
      ValueError: ``grads`` holds an ``_overwrite_with_gradient`` collection,
        or the Unified SAM transformation of ``tx`` is not first in its chain.
    """
    check_sam_order(self.opt_state, "state.tx", required=False)
    if isinstance(grads, dict) and train_state.OVERWRITE_WITH_GRADIENT in grads:
      raise ValueError(
        f"SAMTrainState does not support the {train_state.OVERWRITE_WITH_GRADIENT!r} collection "
        "(fp8 training); use flax.training.train_state.TrainState for it."
      )
    extra = dict(update_kwargs or {})
    if grad_fn is not None:
      extra["grad_fn"] = grad_fn
    updates, new_opt_state = self.tx.update(grads, self.opt_state, self.params, **extra)
    new_params = optax.apply_updates(self.params, updates)
    return self.replace(step=self.step + 1, params=new_params, opt_state=new_opt_state, **kwargs)


@struct.dataclass
class StepOutput:
  """What :func:`linen_train_step` returns next to the new state.

  Attributes:
    loss: the loss of the first (unperturbed) pass; of the pass at the ascent
      point when the optimizer takes no first pass (one-gradient methods).
    aux: the auxiliary output of that pass (e.g. logits or metrics).
  """

  loss: chex.Array
  aux: Any


def linen_train_step(
  state: SAMTrainState,
  batch: Any,
  loss_fn: LossFn,
  rng: chex.PRNGKey | None = None,
  *,
  axis_name: Hashable | None = None,
  ascent_fraction: float | None = None,
) -> tuple[SAMTrainState, StepOutput]:
  """One Unified SAM step for a Linen model with BatchNorm and/or dropout.

  Two forward/backward passes on the same ``batch``: at the parameters and at
  the ascent point chosen by ``state.tx``. The rules that make this correct:

  * both passes use the same dropout key ``rng``, so the perturbed gradient is
    taken on the same sub-network;
  * both passes read the batch statistics held before the step;
  * the batch statistics after the step are those of the first pass: the
    perturbed pass's statistics are discarded (its parameters are not the
    model's, so its running averages would be wrong).

  When ``state.tx`` does not need the gradient at the parameters
  (:func:`optax_usam.needs_fresh_gradient` is False: :func:`optax_usam.momentum_sam`,
  :func:`optax_usam.random_smoothing_sam`), the first pass is skipped: one
  forward/backward pass per step for ``momentum_sam``, as SGD. The reported
  loss, ``aux`` and the new batch statistics then come from the pass at the
  ascent point (the last ``grad_fn`` call), the step's only pass for
  ``momentum_sam``: its authors' model, too, always holds perturbed weights.

  ``loss_fn(params, batch_stats, batch, rng)`` must return
  ``(loss, (new_batch_stats, aux))`` (a model without BatchNorm returns
  ``None`` for the statistics), as in the example below. Call it under
  ``jit``; with ``functools.partial`` for ``loss_fn``.

  Args:
    state: the train state, a :class:`SAMTrainState` (the stock ``TrainState``
      does not pass ``grad_fn`` on); ``state.tx`` contains
      :func:`optax_usam.unified_sam`, first in its chain (any optimizer
      accepting ``grad_fn`` works).
    batch: the batch, passed to ``loss_fn`` unchanged: a pytree whose
      arrays share their leading (example) axis; 0-d leaves (a temperature)
      and no leaves at all (a ``loss_fn`` that closes over its data) are
      fine, except with ``ascent_fraction``.
    loss_fn: as above.
    rng: the dropout key of this step, or None.
    axis_name: inside ``pmap``/``shard_map``, the data-parallel axis: the new
      batch statistics and the reported loss are averaged over it. The
      gradients are averaged by ``unified_sam(axis_name=...)`` itself.
    ascent_fraction: sub-batch ascent: take the first pass (the ascent
      direction, the reported loss and the new batch statistics) on the first
      ``ceil(fraction * n)`` examples only; the
      gradient at the ascent point still uses the whole batch. A step then
      costs ``1 + fraction`` gradients instead of 2. Not with an optimizer
      that takes no first pass.

  Returns:
    ``(new_state, StepOutput(loss, aux))``.

  Raises:
    TypeError: ``state`` is not a :class:`SAMTrainState`, ``loss_fn`` is not
      callable or does not return the form above.
    ValueError: the leaves of ``batch`` differ in leading size (or, with
      ``ascent_fraction``, one has no leading axis); the Unified
      SAM transformation is not first in ``state.tx``; ``loss_fn`` returns a
      loss that is not a scalar, or batch statistics unlike
      ``state.batch_stats`` (or some where ``state.batch_stats`` is None).

  Examples:
    >>> import functools
    >>> import flax.linen as nn
    >>> from optax_usam.flax_linen import SAMTrainState, linen_train_step
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x, train):
    ...     x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x)))
    ...     return nn.Dense(2)(nn.Dropout(0.5, deterministic=not train)(x))
    >>> def loss_fn(params, batch_stats, batch, rng):
    ...   logits, updates = Net().apply(
    ...       {"params": params, "batch_stats": batch_stats}, batch["x"], train=True,
    ...       mutable=["batch_stats"], rngs={"dropout": rng})
    ...   loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    ...   return loss, (updates["batch_stats"], logits)
    >>> batch = {"x": jnp.arange(24.0).reshape(8, 3), "y": jnp.zeros(8, jnp.int32)}
    >>> variables = jax.jit(functools.partial(Net().init, train=False))(jax.random.key(0), batch["x"])
    >>> state = SAMTrainState.create(
    ...     apply_fn=Net().apply, params=variables["params"], batch_stats=variables["batch_stats"],
    ...     tx=optax.chain(optax_usam.unified_sam(0.05, "1-1/t"), optax.sgd(0.1)))
    >>> step = jax.jit(functools.partial(linen_train_step, loss_fn=loss_fn))
    >>> state, out = step(state, batch, rng=jax.random.key(1))
    >>> int(state.step), out.aux.shape
    (1, (8, 2))
  """
  if not isinstance(state, SAMTrainState):
    raise TypeError(
      f"state must be an optax_usam.flax_linen.SAMTrainState; got {type(state).__module__}."
      f"{type(state).__qualname__}, whose apply_gradients does not pass grad_fn to tx.update. Create it "
      "with SAMTrainState.create(apply_fn=..., params=..., tx=..., batch_stats=...)."
    )
  _validation.check_callable(loss_fn, "loss_fn", "(params, batch_stats, batch, rng) -> " + _LOSS_FORM)
  _check_batch(batch, ascent_fraction)
  if ascent_fraction is not None and not needs_fresh_gradient(state.opt_state):
    raise ValueError(
      "ascent_fraction sets the batch of the first pass, but this optimizer takes none "
      "(optax_usam.needs_fresh_gradient(state.opt_state) is False): leave it None."
    )
  first_batch = batch if ascent_fraction is None else first_fraction(batch, ascent_fraction)

  checked_loss = _checked(loss_fn, state.batch_stats)

  def value_and_grad(params: Params, batch: Any = batch) -> tuple[Any, optax.Updates]:
    return jax.value_and_grad(checked_loss, has_aux=True)(params, state.batch_stats, batch, rng)

  state, (loss, (new_batch_stats, aux)) = sam_passes(
    state.opt_state,
    lambda: value_and_grad(state.params, first_batch),
    value_and_grad,
    lambda grads, grad_fn: state.apply_gradients(grads=grads, grad_fn=grad_fn),
  )
  if axis_name is not None:
    new_batch_stats, loss = pmean((new_batch_stats, loss), axis_name)
  return state.replace(batch_stats=new_batch_stats), StepOutput(loss, aux)


def _check_batch(batch: Any, ascent_fraction: float | None) -> None:
  """Refuses leaves of ``batch`` that differ in leading (example) size.

  A 0-d leaf (a temperature) or a batch without leaves (a ``loss_fn`` that closes over its data) is passed
  to ``loss_fn`` as it is, except with ``ascent_fraction``, which cuts every leaf along that axis.
  """
  leaves = jax.tree.leaves(batch)
  with_axis = [x for x in leaves if np.ndim(x)]
  if ascent_fraction is not None and (not leaves or len(with_axis) < len(leaves)):
    raise ValueError(
      "ascent_fraction takes the first examples of every leaf of batch, so each needs a leading (example) "
      f"axis; got batch {_validation.describe(batch)}."
    )
  if with_axis:
    _validation.leading_size(with_axis)


def _checked(loss_fn: LossFn, batch_stats: BatchStats) -> LossFn:
  """``loss_fn``, checked to return ``(loss, (new_batch_stats, aux))``, statistics like ``batch_stats``.

  A state without statistics (None, or a tree without arrays) takes none back, in any such form.
  """
  has_stats = bool(jax.tree.leaves(batch_stats))

  def checked(params: Params, stats: BatchStats, batch: Any, rng: chex.PRNGKey | None) -> Any:
    try:
      out = loss_fn(params, stats, batch, rng)
    except _MISSING_COLLECTION as err:
      if has_stats:
        raise
      raise ValueError(_NO_BATCH_STATS.format(_validation.describe(batch_stats))) from err
    _, rest = _validation.check_loss_output(out, True, "loss_fn", _LOSS_FORM)
    new_stats, _ = _validation.check_pair(rest, "loss_fn", _LOSS_FORM, returned=out)
    if has_stats:
      hint = "state.batch_stats (the 'batch_stats' of model.apply(..., mutable=['batch_stats']))"
      _validation.check_like(new_stats, batch_stats, "the new_batch_stats loss_fn returns", hint)
    elif jax.tree.leaves(new_stats):
      raise ValueError(
        f"loss_fn returns new_batch_stats {_validation.describe(new_stats)}, but state.batch_stats is "
        f"{_validation.describe(batch_stats)}: a model without BatchNorm returns (loss, (None, aux)); for "
        "one with BatchNorm, create the state with SAMTrainState.create(..., "
        "batch_stats=variables['batch_stats'])."
      )
    return out

  return checked
