"""An independent float64 NumPy implementation of Unified SAM, for the tests: the one reference they share.

It shares no code with the library: the model gradient is derived by hand, lambda_t is computed here, and
the optimizer (weight decay + momentum SGD, optax's conventions) is spelled out. ``jax.tree`` only walks
the structure of Flax trees in :func:`tree_perturbation`; every number is NumPy's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

Params = dict[str, np.ndarray]


def mlp_loss(p: Params, x: np.ndarray, y: np.ndarray) -> float:
  """0.5 * mean((tanh(x W1 + b1) w2 + b2 - y)^2), summed over outputs."""
  h = np.tanh(x @ p["w1"] + p["b1"])
  r = h @ p["w2"] + p["b2"] - y
  return 0.5 * np.sum(r**2) / x.shape[0]


def mlp_grad(p: Params, x: np.ndarray, y: np.ndarray) -> Params:
  """Hand-derived gradient of :func:`mlp_loss`."""
  n = x.shape[0]
  h = np.tanh(x @ p["w1"] + p["b1"])
  r = (h @ p["w2"] + p["b2"] - y) / n
  dh = (r @ p["w2"].T) * (1 - h**2)
  return {"w1": x.T @ dh, "b1": dh.sum(0), "w2": h.T @ r, "b2": r.sum(0)}


# --- lambda_t: the one place the tests compute it ---


def inverse_t(constant: float, per_t: float, count: int) -> float:
  """lambda_t = constant + per_t / t, with t = count + 1 (count = 0 on the first update)."""
  return constant + per_t / (count + 1.0)


# The paper's strings as (constant, per_t): '1/t' starts as SAM (lambda = 1), '1-1/t' as USAM (lambda = 0).
NAMED_LAMBDAS = {"1/t": (0.0, 1.0), "1-1/t": (1.0, -1.0)}


def lambda_at(lambd: float | str | Callable[[int], float], count: int) -> float:
  """lambda_t for a float, '1/t' or '1-1/t' (t = count + 1), or a NumPy callable of the count."""
  if isinstance(lambd, str):
    return inverse_t(*NAMED_LAMBDAS[lambd], count)
  if callable(lambd):
    return float(lambd(count))
  return float(lambd)


def global_norm(leaves) -> float:
  """sqrt(sum of squares) over an iterable of arrays, in float64."""
  return float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in leaves)))


def perturbation(
  g: Params,
  rho: float,
  lambd: float,
  eps: float = 1e-12,
  mask: dict[str, bool] | None = None,
  scales: dict[str, np.ndarray | None] | None = None,
) -> tuple[Params, float]:
  """The Unified SAM perturbation e and the norm ||T g||, over the leaves where ``mask`` is True.

  e = rho (1 - lambda + lambda / (||T g|| + eps)) T^2 g, with T the ASAM scale ``scales[k]``
  (None, or a None leaf, means T = 1: plain Unified SAM). Masked-out leaves get e = 0.
  """
  mask = mask or {k: True for k in g}
  t = {k: np.ones_like(v) if scales is None or scales[k] is None else scales[k] for k, v in g.items()}
  norm = global_norm(t[k] * g[k] for k in g if mask[k])
  scale = rho * (1 - lambd + lambd / (norm + eps))
  return {k: scale * t[k] ** 2 * g[k] if mask[k] else np.zeros_like(v) for k, v in g.items()}, norm


def tree_perturbation(grads: Any, rho: float, lambd: float) -> Any:
  """:func:`perturbation` of a nested tree of gradients (Flax's), in float64, as a tree like ``grads``."""
  leaves = {i: np.asarray(x, np.float64) for i, x in enumerate(jax.tree.leaves(grads))}
  e, _ = perturbation(leaves, rho, lambd)
  return jax.tree.unflatten(jax.tree.structure(grads), [e[i] for i in range(len(leaves))])


def momentum_sgd(p: Params, trace: Params, g: Params, lr: float, momentum: float, weight_decay: float):
  """One step of add_decayed_weights -> sgd(momentum) on the gradient g: the new (params, trace).

  The trace starts at zeros, so the first step's trace is g + weight_decay p (PyTorch's SGD agrees).
  """
  trace = {k: g[k] + weight_decay * p[k] + momentum * trace[k] for k in p}
  return {k: p[k] - lr * trace[k] for k in p}, trace


def unified_sam_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, mask=None):
  """Runs Unified SAM -> add_decayed_weights -> momentum SGD; returns params and per-step diagnostics.

  ``rho`` is a float or a NumPy callable of the count; ``grad`` maps params to gradients;
  ``mask`` (a dict of bools) says which leaves are perturbed.
  """
  p = {k: v.copy() for k, v in p.items()}
  trace = {k: np.zeros_like(v) for k, v in p.items()}
  logs = []
  for count in range(steps):
    rho_t = float(rho(count)) if callable(rho) else rho
    lambd_t = lambda_at(lambd, count)
    g = grad(p)
    e, norm = perturbation(g, rho_t, lambd_t, mask=mask)
    g_sam = grad({k: p[k] + e[k] for k in p})
    p, trace = momentum_sgd(p, trace, g_sam, lr, momentum, weight_decay)
    e_norm = global_norm(e.values())
    logs.append({"grad_norm": norm, "lambd": lambd_t, "rho": rho_t, "perturbation_norm": e_norm})
  return p, logs


