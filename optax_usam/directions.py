"""The SAM family as ascent directions: VaSSO, F-SAM and Momentum-SAM.

Each constructor is :func:`optax_usam.unified_sam` with an
:class:`optax_usam.AscentDirection`: the method's :math:`d_t` goes through
the one formula of :func:`optax_usam.perturb`,
:math:`e_t = \\rho_t (1 - \\lambda_t + \\lambda_t / (\\|d_t\\| + \\epsilon))\\, d_t`,
so ``lambd_schedule=1`` (the default) is the paper's normalized method and
every other :math:`\\lambda` its Unified SAM relaxation, schedules included.
RSAM is in ``random_smoothing.py``, GSAM in ``gsam.py``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optax_usam import _validation
from optax_usam.ascent import AscentDirection
from optax_usam.schedules import LambdaSchedule
from optax_usam.transform import Radius, Transformation, unified_sam, with_sam_options

__all__ = ["friendly_sam", "momentum_sam", "vasso"]


class AveragesState(NamedTuple):
  """State of the VaSSO and F-SAM directions: the step count and the running average of the gradients."""

  count: chex.Array
  average: optax.Updates


def _first_step_weight(count: chex.Array, weight: chex.Numeric, first: float) -> chex.Array:
  # A scalar select, not a parameter-sized one: the first step starts the average at g_1 exactly.
  return jnp.where(count == 0, first, weight)


def _cast_like(tree: optax.Updates, like: optax.Updates) -> optax.Updates:
  """``tree`` in the dtypes of ``like``: a traced hyperparameter (inject_hyperparams) must not promote it."""
  return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


def vasso_average(theta: chex.Numeric) -> optax.GradientTransformation:
  """VaSSO's direction: :math:`d_t = (1 - \\theta) d_{t-1} + \\theta g_t`, with :math:`d_1 = g_1`."""

  def init(params: optax.Params) -> AveragesState:
    return AveragesState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update(updates: optax.Updates, state: AveragesState, params: Any = None) -> tuple[Any, AveragesState]:
    del params
    theta_t = _first_step_weight(state.count, theta, 1.0)
    d = jax.tree.map(lambda m, g: (1 - theta_t) * m + theta_t * g, state.average, updates)
    d = _cast_like(d, state.average)
    return d, AveragesState(optax.safe_increment(state.count), d)

  return optax.GradientTransformation(init, update)


def friendly_direction(sigma: chex.Numeric, momentum: chex.Numeric) -> optax.GradientTransformation:
  """F-SAM's direction :math:`d_t = g_t - \\sigma m_{t-1}`; :math:`m_t = \\beta m_{t-1} + (1 - \\beta) g_t`.

  :math:`m_1 = g_1` and :math:`d_1 = g_1`, as in the authors' code.
  """

  def init(params: optax.Params) -> AveragesState:
    return AveragesState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update(updates: optax.Updates, state: AveragesState, params: Any = None) -> tuple[Any, AveragesState]:
    del params
    sigma_t = _first_step_weight(state.count, sigma, 0.0)
    beta_t = _first_step_weight(state.count, momentum, 0.0)
    d = _cast_like(jax.tree.map(lambda g, m: g - sigma_t * m, updates, state.average), updates)
    m = jax.tree.map(lambda m, g: beta_t * m + (1 - beta_t) * g, state.average, updates)
    return d, AveragesState(optax.safe_increment(state.count), _cast_like(m, state.average))

  return optax.GradientTransformation(init, update)


