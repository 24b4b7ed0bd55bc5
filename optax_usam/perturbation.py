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

from optax_usam import _validation
from optax_usam._trees import accumulation_dtype, global_norm, is_float_leaf

__all__ = ["Perturbed", "adaptive_scales", "perturb"]

Params = Any


class Perturbed(NamedTuple):
  """The ascent point ``params + e`` and the quantities worth logging."""

  params: Params
  grad_norm: chex.Array
  perturbation_norm: chex.Array


def adaptive_scales(params: Params, eta: chex.Numeric, mask: Any = None) -> Params:
  r"""ASAM's elementwise scale :math:`T_w = |w| + \eta`, or None where ``mask`` is False.

  ``mask`` is a tree of bools with the structure of ``params`` (or a prefix of
  it), or a callable ``params -> such a tree``, as in :func:`optax.masked`:
  True means adapted. None adapts every floating leaf.

  Examples:
    >>> from optax_usam.perturbation import adaptive_scales
    >>> params = {"w": jnp.array([-2.0, 0.5]), "b": jnp.zeros(2)}
    >>> adaptive_scales(params, eta=0.01, mask={"w": True, "b": False})
    {'b': None, 'w': Array([2.01, 0.51], dtype=float32)}
  """
  eta = _validation.check_nonnegative(eta, "eta", traced=True)
  leaves, treedef = jax.tree.flatten(params)
  flags = _validation.leaf_mask(mask, params, "adaptive_mask")
  scale = lambda x, adapt: (jnp.abs(x) + eta) if adapt and is_float_leaf(x) else None
  return treedef.unflatten([scale(x, adapt) for x, adapt in zip(leaves, flags, strict=True)])


