"""The cheaper variants: Unified SAM that computes the second gradient on some steps only.

Each wrapper takes a :func:`optax_usam.unified_sam` transformation and decides,
step by step, whether to run it (two gradients) or to return a gradient built
from the one the caller already computed. The decision is a ``lax.cond``, so a
skipped ``grad_fn`` is never computed. The wrapped transformation's ``count``
(and so the ``'1/t'`` schedules) advances on SAM steps only.

Under ``vmap`` a batched predicate turns ``lax.cond`` into a select that runs
both branches: the saving needs an unbatched decision (e.g. the same step
count, or the same random key, for every vmapped member).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optax_usam import _validation
from optax_usam._collectives import pmean
from optax_usam._trees import accumulation_dtype, global_norm, is_float_leaf
from optax_usam.transform import Transformation

__all__ = ["RandomizedState", "ReuseState", "randomized_sam", "reuse_sam"]


class ReuseState(NamedTuple):
  """State of :func:`optax_usam.reuse_sam`: step count, the stored SAM correction, the SAM state."""

  count: chex.Array
  correction: optax.Updates
  inner: Any


class RandomizedState(NamedTuple):
  """State of :func:`optax_usam.randomized_sam`: step count, PRNG key, and the SAM state."""

  count: chex.Array
  key: chex.PRNGKey
  inner: Any


# Rounding in two gradient evaluations and a projection stays within a few ulps of ||g_s||; 16 leaves margin.
_NOISE_ULPS = 16
# The step counts are int32 (optax's).
_COUNT_MAX = int(jnp.iinfo(jnp.int32).max)


def _check_sam(sam: Any, injected: str) -> Transformation:
  """``sam`` if it is a SAM-family transformation: the wrappers return its update as the SAM gradient.

  ``injected`` is the wrapper built from ``rho``, for the hint on ``optax.inject_hyperparams``.
  """
  if isinstance(sam, Transformation):
    return sam
  allowed = (
    "a transformation of the SAM family (optax_usam.unified_sam or a member: sam, usam, gsam, vasso, "
    "friendly_sam, momentum_sam, random_smoothing_sam), whose update returns the SAM gradient"
  )
  if not isinstance(sam, optax.GradientTransformation):
    raise TypeError(f"sam must be {allowed}; got {sam!r} of type {type(sam).__name__}.")
  raise TypeError(
    f"sam must be {allowed}; got an optax transformation that is not one (an optimizer, an optax.chain, "
    "optax.inject_hyperparams, a cheaper wrapper). To tune the SAM hyperparameters, inject around the "
    f"wrapper: optax.inject_hyperparams(lambda rho: optax_usam.{injected})(rho=0.05)."
  )


def _is_none(x: Any) -> bool:
  return x is None


def _like_params(tree: optax.Updates, params: optax.Params) -> optax.Updates:
  """Casts floating leaves to the parameters' dtypes, as the SAM branch returns them."""
  return jax.tree.map(lambda u, p: u.astype(jnp.result_type(p)) if is_float_leaf(p) else u, tree, params)


def _float_only(tree: optax.Updates, params: optax.Params) -> optax.Updates:
  """``tree`` with the leaves of non-floating parameters (float0 gradients) replaced by None."""
  return jax.tree.map(lambda t, p: t if is_float_leaf(p) else None, tree, params)


def _vdot(a: optax.Updates, b: optax.Updates, dtype: jnp.dtype) -> chex.Array:
  """<a, b> over the non-None leaves, conjugating ``a``."""
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return sum((jnp.vdot(x.astype(dtype), y.astype(dtype)) for x, y in pairs), jnp.zeros((), dtype))


def _mean_over(tree: optax.Updates, axis_name: Hashable | None) -> optax.Updates:
  # The SAM branch averages inside unified_sam(axis_name=...); the one-gradient branches must too,
  # or the replicas of a pmap would drift apart.
  return tree if axis_name is None else pmean(tree, axis_name)


