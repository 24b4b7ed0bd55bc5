"""The pluggable ascent direction of :func:`optax_usam.unified_sam`.

Unified SAM normalizes a direction :math:`d_t` into the perturbation
:math:`e_t = \\rho_t (1 - \\lambda_t + \\lambda_t / (\\|d_t\\| + \\epsilon))\\, d_t`;
:func:`optax_usam.perturb` holds that formula. SAM takes :math:`d_t = g_t`,
the gradient at :math:`x_t`. The SAM family (VaSSO, F-SAM, Momentum-SAM, RSAM)
differs only in :math:`d_t`, so an :class:`AscentDirection` is all that
``unified_sam(..., direction=...)`` needs to become any of them: an optax
transformation mapping its input to :math:`d_t`, and where that input comes from.
This module holds the direction's bookkeeping; ``transform.py`` calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_usam import _validation
from optax_usam._collectives import pmean

__all__ = ["ASCENT_SOURCES", "AscentDirection"]

GradFn = Callable[[optax.Params], optax.Updates]

#: Where an ascent direction's transform takes its input from (see :class:`AscentDirection`).
ASCENT_SOURCES = ("gradient", "previous_sam_gradient", "grad_fn")


class AscentDirection(NamedTuple):
  """The direction :math:`d_t` that :func:`optax_usam.unified_sam` normalizes, instead of :math:`g_t`.

  Attributes:
    transform: an optax ``GradientTransformation`` mapping its input to
      :math:`d_t`; a ``GradientTransformationExtraArgs`` also receives
      ``grad_fn=`` (the same as ``unified_sam.update``'s). Its state lives in
      ``UnifiedSAMState.direction``. ASAM's scales and ``perturb_mask`` apply
      to :math:`d_t` as they would to :math:`g_t`.
    source: where its input comes from, one of ``optax_usam.ascent.ASCENT_SOURCES``:

      * ``"gradient"``: the fresh gradient :math:`g_t`, the ``updates`` given
        to ``update`` (two gradients per step, as SAM: VaSSO, F-SAM);
      * ``"previous_sam_gradient"``: the SAM gradients of the previous steps.
        :math:`d_t` is the transform's output on :math:`\\nabla f(x_{t-1} +
        e_{t-1})`, fed to it at the end of step :math:`t - 1`; :math:`d_1 = 0`,
        so the first step is a plain gradient step. The fresh gradient is not
        read: one gradient per step (Momentum-SAM);
      * ``"grad_fn"``: the transform evaluates what it needs through
        ``grad_fn`` itself (RSAM: the gradient at a random point); the fresh
        gradient is not read.

      Without the fresh gradient, ``update`` accepts ``updates=None`` (see
      :func:`optax_usam.needs_fresh_gradient`).

  Examples:
    SAM along the sign of the gradient, with the whole lambda continuum:

    >>> signs = lambda g, state, params=None: (jax.tree.map(jnp.sign, g), state)
    >>> sign = optax.GradientTransformation(optax.init_empty_state, signs)
    >>> tx = optax_usam.unified_sam(0.1, 1.0, direction=optax_usam.AscentDirection(sign, "gradient"))
    >>> params = {"w": jnp.array([3.0, -4.0])}
    >>> grad_fn = jax.grad(lambda p: jnp.sum(p["w"] ** 2))
    >>> _, state = tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
    >>> round(float(state.grad_norm), 4)  # ||d_1|| = ||(1, -1)||
    1.4142
  """

  transform: optax.GradientTransformation
  source: str = "gradient"


class GradientDirectionState(NamedTuple):
  """``UnifiedSAMState.direction`` for the source ``"gradient"``: the transform's state."""

  inner: optax.OptState


class PreviousDirectionState(NamedTuple):
  """``UnifiedSAMState.direction`` for ``"previous_sam_gradient"``: next :math:`d`, transform state."""

  direction: optax.Updates
  inner: optax.OptState


class GradFnDirectionState(NamedTuple):
  """``UnifiedSAMState.direction`` for the source ``"grad_fn"``: the transform's state."""

  inner: optax.OptState


_STATES = {
  "gradient": GradientDirectionState,
  "previous_sam_gradient": PreviousDirectionState,
  "grad_fn": GradFnDirectionState,
}


def reads_gradient(direction: AscentDirection | None) -> bool:
  """Whether ``unified_sam(..., direction=direction)`` reads the fresh gradient :math:`g_t` (``updates``)."""
  return direction is None or direction.source == "gradient"


def state_reads_gradient(direction_state: Any) -> bool:
  """:func:`reads_gradient` from a ``UnifiedSAMState.direction``: its type tells, so it is known under jit."""
  return not isinstance(direction_state, (PreviousDirectionState, GradFnDirectionState))


def init_direction(direction: AscentDirection | None, params: optax.Params) -> Any:
  """The initial ``UnifiedSAMState.direction``: empty without a direction (no leaves: plain SAM's state)."""
  if direction is None:
    return optax.EmptyState()
  inner = direction.transform.init(params)
  if direction.source == "previous_sam_gradient":
    return PreviousDirectionState(jax.tree.map(jnp.zeros_like, params), inner)
  return _STATES[direction.source](inner)


def direction_of_step(
  direction: AscentDirection | None,
  updates: optax.Updates | None,
  state: Any,
  params: optax.Params,
  grad_fn: GradFn,
  synchronized_over: Hashable | None,
) -> tuple[optax.Updates, Any]:
  """:math:`d_t` and the direction's state after it; without a direction, :math:`d_t = g_t` = ``updates``.

  ``synchronized_over``: the axis over which every device must perturb alike, or None.
  """
  if direction is None:
    return updates, state
  if direction.source == "previous_sam_gradient":
    return state.direction, state
  transform = optax.with_extra_args_support(direction.transform)
  d, inner = transform.update(updates, state.inner, params, grad_fn=grad_fn)
  _validation.check_matches_params(d, params, "the direction's output d_t", dtypes=False)
  if direction.source == "grad_fn" and synchronized_over is not None:
    # The transform took its gradients on this device's batch; "gradient" sources read averaged updates.
    d = pmean(d, synchronized_over)
  return d, type(state)(inner)


def after_step(
  direction: AscentDirection | None,
  sam_grads: optax.Updates,
  state: Any,
  params: optax.Params,
  grad_fn: GradFn,
) -> Any:
  """The direction's state for the next step: for ``"previous_sam_gradient"``, it holds :math:`d_{t+1}`."""
  if direction is None or direction.source != "previous_sam_gradient":
    return state
  transform = optax.with_extra_args_support(direction.transform)
  d, inner = transform.update(sam_grads, state.inner, params, grad_fn=grad_fn)
  # The stored d keeps its dtypes: a traced hyperparameter (inject_hyperparams) must not promote it.
  d = jax.tree.map(lambda new, old: jnp.asarray(new).astype(jnp.result_type(old)), d, state.direction)
  return PreviousDirectionState(d, inner)
