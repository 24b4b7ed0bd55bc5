"""The Unified SAM ascent step as a pure function.

This is the whole algorithm: everything else in the package (the optax
transformation, the Flax glue, the distributed helpers, the cheaper variants)
calls :func:`perturb`.
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
  overflow at float16's 65504 nor lose the sum to rounding. It is one pass
  over the gradient, exactly what a hand-written SAM step does: in float32
  the sum of squares overflows to ``inf`` only for norms above about 1e19 and
  underflows to 0 only for norms below about 1e-19, far under the ``eps`` =
  1e-12 that :func:`perturb` adds. Non-floating leaves are ignored.
  """
  dtype = accumulation_dtype(tree) if dtype is None else dtype
  total = jnp.zeros((), dtype)
  for x in jax.tree.leaves(tree):
    if is_float_leaf(x):
      total = total + jnp.sum(jnp.square(jnp.abs(x).astype(dtype)))
  return jnp.sqrt(total)


class Perturbed(NamedTuple):
  """The ascent point ``params + e`` and the quantities worth logging."""

  params: Params
  grad_norm: chex.Array
  perturbation_norm: chex.Array


def adaptive_scales(params: Params, eta: float, mask: Any = None) -> Params:
  r"""ASAM's elementwise scale :math:`T_w = |w| + \eta`, or None where ``mask`` is False.

  ``mask`` is a tree of bools with the structure of ``params`` (or a prefix of
  it), or a callable ``params -> such a tree``, as in :func:`optax.masked`:
  True means adapted. None adapts every floating leaf.
  """
  if callable(mask):
    mask = mask(params)
  if mask is None:
    mask = True
  # A prefix of params (e.g. {"encoder": False}) covers every leaf below it, as in optax.masked.
  full = jax.tree.map(
      lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask, params, is_leaf=lambda m: isinstance(m, bool)
  )
  scale = lambda adapt, x: (jnp.abs(x) + eta) if adapt and is_float_leaf(x) else None
  return jax.tree.map(scale, full, params)


def perturb(
    params: Params,
    grads: Params,
    rho: chex.Numeric,
    lambd: chex.Numeric,
    eps: float = 1e-12,
    *,
    scales: Params | None = None,
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

  With ``scales`` :math:`T` (adaptive SAM, Kwon et al. 2021; see
  :func:`adaptive_scales`), the step is taken in the adapted space:
  :math:`e = \rho (1 - \lambda + \lambda / (\|T g\| + \epsilon))\, T^2 g`,
  which is the formula above when :math:`T = 1`.

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
    scales: optional elementwise :math:`T`, a tree like ``params`` whose
      leaves are arrays or None (None means 1).

  Returns:
    A :class:`Perturbed` with the perturbed parameters, :math:`\|T g\|` and
    :math:`\|e\|`, both in the accumulation dtype (float32 or float64).
  """
  dtype = accumulation_dtype(params)
  if scales is None:
    scales = jax.tree.map(lambda _: None, params)
  is_none = lambda s: s is None

  def adapted(x: Any, g: Any, t: Any) -> Any:
    # Gradients of non-floating parameters (float0 from jax.grad) carry no direction.
    if not is_float_leaf(x):
      return None
    return g if t is None else t * g

  tg = jax.tree.map(adapted, params, grads, scales, is_leaf=is_none)
  grad_norm = global_norm(tg, dtype)
  rho = jnp.asarray(rho, dtype)
  lambd = jnp.asarray(lambd, dtype)
  scale = rho * (1 - lambd + lambd / (grad_norm + eps))

  def move(x: Any, t: Any, tgx: Any) -> Any:
    if not is_float_leaf(x):
      return x
    x = jnp.asarray(x)
    direction = tgx if t is None else t * tgx
    step = scale.astype(jnp.promote_types(x.dtype, jnp.float32)) * direction
    return x + step.astype(x.dtype)

  perturbed = jax.tree.map(move, params, scales, tg, is_leaf=is_none)
  if all(t is None for t in jax.tree.leaves(scales, is_leaf=is_none)):
    # ||e|| = scale * ||g||: no second reduction over the parameters.
    e_norm = grad_norm
  else:
    t2g = jax.tree.map(lambda t, v: v if t is None else t * v, scales, tg, is_leaf=is_none)
    e_norm = global_norm(t2g, dtype)
  # An overflowed norm (inf) with lambda = 1 gives scale = 0 and e = 0: report ||e|| = 0, not 0 * inf.
  return Perturbed(perturbed, grad_norm, jnp.where(scale == 0, 0, scale * e_norm))