# --- Data parallel: the batch split into shards, each perturbed along its own gradient or along the mean ---


def sharded_sam_gradient(
  p: Params,
  x: np.ndarray,
  y: np.ndarray,
  rho: float,
  lambd: float,
  shards: int,
  mask: dict[str, bool] | None = None,
  adaptive_eta: float | None = None,
) -> tuple[Params, float]:
  """The MLP's Unified SAM gradient with each of ``shards`` sub-batches perturbed along its own gradient.

  ``shards=1`` is the global perturbation (the whole batch), more is m-sharpness; ``adaptive_eta`` turns on
  ASAM's scales |w| + eta on every leaf. Returns the mean over shards of the gradient at the perturbed
  points and of ``||g||``.
  """
  scales = None if adaptive_eta is None else {k: np.abs(v) + adaptive_eta for k, v in p.items()}
  g_sam = {k: np.zeros_like(v) for k, v in p.items()}
  norms = []
  for xs, ys in zip(np.split(x, shards), np.split(y, shards), strict=True):
    e, norm = perturbation(mlp_grad(p, xs, ys), rho, lambd, mask=mask, scales=scales)
    g_local = mlp_grad({k: p[k] + e[k] for k in p}, xs, ys)
    g_sam = {k: g_sam[k] + g_local[k] / shards for k in p}
    norms.append(norm)
  return g_sam, float(np.mean(norms))


def sharded_sam_sgd(
  p, x, y, steps, rho, lambd, lr, momentum, weight_decay, shards, mask=None, adaptive_eta=None
) -> tuple[Params, float]:
  """``steps`` of :func:`sharded_sam_gradient` through weight decay and momentum SGD.

  Returns the parameters and the last step's mean ``||g||``.
  """
  p = {k: v.astype(np.float64) for k, v in p.items()}
  trace = {k: np.zeros_like(v) for k, v in p.items()}
  norm = float("nan")
  for _ in range(steps):
    g_sam, norm = sharded_sam_gradient(p, x, y, rho, lambd, shards, mask, adaptive_eta)
    p, trace = momentum_sgd(p, trace, g_sam, lr, momentum, weight_decay)
  return p, norm