@with_sam_options
def vasso(
  rho: Radius, theta: float = 0.9, lambd_schedule: LambdaSchedule = 1.0, **options: Any
) -> Transformation:
  r"""VaSSO (Li & Giannakis, NeurIPS 2023): SAM along an average of the stochastic gradients.

  .. math::
    d_t = (1 - \theta)\, d_{t-1} + \theta\, g_t, \qquad
    e_t = \rho_t \left(1 - \lambda_t + \frac{\lambda_t}{\|d_t\| + \epsilon}\right) d_t,
    \qquad \text{output} = \nabla f(x_t + e_t),

  with :math:`d_1 = g_1`. Averaging suppresses the variance of the
  adversary's direction. :math:`\theta = 1` is SAM (:func:`optax_usam.sam`,
  :func:`optax_usam.unified_sam` for :math:`\lambda \ne 1`) exactly. Two
  gradients per step; memory: one parameter-sized buffer.

  Args:
    rho: perturbation radius, a float or a schedule, as in :func:`optax_usam.unified_sam`.
    theta: :math:`\theta \in [0, 1]`, the weight of the new gradient; 0.9 is
      the default of the authors' code.
    lambd_schedule: :math:`\lambda_t`, as in :func:`optax_usam.unified_sam`;
      1 (the default) is the paper's method.
    **options: the keyword options of :func:`optax_usam.unified_sam` (``eps``,
      ``axis_name``, ``adaptive``, ``perturb_mask``, ...), but ``direction``.

  Examples:
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> tx = optax.chain(optax_usam.vasso(rho=0.05, theta=0.4), optax.sgd(0.1))
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> opt_state = tx.init(params)
    >>> grad_fn = jax.grad(loss)
    >>> for _ in range(2):
    ...   updates, opt_state = tx.update(grad_fn(params), opt_state, params, grad_fn=grad_fn)
    ...   params = optax.apply_updates(params, updates)
    >>> [round(float(w), 4) for w in params["w"]]
    [1.9092, 2.5456]

  References:
    Li & Giannakis, `Enhancing Sharpness-Aware Optimization Through Variance
    Suppression <https://arxiv.org/abs/2309.15639>`_, NeurIPS 2023: the
    update above and :math:`\theta = 0.9`, :math:`d_1 = g_1` as in the
    authors' code (``BingcongLi/VaSSO``, ``solver/vasso.py``,
    ``configs/defaulf_cfg.py``); the paper's equation numbers could not be
    checked here. Khanh et al., `Fundamental Convergence Analysis of
    Sharpness-Aware Minimization <https://openreview.net/forum?id=PuXYI4HOQU>`_,
    NeurIPS 2024, analyse it as an inexact gradient method.
  """
  theta = _validation.check_interval(theta, "theta", 0.0, 1.0)
  return unified_sam(
    rho, lambd_schedule, direction=AscentDirection(vasso_average(theta), "gradient"), **options
  )


@with_sam_options
def friendly_sam(
  rho: Radius, sigma: float = 1.0, momentum: float = 0.9, lambd_schedule: LambdaSchedule = 1.0, **options: Any
) -> Transformation:
  r"""F-SAM, Friendly SAM (Li et al., CVPR 2024): SAM along the stochastic part of the gradient.

  .. math::
    d_t = g_t - \sigma m_{t-1}, \qquad m_t = \beta m_{t-1} + (1 - \beta) g_t,
    \qquad e_t = \rho_t \left(1 - \lambda_t + \frac{\lambda_t}{\|d_t\| + \epsilon}\right) d_t,

  output :math:`\nabla f(x_t + e_t)`, with :math:`m_1 = d_1 = g_1`: the
  moving average :math:`m` of the past gradients estimates the full
  gradient, and removing it leaves the batch's gradient noise, the part the
  paper finds useful. :math:`\sigma = 0` is SAM (:func:`optax_usam.unified_sam`)
  exactly. Two gradients per step; memory: one parameter-sized buffer.

  Args:
    rho: perturbation radius, a float or a schedule, as in :func:`optax_usam.unified_sam`.
    sigma: :math:`\sigma \ge 0`, how much of the average is removed (1, the
      authors' default).
    momentum: :math:`\beta \in [0, 1)`, the decay of the average (0.9, the
      default of the authors' optimizer class; their example script uses 0.95).
    lambd_schedule: :math:`\lambda_t`, as in :func:`optax_usam.unified_sam`;
      1 (the default) is the paper's method.
    **options: the keyword options of :func:`optax_usam.unified_sam` (``eps``,
      ``axis_name``, ``adaptive``, ``perturb_mask``, ...), but ``direction``.

  Examples:
    >>> grad_fn = jax.grad(lambda p: jnp.sum(jnp.cos(p["w"])))
    >>> tx = optax.chain(optax_usam.friendly_sam(rho=0.05), optax.sgd(0.1))
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> opt_state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, opt_state = tx.update(grad_fn(params), opt_state, params, grad_fn=grad_fn)
    ...   params = optax.apply_updates(params, updates)
    >>> [round(float(w), 4) for w in params["w"]]
    [1.2595, -2.2573]

  References:
    Li, Zhou, He, Cheng & Huang, `Friendly Sharpness-Aware Minimization
    <https://arxiv.org/abs/2403.12350>`_, CVPR 2024. The update above is that
    of the authors' code (``nblt/F-SAM``, ``utils.py``, ``FriendlySAM``:
    :math:`d_t` uses the average before :math:`g_t` enters it, both start at
    :math:`g_1`; defaults :math:`\sigma = 1`, :math:`\beta = 0.9`); a
    third-party summary writes the paper's algorithm with :math:`d_t = g_t -
    \sigma m_t`, :math:`m_t` including :math:`g_t`. The paper's text and
    equation numbers could not be checked here. Khanh et al. (NeurIPS 2024)
    analyse F-SAM as an inexact gradient method.
  """
  sigma = _validation.check_nonnegative(sigma, "sigma", traced=True)
  momentum = _validation.check_interval(momentum, "momentum", 0.0, 1.0, open_high=True)
  return unified_sam(
    rho, lambd_schedule, direction=AscentDirection(friendly_direction(sigma, momentum), "gradient"), **options
  )


