"""Claim 4, a stand-in for Theorem 3.7 of Oikonomou & Loizou: on a non-convex finite sum, E||grad f(x_T)||
falls as T grows when the step size and the radius scale like 1/sqrt(T).

``f(x) = 1/m sum_i log(1 + (a_i . x - b_i)^2)``, m = 200 terms, d = 20, rows ``a_i ~ N(0, I/d)``,
``b ~ 2 N(0, I)`` (no ``x`` fits every term, and residuals beyond 1 make ``f`` non-convex), ``x_0 = 0``.
Batches of 4 indices drawn with replacement (``sampling.with_replacement``), the same batch for both
gradients. SAM (``lambda = 1``) with the constant step ``gamma = 16 / (L_max sqrt(T))`` (at most
``1/L_max`` for T >= 256; ``L_i = 2 ||a_i||^2``) and the constant radius ``rho = 1/sqrt(T)``, for
T = 2^8, 2^9, ...; ``||grad f(x_T)||`` (full gradient, last iterate) averaged over trials.

This is **not** Theorem 3.7's step-size rule: its statement is not in any text this project can read, so its
constants could not be verified. The reference rate is the standard one for SGD-type methods with
``gamma ~ 1/sqrt(T)`` on smooth non-convex functions, ``min_t E||grad f(x_t)||^2 = O(1/sqrt(T))``, i.e.
``E||grad f|| = O(T^(-1/4))``.
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
from optax_usam import sampling

NAME = "nonconvex"
CLAIM = (
  "Stand-in for Theorem 3.7 (non-convex): E||grad f(x_T)|| falls like T^(-1/4) or faster with "
  "gamma, rho ~ 1/sqrt(T)"
)
SOURCE = (
  "Oikonomou & Loizou, ICLR 2025, Theorem 3.7: a stand-in (not its constants, which could not be verified)"
)
STATEMENT = (
  "Unified SAM on a non-convex finite sum reaches E||grad f(x_T)|| < epsilon (Theorem 3.7, as the "
  "project's reference summarizes it); stand-in rate: E||grad f|| = O(T^(-1/4))."
)
SETTINGS = {
  "full": {"log2_iterations": tuple(range(8, 17)), "trials": 16},
  "quick": {"log2_iterations": tuple(range(8, 13)), "trials": 8},
}
M, D, TARGET_SCALE, BATCH = 200, 20, 2.0, 4
GAMMA_SCALE = 16.0  # gamma = GAMMA_SCALE / (L_max sqrt(T))
RHO_SCALE = 1.0  # rho = RHO_SCALE / sqrt(T)
REFERENCE_SLOPE = -0.25
SLOPE_TOLERANCE = 0.05


def per_example_loss(x: jax.Array, example: tuple[jax.Array, jax.Array]) -> jax.Array:
  row, target = example
  return jnp.log1p((row @ x - target) ** 2)


def simulate(
  a: np.ndarray, b: np.ndarray, iterations: tuple[int, ...], keys: jax.Array, gamma_scale: float
) -> tuple[np.ndarray, np.ndarray]:
  """``||grad f(x_T)||`` and ``f(x_T)``, shape (len(iterations), trials): one program, T a traced bound."""
  data = (jnp.asarray(a), jnp.asarray(b))
  sampler = sampling.with_replacement(2.0 * np.sum(a**2, axis=1), BATCH)

  def full_loss(x: jax.Array) -> jax.Array:
    return jnp.mean(jax.vmap(per_example_loss, in_axes=(None, 0))(x, data))

  def one_run(
    steps: jax.Array, gamma: jax.Array, rho: jax.Array, key: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    tx = optax.chain(
      optax_usam.unified_sam(rho=lambda count: rho, lambd_schedule=1.0), optax.sgd(lambda count: gamma)
    )

    def body(k: jax.Array, carry: tuple[jax.Array, Any]) -> tuple[jax.Array, Any]:
      x, state = carry
      grad_fn = sampling.batch_grad_fn(per_example_loss, data, sampler.sample(jax.random.fold_in(key, k)))
      updates, state = tx.update(grad_fn(x), state, x, grad_fn=grad_fn)
      return optax.apply_updates(x, updates), state

    x0 = jnp.zeros(D)
    x, _ = jax.lax.fori_loop(0, steps, body, (x0, tx.init(x0)))
    return jnp.linalg.norm(jax.grad(full_loss)(x)), full_loss(x)

  runs = jax.jit(jax.vmap(one_run, in_axes=(None, None, None, 0)))
  norms, values = [], []
  for t in iterations:
    norm, value = runs(t, gamma_scale / np.sqrt(t), RHO_SCALE / np.sqrt(t), keys)
    norms.append(np.asarray(norm))
    values.append(np.asarray(value))
  return np.stack(norms), np.stack(values)


def run(quick: bool, seed: int) -> common.ClaimResult:
  start_s = time.perf_counter()
  settings = SETTINGS["quick" if quick else "full"]
  iterations = tuple(2**p for p in settings["log2_iterations"])
  trials = settings["trials"]
  rng = np.random.default_rng(seed + 3)
  a = rng.standard_normal((M, D)) / np.sqrt(D)
  b = TARGET_SCALE * rng.standard_normal(M)
  l_max = float(np.max(2.0 * np.sum(a**2, axis=1)))
  norms, values = simulate(
    a, b, iterations, jax.random.split(jax.random.key(seed + 3), trials), GAMMA_SCALE / l_max
  )
  mean_norm = norms.mean(axis=1)
  fitted = common.slope(iterations, mean_norm)
  checks = [
    Check(
      f"log-log slope of E||grad f(x_T)|| against T <= {REFERENCE_SLOPE} + {SLOPE_TOLERANCE} "
      "(at least the stand-in rate T^(-1/4), up to the tolerance)",
      fitted,
      fitted <= REFERENCE_SLOPE + SLOPE_TOLERANCE,
    )
  ]
  measured = {
    "iterations": list(iterations),
    "mean_grad_norm": mean_norm.tolist(),
    "std_grad_norm": norms.std(axis=1).tolist(),
    "mean_f": values.mean(axis=1).tolist(),
    "slope": fitted,
    "reference_slope": REFERENCE_SLOPE,
    "quantity": "E||grad f(x_T)||, last iterate",
  }
  summary = (
    f"E||grad f(x_T)|| (last iterate, {trials} trials) from {common.fmt(mean_norm[0])} at T = "
    f"{iterations[0]} to {common.fmt(mean_norm[-1])} at T = {iterations[-1]}: slope {fitted:.3f} "
    f"(stand-in rate {REFERENCE_SLOPE})"
  )
  rec = common.record(
    claim=CLAIM,
    source=SOURCE,
    statement=STATEMENT,
    construction=__doc__.split("\n\n")[1],
    settings={
      "m": M,
      "d": D,
      "target_scale": TARGET_SCALE,
      "batch_size": BATCH,
      "sampler": "with_replacement",
      "L_max": l_max,
      "gamma": f"{GAMMA_SCALE:g} / (L_max sqrt(T))",
      "rho": f"{RHO_SCALE:g} / sqrt(T)",
      "lambd": 1.0,
      "iterations": list(iterations),
      "trials": trials,
    },
    measured=measured,
    summary=summary,
    checks=checks,
    curves={},
    seconds=time.perf_counter() - start_s,
  )
  figure = {"iterations": np.asarray(iterations), "norms": norms, "slope": fitted}
  return common.ClaimResult(NAME, rec, figure)


def plot(result: common.ClaimResult, path: Any) -> None:
  """E||grad f(x_T)|| against T (log-log), +-1 std over trials, the fit and the T^(-1/4) reference."""
  plt = report.pyplot()
  t, norms = result.figure["iterations"], result.figure["norms"]
  mean = norms.mean(axis=1)
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  ax.errorbar(
    t, mean, yerr=norms.std(axis=1), fmt="o", color="C0", capsize=3, label=r"SAM: mean $\|\nabla f(x_T)\|$"
  )
  fit = np.polyfit(np.log(t), np.log(mean), 1)
  ax.plot(
    t,
    np.exp(np.polyval(fit, np.log(t))),
    color="C0",
    lw=1,
    label=f"least-squares fit: slope {result.figure['slope']:.3f}",
  )
  ax.plot(
    t,
    mean[0] * (t / t[0]) ** REFERENCE_SLOPE,
    color="k",
    ls=":",
    lw=1,
    label=r"stand-in rate $T^{-1/4}$ (through the first point)",
  )
  report.error_bars_legend(ax, f"+-1 std over {norms.shape[1]} trials")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel(r"iterations T  ($\gamma = 16/(L_{max}\sqrt{T})$, $\rho = 1/\sqrt{T}$)")
  ax.set_ylabel(r"$E\|\nabla f(x_T)\|$")
  ax.legend(fontsize=7)
  common.title(
    ax,
    f"Claim 4: {CLAIM}.\nSource: {SOURCE}.\nf = mean of log(1 + (a_i.x - b_i)^2), m = {M}, "
    f"d = {D}, batch {BATCH}",
    90,
  )
  report.save(fig, path, dpi=90)
