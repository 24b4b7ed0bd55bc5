"""An independent float64 NumPy implementation of Unified SAM, for the tests.

It shares no code with the library: the model gradient is derived by hand and
the optimizer (weight decay + momentum SGD, optax's conventions) is spelled out.
"""

from __future__ import annotations

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


def lambda_at(lambd, count: int) -> float:
  """lambda_t for a float, '1/t' or '1-1/t' (t = count + 1), or a NumPy callable."""
  t = count + 1
  if lambd == "1/t":
    return 1.0 / t
  if lambd == "1-1/t":
    return 1.0 - 1.0 / t
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
    for k in p:
      d = g_sam[k] + weight_decay * p[k]
      trace[k] = d + momentum * trace[k]
      p[k] = p[k] - lr * trace[k]
    e_norm = global_norm(e.values())
    logs.append({"grad_norm": norm, "lambd": lambd_t, "rho": rho_t, "perturbation_norm": e_norm})
  return p, logs


# --- The SAM family as Unified SAM with another ascent direction (issue 13) ---
#
# Each function runs "method -> weight decay -> momentum SGD" (optax's conventions, as unified_sam_sgd) and
# returns (params, logs). The method's ascent direction d goes through `perturbation` with lambda_t, so
# lambda = 1 is the paper's normalized method and lambda = 0 its unnormalized form; `grad_norm` is ||d||.


def _axpy(a: float, x: Params, y: Params) -> Params:
  """a x + y, leafwise."""
  return {k: a * x[k] + y[k] for k in y}


def _dot(x: Params, y: Params) -> float:
  return float(sum(np.sum(x[k] * y[k]) for k in x))


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
    for k in p:
      trace[k] = out[k] + weight_decay * p[k] + momentum * trace[k]
      p[k] = p[k] - lr * trace[k]
    e_norm = global_norm(e.values())
    logs.append({"grad_norm": norm, "lambd": lambd_t, "rho": rho_t, "perturbation_norm": e_norm})
  return p, logs


def vasso_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, theta):
  """VaSSO (Li & Giannakis 2023): d_t = (1 - theta) d_{t-1} + theta g_t, g_t the gradient at x_t.

  d_1 = g_1, as the authors' code (BingcongLi/VaSSO, solver/vasso.py) starts the average.
  """
  d = {k: np.zeros_like(v) for k, v in p.items()}

  def ascent(count, x):
    nonlocal d
    g = grad(x)
    d = g if count == 0 else _axpy(1 - theta, d, {k: theta * v for k, v in g.items()})
    return d

  return _sam_family_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, ascent)


def friendly_sam_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, sigma, ema_decay):
  """F-SAM (Li et al. 2024) as the authors' code (nblt/F-SAM, utils.py ``FriendlySAM``) computes it.

  d_t = g_t - sigma m_{t-1}, m_t = ema_decay m_{t-1} + (1 - ema_decay) g_t (m before g_t enters it), with
  m_1 = d_1 = g_1.
  """
  m = {k: np.zeros_like(v) for k, v in p.items()}

  def ascent(count, x):
    nonlocal m
    g = grad(x)
    if count == 0:
      m = g
      return g
    previous = m
    m = {k: ema_decay * m[k] + (1 - ema_decay) * g[k] for k in g}
    return _axpy(-sigma, previous, g)

  return _sam_family_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, ascent)


def momentum_sam_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, sam_momentum):
  """MSAM (Becker et al. 2024): d_t = -v_{t-1}, v_t = sam_momentum v_{t-1} + g_sam_t, v_0 = 0.

  v is the direction's own trace of the SAM gradients (the optimizer's weight decay is not in it); one
  gradient per step, at x_t + e_t. The first step has d = 0: plain SGD.
  """
  v = {k: np.zeros_like(x) for k, x in p.items()}

  def ascent(count, x):
    return {k: -val for k, val in v.items()}

  def descent(count, x, g_sam):
    nonlocal v
    v = _axpy(sam_momentum, v, g_sam)
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
  """RSAM (Liu et al. 2022) as in the authors' code (RSAM-Optimizer/R-SAM, vit_jax/train.py ``sam_gradient``).

  delta_t = noise_std * s * z_t, z_t = ``normals[t]`` (standard normal arrays), s the filter norms of x_t
  (``filter_wise``) or 1; d_t = grad f(x_t + delta_t) + delta_t / gradient_weight (the code ascends along
  2 grad f(x_t + delta_t) + delta_t, the same direction for gradient_weight = 2); final gradient at
  x_t + e_t. Two gradients per step, none at x_t. Zero noise is SAM.
  """

  def ascent(count, x):
    delta = {k: noise_std * (filter_norms(x[k]) if filter_wise else 1.0) * normals[count][k] for k in x}
    g = grad({k: x[k] + delta[k] for k in x})
    return _axpy(1 / gradient_weight, delta, g)

  return _sam_family_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, ascent)


def gsam_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, alpha):
  """GSAM (Zhuang et al. 2022): output g_sam - alpha g_perp, g_perp = g - (<g, g_sam> / ||g_sam||^2) g_sam.

  g is the gradient at x_t (the one Unified SAM perturbs along), g_sam the gradient at x_t + e_t.
  """
  fresh = {}

  def ascent(count, x):
    fresh["g"] = grad(x)
    return fresh["g"]

  def descent(count, x, g_sam):
    g = fresh["g"]
    parallel = _dot(g, g_sam) / _dot(g_sam, g_sam)
    perp = _axpy(-parallel, g_sam, g)
    return _axpy(-alpha, perp, g_sam)

  return _sam_family_sgd(p, grad, steps, rho, lambd, lr, momentum, weight_decay, ascent, descent)