# --- The SAM family as Unified SAM with another ascent direction (issue 13) ---
#
# Each member's direction d_t is a recurrence on the gradients it reads. The recurrences serve both the
# whole trajectories below ("method -> weight decay -> momentum SGD", as unified_sam_sgd) and
# :func:`directions_seen`, which replays them on the gradients a library run computed. d goes through
# `perturbation` with lambda_t: e = rho (1 - lambda + lambda / (||d|| + eps)) d, so lambda = 1 is the
# paper's normalized method and lambda = 0 its unnormalized form; `grad_norm` is ||d||.
#
# Where each rule was checked. The paper texts reachable here gave their openings and abstracts only, so
# the update rules come from the authors' public code where it exists; what could not be verified is said.
#
# - VaSSO (Li & Giannakis, NeurIPS 2023; BingcongLi/VaSSO, solver/vasso.py ``first_step``): two gradients
#   per step. Default theta = 0.9, rho = 0.05 (configs/defaulf_cfg.py). theta = 1 is SAM. The code starts
#   the average at d_1 = g_1 (not theta g_1, as an EMA from 0 would), and so do the library and this file.
# - F-SAM (Li et al., CVPR 2024): d_t = g_t - sigma m_t, m_t = lambda_F m_{t-1} + (1 - lambda_F) g_t, two
#   gradients. The paper's form (m_t includes g_t) was read in a third-party transcription only; the
#   authors' code (nblt/F-SAM, utils.py ``FriendlySAM.first_step``) subtracts m_{t-1}, before g_t enters
#   it, and starts with m_1 = g_1, d_1 = g_1 (with sigma = 1 the two d_t are parallel for the same
#   m_{t-1}). Defaults there: sigma = 1, lambda_F = 0.9 (run.sh: 0.95, rho = 0.2). sigma = 0 is SAM. The
#   library and this file follow the code, the one source read here.
# - Momentum-SAM (Becker et al. 2024; MarlonBecker/MSAM, optimizer/msam.py; Fig. 1 pseudocode): the
#   gradient is taken at w_t - rho v_t / ||v_t||, v the SGD momentum buffer (v_0 = 0: the first step is
#   plain SGD), so d = -v; ONE gradient per step. There: rho = 0.3 in msam.py, 3 in configs/*.ini,
#   momentum 0.9. The code's v contains the weight decay term; here v is the direction's own trace of the
#   SAM gradients (the agreed design: unified_sam is first in the chain), equal to the paper's buffer when
#   weight decay is 0 and the momenta agree (:func:`momentum_sam_paper` transcribes Fig. 1).
# - RSAM (Liu et al., NeurIPS 2022 as the stored text is filed, not ECCV; abstract: "one-step gradient
#   ascent on the smoothed weights"; authors' JAX code RSAM-Optimizer/R-SAM, vit_jax/train.py
#   ``random_vector``, ``sam_gradient``): delta_t = std * z * (L2 norm of each output unit of a kernel, of
#   the whole vector for a vector), ascent along 2 grad f(x_t + delta_t) + delta_t, normalized; final
#   gradient at x_t + e_t (the code adds e to the unperturbed weights), not at x_t + delta_t + e_t. Two
#   gradients, none at x_t. Std there: 5e-4 raised to 2.5e-3 along training (``CosineInc``). noise_std = 0
#   is SAM.
# - GSAM (Zhuang et al., ICLR 2022; google-research/big_vision, trainers/proj/gsam/gsam.py,
#   ``minimize_fp=True``): output g_sam - alpha g_perp, g_perp = g - <g, g_sam/||g_sam||> g_sam/||g_sam||,
#   the fresh g decomposed against g_sam; the step then ascends along g_perp ("an ascent step in the
#   orthogonal direction", abstract). Two gradients. alpha = 0 is (Unified) SAM.
# - Khanh et al. (NeurIPS 2024) treat SAM, VaSSO, F-SAM and RSAM as inexact gradient descent with
#   absolute error: ||e_t|| = rho_t, so ||grad f(x_t + e_t) - grad f(x_t)|| <= L rho_t (abstract and
#   reviews; the section and equation numbers were not readable here).


