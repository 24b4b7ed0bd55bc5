"""What a sampler returns, how it draws, and the batch loss: the pieces of :mod:`optax_usam.sampling`.

``Batch``, ``batch_loss_fn`` and ``batch_grad_fn`` are public as ``optax_usam.sampling.<name>``; the
draw helpers serve the samplers there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from optax_usam import _validation


class Batch(NamedTuple):
  """A sampled batch: ``f_S(x) = mean_j weights[j] * f_{indices[j]}(x)``.

  Attributes:
    indices: int32 array of shape ``(batch_size,)``.
    weights: float array of shape ``(batch_size,)``; ones except for
      reweighted importance sampling, where it is :math:`1/(n p_i)`.
  """

  indices: chex.Array
  weights: chex.Array


def float_dtype() -> jnp.dtype:
  # Read when sampling, not when building, so one sampler serves inside and outside enable_x64.
  return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


def uniform_draws(n: int, size: int) -> Callable[[chex.PRNGKey], Batch]:
  """``key -> Batch`` of ``size`` independent uniform draws from ``range(n)``, weights 1."""

  def sample(key: chex.PRNGKey) -> Batch:
    indices = jax.random.randint(key, (size,), 0, n, dtype=jnp.int32)
    return Batch(indices, jnp.ones((size,), float_dtype()))

  return sample


def subset_draws(n: int, size: int) -> Callable[[chex.PRNGKey], Batch]:
  """``key -> Batch`` of ``size`` distinct indices of ``range(n)``, all subsets equally likely, weights 1."""

  def sample(key: chex.PRNGKey) -> Batch:
    indices = jax.random.choice(key, n, (size,), replace=False).astype(jnp.int32)
    return Batch(indices, jnp.ones((size,), float_dtype()))

  return sample


def inverse_cdf_draws(probs: np.ndarray, weights: np.ndarray, size: int) -> Callable[[chex.PRNGKey], Batch]:
  """``key -> Batch`` of ``size`` independent draws: i with probability ``probs[i]``, weighted ``weights[i]``.

  Inverse CDF: one uniform per draw (``jax.random.categorical`` would draw n Gumbels per draw).
  """
  cdf = np.cumsum(probs)
  n = probs.size

  def sample(key: chex.PRNGKey) -> Batch:
    dtype = float_dtype()
    u = jax.random.uniform(key, (size,), dtype)
    indices = jnp.minimum(jnp.searchsorted(jnp.asarray(cdf, dtype), u, side="right"), n - 1)
    indices = indices.astype(jnp.int32)
    return Batch(indices, jnp.asarray(weights, dtype)[indices])

  return sample


def batch_loss_fn(
  per_example_loss: Callable[[Any, Any], chex.Numeric],
  data: Any,
  batch: Batch,
) -> Callable[[Any], chex.Numeric]:
  r"""``params -> f_S(params)`` for one sampled batch.

  Args:
    per_example_loss: ``(params, example) -> scalar`` :math:`f_i`, where
      ``example`` is ``data`` indexed at i on its leading axis.
    data: a pytree whose leaves have the examples on their leading axis.
    batch: a :class:`Batch` from a sampler.

  Returns:
    The weighted batch mean :math:`\frac1{|S|}\sum_j w_j f_{i_j}`, closed over
    ``batch``: every call, at any parameters, uses the same examples.
  """
  examples = jax.tree.map(lambda leaf: jnp.take(leaf, batch.indices, axis=0), data)

  def loss(params: Any) -> chex.Numeric:
    losses = jax.vmap(per_example_loss, in_axes=(None, 0))(params, examples)
    return jnp.mean(batch.weights.astype(losses.dtype) * losses)

  return loss


def batch_grad_fn(
  per_example_loss: Callable[[Any, Any], chex.Numeric],
  data: Any,
  batch: Batch,
) -> Callable[[Any], Any]:
  """``params -> grad f_S(params)``: the ``grad_fn`` for :func:`optax_usam.unified_sam`.

  Built once per step, it is used for both the gradient at :math:`x_t` and
  the gradient at the ascent point, so both see the same batch (the paper's
  rule). See :func:`batch_loss_fn` for the arguments.
  """
  return jax.grad(batch_loss_fn(per_example_loss, data, batch))


def first_fraction(batch: Any, fraction: float) -> Any:
  """The first ``ceil(fraction * n)`` examples of every leaf of ``batch`` (leading axis n), at least one.

  The batch of sub-batch ascent (``linen_train_step(ascent_fraction=)``); shapes are static, so it compiles
  once.
  """
  fraction = _validation.check_unit_interval(fraction, "ascent_fraction", open_at_zero=True)
  keep = max(1, math.ceil(fraction * _validation.leading_size(batch)))
  return jax.tree.map(lambda x: x[:keep], batch)
