"""Where Unified SAM sits in a chain: first, or its ascent step reads another transformation's output.

``optax.chain(optax.adamw(1e-3), optax_usam.unified_sam(0.05, 1.0))`` trains without an error, but the
perturbation is taken along Adam's update, not along the loss gradient, and the output of ``grad_fn``
then skips Adam altogether: neither the paper's method nor Adam. The Flax steps and the sharded trainer
refuse such a chain; :func:`check_sam_first` lets a plain Optax user ask for the same check.
"""

from __future__ import annotations

from typing import Any

import jax

from optax_usam.cheaper import RandomizedState, ReuseState
from optax_usam.transform import UnifiedSAMState

__all__ = ["check_sam_first"]

# The states of a transformation that must come first: unified_sam's, and those of the library's own
# wrappers around it, which take its place in a chain.
_SAM_STATES = (UnifiedSAMState, ReuseState, RandomizedState)


def is_sam_state(node: Any) -> bool:
  return isinstance(node, _SAM_STATES)


def sam_state_paths(opt_state: Any) -> list[tuple[Any, ...]]:
  """The key paths of the Unified SAM states in ``opt_state`` (a wrapper's own, not the one inside it)."""
  found = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=is_sam_state)[0]
  return [path for path, node in found if is_sam_state(node)]


def _child(node: Any, key: Any) -> Any:
  children = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]
  return next(child for (k,), child in children if k == key)


def _after_another(opt_state: Any, path: tuple[Any, ...]) -> bool:
  """Whether the state at ``path`` follows another transformation's in some ``optax.chain``.

  A chain's state is a plain tuple, one entry per transformation in order; any other node on the way
  (``inject_hyperparams``, ``MultiSteps``, ``apply_if_finite``, a dict) wraps the transformation without
  coming before it. A dict's order is not kept through ``jit``, so ``optax.named_chain`` is not checked.
  """
  node = opt_state
  for key in path:
    if type(node) is tuple and key.idx != 0:
      return True
    node = _child(node, key)
  return False


def check_sam_order(opt_state: Any, name: str, *, required: bool) -> None:
  """Raises ValueError if ``opt_state`` holds a Unified SAM state that is not first, or more than one.

  ``name`` names the optimizer in the message (``"state.tx"``, ``"base_optimizer"``); ``required``: whether
  an ``opt_state`` without a Unified SAM state is an error too (optimizers of one's own that accept
  ``grad_fn`` may have none).
  """
  paths = sam_state_paths(opt_state)
  where = ", ".join(f"opt_state{jax.tree_util.keystr(p)}" for p in paths)
  if len(paths) > 1:
    raise ValueError(
      f"{name} holds {len(paths)} Unified SAM transformations ({where}); a step takes one ascent step: "
      "keep one, first in the chain."
    )
  if not paths:
    if required:
      raise ValueError(
        f"{name} holds no Unified SAM transformation (optax_usam.unified_sam, a member of its family, "
        "reuse_sam or randomized_sam): there is nothing to check."
      )
    return
  if _after_another(opt_state, paths[0]):
    raise ValueError(
      f"{name} puts the Unified SAM transformation after another one ({where}): it must come first in "
      "the chain, so that it perturbs along the loss gradient and everything after it (weight decay, "
      "momentum, Adam, clipping) acts on the gradient it returns, e.g. optax.chain(optax_usam.unified_sam("
      "0.05, 1.0), optax.adamw(1e-3)). As it is, it would train without an error, but not as SAM."
    )


def check_sam_first(opt_state: Any) -> None:
  """Raises ValueError unless ``opt_state``'s optimizer has exactly one Unified SAM transformation, first.

  ``unified_sam`` (any member of its family, or :func:`optax_usam.reuse_sam` /
  :func:`optax_usam.randomized_sam` around it) must come first in an
  ``optax.chain``: it builds the ascent step from the raw loss gradient, and
  what comes after it acts on the gradient at the perturbed point. Placed
  after, say, ``optax.adamw``, it trains without an error but not as SAM.
  This check reads the structure of the state only (use it once, after
  ``tx.init``). Wrappers around the whole chain or around the SAM
  transformation itself (``optax.inject_hyperparams``, ``optax.MultiSteps``,
  ``optax.apply_if_finite``) are allowed; ``optax.named_chain`` is not
  checked (its order does not survive ``jit``). An ``nnx.Optimizer``'s
  ``opt_state`` works as is. :class:`~optax_usam.flax_linen.SAMTrainState`,
  :func:`~optax_usam.flax_nnx.sam_update` and
  :func:`~optax_usam.distributed.make_sharded_trainer` run it themselves.

  Args:
    opt_state: the optimizer state, ``tx.init(params)``.

  Raises:
    ValueError: the Unified SAM transformation follows another one in a
      chain, or ``opt_state`` holds none, or more than one.

  Examples:
    >>> params = {"w": jnp.ones(3)}
    >>> tx = optax.chain(optax_usam.unified_sam(0.05, "1-1/t"), optax.adamw(1e-3))
    >>> optax_usam.check_sam_first(tx.init(params))  # passes
    >>> wrong = optax.chain(optax.adamw(1e-3), optax_usam.unified_sam(0.05, "1-1/t"))
    >>> optax_usam.check_sam_first(wrong.init(params))
    Traceback (most recent call last):
      ...
    ValueError: opt_state puts the Unified SAM transformation after another one (opt_state[1]): it must ...
  """
  check_sam_order(opt_state, "opt_state", required=True)
