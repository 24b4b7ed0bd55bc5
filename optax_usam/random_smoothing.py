"""RSAM, random smoothing SAM (Liu et al. 2022), as an ascent direction of Unified SAM.

Not to be confused with :func:`optax_usam.randomized_sam` (RST: a random
choice of the steps that run SAM at all).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optax_usam import _validation
from optax_usam._trees import is_float_leaf
from optax_usam.ascent import AscentDirection
from optax_usam.schedules import LambdaSchedule
from optax_usam.transform import Radius, Transformation, unified_sam, with_sam_options

__all__ = ["noise", "random_smoothing_sam"]


class RandomSmoothingState(NamedTuple):
  """State of RSAM's direction: the step count and the PRNG key of the next draw."""

  count: chex.Array
  key: chex.Array


def _filter_norms(x: chex.Array) -> chex.Array:
  """The L2 norm of each output unit of a kernel (all axes but the last), of the whole leaf otherwise."""
  x32 = jnp.asarray(x).astype(jnp.promote_types(x.dtype, jnp.float32))
  axes = tuple(range(x.ndim - 1)) if x.ndim > 1 else None
  return jnp.sqrt(jnp.sum(jnp.square(x32), axis=axes, keepdims=x.ndim > 1)).astype(x.dtype)


def noise(
  params: optax.Params, key: chex.PRNGKey, noise_std: chex.Numeric, filter_wise: bool
) -> optax.Params:
  r"""RSAM's noise :math:`\delta = \sigma\, s \odot z`, :math:`z \sim N(0, I)`, per floating leaf.

  :math:`s` holds the filter norms with ``filter_wise``, else 1 (see :func:`optax_usam.random_smoothing_sam`).

  Leaf :math:`i` (in ``jax.tree.leaves`` order) draws :math:`z` from
  ``jax.random.fold_in(key, i)`` in its own dtype; non-floating leaves get None.
  """
  leaves, treedef = jax.tree.flatten(params)

  def draw(i: int, x: Any) -> Any:
    if not is_float_leaf(x):
      return None
    z = jax.random.normal(jax.random.fold_in(key, i), jnp.shape(x), jnp.result_type(x))
    scale = _filter_norms(x) if filter_wise else 1
    return (noise_std * scale * z).astype(jnp.result_type(x))

  return treedef.unflatten([draw(i, x) for i, x in enumerate(leaves)])


def random_smoothing_direction(
  noise_std: float | optax.ScalarOrSchedule,
  gradient_weight: chex.Numeric,
  seed: chex.Numeric,
  filter_wise: bool,
) -> optax.GradientTransformationExtraArgs:
  r"""RSAM's direction :math:`d_t = \nabla f(x_t + \delta_t) + \delta_t / w`, through ``grad_fn``."""
  std_fn = _validation.bounded_schedule(noise_std, "noise_std", 0.0, jnp.inf)

  def init(params: optax.Params) -> RandomSmoothingState:
    del params
    return RandomSmoothingState(jnp.zeros((), jnp.int32), jax.random.key_data(jax.random.key(seed)))

  def update(
    updates: optax.Updates | None, state: RandomSmoothingState, params: optax.Params, **extra_args: Any
  ) -> tuple[optax.Updates, RandomSmoothingState]:
    del updates
    grad_fn = extra_args["grad_fn"]  # unified_sam passes the one its update was given
    key, draw = jax.random.split(jax.random.wrap_key_data(state.key))
    delta = noise(params, draw, std_fn(state.count), filter_wise)
    add = lambda x, n: x if n is None else x + n
    grads = grad_fn(jax.tree.map(add, params, delta, is_leaf=lambda x: x is None))
    _validation.check_matches_params(grads, params, "grad_fn(params + delta)", dtypes=True)
    d = jax.tree.map(
      lambda g, n: g if n is None else g + n / gradient_weight, grads, delta, is_leaf=lambda x: x is None
    )
    return d, RandomSmoothingState(optax.safe_increment(state.count), jax.random.key_data(key))

  return optax.GradientTransformationExtraArgs(init, update)


