r"""Samplers for finite sums, with their Expected Residual constants.

For :math:`f(x) = \frac1n \sum_{i=1}^n f_i(x)`, a sampler draws a batch
:math:`S` (indices and weights) from a ``jax.random`` key such that the
batch loss

.. math::
  f_S(x) = \frac{1}{|S|} \sum_{j \in S} w_j f_{i_j}(x)

is an unbiased estimate of :math:`f(x)` (except for the clearly labelled
``importance(..., reweight=False)``). Each sampler carries the constants of
the Expected Residual (ER) condition of Oikonomou & Loizou (2025),

.. math::
  \mathbb{E}\|\nabla f_S(x)\|^2 \le 2A\,(f(x) - f^{\inf}) + B\,\|\nabla f(x)\|^2 + C,

for per-sample smoothness constants :math:`L_i` (Khaled & Richtarik 2020):
:math:`C = 2A\,\Delta^{\inf}` with
:math:`\Delta^{\inf} = f^{\inf} - \frac1n \sum_i f_i^{\inf}` when that gap is
given, else ``None``.

The same batch must serve both gradients of a Unified SAM step; build the
``grad_fn`` from the batch once and use it twice.

Examples:
  >>> import jax
  >>> import jax.numpy as jnp
  >>> import optax
  >>> import optax_usam
  >>> data = {"x": jnp.array([1.0, 2.0, 3.0]), "y": jnp.array([2.0, 4.0, 6.0])}
  >>> def per_example_loss(params, example):
  ...   return 0.5 * (params["w"] * example["x"] - example["y"]) ** 2
  >>> sampler = optax_usam.sampling.uniform(data["x"] ** 2)  # L_i = x_i^2
  >>> tx = optax.chain(optax_usam.sam(0.05), optax.sgd(0.1))
  >>> params = {"w": jnp.zeros(())}
  >>> opt_state = tx.init(params)
  >>> @jax.jit
  ... def step(params, opt_state, key):
  ...   batch = sampler.sample(key)
  ...   grad_fn = optax_usam.sampling.batch_grad_fn(per_example_loss, data, batch)
  ...   updates, opt_state = tx.update(grad_fn(params), opt_state, params, grad_fn=grad_fn)
  ...   return optax.apply_updates(params, updates), opt_state
  >>> for seed in range(5):
  ...   params, opt_state = step(params, opt_state, jax.random.key(seed))
  >>> print(optax_usam.get_diagnostics(opt_state)["count"])
  5

References:
  Oikonomou & Loizou, `Sharpness-Aware Minimization: General Analysis and
  Improved Rates <https://arxiv.org/abs/2410.03345>`_, ICLR 2025.
  Khaled & Richtarik, `Better Theory for SGD in the Nonconvex World
  <https://arxiv.org/abs/2002.03329>`_, TMLR 2023.
  Gower et al., `SGD: General Analysis and Improved Rates
  <https://arxiv.org/abs/1901.09401>`_, ICML 2019.
"""

from __future__ import annotations

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


class Sampler(NamedTuple):
  """A finite-sum sampler and its Expected Residual constants.

  Attributes:
    name: ``'uniform'``, ``'tau_nice'``, ``'importance'`` or
      ``'importance_unweighted'``.
    sample: ``key -> Batch``; pure, jit- and vmap-friendly.
    n: number of terms in the sum.
    batch_size: number of indices per batch.
    probabilities: :math:`p_i`, the probability that index i is in the batch
      (marginal, per draw), as a float64 NumPy array.
    unbiased: whether :math:`\\mathbb{E}[f_S] = f`.
    A: ER constant A (second moment bound, see the module docstring).
    B: ER constant B.
    C: ER constant C, or None when no :math:`\\Delta^{\\inf}` was given.
  """

  name: str
  sample: Callable[[chex.PRNGKey], Batch]
  n: int
  batch_size: int
  probabilities: np.ndarray
  unbiased: bool
  A: float
  B: float
  C: float | None


def _float_dtype() -> jnp.dtype:
  # Read when sampling, not when building, so one sampler serves inside and outside enable_x64.
  return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


def _c(a: float, delta_inf: float | None) -> float | None:
  return None if delta_inf is None else 2.0 * a * delta_inf


def uniform(smoothness: Any, *, delta_inf: float | None = None) -> Sampler:
  r"""One index drawn uniformly at random (with replacement across steps).

  ER constants: :math:`A = L_{\max}`, :math:`B = 0`, :math:`C = 2 L_{\max} \Delta^{\inf}`.

  Args:
    smoothness: the :math:`L_i` of each :math:`f_i`, shape ``(n,)``.
    delta_inf: :math:`f^{\inf} - \frac1n\sum_i f_i^{\inf} \ge 0`, for C.

  Examples:
    >>> import jax
    >>> from optax_usam import sampling
    >>> sampler = sampling.uniform([1.0, 2.0, 4.0])
    >>> sampler.A, sampler.B, sampler.C
    (4.0, 0.0, None)
    >>> batch = sampler.sample(jax.random.key(0))
    >>> batch.indices.shape, batch.weights
    ((1,), Array([1.], dtype=float32))
  """
  values = _validation.check_smoothness(smoothness)
  delta_inf = None if delta_inf is None else _validation.check_nonnegative(delta_inf, "delta_inf")
  n = values.size
  a = float(values.max())

  def sample(key: chex.PRNGKey) -> Batch:
    index = jax.random.randint(key, (1,), 0, n, dtype=jnp.int32)
    return Batch(index, jnp.ones((1,), _float_dtype()))

  return Sampler("uniform", sample, n, 1, np.full(n, 1.0 / n), True, a, 0.0, _c(a, delta_inf))


