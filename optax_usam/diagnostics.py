"""Reading Unified SAM's diagnostics, and what its next step needs, out of any optimizer state."""

from __future__ import annotations

from typing import Any

import chex
import jax
import numpy as np
import optax

from optax_usam.ascent import state_reads_gradient
from optax_usam.cheaper import RandomizedState, ReuseState
from optax_usam.transform import UnifiedSAMState

__all__ = ["get_diagnostics", "needs_fresh_gradient"]

# Wrappers whose own update reads the fresh gradient, whatever the ascent direction inside them.
_READ_UPDATES = (ReuseState, RandomizedState, optax.MultiStepsState)


def _find_state(opt_state: Any) -> UnifiedSAMState:
  """Returns the single :class:`UnifiedSAMState` nested anywhere in ``opt_state``.

  Works through ``optax.chain`` tuples, ``optax.inject_hyperparams``,
  ``optax.MultiSteps`` and any other pytree of states.
  """
  found = [
    s
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, UnifiedSAMState))
    if isinstance(s, UnifiedSAMState)
  ]
  if len(found) != 1:
    raise ValueError(
      f"opt_state must contain exactly one UnifiedSAMState (from optax_usam.unified_sam); found {len(found)}."
    )
  return found[0]


def get_diagnostics(opt_state: Any) -> dict[str, chex.Array]:
  """The last step's Unified SAM diagnostics, as a dict ready for a logger.

  Keys: ``count``, ``grad_norm``, ``lambd``, ``rho``, ``perturbation_norm``.
  The values are plain arrays, also from an ``nnx.Optimizer``'s state, whose
  leaves are wrapped in ``nnx`` variables. Usable inside ``jit`` and outside.

  Examples:
    >>> tx = optax.chain(optax.inject_hyperparams(optax_usam.sam)(rho=0.05), optax.sgd(0.1))
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> opt_state = tx.init(params)
    >>> grad_fn = lambda p: {"w": 2 * p["w"]}
    >>> _, opt_state = tx.update(grad_fn(params), opt_state, params, grad_fn=grad_fn)
    >>> {k: round(float(v), 4) for k, v in optax_usam.get_diagnostics(opt_state).items()}
    {'count': 1.0, 'grad_norm': 10.0, 'lambd': 1.0, 'rho': 0.05, 'perturbation_norm': 0.05}
  """
  state = _find_state(opt_state)._asdict()
  del state["direction"]  # the direction's own state (buffers), not a diagnostic
  return {name: _unwrap(value) for name, value in state.items()}


def needs_fresh_gradient(opt_state: Any) -> bool:
  """Whether the next ``update`` needs the gradient at the current parameters (the first pass).

  False when ``opt_state`` holds a :class:`UnifiedSAMState` whose ascent
  direction does not read it (:func:`optax_usam.momentum_sam`,
  :func:`optax_usam.random_smoothing_sam`, or an
  :class:`optax_usam.AscentDirection` whose source is not ``"gradient"``) and
  no wrapper that reads it (``optax.MultiSteps``, :func:`optax_usam.reuse_sam`,
  :func:`optax_usam.randomized_sam`): then ``update`` takes ``updates=None``
  and a step computes one gradient fewer. True otherwise, also for an
  optimizer without Unified SAM. It reads the state's structure, not its
  values, so it is a Python bool inside ``jit``; ``SAMTrainState``'s
  :func:`optax_usam.flax_linen.linen_train_step` and :func:`optax_usam.flax_nnx.sam_update`
  skip the first pass with it.

  Examples:
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> tx = optax.chain(optax_usam.momentum_sam(rho=0.05), optax.sgd(0.1, momentum=0.9))
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> opt_state = tx.init(params)
    >>> optax_usam.needs_fresh_gradient(opt_state)
    False
    >>> updates, opt_state = tx.update(None, opt_state, params, grad_fn=jax.grad(loss))
    >>> optax_usam.needs_fresh_gradient(optax.chain(optax_usam.sam(0.05)).init(params))
    True
  """
  is_node = lambda x: isinstance(x, (UnifiedSAMState, *_READ_UPDATES))
  nodes = jax.tree.leaves(opt_state, is_leaf=is_node)
  sam_states = [s for s in nodes if isinstance(s, UnifiedSAMState)]
  if not sam_states or any(isinstance(s, _READ_UPDATES) for s in nodes):
    return True
  return any(state_reads_gradient(s.direction) for s in sam_states)


def _unwrap(value: Any) -> chex.Array:
  """The array inside a one-leaf pytree wrapper (Flax NNX's ``OptArray``), or ``value`` itself."""
  if isinstance(value, (jax.Array, np.ndarray)):
    return value
  (leaf,) = jax.tree.leaves(value)
  return leaf
