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
