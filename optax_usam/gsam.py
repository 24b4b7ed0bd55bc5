"""GSAM (Zhuang et al., ICLR 2022): the descent side of the SAM family, on Unified SAM's two gradients."""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from optax_usam import _validation
from optax_usam._collectives import pmean
from optax_usam._trees import accumulation_dtype, is_float_leaf
from optax_usam.ascent import GradFn
from optax_usam.schedules import LambdaSchedule
from optax_usam.transform import (
  Radius,
  Transformation,
  UnifiedSAMState,
  unified_sam,
  with_sam_options,
)

__all__ = ["gsam"]


def surrogate_gap_step(
  g: optax.Updates, g_sam: optax.Updates, alpha: chex.Numeric, params: optax.Params
) -> optax.Updates:
  r"""GSAM's output :math:`g_{sam} - \alpha g_\perp`, the descent side of :func:`gsam`.

  .. math::
    g_\perp = g - \frac{\langle g, g_{sam}\rangle}{\|g_{sam}\|^2}\, g_{sam}.

  Over the floating leaves of ``params``, accumulated in float32 (float64 if a
  leaf is); other leaves keep ``g_sam``'s. A zero ``g_sam`` gives
  :math:`g_\perp = g`.
  """
  dtype = accumulation_dtype(params)
  floats = [is_float_leaf(p) for p in jax.tree.leaves(params)]
  g_leaves, s_leaves = jax.tree.leaves(g), jax.tree.leaves(g_sam)
  pairs = [
    (a.astype(dtype), b.astype(dtype)) for a, b, f in zip(g_leaves, s_leaves, floats, strict=True) if f
  ]
  dot = sum((jnp.vdot(b, a) for a, b in pairs), jnp.zeros((), dtype))
  sq = sum((jnp.vdot(b, b) for _, b in pairs), jnp.zeros((), dtype))
  coef = jnp.where(sq > 0, dot / jnp.where(sq > 0, sq, 1), 0)

  def step(a: Any, b: Any, f: bool) -> Any:
    if not f:
      return b
    perp = a.astype(dtype) - coef * b.astype(dtype)
    return (b.astype(dtype) - alpha * perp).astype(b.dtype)

  out = [step(a, b, f) for a, b, f in zip(g_leaves, s_leaves, floats, strict=True)]
  return jax.tree.unflatten(jax.tree.structure(g_sam), out)


@with_sam_options
def gsam(rho: Radius, alpha: float, lambd_schedule: LambdaSchedule = 1.0, **options: Any) -> Transformation:
  r"""GSAM (Zhuang et al., ICLR 2022): Unified SAM plus a step that shrinks the surrogate gap.

  .. math::
    g_{sam} = \nabla f(x_t + e_t), \qquad
    g_\perp = g_t - \frac{\langle g_t, g_{sam}\rangle}{\|g_{sam}\|^2}\, g_{sam}, \qquad
    \text{output} = g_{sam} - \alpha\, g_\perp,

  with :math:`e_t` Unified SAM's perturbation along :math:`g_t` (SAM's with
  the default ``lambd_schedule=1``). :math:`g_\perp`, the part of the
  gradient at :math:`x_t` orthogonal to the SAM gradient, is a descent
  direction of the surrogate gap :math:`f(x_t + e_t) - f(x_t)` that leaves
  the perturbed loss unchanged to first order. :math:`\alpha = 0` is
  :func:`optax_usam.unified_sam` exactly. It reuses the step's two
  gradients: no further pass, no state beyond Unified SAM's. GSAM couples
  :math:`\rho_t` to the learning rate; pass that schedule as ``rho``.

  With ``axis_name``, :math:`g_t` is averaged over the axis once and used
  both for the perturbation (unless ``sync_perturbation=False``: then each
  device perturbs along its own) and for :math:`g_\perp`.

  Args:
    rho: perturbation radius, a float or a schedule, as in :func:`optax_usam.unified_sam`.
    alpha: :math:`\alpha \ge 0`, the weight of the surrogate-gap step.
    lambd_schedule: :math:`\lambda_t`, as in :func:`optax_usam.unified_sam`;
      1 (the default) is the paper's method.
    **options: the keyword options of :func:`optax_usam.unified_sam` (``eps``,
      ``axis_name``, ``adaptive``, ``perturb_mask``, ...), but ``direction``.

  Examples:
    >>> loss = lambda p: jnp.sum(jnp.cos(p["w"])) + 0.5 * jnp.sum(p["w"] ** 2)
    >>> tx = optax.chain(optax_usam.gsam(rho=0.05, alpha=0.3), optax.sgd(0.1))
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> opt_state = tx.init(params)
    >>> grad_fn = jax.grad(loss)
    >>> updates, opt_state = tx.update(grad_fn(params), opt_state, params, grad_fn=grad_fn)
    >>> [round(float(w), 4) for w in optax.apply_updates(params, updates)["w"]]
    [0.984, -1.8838]

  References:
    Zhuang et al., `Surrogate Gap Minimization Improves Sharpness-Aware
    Training <https://openreview.net/forum?id=edONMAnhLu->`_, ICLR 2022: the
    output above is that of the JAX code of the authors' group
    (``google-research/big_vision``, ``big_vision/trainers/proj/gsam/gsam.py``,
    ``gsam_gradient`` with ``minimize_fp=True``: the clean gradient is
    decomposed against the perturbed one, and :math:`\alpha = 0` reduces to
    SAM); the paper's equation numbers could not be checked here.
  """
  alpha = _validation.check_nonnegative(alpha, "alpha", traced=True)
  axis_name = options.get("axis_name")
  sync_perturbation = options.pop("sync_perturbation", True)
  _validation.check_bools(sync_perturbation=sync_perturbation)
  # The wrapper averages g once; the inner transformation then perturbs along it without averaging again.
  inner = unified_sam(rho, lambd_schedule, sync_perturbation=False, **options)

  def update_fn(
    updates: optax.Updates,
    state: UnifiedSAMState,
    params: optax.Params | None = None,
    *,
    grad_fn: GradFn | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, UnifiedSAMState]:
    del extra_args
    updates = _validation.check_update_args(updates, params, grad_fn)
    g = updates if axis_name is None else pmean(updates, axis_name)
    g_sam, state = inner.update(g if sync_perturbation else updates, state, params, grad_fn=grad_fn)
    return surrogate_gap_step(g, g_sam, alpha, params), state

  return Transformation(inner.init, update_fn, inner.check_values)