def _axpy(a: float, x: Params, y: Params) -> Params:
  """a x + y, leafwise."""
  return {k: a * x[k] + y[k] for k in y}


def _dot(x: Params, y: Params) -> float:
  return float(sum(np.sum(x[k] * y[k]) for k in x))


def vasso_direction(previous: Params | None, g: Params, theta: float) -> Params:
  """VaSSO (Li & Giannakis 2023): d_t = (1 - theta) d_{t-1} + theta g_t, g_t the gradient at x_t.

  d_1 = g_1 (``previous`` None), as the authors' code (BingcongLi/VaSSO, solver/vasso.py) starts the average.
  """
  return g if previous is None else _axpy(1 - theta, previous, {k: theta * v for k, v in g.items()})


def friendly_direction(
  average: Params | None, g: Params, sigma: float, ema_decay: float
) -> tuple[Params, Params]:
  """F-SAM (Li et al. 2024) as the authors' code (nblt/F-SAM, utils.py ``FriendlySAM``) computes it.

  d_t = g_t - sigma m_{t-1}, m_t = ema_decay m_{t-1} + (1 - ema_decay) g_t (m before g_t enters it), with
  m_1 = d_1 = g_1 (``average`` None). Returns (d_t, m_t).
  """
  if average is None:
    return g, g
  return _axpy(-sigma, average, g), {k: ema_decay * average[k] + (1 - ema_decay) * g[k] for k in g}


def momentum_direction(trace: Params) -> Params:
  """MSAM (Becker et al. 2024): d_t = -v_{t-1}, v the direction's own trace of the SAM gradients, v_0 = 0."""
  return {k: -v for k, v in trace.items()}


def momentum_trace(trace: Params, g_sam: Params, sam_momentum: float) -> Params:
  """v_t = sam_momentum v_{t-1} + g_sam_t (the optimizer's weight decay is not in it)."""
  return _axpy(sam_momentum, trace, g_sam)


def smoothing_direction(g_smoothed: Params, delta: Params, gradient_weight: float = 2.0) -> Params:
  """RSAM (Liu et al. 2022): d_t = grad f(x_t + delta_t) + delta_t / gradient_weight.

  The authors' code ascends along 2 grad f(x_t + delta_t) + delta_t: the same direction for weight 2.
  """
  return _axpy(1 / gradient_weight, delta, g_smoothed)


def directions_seen(
  name: str,
  seen: list[dict[str, Params]],
  *,
  theta: float,
  sigma: float,
  ema_decay: float,
  sam_momentum: float,
) -> list[Params]:
  """d_t of each step of a run, replayed from the gradients that run computed.

  ``seen[t]`` holds ``g`` (the gradient at x_t), ``g_sam`` (at the point of the step's last gradient),
  and for random_smoothing_sam ``delta`` and ``g_smoothed`` (the noise and the gradient at x_t + delta_t).
  """
  out, state = [], None
  for step in seen:
    if name == "gsam":
      d = step["g"]
    elif name == "vasso":
      d = state = vasso_direction(state, step["g"], theta)
    elif name == "friendly_sam":
      d, state = friendly_direction(state, step["g"], sigma, ema_decay)
    elif name == "momentum_sam":
      state = {k: np.zeros_like(v) for k, v in step["g"].items()} if state is None else state
      d = momentum_direction(state)
      state = momentum_trace(state, step["g_sam"], sam_momentum)
    elif name == "random_smoothing_sam":
      d = smoothing_direction(step["g_smoothed"], step["delta"])
    else:
      raise ValueError(f"no reference for {name!r}")
    out.append(d)
  return out


