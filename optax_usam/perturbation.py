"""The Unified SAM ascent step as a pure function.

This is the whole algorithm: everything else in the package (the optax
transformation, the Flax glue, the distributed helpers) calls :func:`perturb`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

Params = Any


def is_float_leaf(leaf: Any) -> bool:
  """Whether ``leaf`` is a floating (or complex) array, i.e. a parameter SAM moves."""
  dtype = getattr(leaf, "dtype", None)
  if dtype is None:
    dtype = jnp.result_type(leaf)
  return jnp.issubdtype(dtype, jnp.inexact)


def accumulation_dtype(tree: Params) -> jnp.dtype:
  """The dtype the global norm is accumulated in: float32, or float64 if any leaf is."""
  dtypes = [jnp.result_type(x) for x in jax.tree.leaves(tree) if is_float_leaf(x)]
  widest = jnp.result_type(jnp.float32, *dtypes) if dtypes else jnp.dtype(jnp.float32)
  # NumPy float64 leaves become float32 arrays when x64 is off; accumulate in what JAX will use.
  return jax.dtypes.canonicalize_dtype(widest)


def global_norm(tree: Params, dtype: jnp.dtype | None = None) -> chex.Array:
  """Global L2 norm over the floating leaves of ``tree``.

  Each leaf is squared and summed in ``dtype`` (default:
  :func:`accumulation_dtype`), so bfloat16 and float16 gradients neither
  overflow nor lose the sum to rounding. Non-floating leaves are ignored.
  """
  dtype = accumulation_dtype(tree) if dtype is None else dtype
  squares = [
      jnp.sum(jnp.square(jnp.abs(x).astype(dtype)))
      for x in jax.tree.leaves(tree)
      if is_float_leaf(x)
  ]
  return jnp.sqrt(sum(squares, jnp.zeros((), dtype)))


class Perturbed(NamedTuple):
  """The ascent point ``params + e`` and the quantities worth logging."""

  params: Params
  grad_norm: chex.Array
  perturbation_norm: chex.Array


def perturb(
    params: Params,
    grads: Params,
    rho: chex.Numeric,
    lambd: chex.Numeric,
    eps: float = 1e-12,
) -> Perturbed:
  r"""Moves ``params`` to the Unified SAM ascent point.

  .. math::
    e = \rho \left(1 - \lambda + \frac{\lambda}{\|g\| + \epsilon}\right) g,
    \qquad \text{returns } x + e,

  with :math:`\|g\|` the global L2 norm over all floating leaves of ``grads``.
  :math:`\lambda = 1` is SAM (:math:`\|e\| = \rho`), :math:`\lambda = 0` is
  USAM. A zero gradient gives ``e = 0`` (no division by zero: :math:`\epsilon`
  is in the denominator). Non-floating leaves of ``params`` are returned
  unchanged and their gradients are ignored.

  Use it to write the two passes by hand::

    g = jax.grad(loss)(params, batch)
    ascent = optax_usam.perturb(params, g, rho=0.05, lambd=1.0)
    g_sam = jax.grad(loss)(ascent.params, batch)
    updates, opt_state = base_optimizer.update(g_sam, opt_state, params)

  Args:
    params: the current parameters :math:`x`.
    grads: the gradient :math:`g` at ``params``, same tree structure.
    rho: the perturbation radius :math:`\rho \ge 0` (a scalar, may be traced).
    lambd: the normalization weight :math:`\lambda \in [0, 1]` (may be traced).
    eps: added to :math:`\|g\|` in the denominator.

  Returns:
    A :class:`Perturbed` with the perturbed parameters, :math:`\|g\|` and
    :math:`\|e\|`, both in the accumulation dtype (float32 or float64).
  """
  dtype = accumulation_dtype(params)
  # Gradients of non-floating parameters (float0 from jax.grad) carry no direction.
  float_grads = jax.tree.map(
      lambda x, g: g if is_float_leaf(x) else None, params, grads
  )
  grad_norm = global_norm(float_grads, dtype)
  rho = jnp.asarray(rho, dtype)
  lambd = jnp.asarray(lambd, dtype)
  scale = rho * (1 - lambd + lambd / (grad_norm + eps))

  def move(x: chex.Array, g: chex.Array) -> chex.Array:
    if not is_float_leaf(x):
      return x
    x = jnp.asarray(x)
    step = scale.astype(jnp.promote_types(x.dtype, jnp.float32)) * g
    return x + step.astype(x.dtype)

  perturbed = jax.tree.map(move, params, grads)
  return Perturbed(perturbed, grad_norm, scale * grad_norm)
