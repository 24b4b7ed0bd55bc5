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
import numpy as np

from optax_usam import _validation
from optax_usam._batches import (
  Batch,
  batch_grad_fn,
  batch_loss_fn,
  inverse_cdf_draws,
  subset_draws,
  uniform_draws,
)

__all__ = [
  "Batch",
  "Sampler",
  "batch_grad_fn",
  "batch_loss_fn",
  "importance",
  "tau_nice",
  "uniform",
  "with_replacement",
]


class Sampler(NamedTuple):
  """A finite-sum sampler and its Expected Residual constants.

  Attributes:
    name: ``'uniform'``, ``'tau_nice'``, ``'importance'``,
      ``'importance_unweighted'``, ``'with_replacement'`` or
      ``'importance_with_replacement'``.
    sample: ``key -> Batch``; pure, jit- and vmap-friendly.
    n: number of terms in the sum.
    batch_size: number of indices per batch.
    probabilities: float64 NumPy array: :math:`p_i`, the probability that one
      draw is index i, for the samplers that draw independently; for
      ``tau_nice``, :math:`\\tau/n`, the probability that i is in the batch.
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


def _c(a: float, delta_inf: float | None) -> float | None:
  return None if delta_inf is None else 2.0 * a * delta_inf


def _check_delta_inf(delta_inf: Any) -> float | None:
  return None if delta_inf is None else _validation.check_nonnegative(delta_inf, "delta_inf")


def uniform(smoothness: Any, *, delta_inf: float | None = None) -> Sampler:
  r"""One index drawn uniformly at random (with replacement across steps).

  ER constants: :math:`A = L_{\max}`, :math:`B = 0`, :math:`C = 2 L_{\max} \Delta^{\inf}`.

  Args:
    smoothness: the :math:`L_i` of each :math:`f_i`, shape ``(n,)``.
    delta_inf: :math:`f^{\inf} - \frac1n\sum_i f_i^{\inf} \ge 0`, for C.

  Examples:
    >>> from optax_usam import sampling
    >>> sampler = sampling.uniform([1.0, 2.0, 4.0])
    >>> sampler.A, sampler.B, sampler.C
    (4.0, 0.0, None)
    >>> batch = sampler.sample(jax.random.key(0))
    >>> batch.indices.shape, batch.weights
    ((1,), Array([1.], dtype=float32))
  """
  values = _validation.check_smoothness(smoothness)
  delta_inf = _check_delta_inf(delta_inf)
  n = values.size
  a = float(values.max())
  return Sampler("uniform", uniform_draws(n, 1), n, 1, np.full(n, 1.0 / n), True, a, 0.0, _c(a, delta_inf))


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
  delta_inf = _check_delta_inf(delta_inf)
  n = values.size
  tau = _validation.check_int(tau, "tau", 1, n, bounds=f"an int in [1, n={n}]")
  if n == 1:
    a, b = 0.0, 1.0
  else:
    a = (n - tau) / (tau * (n - 1)) * float(values.max())
    b = n * (tau - 1) / (tau * (n - 1))
  return Sampler("tau_nice", subset_draws(n, tau), n, tau, np.full(n, tau / n), True, a, b, _c(a, delta_inf))


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
  delta_inf = _check_delta_inf(delta_inf)
  _validation.check_bools(reweight=reweight)
  n = values.size
  probs = values / values.sum()
  weights = 1.0 / (n * probs) if reweight else np.ones(n)
  if reweight:
    a = float(values.mean())
  else:
    a = float(np.max(n * probs * values))
  name = "importance" if reweight else "importance_unweighted"
  return Sampler(name, inverse_cdf_draws(probs, weights, 1), n, 1, probs, reweight, a, 0.0, _c(a, delta_inf))


def with_replacement(
  smoothness: Any, batch_size: int, *, importance: bool = False, delta_inf: float | None = None
) -> Sampler:
  r"""A minibatch of ``batch_size`` indices drawn independently (with replacement).

  Each draw is uniform (weight 1) or, with ``importance=True``,
  :math:`p_i = L_i / \sum_j L_j` with weight :math:`1/(n p_i)`; either way
  :math:`\mathbb{E}[f_S] = f`. An index may appear several times in a batch,
  and ``batch_size`` may exceed :math:`n`. ER constants, for :math:`b` =
  ``batch_size``:

  .. math::
    A = \frac{L_{\max}}{b} \text{ (uniform)}, \quad
    A = \frac{L_{\text{avg}}}{b} \text{ (importance)}, \qquad
    B = 1 - \frac1b, \qquad C = 2A\,\Delta^{\inf};

  ``batch_size=1`` gives the constants of :func:`uniform` and
  :func:`importance`.

  Derivation. The batch gradient is the mean of :math:`b` i.i.d. vectors
  :math:`v_j = \nabla f_{i_j}/(n p_{i_j})` with mean :math:`\nabla f`, so
  its variance is :math:`1/b` of theirs:

  .. math::
    \mathbb{E}\|\nabla f_S\|^2 = \Big(1 - \frac1b\Big)\|\nabla f\|^2
    + \frac1b\,\mathbb{E}_i \Big\|\frac{\nabla f_i}{n p_i}\Big\|^2 .

  With :math:`\|\nabla f_i\|^2 \le 2L_i (f_i - f_i^{\inf})` (each
  :math:`f_i` is :math:`L_i`-smooth and bounded below),

  .. math::
    \mathbb{E}_i \Big\|\frac{\nabla f_i}{n p_i}\Big\|^2
    = \frac1n \sum_i \frac{\|\nabla f_i\|^2}{n p_i}
    \le 2 \max_i \frac{L_i}{n p_i} \cdot \frac1n \sum_i (f_i - f_i^{\inf})
    = 2 \max_i \frac{L_i}{n p_i} \big(f - f^{\inf} + \Delta^{\inf}\big),

  and :math:`\max_i L_i/(n p_i)` is :math:`L_{\max}` for :math:`p_i = 1/n`
  and :math:`L_{\text{avg}}` for :math:`p_i \propto L_i`. The :math:`B` term
  is exact, and the whole bound is an equality for importance sampling on
  least squares :math:`f_i = (a_i^\top x - b_i)^2/2`, where
  :math:`\|\nabla f_i\|^2 = 2L_i f_i`, :math:`L_i = \|a_i\|^2` and
  :math:`f_i^{\inf} = 0`.

  Args:
    smoothness: the :math:`L_i`, shape ``(n,)``.
    batch_size: :math:`b`, an int >= 1.
    importance: whether to draw :math:`i` with probability proportional to
      :math:`L_i` (weighted by :math:`1/(n p_i)`) instead of uniformly.
    delta_inf: :math:`\Delta^{\inf} \ge 0`, for C.

  Returns:
    A :class:`Sampler` named ``'with_replacement'`` or
    ``'importance_with_replacement'``, whose ``probabilities`` are those of
    one draw.

  Examples:
    >>> from optax_usam import sampling
    >>> sampler = sampling.with_replacement([1.0, 2.0, 4.0, 8.0], batch_size=5, importance=True)
    >>> sampler.A, sampler.B  # L_avg / b, 1 - 1/b
    (0.75, 0.8)
    >>> sampler.sample(jax.random.key(0)).indices.shape  # 5 draws from 4 terms
    (5,)
  """
  values = _validation.check_smoothness(smoothness)
  delta_inf = _check_delta_inf(delta_inf)
  _validation.check_bools(importance=importance)
  b = _validation.check_int(batch_size, "batch_size", 1, bounds="an int >= 1")
  n = values.size
  if importance:
    probs = values / values.sum()
    sample, a = inverse_cdf_draws(probs, 1.0 / (n * probs), b), float(values.mean()) / b
  else:
    probs = np.full(n, 1.0 / n)
    sample, a = uniform_draws(n, b), float(values.max()) / b
  name = "importance_with_replacement" if importance else "with_replacement"
  return Sampler(name, sample, n, b, probs, True, a, 1.0 - 1.0 / b, _c(a, delta_inf))