def _sam_family_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, ascent, descent=None):
  """The shared loop: ``ascent(count, p) -> d`` (its own state in a closure), then the gradient at p + e.

  ``descent(count, p, g_sam) -> output`` post-processes the SAM gradient (GSAM); it defaults to the identity.
  """
  p = {k: v.copy() for k, v in p.items()}
  trace = {k: np.zeros_like(v) for k, v in p.items()}
  logs = []
  for count in range(steps):
    rho_t = float(rho(count)) if callable(rho) else rho
    lambd_t = lambda_at(lambd, count)
    d = ascent(count, p)
    e, norm = perturbation(d, rho_t, lambd_t)
    g_sam = grad({k: p[k] + e[k] for k in p})
    out = g_sam if descent is None else descent(count, p, g_sam)
    p, trace = momentum_sgd(p, trace, out, lr, momentum, weight_decay)
    e_norm = global_norm(e.values())
    logs.append({"grad_norm": norm, "lambd": lambd_t, "rho": rho_t, "perturbation_norm": e_norm})
  return p, logs


def vasso_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, theta):
  """VaSSO's whole run (:func:`vasso_direction`)."""
  d = None

  def ascent(count, x):
    nonlocal d
    d = vasso_direction(d, grad(x), theta)
    return d

  return _sam_family_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, ascent)


def friendly_sam_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, sigma, ema_decay):
  """F-SAM's whole run (:func:`friendly_direction`)."""
  m = None

  def ascent(count, x):
    nonlocal m
    d, m = friendly_direction(m, grad(x), sigma, ema_decay)
    return d

  return _sam_family_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, ascent)


def momentum_sam_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, sam_momentum):
  """MSAM's whole run (:func:`momentum_direction`): one gradient per step, at x_t + e_t.

  The first step has d = 0: plain SGD.
  """
  v = {k: np.zeros_like(x) for k, x in p.items()}

  def ascent(count, x):
    return momentum_direction(v)

  def descent(count, x, g_sam):
    nonlocal v
    v = momentum_trace(v, g_sam, sam_momentum)
    return g_sam

  return _sam_family_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, ascent, descent)


def momentum_sam_paper(p, grad, steps, rho, lr, momentum):
  """MSAM as written in Becker et al. 2024, Fig. 1 (and MarlonBecker/MSAM optimizer/msam.py), no weight decay.

  The iterate is kept at the perturbed point w~_t = w_t - rho v_t / ||v_t||: the gradient is taken there,
  the last perturbation removed, v_{t+1} = mu v_t + g, w_{t+1} = w_t - lr v_{t+1}, and the next perturbation
  applied. Returns the unperturbed w after ``steps`` steps.
  """
  v = {k: np.zeros_like(x) for k, x in p.items()}
  inv_norm = 0.0  # 1 / ||v_0|| is taken as 0: the first gradient is at w_0 itself
  w_tilde = {k: x.copy() for k, x in p.items()}
  for _ in range(steps):
    g = grad(w_tilde)
    w = {k: w_tilde[k] + rho * inv_norm * v[k] for k in v}
    v = _axpy(momentum, v, g)
    w = {k: w[k] - lr * v[k] for k in v}
    inv_norm = 1.0 / (global_norm(v.values()) + 1e-12)
    w_tilde = {k: w[k] - rho * inv_norm * v[k] for k in v}
  return w


def filter_norms(x: np.ndarray) -> np.ndarray:
  """The L2 norm of each output unit of a kernel (all axes but the last), of the whole array otherwise."""
  if x.ndim > 1:
    return np.sqrt(np.sum(x**2, axis=tuple(range(x.ndim - 1)), keepdims=True))
  return np.sqrt(np.sum(x**2))