def reuse_sam(
  sam: Transformation,
  every_k: int,
  alpha: float = 0.7,
  *,
  axis_name: Hashable | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Runs ``sam`` every ``every_k`` steps and reuses its correction in between (LookSAM).

  On a SAM step, with :math:`g` the plain gradient and :math:`g_s` the SAM
  gradient, it stores the part of :math:`g_s` orthogonal to :math:`g`,
  :math:`g_v = g_s - \frac{\langle g_s, g\rangle}{\|g\|^2} g`. On the other
  steps it returns :math:`g + \alpha \frac{\|g\|}{\|g_v\|} g_v` at the cost of
  the one gradient the caller already computed. Average cost per step:
  :math:`1 + 1/k` gradients; memory: one parameter-sized buffer.

  Args:
    sam: the transformation of :func:`optax_usam.unified_sam` or of a member of
      its family (:func:`optax_usam.sam`, :func:`optax_usam.vasso`, ...). Anything
      else is a TypeError: an optax optimizer, an ``optax.chain``, an
      ``optax.inject_hyperparams`` (to tune ``rho`` at run time, inject around the
      wrapper: ``optax.inject_hyperparams(lambda rho: reuse_sam(sam(rho), 4))``).
    every_k: run ``sam`` on steps 0, k, 2k, ... (at most 2**31 - 1, the int32 step count), fixed
      when the wrapper is built (under ``optax.inject_hyperparams`` list it in ``static_args``).
    alpha: weight of the reused correction (LookSAM's default, 0.7); a traced
      one (``optax.inject_hyperparams``) is checked with ``sam``'s ``check_values``.
    axis_name: inside ``pmap``/``shard_map``, the data axis: the gradients
      of the one-gradient steps are averaged over it (give ``sam`` the same axis).

  Examples:
    >>> loss = lambda p: jnp.sum(jnp.cos(p["w"])) + 0.5 * jnp.sum(p["w"] ** 2)
    >>> grad_fn = jax.grad(loss)
    >>> tx = optax.chain(
    ...     optax_usam.reuse_sam(optax_usam.sam(0.05), every_k=5),
    ...     optax.sgd(0.1, momentum=0.9),
    ... )
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> opt_state = tx.init(params)
    >>> @jax.jit
    ... def step(params, opt_state):
    ...   updates, opt_state = tx.update(grad_fn(params), opt_state, params, grad_fn=grad_fn)
    ...   return optax.apply_updates(params, updates), opt_state
    >>> for _ in range(6):
    ...   params, opt_state = step(params, opt_state)
    >>> print(optax_usam.get_diagnostics(opt_state)["count"])  # SAM ran on steps 0 and 5
    2

  References:
    Liu et al., `Towards Efficient and Scalable Sharpness-Aware Minimization
    <https://arxiv.org/abs/2203.02714>`_, CVPR 2022.
  """
  sam = _check_sam(sam, "reuse_sam(optax_usam.sam(rho), 4)")
  every_k = _validation.check_int(
    every_k, "every_k", 1, _COUNT_MAX, bounds=f"a positive int at most {_COUNT_MAX} (the int32 step count)"
  )
  with _validation.checking_traced_values(sam.check_values):
    alpha = _validation.check_nonnegative(alpha, "alpha", traced=True)

  def init_fn(params: optax.Params) -> ReuseState:
    inner = sam.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    return ReuseState(jnp.zeros((), jnp.int32), zeros, inner)

  def update_fn(
    updates: optax.Updates, state: ReuseState, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[optax.Updates, ReuseState]:
    dtype = accumulation_dtype(params)
    tiny = jnp.finfo(dtype).tiny
    g = _float_only(_mean_over(updates, axis_name), params)
    stored = _float_only(state.correction, params)
    keep = lambda new, old: jax.tree.map(lambda n, o: o if n is None else n, new, old, is_leaf=_is_none)

    def sam_step(_: None) -> tuple[optax.Updates, optax.Updates, Any]:
      g_s, inner = sam.update(updates, state.inner, params, **extra_args)
      g_sf = _float_only(g_s, params)
      coef = _vdot(g, g_sf, dtype) / jnp.maximum(_vdot(g, g, dtype), tiny)
      g_v = jax.tree.map(lambda s, v: (s - coef.astype(s.dtype) * v).astype(s.dtype), g_sf, g)
      # g_s parallel to g (a quadratic, rho = 0) leaves only rounding noise in g_v, a few ulps of ||g_s||;
      # the reuse steps would rescale it to alpha ||g||. Below that floor the correction is 0.
      ulp = max(float(jnp.finfo(v.dtype).eps) for v in jax.tree.leaves(g_sf))
      noise = global_norm(g_v, dtype) <= _NOISE_ULPS * ulp * global_norm(g_sf, dtype)
      g_v = jax.tree.map(lambda v: jnp.where(noise, jnp.zeros_like(v), v), g_v)
      return g_s, _like_params(keep(g_v, state.correction), params), inner

    def reuse_step(_: None) -> tuple[optax.Updates, optax.Updates, Any]:
      stored_norm = global_norm(stored, dtype)
      # g_s parallel to g (a quadratic, say) leaves no correction to reuse: g_v = 0, ratio 0, not 0/0.
      ratio = jnp.where(stored_norm > 0, global_norm(g, dtype) / jnp.maximum(stored_norm, tiny), 0)
      out = jax.tree.map(lambda v, c: v + (alpha * ratio).astype(c.dtype) * c, g, stored)
      return _like_params(keep(out, updates), params), state.correction, state.inner

    out, correction, inner = jax.lax.cond(state.count % every_k == 0, sam_step, reuse_step, None)
    return out, ReuseState(optax.safe_increment(state.count), correction, inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def randomized_sam(
  sam: Transformation,
  probability: float | optax.Schedule,
  seed: int = 0,
  *,
  axis_name: Hashable | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Runs ``sam`` with probability :math:`p_t` and returns the plain gradient otherwise.

  Average cost per step: :math:`1 + p` gradients. The decision comes from a
  PRNG key kept in the state, so it is reproducible, survives checkpoints and
  is the same on every device of a ``pmap`` (required: the SAM branch may
  communicate over ``axis_name``).

  Args:
    sam: the transformation of :func:`optax_usam.unified_sam` or of a member of
      its family, as in :func:`optax_usam.reuse_sam`.
    probability: :math:`p_t \in [0, 1]`, a float or a schedule of the count.
      With ``sam``'s ``check_values=True``, each step's :math:`p_t` (a
      schedule's value after count 0, a traced value) is checked too.
    seed: seed of the PRNG key that draws the decisions, an int in
      [-2**31, 2**31 - 1] (JAX keeps 32 bits of a seed, so wider ones would
      share keys; [-2**63, 2**63 - 1] with ``jax_enable_x64``), read by ``init`` only (under
      ``optax.inject_hyperparams`` pass it in ``static_args``: a value set in
      the state later would not reach the key).
    axis_name: inside ``pmap``/``shard_map``, the data axis: the plain
      gradient of a skipped step is averaged over it (give ``sam`` the same axis).

  Examples:
    >>> loss = lambda p: jnp.sum(jnp.cos(p["w"])) + 0.5 * jnp.sum(p["w"] ** 2)
    >>> grad_fn = jax.grad(loss)
    >>> tx = optax.chain(
    ...     optax_usam.randomized_sam(optax_usam.unified_sam(0.05, "1-1/t"), 0.25, seed=1),
    ...     optax.sgd(0.1, momentum=0.9),
    ... )
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> opt_state = tx.init(params)
    >>> for _ in range(8):
    ...   updates, opt_state = tx.update(grad_fn(params), opt_state, params, grad_fn=grad_fn)
    ...   params = optax.apply_updates(params, updates)
    >>> print(optax_usam.get_diagnostics(opt_state)["count"])  # SAM steps among the 8
    3

  References:
    Zhao et al., `Randomized Sharpness-Aware Training for Boosting
    Computational Efficiency in Deep Learning <https://arxiv.org/abs/2203.09962>`_, 2022.
  """
  sam = _check_sam(sam, "randomized_sam(optax_usam.sam(rho), 0.25)")
  # A p_t outside [0, 1] would act as 0 or 1 (NaN as 0) without a word: with check_values, each is checked.
  with _validation.checking_traced_values(sam.check_values):
    prob_fn = _validation.bounded_schedule(probability, "probability", 0.0, 1.0)
  seed = _validation.check_seed(seed)

  def init_fn(params: optax.Params) -> RandomizedState:
    key = jax.random.key_data(jax.random.key(seed))
    return RandomizedState(jnp.zeros((), jnp.int32), key, sam.init(params))

  def update_fn(
    updates: optax.Updates, state: RandomizedState, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[optax.Updates, RandomizedState]:
    key, draw = jax.random.split(jax.random.wrap_key_data(state.key))
    take_sam = jax.random.uniform(draw) < prob_fn(state.count)
    out, inner = jax.lax.cond(
      take_sam,
      lambda: sam.update(updates, state.inner, params, **extra_args),
      lambda: (_like_params(_mean_over(updates, axis_name), params), state.inner),
    )
    return out, RandomizedState(optax.safe_increment(state.count), jax.random.key_data(key), inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
