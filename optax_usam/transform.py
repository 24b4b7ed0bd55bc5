"""``unified_sam``: Unified SAM as an optax gradient transformation."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, TypeVar

import chex
import jax.numpy as jnp
import optax

from optax_usam import _validation, schedules
from optax_usam._collectives import pmean
from optax_usam._trees import accumulation_dtype
from optax_usam.ascent import (
  ASCENT_SOURCES,
  AscentDirection,
  GradFn,
  after_step,
  direction_of_step,
  init_direction,
  reads_gradient,
)
from optax_usam.perturbation import Perturbed, adaptive_scales, perturb
from optax_usam.schedules import LambdaSchedule

__all__ = ["UnifiedSAMState", "sam", "unified_sam", "usam"]

# The argument types every member of the SAM family shares.
Radius = float | optax.ScalarOrSchedule
_T = TypeVar("_T")


class Transformation(optax.GradientTransformationExtraArgs):
  """What :func:`unified_sam` and every member of the SAM family return: an optax transformation whose
  ``update`` gives the SAM gradient.

  The type is how :func:`optax_usam.reuse_sam` and :func:`optax_usam.randomized_sam` tell what they may wrap
  (``optax.chain`` and ``optax.inject_hyperparams`` return plain optax transformations). ``check_values`` is
  :func:`unified_sam`'s: the wrappers check their own traced hyperparameters with it.
  """

  check_values: bool = False

  def __new__(cls, init: Any, update: Any, check_values: bool = False) -> Transformation:
    self = super().__new__(cls, init, update)
    self.check_values = check_values
    return self


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

  Examples:
    >>> state = optax_usam.unified_sam(0.05, "1/t").init({"w": jnp.zeros(3)})
    >>> int(state.count), state.grad_norm.dtype, state.direction
    (0, dtype('float32'), EmptyState())
  """

  count: chex.Array
  grad_norm: chex.Array
  lambd: chex.Array
  rho: chex.Array
  perturbation_norm: chex.Array
  direction: Any = optax.EmptyState()


def unified_sam(
  rho: Radius,
  lambd_schedule: LambdaSchedule,
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
) -> Transformation:
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
  works under ``jit``: traced values are range-checked only with ``check_values``.
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
    check_values: check, when the step runs, what cannot be read when it is
      built: each step's :math:`\rho_t \ge 0` and :math:`\lambda_t \in [0, 1]`
      (values a schedule gives after count 0), every traced hyperparameter
      (``eps``, ``adaptive_eta`` and each member's own, such as VaSSO's
      ``theta``, under ``optax.inject_hyperparams`` in ``jit``) against the
      range its concrete value must lie in, and that :math:`x_t + e_t` is
      finite wherever :math:`x_t` is (:math:`e_t` can overflow float16),
      with ``checkify.debug_check``; they report under
      ``jax.experimental.checkify.checkify(step, errors=checkify.user_checks)``.
      The last one also fires when the gradient :math:`g_t` itself holds
      NaN or inf: with ``optax.apply_if_finite`` in the chain, checkify
      reports an error on exactly the steps it skips.
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
  # Traced values (inject_hyperparams under jit) and a schedule's later values are checked as the step runs.
  with _validation.checking_traced_values(check_values):
    rho_fn = _validation.bounded_schedule(rho, "rho", 0.0, jnp.inf)
    lambd_fn = schedules.lambda_schedule(lambd_schedule)
    eps, adaptive_eta, adaptive_mask, perturb_mask = _validation.check_sam_options(
      eps, axis_name, sync_perturbation, adaptive, adaptive_eta, adaptive_mask, perturb_mask, check_values
    )
  direction = _validation.check_direction(direction, ASCENT_SOURCES)
  fresh_gradient = reads_gradient(direction)
  # One perturbation for the whole batch: average g_t before it is used.
  average_first = axis_name is not None and sync_perturbation and fresh_gradient
  synchronized_over = axis_name if sync_perturbation else None

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
    _validation.check_state(state, UnifiedSAMState)
    dtype = state.grad_norm.dtype
    g = _validation.check_update_args(
      updates, params, grad_fn, eps, dtype, rho_fn.first, fresh_gradient=fresh_gradient
    )
    rho_t, lambd_t = (jnp.asarray(schedule(state.count), dtype) for schedule in (rho_fn, lambd_fn))
    if average_first:
      g = pmean(g, axis_name)
    # d_t: g_t itself, or what a member of the SAM family normalizes instead.
    d, direction_state = direction_of_step(direction, g, state.direction, params, grad_fn, synchronized_over)
    # x_t + e_t, with e_t = rho_t (1 - lambda_t + lambda_t / ||d_t||) d_t (ASAM: in the adapted space).
    scales = adaptive_scales(params, adaptive_eta, adaptive_mask) if adaptive else None
    mask = _validation.expand_perturb_mask(perturb_mask, params)
    ascent = perturb(params, d, rho_t, lambd_t, eps, scales=scales, mask=mask)
    if check_values:
      _validation.check_ascent_point(params, ascent.params)
    # The output: the gradient at x_t + e_t, on the same batch.
    g_sam = grad_fn(ascent.params)
    _validation.check_matches_params(g_sam, params, "grad_fn(params + e)", dtypes=True)
    if axis_name is not None:
      g_sam = pmean(g_sam, axis_name)
    direction_state = after_step(direction, g_sam, direction_state, params, grad_fn)
    return g_sam, next_state(state, rho_t, lambd_t, ascent, direction_state)

  def next_state(
    state: UnifiedSAMState, rho_t: chex.Array, lambd_t: chex.Array, ascent: Perturbed, direction_state: Any
  ) -> UnifiedSAMState:
    norms = (ascent.grad_norm, ascent.perturbation_norm)
    if axis_name is not None and not sync_perturbation:
      # Per-device norms differ; averaging keeps the state replicated across the axis.
      norms = pmean(norms, axis_name)
    grad_norm, perturbation_norm = (norm.astype(rho_t.dtype) for norm in norms)
    count = optax.safe_increment(state.count)
    return UnifiedSAMState(count, grad_norm, lambd_t, rho_t, perturbation_norm, direction_state)

  return Transformation(init_fn, update_fn, check_values)


