"""Reading Unified SAM's diagnostics out of any optimizer state."""

from __future__ import annotations

from typing import Any

import chex
import jax
import numpy as np

from optax_usam.transform import UnifiedSAMState


def find_state(opt_state: Any) -> UnifiedSAMState:
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
        "opt_state must contain exactly one UnifiedSAMState (from optax_usam.unified_sam); "
        f"found {len(found)}."
    )
  return found[0]


def get_diagnostics(opt_state: Any) -> dict[str, chex.Array]:
  """The last step's Unified SAM diagnostics, as a dict ready for a logger.

  Keys: ``count``, ``grad_norm``, ``lambd``, ``rho``, ``perturbation_norm``.
  The values are plain arrays, also from an ``nnx.Optimizer``'s state, whose
  leaves are wrapped in ``nnx`` variables. Usable inside ``jit`` and outside.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_usam
    >>> tx = optax.chain(optax.inject_hyperparams(optax_usam.sam)(rho=0.05), optax.sgd(0.1))
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> opt_state = tx.init(params)
    >>> grad_fn = lambda p: {"w": 2 * p["w"]}
    >>> _, opt_state = tx.update(grad_fn(params), opt_state, params, grad_fn=grad_fn)
    >>> {k: round(float(v), 4) for k, v in optax_usam.get_diagnostics(opt_state).items()}
    {'count': 1.0, 'grad_norm': 10.0, 'lambd': 1.0, 'rho': 0.05, 'perturbation_norm': 0.05}
  """
  return {name: _unwrap(value) for name, value in find_state(opt_state)._asdict().items()}


def _unwrap(value: Any) -> chex.Array:
  """The array inside a one-leaf pytree wrapper (Flax NNX's ``OptArray``), or ``value`` itself."""
  if isinstance(value, (jax.Array, np.ndarray)):
    return value
  (leaf,) = jax.tree.leaves(value)
  return leaf
