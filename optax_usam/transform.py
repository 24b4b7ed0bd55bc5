"""``unified_sam``: Unified SAM as an optax gradient transformation."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import chex
import jax.numpy as jnp
import optax

from optax_usam import _validation
from optax_usam._collectives import pmean
from optax_usam._trees import accumulation_dtype
from optax_usam.ascent import AscentDirection, after_step, direction_of_step, init_direction
from optax_usam.perturbation import adaptive_scales, perturb

GradFn = Callable[[optax.Params], optax.Updates]


class UnifiedSAMState(NamedTuple):
  """State of :func:`unified_sam`: the step count, the last step's diagnostics, the direction's state.

  Attributes:
    count: number of updates applied so far (int32).
    grad_norm: :math:`\\|g_t\\|`, the global norm of the incoming gradient
      (after averaging over ``axis_name`` when ``sync_perturbation``; the
      mean of the per-device norms without it; :math:`\\|T g_t\\|` with
      ``adaptive=True``); with a ``direction``, :math:`\\|d_t\\|`, the norm
      of what is normalized.
    lambd: :math:`\\lambda_t` used by the last update.
    rho: :math:`\\rho_t` used by the last update.
    perturbation_norm: :math:`\\|e_t\\|`.
    direction: the state of the ``direction`` (see
      :class:`optax_usam.AscentDirection`); ``optax.EmptyState()`` without one.

  The floating fields are float32, or float64 when the parameters are.
  Read them with :func:`optax_usam.get_diagnostics` from any optimizer state.
  """

  count: chex.Array
  grad_norm: chex.Array
  lambd: chex.Array
  rho: chex.Array
  perturbation_norm: chex.Array
  direction: Any = optax.EmptyState()


def unified_sam(
  rho: float | optax.ScalarOrSchedule,
  lambd_schedule: float | str | Callable[[chex.Numeric], chex.Numeric],
  *,
  eps: float = 1e-12,
  axis_name: Hashable | None = None,
  sync_perturbation: bool = True,
  adaptive: bool = False,
  adaptive_eta: float = 0.01,
  adaptive_mask: Any = None,
  perturb_mask: Any = None,
  check_values: bool = False,
  direction: AscentDirection | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Unified SAM (Oikonomou & Loizou, ICLR 2025).

  Replaces the gradient :math:`g_t` at :math:`x_t` by the gradient at the
  ascent point,

  .. math::
    e_t = \rho_t \left(1 - \lambda_t + \frac{\lambda_t}{\|g_t\| + \epsilon}\right) g_t,
    \qquad \text{output} = \nabla f(x_t + e_t),

  where :math:`\nabla f` is evaluated by the ``grad_fn`` passed to ``update``
  (on the same batch as :math:`g_t`). :math:`\lambda = 0` is USAM,
  :math:`\lambda = 1` is SAM; ``'1/t'`` and ``'1-1/t'`` move from one to the
  other, with t = 1 on the first update.

  Put it first in a chain so it sees the raw loss gradient; weight decay,
  clipping and momentum go after it and act on the SAM gradient (see the
  example below). ``update`` takes ``grad_fn``, the gradient on the same batch.

  ``optax.inject_hyperparams(unified_sam)(rho=..., lambd_schedule=...)``
  works under ``jit``: traced values are used as they are (not range-checked).
  For gradient accumulation use :func:`optax_usam.microbatch_grad_fn`:
  ``optax.MultiSteps`` around this transformation takes the gradient at the
  perturbed point on the last micro-batch only (``docs/recipes.md``).

  Args:
    rho: perturbation radius, a non-negative float or an optax schedule
      ``count -> rho`` (count starts at 0).
    lambd_schedule: a float in [0, 1], ``'1/t'``, ``'1-1/t'``, or a callable
      ``count -> lambda`` (count starts at 0).
    eps: added to :math:`\|g_t\|` in the denominator; a zero gradient gives a
      zero perturbation, never NaN.
    axis_name: inside ``pmap``/``shard_map`` over this axis, the returned
      gradient is averaged over it.
    sync_perturbation: with ``axis_name``, whether to average the incoming
      gradient before perturbing (one global perturbation, equal to
      single-device SAM on the full batch) or to perturb each device along its
      own gradient (m-sharpness) and only average the result.
    adaptive: adaptive SAM (ASAM, Kwon et al. 2021): scale the perturbation
      elementwise by :math:`T_w = |w| + \eta`, with the norm taken in the
      adapted space, :math:`e = \rho (1 - \lambda + \lambda / (\|T g\| +
      \epsilon))\, T^2 g`. ASAM papers use a larger ``rho`` (e.g. 0.5-2).
    adaptive_eta: :math:`\eta \ge 0` in :math:`T_w`.
    adaptive_mask: which leaves are adapted, as in :func:`optax.masked`: a tree
      of bools like ``params`` (or a prefix), or a callable ``params -> tree``;
      False leaves (biases, normalization scales) use :math:`T = 1`. None
      adapts every leaf.
    perturb_mask: which parameters are perturbed, in the same forms as
      ``adaptive_mask``. False leaves (e.g. biases and normalization scales)
      stay at :math:`x_t` in the ascent point and do not enter
      :math:`\|g_t\|`; every leaf still receives its gradient at the
      perturbed point. None perturbs every floating leaf. This is the way to
      restrict SAM to some parameters: inside ``optax.masked``,
      ``optax.partition`` or ``optax.multi_transform`` ``grad_fn`` would see
      only part of the parameters, so ``update`` refuses that.
    check_values: check each step's :math:`\rho_t \ge 0` and
      :math:`\lambda_t \in [0, 1]` (values a schedule gives after count 0,
      traced values) with ``checkify.debug_check``; they report under
      ``jax.experimental.checkify.checkify(step, errors=checkify.user_checks)``.
      Off by default: it costs jit's fast dispatch path (see :func:`perturb`).
    direction: an :class:`optax_usam.AscentDirection`: normalize its
      :math:`d_t` instead of :math:`g_t` (:func:`optax_usam.vasso`,
      :func:`optax_usam.friendly_sam`, :func:`optax_usam.momentum_sam` and
      :func:`optax_usam.random_smoothing_sam` are this transformation with a
      direction). If it does not read the fresh gradient, ``update`` takes
      ``updates=None`` (one gradient per step for ``momentum_sam``);
      :func:`optax_usam.needs_fresh_gradient` tells a training step so.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose ``update`` takes
    ``grad_fn`` (params -> gradients, same tree, shapes and dtypes) as a
    keyword argument. Parameters that are not floating point (integer step
    counters, say) are left untouched: they are not perturbed and do not enter
    the norm.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_usam
    >>> def loss_fn(params, batch):
    ...   return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
    >>> tx = optax.chain(
    ...     optax_usam.unified_sam(rho=0.05, lambd_schedule="1-1/t"),
    ...     optax.add_decayed_weights(5e-4),
    ...     optax.sgd(0.1, momentum=0.9),
    ... )
    >>> params = {"w": jnp.zeros(3)}
    >>> batch = {"x": jnp.eye(3), "y": jnp.array([1.0, 2.0, 3.0])}
    >>> opt_state = tx.init(params)
    >>> @jax.jit
    ... def step(params, opt_state, batch):
    ...   grad_fn = lambda p: jax.grad(loss_fn)(p, batch)
    ...   updates, opt_state = tx.update(grad_fn(params), opt_state, params, grad_fn=grad_fn)
    ...   return optax.apply_updates(params, updates), opt_state
    >>> for _ in range(2):
    ...   params, opt_state = step(params, opt_state, batch)
    >>> [round(float(w), 4) for w in params["w"]]
    [0.1944, 0.3889, 0.5833]
    >>> print(optax_usam.get_diagnostics(opt_state)["lambd"])  # lambda_t = 1 - 1/t at t = 2
    0.5

  References:
    Oikonomou & Loizou, `Sharpness-Aware Minimization: General Analysis and
    Improved Rates <https://arxiv.org/abs/2410.03345>`_, ICLR 2025.
    Foret et al., `Sharpness-Aware Minimization for Efficiently Improving
    Generalization <https://arxiv.org/abs/2010.01412>`_, ICLR 2021.
  """
  rho_fn = _validation.bounded_schedule(rho, "rho", 0.0, jnp.inf)
  lambd_fn = _validation.lambda_schedule(lambd_schedule)
  eps = _validation.check_eps(eps)
  _validation.check_bools(sync_perturbation=sync_perturbation, adaptive=adaptive, check_values=check_values)
  adaptive_eta = _validation.check_nonnegative(adaptive_eta, "adaptive_eta", traced=True)
  masks = _validation.check_sam_options(axis_name, adaptive, adaptive_mask, perturb_mask)
  adaptive_mask, perturb_mask = masks
  direction = _validation.check_direction(direction)
  fresh_gradient = direction is None or direction.source == "gradient"

  def init_fn(params: optax.Params) -> UnifiedSAMState:
    _validation.check_params_given(params, "init")
    dtype = accumulation_dtype(params)
    # One buffer per field: a state whose leaves share a buffer cannot be donated to jit.
    diagnostics = (jnp.zeros((), dtype) for _ in range(4))
    return UnifiedSAMState(jnp.zeros((), jnp.int32), *diagnostics, init_direction(direction, params))

  def update_fn(
    updates: optax.Updates | None,
    state: UnifiedSAMState,
    params: optax.Params | None = None,
    *,
    grad_fn: GradFn | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, UnifiedSAMState]:
    del extra_args
    updates = _validation.check_update_args(updates, params, grad_fn, fresh_gradient=fresh_gradient)
    dtype = state.grad_norm.dtype
    _validation.check_eps(eps, dtype)
    rho_t = jnp.asarray(rho_fn(state.count), dtype)
    lambd_t = jnp.asarray(lambd_fn(state.count), dtype)
    if axis_name is not None and sync_perturbation and fresh_gradient:
      updates = pmean(updates, axis_name)
    d, direction_state = direction_of_step(
      direction, updates, state.direction, params, grad_fn, axis_name, sync_perturbation
    )
    scales = adaptive_scales(params, adaptive_eta, adaptive_mask) if adaptive else None
    mask = _validation.expand_perturb_mask(perturb_mask, params)
    ascent = perturb(params, d, rho_t, lambd_t, eps, scales=scales, mask=mask, check_values=check_values)
    sam_grads = grad_fn(ascent.params)
    _validation.check_matches_params(sam_grads, params, "grad_fn(params + e)", dtypes=True)
    grad_norm, perturbation_norm = ascent.grad_norm, ascent.perturbation_norm
    if axis_name is not None:
      sam_grads = pmean(sam_grads, axis_name)
      if not sync_perturbation:
        # Per-device norms differ; averaging keeps the state replicated across the axis.
        grad_norm, perturbation_norm = pmean((grad_norm, perturbation_norm), axis_name)

    new_state = UnifiedSAMState(
      count=optax.safe_increment(state.count),
      grad_norm=grad_norm.astype(dtype),
      lambd=lambd_t,
      rho=rho_t,
      perturbation_norm=perturbation_norm.astype(dtype),
      direction=after_step(direction, sam_grads, direction_state, params, grad_fn),
    )
    return sam_grads, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sam(
  rho: float | optax.ScalarOrSchedule,
  *,
  eps: float = 1e-12,
  axis_name: Hashable | None = None,
  sync_perturbation: bool = True,
  adaptive: bool = False,
  adaptive_eta: float = 0.01,
  adaptive_mask: Any = None,
  perturb_mask: Any = None,
  check_values: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """SAM (Foret et al. 2021): :func:`unified_sam` with ``lambd_schedule=1``.

  The keyword arguments are :func:`unified_sam`'s, spelled out so that
  ``optax.inject_hyperparams(optax_usam.sam)`` sees each of them.
  """
  return unified_sam(
    rho,
    1.0,
    eps=eps,
    axis_name=axis_name,
    sync_perturbation=sync_perturbation,
    adaptive=adaptive,
    adaptive_eta=adaptive_eta,
    adaptive_mask=adaptive_mask,
    perturb_mask=perturb_mask,
    check_values=check_values,
  )


def usam(
  rho: float | optax.ScalarOrSchedule,
  *,
  eps: float = 1e-12,
  axis_name: Hashable | None = None,
  sync_perturbation: bool = True,
  adaptive: bool = False,
  adaptive_eta: float = 0.01,
  adaptive_mask: Any = None,
  perturb_mask: Any = None,
  check_values: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """USAM (Andriushchenko & Flammarion 2022): :func:`unified_sam` with ``lambd_schedule=0``.

  The keyword arguments are :func:`unified_sam`'s, spelled out so that
  ``optax.inject_hyperparams(optax_usam.usam)`` sees each of them.
  """
  return unified_sam(
    rho,
    0.0,
    eps=eps,
    axis_name=axis_name,
    sync_perturbation=sync_perturbation,
    adaptive=adaptive,
    adaptive_eta=adaptive_eta,
    adaptive_mask=adaptive_mask,
    perturb_mask=perturb_mask,
    check_values=check_values,
  )