def with_sam_options(member: Callable[..., _T]) -> Callable[..., _T]:
  """Gives a SAM-family constructor ``member(..., **options)`` :func:`unified_sam`'s keyword options.

  The options are written once, in :func:`unified_sam`'s signature. The constructor's own signature
  (what ``inspect`` and so ``optax.inject_hyperparams`` see) becomes its parameters followed by those
  options (``direction`` aside: a member is a direction), so every numeric one is injectable; an unknown
  keyword is a TypeError naming the options. With ``check_values=True`` the member's own checks of traced
  hyperparameters (``optax.inject_hyperparams`` under ``jit``) are checked when the step runs.
  """
  own = inspect.signature(member)
  kept = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
  options = [
    p
    for name, p in inspect.signature(unified_sam).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "direction" and name not in own.parameters
  ]
  signature = own.replace(parameters=[*kept, *options])

  @functools.wraps(member)
  def build(*args: Any, **kwargs: Any) -> _T:
    try:
      signature.bind(*args, **kwargs)
    except TypeError as err:
      names = ", ".join(p.name for p in options)
      raise TypeError(
        f"{member.__name__}(): {err}; its keyword options are unified_sam's: {names}."
      ) from None
    with _validation.checking_traced_values(kwargs.get("check_values", False)):
      return member(*args, **kwargs)

  build.__signature__ = signature  # type: ignore[attr-defined]
  # Tools that read the source through __wrapped__ (Sphinx's preserved defaults) would find fewer defaults
  # than the signature has.
  del build.__wrapped__  # type: ignore[attr-defined]
  return build


@with_sam_options
def sam(rho: Radius, **options: Any) -> Transformation:
  """SAM (Foret et al. 2021): :func:`unified_sam` with ``lambd_schedule=1``, so :math:`\\|e_t\\| = \\rho_t`.

  Examples:
    >>> tx = optax.chain(optax_usam.sam(0.05, perturb_mask=lambda p: {"w": True, "b": False}), optax.sgd(0.1))
    >>> params = {"w": jnp.array([3.0, 4.0]), "b": jnp.array(1.0)}
    >>> grad_fn = jax.grad(lambda p: jnp.sum(p["w"] ** 2) + p["b"] ** 2)
    >>> _, opt_state = tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
    >>> round(float(optax_usam.get_diagnostics(opt_state)["perturbation_norm"]), 6)  # only w moves, by rho
    0.05
  """
  return unified_sam(rho, 1.0, **options)


@with_sam_options
def usam(rho: Radius, **options: Any) -> Transformation:
  """USAM (Andriushchenko & Flammarion 2022): :func:`unified_sam` with ``lambd_schedule=0``: e = rho g.

  Examples:
    >>> tx = optax_usam.usam(0.1)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> grad_fn = jax.grad(lambda p: jnp.sum(p["w"] ** 2))  # 2 w
    >>> g_sam, _ = tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
    >>> g_sam["w"]  # 2 (w + 0.1 * 2 w)
    Array([7.2, 9.6], dtype=float32)
  """
  return unified_sam(rho, 0.0, **options)