@with_sam_options
def random_smoothing_sam(
  rho: Radius,
  noise_std: Radius,
  seed: int = 0,
  lambd_schedule: LambdaSchedule = 1.0,
  *,
  gradient_weight: float = 2.0,
  filter_wise: bool = True,
  **options: Any,
) -> Transformation:
  r"""RSAM, random smoothing SAM (Liu et al. 2022): the ascent taken from a randomly perturbed point.

  .. math::
    \delta_t = \sigma_t\, s \odot z_t, \quad z_t \sim N(0, I), \qquad
    d_t = \nabla f(x_t + \delta_t) + \delta_t / w, \qquad
    e_t = \rho_t \left(1 - \lambda_t + \frac{\lambda_t}{\|d_t\| + \epsilon}\right) d_t,

  output :math:`\nabla f(x_t + e_t)`. Taking the ascent on the randomly
  smoothed loss improves the one-step approximation of SAM's inner
  maximization (the paper's abstract). The authors' code ascends along
  :math:`w \nabla f(x_t + \delta_t) + \delta_t` with :math:`w = 2`, the same direction as :math:`d_t` (so with
  :math:`\lambda = 1` this is their update), and takes the final gradient at
  :math:`x_t + e_t`, not at :math:`x_t + \delta_t + e_t`. With
  ``filter_wise``, :math:`s` is, for each output unit of a kernel (its last
  axis), the L2 norm of that unit's weights, and for a vector the norm of
  the vector, as in the authors' code: :math:`\sigma` is then relative to the
  weights (they raise it from 5e-4 to 2.5e-3 along training); without it,
  :math:`s = 1`. ``noise_std = 0`` is SAM (:func:`optax_usam.unified_sam`)
  exactly.

  Two gradients per step, both through ``grad_fn`` (at :math:`x_t +
  \delta_t` and at :math:`x_t + e_t`): the gradient at :math:`x_t` is not
  read, so ``update`` takes ``updates=None`` (see
  :func:`optax_usam.needs_fresh_gradient`). The noise perturbs every floating
  parameter, ``perturb_mask`` restricting only :math:`e_t`. Step :math:`t`
  draws from the key ``jax.random.split(key)[1]`` of a chain of splits from
  ``jax.random.key(seed)``, kept in the state; leaf :math:`i` folds in
  :math:`i` (``optax_usam.random_smoothing.noise``). With ``axis_name``
  every device draws the same noise.

  Args:
    rho: perturbation radius, a float or a schedule, as in :func:`optax_usam.unified_sam`.
    noise_std: :math:`\sigma_t \ge 0`, a float or a schedule of the step count.
    seed: seed of the PRNG key of the noise, an int in [-2**31, 2**31 - 1]
      (JAX keeps 32 bits of a seed, so wider ones would share keys;
      [-2**63, 2**63 - 1] with ``jax_enable_x64``), read by
      ``init`` only (under ``optax.inject_hyperparams`` pass it in
      ``static_args``: a value set in the state later would not reach the key).
    lambd_schedule: :math:`\lambda_t`, as in :func:`optax_usam.unified_sam`;
      1 (the default) is the paper's method.
    gradient_weight: :math:`w > 0` (2, the authors' code).
    filter_wise: scale the noise by the filter norms (the authors' code) or not.
    **options: the keyword options of :func:`optax_usam.unified_sam` (``eps``,
      ``axis_name``, ``adaptive``, ``perturb_mask``, ...), but ``direction``.

  Examples:
    >>> loss = lambda p: jnp.sum(jnp.cos(p["w"]))
    >>> tx = optax.chain(optax_usam.random_smoothing_sam(0.05, noise_std=0.01), optax.sgd(0.1))
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> opt_state = tx.init(params)
    >>> updates, opt_state = tx.update(None, opt_state, params, grad_fn=jax.grad(loss))  # no fresh gradient
    >>> [round(float(w), 3) for w in optax.apply_updates(params, updates)["w"]]
    [1.082, -2.092]
    >>> round(float(optax_usam.get_diagnostics(opt_state)["perturbation_norm"]), 6)
    0.05

  References:
    Liu, Mai, Cheng, Chen, Hsieh & You, Random Sharpness-Aware Minimization,
    NeurIPS 2022: the update above as in the authors' JAX code
    (``RSAM-Optimizer/R-SAM``, ``vit_jax/train.py``: ``random_vector`` and
    ``sam_gradient``); the paper's text and equation numbers could not be
    checked here. Khanh et al. (NeurIPS 2024) analyse RSAM as an inexact
    gradient method.
  """
  gradient_weight = _validation.check_positive(gradient_weight, "gradient_weight", traced=True)
  seed = _validation.check_seed(seed)
  _validation.check_bools(filter_wise=filter_wise)
  transform = random_smoothing_direction(noise_std, gradient_weight, seed, filter_wise)
  return unified_sam(rho, lambd_schedule, direction=AscentDirection(transform, "grad_fn"), **options)