def tau_nice(smoothness: Any, tau: int, *, delta_inf: float | None = None) -> Sampler:
  r"""A minibatch of ``tau`` distinct indices, every subset equally likely.

  ER constants (Khaled & Richtarik 2020, Gower et al. 2019):

  .. math::
    A = \frac{n - \tau}{\tau (n - 1)} L_{\max}, \qquad
    B = \frac{n (\tau - 1)}{\tau (n - 1)}, \qquad C = 2A\,\Delta^{\inf};

  ``tau = n`` is full-batch gradient descent (A = 0, B = 1) and ``tau = 1``
  is :func:`uniform`.

  Args:
    smoothness: the :math:`L_i`, shape ``(n,)``.
    tau: the batch size, an int in ``[1, n]``.
    delta_inf: :math:`\Delta^{\inf} \ge 0`, for C.

  Examples:
    >>> from optax_usam import sampling
    >>> sampler = sampling.tau_nice([1.0, 2.0, 4.0, 8.0], tau=2)
    >>> round(sampler.A, 4), round(sampler.B, 4)
    (2.6667, 0.6667)
    >>> sampling.tau_nice([1.0, 2.0, 4.0, 8.0], tau=4)[-3:]  # full batch: A = 0, B = 1
    (0.0, 1.0, None)
  """
  values = _validation.check_smoothness(smoothness)
  delta_inf = None if delta_inf is None else _validation.check_nonnegative(delta_inf, "delta_inf")
  n = values.size
  tau = _validation.check_int(tau, "tau", 1, n, bounds=f"an int in [1, n={n}]")
  if n == 1:
    a, b = 0.0, 1.0
  else:
    a = (n - tau) / (tau * (n - 1)) * float(values.max())
    b = n * (tau - 1) / (tau * (n - 1))

  def sample(key: chex.PRNGKey) -> Batch:
    indices = jax.random.choice(key, n, (tau,), replace=False).astype(jnp.int32)
    return Batch(indices, jnp.ones((tau,), _float_dtype()))

  return Sampler("tau_nice", sample, n, tau, np.full(n, tau / n), True, a, b, _c(a, delta_inf))


def importance(smoothness: Any, *, reweight: bool = True, delta_inf: float | None = None) -> Sampler:
  r"""One index drawn with probability :math:`p_i = L_i / \sum_j L_j`.

  With ``reweight=True`` (the default, the estimator the theory covers) the
  sampled term is weighted by :math:`1/(n p_i)`, so
  :math:`\mathbb{E}[f_S] = f`, and

  .. math::
    A = \max_i \frac{L_i}{n p_i} = L_{\text{avg}}, \qquad B = 0, \qquad
    C = 2 L_{\text{avg}} \Delta^{\inf}.

  ``reweight=False`` reproduces the official NumPy experiments, which draw
  :math:`i \sim p` without the weight: that estimator is **biased** (its mean
  is :math:`\sum_i p_i \nabla f_i \ne \nabla f` unless all :math:`L_i` are
  equal) and no theorem of the paper covers it. Its constants are the
  second-moment bound :math:`A = \max_i n p_i L_i = L_{\max}^2 / L_{\text{avg}}`,
  :math:`B = 0`; the official script instead plugs :math:`A = L_{\text{avg}}`
  into the step sizes.

  Args:
    smoothness: the :math:`L_i`, shape ``(n,)``.
    reweight: whether to weight the sample by :math:`1/(n p_i)` (unbiased).
    delta_inf: :math:`\Delta^{\inf} \ge 0`, for C.

  Examples:
    >>> from optax_usam import sampling
    >>> sampler = sampling.importance([1.0, 2.0, 4.0, 8.0])
    >>> sampler.probabilities.round(4), sampler.A  # A = L_avg
    (array([0.0667, 0.1333, 0.2667, 0.5333]), 3.75)
  """
  values = _validation.check_smoothness(smoothness)
  delta_inf = None if delta_inf is None else _validation.check_nonnegative(delta_inf, "delta_inf")
  _validation.check_bools(reweight=reweight)
  n = values.size
  probs = values / values.sum()
  cdf = np.cumsum(probs)
  weights = 1.0 / (n * probs) if reweight else np.ones(n)
  if reweight:
    a = float(values.mean())
  else:
    a = float(np.max(n * probs * values))

  def sample(key: chex.PRNGKey) -> Batch:
    dtype = _float_dtype()
    # Inverse CDF: one uniform per draw (categorical would draw n Gumbels).
    u = jax.random.uniform(key, (1,), dtype)
    index = jnp.minimum(jnp.searchsorted(jnp.asarray(cdf, dtype), u, side="right"), n - 1)
    index = index.astype(jnp.int32)
    return Batch(index, jnp.asarray(weights, dtype)[index])

  name = "importance" if reweight else "importance_unweighted"
  return Sampler(name, sample, n, 1, probs, reweight, a, 0.0, _c(a, delta_inf))


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