def perturb(
  params: Params,
  grads: Params,
  rho: chex.Numeric,
  lambd: chex.Numeric,
  eps: chex.Numeric = 1e-12,
  *,
  scales: Params | None = None,
  mask: Any = None,
  check_values: bool = False,
) -> Perturbed:
  r"""Moves ``params`` to the Unified SAM ascent point.

  .. math::
    e = \rho \left(1 - \lambda + \frac{\lambda}{\|g\| + \epsilon}\right) g,
    \qquad \text{returns } x + e,

  with :math:`\|g\|` the global L2 norm over all floating leaves of ``grads``
  (the Unified SAM step of Oikonomou & Loizou 2025). :math:`\lambda = 1` is SAM
  (:math:`\|e\| = \rho`), :math:`\lambda = 0` is USAM. A zero gradient gives
  ``e = 0`` (no division by zero: :math:`\epsilon` is in the denominator).
  Non-floating leaves of ``params`` are returned unchanged and their gradients
  are ignored; ``None`` leaves (Equinox's non-array fields) stay None.

  With ``scales`` :math:`T` (adaptive SAM, Kwon et al. 2021; see
  :func:`~optax_usam.perturbation.adaptive_scales`), the step is taken in the adapted space:
  :math:`e = \rho (1 - \lambda + \lambda / (\|T g\| + \epsilon))\, T^2 g`,
  which is the formula above when :math:`T = 1`.

  Use it to write the two passes by hand (see the example below): the
  gradient at ``ascent.params`` is the one to give the base optimizer.

  Args:
    params: the current parameters :math:`x`.
    grads: the gradient :math:`g` at ``params``, same tree structure and
      shapes, real and floating where ``params`` are.
    rho: the perturbation radius :math:`\rho \ge 0` (a real scalar, may be traced).
    lambd: the normalization weight :math:`\lambda \in [0, 1]` (may be traced).
    eps: added to :math:`\|g\|` in the denominator. A Python number out of
      range (of these three) is a ValueError; an array, such as a step's
      :math:`\rho_t`, is checked only with ``check_values``.
    scales: optional elementwise :math:`T`, a tree like ``params`` whose
      leaves are None (meaning 1) or real arrays of the parameter's shape
      (or one that broadcasts to it).
    mask: which leaves are perturbed, as in :func:`optax.masked`: a tree of
      bools like ``params`` (or a prefix of it), or a callable from params
      to such a tree; False leaves are neither moved nor counted in the norm.
      None perturbs every floating leaf.
    check_values: check, when the step runs, :math:`\rho \ge 0`,
      :math:`\lambda \in [0, 1]` and :math:`\epsilon > 0` finite, and that
      ``params + e`` is finite wherever ``params`` is (it is not when
      :math:`e` overflows the parameters' dtype, 65504 in float16), with
      ``jax.experimental.checkify.debug_check``; run the step under
      ``checkify.checkify(..., errors=checkify.user_checks)`` to see them.
      Off by default: a jitted function that holds checks loses JAX's fast
      dispatch path (measured: +6% on a 3 ms MLP step).

  Returns:
    A :class:`~optax_usam.perturbation.Perturbed` with the perturbed parameters, :math:`\|T g\|` and
    :math:`\|e\|`, both in the accumulation dtype (float32 or float64).

  Examples:
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> g = jax.grad(loss)(params)  # [6, 8], norm 10
    >>> ascent = optax_usam.perturb(params, g, rho=0.05, lambd=1.0)  # SAM: ||e|| = rho
    >>> print(ascent.params["w"], ascent.grad_norm, round(float(ascent.perturbation_norm), 6))
    [3.03 4.04] 10.0 0.05
    >>> ascent = optax_usam.perturb(params, g, rho=0.05, lambd=0.0)  # USAM: e = rho g
    >>> print(ascent.params["w"], round(float(ascent.perturbation_norm), 6))
    [3.3 4.4] 0.5
    >>> g_sam = jax.grad(loss)(ascent.params)  # what the base optimizer receives
  """
  _validation.check_real(params)
  _validation.check_scalars(rho=rho, lambd=lambd, eps=eps)
  dtype = accumulation_dtype(params)
  _validation.check_perturb_values(rho, lambd, eps, dtype)
  _validation.check_matches_params(grads, params, "grads", dtypes=False)
  if scales is not None:
    _validation.check_scales(scales, params)
  leaves, treedef = jax.tree.flatten(params)
  grad_leaves = treedef.flatten_up_to(grads)
  t_leaves = [None] * len(leaves) if scales is None else treedef.flatten_up_to(scales)
  flags = _validation.leaf_mask(mask, params, "mask")
  times = lambda t, v: v if t is None or v is None else t * v

  # T g over the perturbed leaves; None for non-floating (float0 gradients) and masked-out ones.
  tg = [
    times(t, g) if m and is_float_leaf(x) else None
    for x, g, t, m in zip(leaves, grad_leaves, t_leaves, flags, strict=True)
  ]
  grad_norm = global_norm(tg, dtype)
  rho = jnp.asarray(rho, dtype)
  lambd = jnp.asarray(lambd, dtype)
  if check_values:
    # Values a schedule produces after count 0, or traced ones, cannot be seen when the step is built.
    _validation.check_at_run_time(rho, "rho", 0.0, jnp.inf)
    _validation.check_at_run_time(lambd, "lambd", 0.0, 1.0)
    _validation.check_at_run_time(eps, "eps", 0.0, jnp.inf, open_low=True)
  denominator = grad_norm + eps
  # A traced eps (inject_hyperparams) that is 0 in this dtype must not turn a zero gradient into 0/0.
  normalized = jnp.where(denominator > 0, lambd / jnp.where(denominator > 0, denominator, 1), 0)
  scale = rho * (1 - lambd + normalized)

  def move(x: Any, t: Any, tgx: Any) -> Any:
    if tgx is None:
      return x
    x = jnp.asarray(x)
    step = scale.astype(jnp.promote_types(x.dtype, jnp.float32)) * times(t, tgx)
    return x + step.astype(x.dtype)

  perturbed = treedef.unflatten([move(*leaf) for leaf in zip(leaves, t_leaves, tg, strict=True)])
  if check_values:
    _validation.check_ascent_point(params, perturbed)
  if scales is None:
    # ||e|| = scale * ||g||: no second reduction over the parameters.
    e_norm = grad_norm
  else:
    e_norm = global_norm([times(t, v) for t, v in zip(t_leaves, tg, strict=True)], dtype)
  # |scale|: lambda or rho out of range (unchecked when traced) may make it negative; a norm is not.
  # An infinite gradient with lambda = 1 gives 0 * inf = NaN here, as in e itself.
  return Perturbed(perturbed, grad_norm, jnp.abs(scale) * e_norm)