def random_smoothing_sam_sgd(
  p,
  grad,
  steps,
  rho,
  lambd,
  lr,
  momentum,
  weight_decay,
  normals,
  noise_std,
  gradient_weight=2.0,
  filter_wise=True,
):
  """RSAM's whole run, as in the authors' code (RSAM-Optimizer/R-SAM, vit_jax/train.py ``sam_gradient``).

  delta_t = noise_std * s * z_t, z_t = ``normals[t]`` (standard normal arrays), s the filter norms of x_t
  (``filter_wise``) or 1; d_t is :func:`smoothing_direction`; final gradient at x_t + e_t. Two gradients
  per step, none at x_t. Zero noise is SAM.
  """

  def ascent(count, x):
    delta = {k: noise_std * (filter_norms(x[k]) if filter_wise else 1.0) * normals[count][k] for k in x}
    return smoothing_direction(grad({k: x[k] + delta[k] for k in x}), delta, gradient_weight)

  return _sam_family_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, ascent)


def gsam_output(g: Params, g_sam: Params, alpha: float) -> Params:
  """GSAM (Zhuang et al. 2022): g_sam - alpha g_perp, g_perp = g - (<g, g_sam> / ||g_sam||^2) g_sam.

  g is the gradient at x_t (the one Unified SAM perturbs along), g_sam the gradient at x_t + e_t.
  """
  perp = _axpy(-_dot(g, g_sam) / _dot(g_sam, g_sam), g_sam, g)
  return _axpy(-alpha, perp, g_sam)


def gsam_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, alpha):
  """GSAM's whole run (:func:`gsam_output` after the SAM gradient)."""
  fresh = {}

  def ascent(count, x):
    fresh["g"] = grad(x)
    return fresh["g"]

  def descent(count, x, g_sam):
    return gsam_output(fresh["g"], g_sam, alpha)

  return _sam_family_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, ascent, descent)


# --- LookSAM's reuse (reuse_sam) and SAM on a quadratic, with the step sizes of the theory ---


def looksam_sgd(p, x, y, steps, every_k, alpha, rho, lr=0.1):
  """LookSAM (Liu et al. 2022) on the MLP with plain SGD: SAM every ``every_k`` steps, reuse between.

  A SAM step stores g_v, the part of the SAM gradient g_s orthogonal to g; the others step along
  g + alpha (||g|| / ||g_v||) g_v.
  """
  p = {k: v.copy() for k, v in p.items()}
  g_v = None
  flat = lambda t: np.concatenate([t[k].ravel() for k in sorted(t)])
  for t in range(steps):
    g = mlp_grad(p, x, y)
    if t % every_k == 0:
      e, _ = perturbation(g, rho, 1.0)
      g_s = mlp_grad({k: p[k] + e[k] for k in p}, x, y)
      coef = flat(g_s) @ flat(g) / (flat(g) @ flat(g))
      g_v = {k: g_s[k] - coef * g[k] for k in p}
      out = g_s
    else:
      ratio = np.linalg.norm(flat(g)) / np.linalg.norm(flat(g_v))
      out = {k: g[k] + alpha * ratio * g_v[k] for k in p}
    p = {k: p[k] - lr * out[k] for k in p}
  return p


def sam_gd(grad: Callable[[np.ndarray], np.ndarray], x0, gammas, rhos, eps=1e-12) -> np.ndarray:
  """SAM (lambda = 1) with plain gradient steps on a vector: x_{k+1} = x_k - gamma_k grad(x_k + e_k), e_k the
  :func:`perturbation` of grad(x_k) at radius rho_k.

  Returns the iterates x_0, x_1, ..., x_T as rows.
  """
  xs = [np.array(x0, np.float64)]
  for gamma, rho in zip(gammas, rhos, strict=True):
    x = xs[-1]
    e, _ = perturbation({"x": grad(x)}, rho, 1.0, eps=eps)
    xs.append(x - gamma * grad(x + e["x"]))
  return np.array(xs)


def sam_on_quadratic(hess, center, x0, gammas, rhos, eps=1e-12) -> np.ndarray:
  """:func:`sam_gd` on (x - c)^T H (x - c) / 2 with step sizes gammas and radii rhos.

  Returns the iterates x_1, ..., x_T as rows.
  """
  return sam_gd(lambda x: hess @ (x - center), x0, gammas, rhos, eps)[1:]
