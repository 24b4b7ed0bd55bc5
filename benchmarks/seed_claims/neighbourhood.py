"""Claim 3 (Si & Yun): stochastic SAM with a constant radius only reaches an O(rho^2) neighbourhood.

Ridge regression ``f(x) = 1/n sum_i f_i(x)``, ``f_i(x) = (a_i . x - b_i)^2 / 2 + reg/2 ||x||^2``, n = 64,
d = 8, rows ``a_i ~ N(0, I/d)``, ``b = A x_true + 0.5 N(0, I)``, ``reg = 0.1`` (so no ``x`` zeroes every
``grad f_i``), ``x_0 = 0``. Batch size 1 from ``sampling.uniform``, the same batch for both gradients.
Steps ``gamma_k = min(gamma, (2k+1)/((k+1)^2 mu))`` (``theory.pl_decreasing_schedules``, ``gamma`` from
``theory.pl_constant_steps`` for the uniform sampler), which decay like ``2/(mu k)``, so the step-size
noise dies out; the radius ``rho`` stays constant. Runs: stochastic SAM (``lambda = 1``) and stochastic
USAM (``lambda = 0``) for each rho, SGD (``rho = 0``: the noise floor left at this T), all with several
trials, and deterministic (full-batch) SAM with the same rho and steps.

Prediction, independent of the library: as ``gamma_k -> 0`` the iterates settle at the zero of the
averaged update ``E_i grad f_i(x + e_i(x))``, computed here in NumPy; its suboptimality ``F(rho)`` is
``O(rho^2)``, because the zero moves ``O(rho)`` away from ``x*``.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_usam
from benchmarks import report
from benchmarks.seed_claims import common
from benchmarks.seed_claims.common import Check
from optax_usam import sampling, theory

NAME = "neighbourhood"
CLAIM = "Stochastic SAM with a constant radius reaches only an O(rho^2) neighbourhood"
SOURCE = "Si & Yun, NeurIPS 2023, abstract"
STATEMENT = (
  "On smooth strongly convex functions, deterministic SAM (constant rho, normalized) converges, "
  "while the bound of stochastic SAM keeps an additive O(rho^2) term: convergence only to a "
  "neighbourhood of the optimum."
)
SETTINGS = {
  "full": {"iterations": 1_000_000, "trials": 8, "rhos": (0.01, 0.02, 0.04, 0.08, 0.16)},
  "quick": {"iterations": 100_000, "trials": 4, "rhos": (0.04, 0.08, 0.16)},
}
N, D, REG, NOISE = 64, 8, 0.1, 0.5
RECORDS = 100  # suboptimality points kept per run
EPS = 1e-12  # unified_sam's default, also used by the NumPy prediction
FLOOR_FACTOR = 3.0
SLOPE_TOLERANCE = 0.5
DETERMINISTIC_FACTOR = 1e-3


class Ridge:
  """The finite sum, its minimizer and the library pieces a run needs."""

  def __init__(self, rng: np.random.Generator) -> None:
    self.a = rng.standard_normal((N, D)) / np.sqrt(D)
    self.b = self.a @ rng.standard_normal(D) + NOISE * rng.standard_normal(N)
    self.hessian = self.a.T @ self.a / N + REG * np.eye(D)
    eigs = np.linalg.eigvalsh(self.hessian)
    self.mu, self.L = float(eigs[0]), float(eigs[-1])
    self.smoothness = np.sum(self.a**2, axis=1) + REG
    self.x_star = np.linalg.solve(self.hessian, self.a.T @ self.b / N)
    self.sampler = sampling.uniform(self.smoothness)
    self.gamma = theory.pl_constant_steps(
      self.mu, float(self.smoothness.max()), self.sampler.A, self.sampler.B, lambd=1.0
    ).gamma
    # Only its steps are used: the radius stays constant.
    self.steps = theory.pl_decreasing_schedules(0.0, self.gamma, self.mu).gamma

  @staticmethod
  def per_example_loss(x: jax.Array, example: tuple[jax.Array, jax.Array]) -> jax.Array:
    row, target = example
    return 0.5 * (row @ x - target) ** 2 + 0.5 * REG * x @ x

  @property
  def data(self) -> tuple[jax.Array, jax.Array]:
    return jnp.asarray(self.a), jnp.asarray(self.b)

  def full_loss(self, x: jax.Array) -> jax.Array:
    return jnp.mean(jax.vmap(self.per_example_loss, in_axes=(None, 0))(x, self.data))

  def suboptimality(self, x: jax.Array) -> jax.Array:
    """``f(x) - f*``, as ``(x - x*)^T H (x - x*) / 2``: exact for a quadratic, and free of the cancellation
    of ``f(x) - f*`` near ``x*``."""
    delta = x - jnp.asarray(self.x_star)
    return 0.5 * delta @ jnp.asarray(self.hessian) @ delta

  def predicted(self, rho: float, lambd: float, iterations: int = 3000) -> tuple[float, float]:
    """``F(rho)``: the suboptimality at the zero of the averaged Unified SAM update, and the update's norm
    there (a check that the NumPy iteration converged)."""
    x = self.x_star.copy()
    for _ in range(iterations):
      field = self.averaged_update(x, rho, lambd)
      x = x - field / (2 * self.L)
    delta = x - self.x_star
    residual = np.linalg.norm(self.averaged_update(x, rho, lambd))
    return float(0.5 * delta @ self.hessian @ delta), float(residual)

  def averaged_update(self, x: np.ndarray, rho: float, lambd: float) -> np.ndarray:
    g = self.a * (self.a @ x - self.b)[:, None] + REG * x
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    y = x + rho * (1 - lambd + lambd / (norms + EPS)) * g  # one ascent point per f_i
    return np.mean(self.a * (np.sum(self.a * y, axis=1) - self.b)[:, None] + REG * y, axis=0)


def simulate(
  problem: Ridge, lambdas: np.ndarray, rhos: np.ndarray, keys: jax.Array, iterations: int, stochastic: bool
) -> np.ndarray:
  """``f(x_t) - f*`` at RECORDS evenly spaced t (the last is T), shape (runs, trials, RECORDS)."""
  inner = iterations // RECORDS
  full_grad = jax.grad(problem.full_loss)

  def one_run(lam: jax.Array, rho: jax.Array, key: jax.Array) -> jax.Array:
    tx = optax.chain(
      optax_usam.unified_sam(rho=lambda count: rho, lambd_schedule=lambda count: lam),
      optax.sgd(problem.steps),
    )

    def step(carry: tuple[jax.Array, Any], step_key: jax.Array) -> tuple[tuple[jax.Array, Any], None]:
      x, state = carry
      if stochastic:
        batch = problem.sampler.sample(step_key)
        grad_fn = sampling.batch_grad_fn(problem.per_example_loss, problem.data, batch)
      else:
        grad_fn = full_grad
      updates, state = tx.update(grad_fn(x), state, x, grad_fn=grad_fn)
      return (optax.apply_updates(x, updates), state), None

    def chunk(carry: tuple[jax.Array, Any], chunk_key: jax.Array) -> tuple[tuple[jax.Array, Any], jax.Array]:
      carry, _ = jax.lax.scan(step, carry, jax.random.split(chunk_key, inner))
      return carry, problem.suboptimality(carry[0])

    x0 = jnp.zeros(D)
    _, subopt = jax.lax.scan(chunk, (x0, tx.init(x0)), jax.random.split(key, RECORDS))
    return subopt

  runs = jax.vmap(jax.vmap(one_run, in_axes=(None, None, 0)))
  return np.asarray(jax.jit(runs)(jnp.asarray(lambdas), jnp.asarray(rhos), keys))


def trial_stats(runs: np.ndarray) -> dict[str, list[float]]:
  """Mean and std over trials (axis 0) of recorded curves, for the JSON."""
  return {"mean": common.rounded(runs.mean(axis=0)), "std": common.rounded(runs.std(axis=0))}


def run(quick: bool, seed: int) -> common.ClaimResult:
  start_s = time.perf_counter()
  settings = SETTINGS["quick" if quick else "full"]
  iterations, trials, rhos = settings["iterations"], settings["trials"], np.asarray(settings["rhos"])
  problem = Ridge(np.random.default_rng(seed + 2))
  k = len(rhos)
  # Stochastic runs: SGD (rho = 0), SAM at each rho, USAM at each rho; then deterministic SAM.
  lambdas = np.concatenate([[1.0], np.ones(k), np.zeros(k)])
  all_rhos = np.concatenate([[0.0], rhos, rhos])
  key = jax.random.key(seed)
  stochastic = simulate(
    problem, lambdas, all_rhos, jax.random.split(key, (lambdas.size, trials)), iterations, stochastic=True
  )
  deterministic = simulate(
    problem, np.ones(k), rhos, jax.random.split(key, (k, 1)), iterations, stochastic=False
  )[:, 0]
  sgd, sam, usam = stochastic[0], stochastic[1 : k + 1], stochastic[k + 1 :]
  floor = float(sgd[:, -1].mean())
  sam_final, usam_final = sam[:, :, -1].mean(axis=1), usam[:, :, -1].mean(axis=1)
  det_final = deterministic[:, -1]
  sam_slope, usam_slope = common.slope(rhos, sam_final), common.slope(rhos, usam_final)
  predicted = {lam: [problem.predicted(float(r), lam) for r in rhos] for lam in (1.0, 0.0)}
  sam_pred = np.array([p for p, _ in predicted[1.0]])
  usam_pred = np.array([p for p, _ in predicted[0.0]])
  halfway = sam[-1, :, RECORDS // 2 - 1].mean()
  checks = [
    Check(
      f"stochastic SAM, every rho: f(x_T) - f* >= {FLOOR_FACTOR:g} x SGD's (rho = 0, same steps; "
      "smallest ratio)",
      float(np.min(sam_final) / floor),
      bool(np.all(sam_final >= FLOOR_FACTOR * floor)),
    ),
    Check(
      f"stochastic SAM: log-log slope of f(x_T) - f* against rho within {SLOPE_TOLERANCE} of 2",
      sam_slope,
      abs(sam_slope - 2) <= SLOPE_TOLERANCE,
    ),
    Check(
      "stochastic SAM, largest rho: f(x_T) - f* >= 0.8 x its value at T/2 (it has stopped falling)",
      float(sam_final[-1] / halfway),
      bool(sam_final[-1] >= 0.8 * halfway),
    ),
    Check(
      f"deterministic SAM, every rho: f(x_T) - f* <= {DETERMINISTIC_FACTOR:g} x stochastic SAM's "
      "(largest ratio)",
      float(np.max(det_final / sam_final)),
      bool(np.all(det_final <= DETERMINISTIC_FACTOR * sam_final)),
    ),
  ]
  measured = {
    "rhos": rhos.tolist(),
    "sgd_floor": floor,
    "stochastic_sam_final": sam_final.tolist(),
    "stochastic_sam_final_std": sam[:, :, -1].std(axis=1).tolist(),
    "stochastic_sam_slope": sam_slope,
    "stochastic_usam_final": usam_final.tolist(),
    "stochastic_usam_final_std": usam[:, :, -1].std(axis=1).tolist(),
    "stochastic_usam_slope": usam_slope,
    "stochastic_sam_slope_above_floor": common.slope(rhos, np.maximum(sam_final - floor, 1e-300)),
    "deterministic_sam_final": det_final.tolist(),
    "predicted_sam": sam_pred.tolist(),
    "predicted_usam": usam_pred.tolist(),
    "predicted_sam_slope": common.slope(rhos, sam_pred),
    "predicted_usam_slope": common.slope(rhos, usam_pred),
    "predicted_update_norm_max": max(norm for lam in predicted.values() for _, norm in lam),
    "stochastic_sam_over_floor_plus_predicted": (sam_final / (floor + sam_pred)).tolist(),
    "stochastic_usam_over_floor_plus_predicted": (usam_final / (floor + usam_pred)).tolist(),
  }
  summary = (
    f"rho = {common.fmt(rhos[0])}..{common.fmt(rhos[-1])}, T = {iterations}: stochastic SAM "
    f"f(x_T) - f* = {common.fmt(sam_final[0])}..{common.fmt(sam_final[-1])}, slope {sam_slope:.2f} "
    f"(NumPy prediction {measured['predicted_sam_slope']:.2f}; SGD floor {common.fmt(floor)}); "
    f"deterministic SAM {common.fmt(det_final[0])}..{common.fmt(det_final[-1])}; stochastic USAM "
    f"slope {usam_slope:.2f}"
  )
  t = (np.arange(RECORDS) + 1) * (iterations // RECORDS)
  idx = common.log_indices(RECORDS) - 1
  curves = {
    "iterations": t[idx].tolist(),
    "sgd": trial_stats(sgd[:, idx]),
    **{f"stochastic_sam_rho={r:g}": trial_stats(sam[i][:, idx]) for i, r in enumerate(rhos)},
    **{f"stochastic_usam_rho={r:g}": trial_stats(usam[i][:, idx]) for i, r in enumerate(rhos)},
    **{f"deterministic_sam_rho={r:g}": common.rounded(deterministic[i][idx]) for i, r in enumerate(rhos)},
  }
  rec = common.record(
    claim=CLAIM,
    source=SOURCE,
    statement=STATEMENT,
    construction=__doc__.split("\n\n")[1],
    settings={
      "n": N,
      "d": D,
      "reg": REG,
      "label_noise": NOISE,
      "mu": problem.mu,
      "L": problem.L,
      "L_max": float(problem.smoothness.max()),
      "gamma_cap": problem.gamma,
      "steps": "min(gamma, (2k+1)/((k+1)^2 mu))",
      "batch_size": 1,
      "sampler": "uniform",
      "iterations": iterations,
      "trials": trials,
      "rhos": rhos.tolist(),
      "records": RECORDS,
    },
    measured=measured,
    summary=summary,
    checks=checks,
    curves=curves,
    seconds=time.perf_counter() - start_s,
  )
  figure = {
    "t": t,
    "rhos": rhos,
    "sgd": sgd,
    "sam": sam,
    "usam": usam,
    "deterministic": deterministic,
    "sam_pred": sam_pred,
    "usam_pred": usam_pred,
    "floor": floor,
    "sam_slope": sam_slope,
    "usam_slope": usam_slope,
    "trials": trials,
  }
  return common.ClaimResult(NAME, rec, figure)


def plot(result: common.ClaimResult, path: Any) -> None:
  """Left: suboptimality against iterations; right: its final value against rho (log-log), with fits."""
  import matplotlib

  plt = report.pyplot()
  fig_data = result.figure
  rhos, t = fig_data["rhos"], fig_data["t"]
  colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, rhos.size))
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
  mean, std = fig_data["sgd"].mean(axis=0), fig_data["sgd"].std(axis=0)
  report.line_with_band(
    left, t, mean, np.maximum(mean - std, mean / 10), mean + std, "SGD (rho = 0)", 0, "k", ":"
  )
  for i, rho in enumerate(rhos):
    runs = fig_data["sam"][i]
    mean, std = runs.mean(axis=0), runs.std(axis=0)
    report.line_with_band(
      left,
      t,
      mean,
      np.maximum(mean - std, mean / 10),
      mean + std,
      f"stochastic SAM, rho = {rho:g}",
      i,
      colors[i],
      "-",
    )
    left.plot(
      t,
      fig_data["deterministic"][i],
      color=colors[i],
      ls="--",
      lw=1.2,
      label=f"deterministic SAM, rho = {rho:g}",
    )
  report.band_legend(left, f"+-1 std over {fig_data['trials']} trials")
  left.set_xscale("log")
  left.set_yscale("log")
  left.set_xlabel("iteration t")
  left.set_ylabel(r"$f(x_t) - f^*$")
  left.legend(fontsize=5.5, ncol=2)
  common.title(left, "suboptimality against iterations", 60)

  markers = (("sam", "stochastic SAM", "o", "C0", "C0", 5), ("usam", "stochastic USAM", "s", "C1", "none", 8))
  for key, label, marker, color, face, size in markers:
    finals = fig_data[key][:, :, -1]
    right.errorbar(
      rhos,
      finals.mean(axis=1),
      yerr=finals.std(axis=1),
      fmt=marker,
      color=color,
      mfc=face,
      ms=size,
      capsize=3,
      label=f"{label}: slope {fig_data[f'{key}_slope']:.2f}",
    )
    fit = np.polyfit(np.log(rhos), np.log(finals.mean(axis=1)), 1)
    right.plot(rhos, np.exp(np.polyval(fit, np.log(rhos))), color=color, lw=0.8, ls="-")
    right.plot(
      rhos,
      fig_data[f"{key}_pred"],
      color=color,
      lw=1,
      ls=":",
      label=f"{label}: NumPy zero of the averaged update",
    )
  right.plot(rhos, fig_data["deterministic"][:, -1], "^--", color="C2", lw=1, label="deterministic SAM")
  report.reference_line(right, fig_data["floor"], "SGD (rho = 0): noise floor at T", color="k", style=":")
  report.error_bars_legend(right, f"+-1 std over {fig_data['trials']} trials (lines: least-squares fits)")
  right.set_xscale("log")
  right.set_yscale("log")
  right.set_xlabel("rho")
  right.set_ylabel(r"$f(x_T) - f^*$, mean over trials")
  right.legend(fontsize=6)
  common.title(right, f"final suboptimality at T = {t[-1]} against rho", 60)
  fig.suptitle(
    f"Claim 3 ({SOURCE}): {CLAIM}.\nRidge, n = {N}, d = {D}, batch 1, gamma_k ~ 2/(mu k), constant rho",
    fontsize=8,
  )
  report.save(fig, path, dpi=90)
