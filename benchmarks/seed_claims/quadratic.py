"""Claim 1 (Khanh et al.): on a strongly convex quadratic, SAM needs diminishing steps to reach the minimizer.

``f(x) = 1/2 sum_j h_j x_j^2``, ``h`` = 10 eigenvalues evenly spaced in [1, 4], ``x* = 0``: SAM and GD commute
with rotations and translations, so a diagonal Hessian and ``x* = 0`` lose nothing (and ``x* = 0`` keeps
``x - x*`` free of cancellation, which could set a coordinate exactly to 0 and leave it there). GD
(``unified_sam`` with ``rho = 0``) and SAM (``lambda = 1``, ``rho = 0.1``) with the constant step
``gamma = 1/h_max``, and SAM with ``theory.diminishing_step_size(1/h_max, 0.5)``, from 3 random starts at
distance 3 from ``x*``, plus SAM with the constant step from ``x* + 3 e_j`` for every eigen-direction j.

Prediction (``docs/seed_claims.md`` derives it): along the eigen-direction of ``h``, constant-step SAM ends
on the period-2 orbit ``+-xbar(h)``, ``xbar = gamma h rho / (2 - gamma h)`` (Section 4 of the project's
reference, with ``lambda = 1``); that orbit is stable only for ``h = h_max``, so generic starts end at
distance ``xbar(h_max)``, and starts exactly on another axis stay on it. With diminishing steps the orbit
shrinks with ``gamma_k``: the distance should fall like ``k^-0.5``.
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
from optax_usam import theory

NAME = "quadratic"
CLAIM = "SAM needs diminishing steps on a strongly convex quadratic"
SOURCE = "Khanh et al., NeurIPS 2024, figure of p. 5 (caption in the seed summary)"
STATEMENT = (
  "GD with a constant step size converges on a strongly convex quadratic; SAM with a constant "
  "step size does not reach the minimizer; SAM with diminishing step sizes converges."
)
SETTINGS = {"full": {"iterations": 10_000}, "quick": {"iterations": 2_000}}
EIGENVALUES = np.linspace(1.0, 4.0, 10)
GAMMA = 1.0 / EIGENVALUES.max()
RHO = 0.1
STEP_POWER = 0.5
RANDOM_STARTS = 3
START_DISTANCE = 3.0
METHODS = ("GD, constant step", "SAM, constant step", "SAM, diminishing step")
WINDOW = 100  # last iterations averaged for a plateau


def period_two_radius(h: Any, gamma: Any, rho: float) -> Any:
  """``xbar`` of deterministic SAM (``lambda = 1``) on ``h x^2 / 2``: its period-2 orbit is ``+-xbar``."""
  return gamma * h * rho / (2.0 - gamma * h)


def simulate(x_star: np.ndarray, starts: np.ndarray, methods: np.ndarray, iterations: int) -> np.ndarray:
  """``||x_k - x*||`` for k = 0..iterations, one row per (start, method), all runs one vmapped scan."""
  h = jnp.asarray(EIGENVALUES)
  target = jnp.asarray(x_star)
  diminishing = theory.diminishing_step_size(GAMMA, STEP_POWER)

  def loss(x: jax.Array) -> jax.Array:
    return 0.5 * jnp.sum(h * (x - target) ** 2)

  grad = jax.grad(loss)

  def one_run(x0: jax.Array, method: jax.Array) -> jax.Array:
    tx = optax.chain(
      optax_usam.unified_sam(rho=lambda count: jnp.where(method > 0, RHO, 0.0), lambd_schedule=1.0),
      optax.sgd(lambda count: jnp.where(method == 2, diminishing(count), GAMMA)),
    )

    def body(carry: tuple[jax.Array, Any], _: None) -> tuple[tuple[jax.Array, Any], jax.Array]:
      x, state = carry
      updates, state = tx.update(grad(x), state, x, grad_fn=grad)
      x = optax.apply_updates(x, updates)
      return (x, state), jnp.linalg.norm(x - target)

    _, dist = jax.lax.scan(body, (x0, tx.init(x0)), None, length=iterations)
    return jnp.concatenate([jnp.linalg.norm(x0 - target)[None], dist])

  return np.asarray(jax.jit(jax.vmap(one_run))(jnp.asarray(starts), jnp.asarray(methods)))


def run(quick: bool, seed: int) -> common.ClaimResult:
  start_s = time.perf_counter()
  iterations = SETTINGS["quick" if quick else "full"]["iterations"]
  rng = np.random.default_rng(seed)
  d = EIGENVALUES.size
  x_star = np.zeros(d)
  directions = rng.standard_normal((RANDOM_STARTS, d))
  random_starts = x_star + START_DISTANCE * directions / np.linalg.norm(directions, axis=1, keepdims=True)
  axis_starts = x_star + START_DISTANCE * np.eye(d)
  starts = np.concatenate([np.tile(random_starts, (len(METHODS), 1)), axis_starts])
  methods = np.concatenate([np.repeat(np.arange(len(METHODS)), RANDOM_STARTS), np.ones(d, int)])
  dist = simulate(x_star, starts, methods, iterations)
  by_method = dist[: len(METHODS) * RANDOM_STARTS].reshape(len(METHODS), RANDOM_STARTS, -1)
  gd, constant, diminishing = by_method

  gd_final = float(np.max(gd[:, -1] / gd[:, 0]))
  predicted = float(period_two_radius(EIGENVALUES.max(), GAMMA, RHO))
  plateau = constant[:, -WINDOW:].mean(axis=1)
  plateau_ratio = plateau / predicted
  axis_plateau = dist[len(METHODS) * RANDOM_STARTS :, -WINDOW:].mean(axis=1)
  axis_ratio = axis_plateau / period_two_radius(EIGENVALUES, GAMMA, RHO)
  mean_diminishing = diminishing.mean(axis=0)
  k = np.arange(iterations + 1)
  tail = k >= iterations // 10
  decay = common.slope(k[tail], mean_diminishing[tail])
  dim_final = float(mean_diminishing[-1])
  orbit_at_end = period_two_radius(EIGENVALUES.max(), GAMMA / iterations**STEP_POWER, RHO)  # at the last step
  checks = [
    Check("GD: ||x_T - x*|| / ||x_0 - x*|| <= 1e-10 (max over starts)", gd_final, gd_final <= 1e-10),
    Check(
      "SAM, constant step: plateau / xbar(h_max) within 1e-6 (worst start)",
      float(np.max(np.abs(plateau_ratio - 1))),
      bool(np.all(np.abs(plateau_ratio - 1) <= 1e-6)),
    ),
    Check(
      "SAM, constant step, starts on each eigen-direction j: plateau / xbar(h_j) within 1e-6 (worst j)",
      float(np.max(np.abs(axis_ratio - 1))),
      bool(np.all(np.abs(axis_ratio - 1) <= 1e-6)),
    ),
    Check(
      "SAM, diminishing step: ||x_T - x*|| <= plateau of the constant step / 10",
      dim_final,
      dim_final <= float(plateau.mean()) / 10,
    ),
    Check(
      f"SAM, diminishing step: log-log slope over the last 90% within 0.1 of -{STEP_POWER}",
      decay,
      abs(decay + STEP_POWER) <= 0.1,
    ),
  ]
  measured = {
    "gd_final_relative_distance": gd_final,
    "sam_constant_plateau": plateau.tolist(),
    "sam_constant_predicted": predicted,
    "sam_constant_plateau_ratio": plateau_ratio.tolist(),
    "eigen_direction_plateau_ratio": axis_ratio.tolist(),
    "sam_diminishing_final_distance": dim_final,
    "sam_diminishing_orbit_at_last_step": float(orbit_at_end),
    "sam_diminishing_slope": decay,
    "sam_diminishing_predicted_slope": -STEP_POWER,
  }
  summary = (
    f"GD: distance {common.fmt(gd_final * START_DISTANCE)} at T (from {START_DISTANCE:g}); SAM, "
    f"constant step: plateau "
    f"{common.fmt(plateau.mean())} = {plateau_ratio.mean():.4f} x the closed form "
    f"{common.fmt(predicted)} (every eigen-direction within {np.max(np.abs(axis_ratio - 1)):.1e}); "
    f"SAM, diminishing: {common.fmt(dim_final)} at T = {iterations}, slope {decay:.3f} "
    f"(predicted -{STEP_POWER})"
  )
  idx = common.log_indices(iterations)
  curves = {
    "iterations": idx.tolist(),
    **{m: common.rounded(runs[:, idx]) for m, runs in zip(METHODS, by_method, strict=True)},
  }
  settings = {
    "eigenvalues": EIGENVALUES.tolist(),
    "gamma": GAMMA,
    "rho": RHO,
    "lambd": 1.0,
    "step_power": STEP_POWER,
    "iterations": iterations,
    "random_starts": RANDOM_STARTS,
    "start_distance": START_DISTANCE,
    "plateau_window": WINDOW,
  }
  rec = common.record(
    claim=CLAIM,
    source=SOURCE,
    statement=STATEMENT,
    construction=__doc__.split("\n\n")[1],
    settings=settings,
    measured=measured,
    summary=summary,
    checks=checks,
    curves=curves,
    seconds=time.perf_counter() - start_s,
  )
  return common.ClaimResult(NAME, rec, {"by_method": by_method, "predicted": predicted})


def plot(result: common.ClaimResult, path: Any) -> None:
  """``||x_k - x*||`` against k (log-log), mean and min-max band over the random starts."""
  plt = report.pyplot()
  by_method = result.figure["by_method"]
  k = np.arange(by_method.shape[-1])
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  floor = 1e-17  # GD reaches x* to the last bit; a log axis cannot show 0
  for i, (label, runs) in enumerate(zip(METHODS, by_method, strict=True)):
    runs = np.maximum(runs[:, 1:], floor)
    report.line_with_band(ax, k[1:], runs.mean(axis=0), runs.min(axis=0), runs.max(axis=0), label, i)
  gammas = GAMMA / k[1:] ** STEP_POWER
  ax.plot(
    k[1:],
    period_two_radius(EIGENVALUES.max(), gammas, RHO),
    color="k",
    ls=":",
    lw=1,
    label=r"closed form $\bar{x}(h_{max})$ at $\gamma_k$ (diminishing)",
  )
  predicted = result.figure["predicted"]
  label = rf"closed form $\bar{{x}}(h_{{max}})$ = {predicted:.3g} (constant step)"
  report.reference_line(ax, predicted, label, color="0.4", style="--")
  report.band_legend(ax, f"min-max over {RANDOM_STARTS} starts")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_ylim(floor / 2, 10 * START_DISTANCE)
  ax.set_xlabel("iteration k")
  ax.set_ylabel(r"$\|x_k - x^*\|$ (below 1e-17 drawn at 1e-17)")
  common.title(
    ax,
    f"Claim 1 ({SOURCE}):\n{STATEMENT}\nquadratic, h in [1, 4], gamma = 1/h_max, "
    f"rho = {RHO}; diminishing gamma_k = gamma/(k+1)^{STEP_POWER}",
  )
  ax.legend(fontsize=6.5, loc="lower left")
  report.save(fig, path, dpi=90)