@with_sam_options
def momentum_sam(
  rho: Radius, momentum: float = 0.9, lambd_schedule: LambdaSchedule = 1.0, **options: Any
) -> Transformation:
  r"""Momentum-SAM (Becker et al. 2024): SAM along the negative momentum, at the cost of SGD.

  .. math::
    v_t = \mu v_{t-1} + \nabla f(x_t + e_t), \qquad d_{t+1} = -v_t, \qquad
    e_t = \rho_t \left(1 - \lambda_t + \frac{\lambda_t}{\|d_t\| + \epsilon}\right) d_t,

  with :math:`v_0 = 0`, so :math:`e_1 = 0`: the momentum of the SAM
  gradients already points where the next step goes, and the perturbation
  steps that way. :math:`d_t` does not use the gradient at :math:`x_t`, so
  ``update`` takes ``updates=None`` and a step evaluates **one** gradient,
  at :math:`x_t + e_t`, as SGD does (the Flax steps skip the first pass by
  themselves; see :func:`optax_usam.needs_fresh_gradient`). Memory: two
  parameter-sized buffers (:math:`v` and :math:`d`).

  With ``optax.sgd(lr, momentum=mu)`` after it, :math:`v` is the base
  optimizer's momentum minus the weight decay added later in the chain: the
  authors' code perturbs along its optimizer's own buffer, weight decay
  included. Their experiments use a much larger ``rho`` than SAM's (e.g. 3).

  Args:
    rho: perturbation radius, a float or a schedule, as in :func:`optax_usam.unified_sam`.
    momentum: :math:`\mu \in [0, 1)` (0.9, as in the authors' code).
    lambd_schedule: :math:`\lambda_t`, as in :func:`optax_usam.unified_sam`;
      1 (the default) is the paper's method.
    **options: the keyword options of :func:`optax_usam.unified_sam` (``eps``,
      ``axis_name``, ``adaptive``, ``perturb_mask``, ...), but ``direction``.

  Examples:
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> tx = optax.chain(optax_usam.momentum_sam(rho=0.05), optax.sgd(0.1, momentum=0.9))
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> opt_state = tx.init(params)
    >>> for _ in range(2):  # one gradient per step: no fresh gradient, updates=None
    ...   updates, opt_state = tx.update(None, opt_state, params, grad_fn=jax.grad(loss))
    ...   params = optax.apply_updates(params, updates)
    >>> [round(float(w), 4) for w in params["w"]]  # step 1 is plain SGD: e_1 = 0
    [1.386, 1.848]

  References:
    Becker, Altrock & Risse, `Momentum-SAM: Sharpness Aware Minimization
    without Computational Overhead <https://arxiv.org/abs/2401.12033>`_,
    2024: the perturbation :math:`-\rho v_t / \|v_t\|` along the heavy-ball
    momentum buffer, zero on the first step, as in the authors' code
    (``MarlonBecker/MSAM``, ``optimizer/msam.py``; momentum 0.9 in
    ``configs/default.ini``); the paper's equation numbers could not be
    checked here.
  """
  momentum = _validation.check_interval(momentum, "momentum", 0.0, 1.0, open_high=True)
  transform = optax.chain(optax.trace(decay=momentum), optax.scale(-1.0))
  return unified_sam(
    rho, lambd_schedule, direction=AscentDirection(transform, "previous_sam_gradient"), **options
  )
