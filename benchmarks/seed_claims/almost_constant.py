"""Claim 2 (Khanh et al., Remark 3.6): an almost constant radius ``rho_k = C / k^p`` behaves like ``rho = C``.

``f(x) = sum_{i=1}^n log(1 + (A x - b)_i^2)`` for n = 2, 20, 50, 100, with ``A`` an n x n matrix of
independent N(0, 1/n) entries and ``b`` standard normal, several draws (instances) per n, started at
``x_0 = 0``. Full gradients. Every method takes the diminishing step ``gamma_k = gamma_0 / (k+1)`` with
``gamma_0 = 2 / L`` and ``L = 2 ||A||_2^2`` (``log(1 + r^2)`` has second derivative at most 2): GD
(``unified_sam`` with ``rho = 0``), SAM (``lambda = 1``) with the constant radius ``C = 0.2``, and SAM
with the almost constant radius ``C / (k+1)^p``, ``p = 0.001``, from
``theory.almost_constant_schedules(gamma_0, C, step_power=1, radius_power=0.001)`` (its defaults).
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

NAME = "almost_constant"
CLAIM = "An almost constant radius C/k^p behaves like a constant one (Remark 3.6)"
SOURCE = "Khanh et al., NeurIPS 2024, Remark 3.6 and figure of p. 25 (caption in the seed summary)"
STATEMENT = (
  "On f(x) = sum_i log(1 + (Ax - b)_i^2), n = 2, 20, 50, 100, SAM with the almost constant radius "
  "rho_k = C/k^p performs like SAM with the constant radius rho = C (GD for comparison)."
)
SETTINGS = {"full": {"iterations": 10_000, "instances": 5}, "quick": {"iterations": 2_000, "instances": 3}}
SIZES = (2, 20, 50, 100)
C = 0.2
P = 1e-3
STEP_POWER = 1.0
GAMMA_TIMES_L = 2.0
METHODS = ("GD", "SAM, constant radius C", "SAM, almost constant radius C/k^p")
TOLERANCE = 0.05  # |f(almost constant) / f(constant) - 1| allowed, per instance
TAIL = 0.1  # the fraction of the run whose mean f is compared


def simulate(a: np.ndarray, b: np.ndarray, gamma0: np.ndarray, iterations: int) -> np.ndarray:
  """``f(x_k)`` for k = 0..iterations, shape (methods, instances, iterations + 1), one vmapped scan."""
  # Built once, concretely, so the library checks the pair (step_power + radius_power > 1); each run
  # scales its steps by its own gamma_0.
  schedules = theory.almost_constant_schedules(1.0, C, step_power=STEP_POWER, radius_power=P)

  def one_run(a_: jax.Array, b_: jax.Array, gamma0_: jax.Array, method: jax.Array) -> jax.Array:
    def loss(x: jax.Array) -> jax.Array:
      return jnp.sum(jnp.log1p((a_ @ x - b_) ** 2))

    grad = jax.grad(loss)
    rho = lambda count: jnp.where(method == 0, 0.0, jnp.where(method == 2, schedules.rho(count), C))
    tx = optax.chain(
      optax_usam.unified_sam(rho=rho, lambd_schedule=1.0),
      optax.sgd(lambda count: gamma0_ * schedules.gamma(count)),
    )

    def body(carry: tuple[jax.Array, Any], _: None) -> tuple[tuple[jax.Array, Any], jax.Array]:
      x, state = carry
      updates, state = tx.update(grad(x), state, x, grad_fn=grad)
      x = optax.apply_updates(x, updates)
      return (x, state), loss(x)

    x0 = jnp.zeros(b_.shape)
    _, values = jax.lax.scan(body, (x0, tx.init(x0)), None, length=iterations)
    return jnp.concatenate([loss(x0)[None], values])

  per_instance = jax.vmap(one_run, in_axes=(0, 0, 0, None))
  per_method = jax.vmap(per_instance, in_axes=(None, None, None, 0))
  args = (jnp.asarray(a), jnp.asarray(b), jnp.asarray(gamma0), jnp.arange(len(METHODS)))
  return np.asarray(jax.jit(per_method)(*args))


def run(quick: bool, seed: int) -> common.ClaimResult:
  start_s = time.perf_counter()
  settings = SETTINGS["quick" if quick else "full"]
  iterations, instances = settings["iterations"], settings["instances"]
  rng = np.random.default_rng(seed + 1)
  values: dict[int, np.ndarray] = {}
  gammas: dict[int, list[float]] = {}
  for n in SIZES:
    a = rng.standard_normal((instances, n, n)) / np.sqrt(n)
    b = rng.standard_normal((instances, n))
    lipschitz = 2.0 * np.linalg.norm(a, ord=2, axis=(1, 2)) ** 2
    gammas[n] = (GAMMA_TIMES_L / lipschitz).tolist()
    values[n] = simulate(a, b, GAMMA_TIMES_L / lipschitz, iterations)

  tail = max(1, int(TAIL * iterations))
  checks, measured, ratios = [], {}, []
  for n in SIZES:
    gd, constant, almost = values[n][:, :, -tail:].mean(axis=2)
    ratio = almost / constant
    ratios.append(float(ratio.mean()))
    measured[f"n={n}"] = {
      "tail_mean_f": {m: v.tolist() for m, v in zip(METHODS, (gd, constant, almost), strict=True)},
      "almost_over_constant": ratio.tolist(),
      "constant_over_gd": (constant / gd).tolist(),
      "almost_over_gd": (almost / gd).tolist(),
    }
    worst = float(np.max(np.abs(ratio - 1)))
    checks.append(
      Check(
        f"n = {n}: |f_almost / f_constant - 1| <= {TOLERANCE} (mean f over the last "
        f"{TAIL:.0%} of iterations, worst instance)",
        worst,
        worst <= TOLERANCE,
      )
    )
  versus_gd = [float(np.mean(measured[f"n={n}"]["constant_over_gd"])) for n in SIZES]
  summary = (
    f"f over the last {TAIL:.0%} of {iterations} iterations, almost constant / constant: "
    + ", ".join(f"{r:.4f}" for r in ratios)
    + f" (n = {', '.join(map(str, SIZES))}); "
    "constant / GD: " + ", ".join(f"{r:.3f}" for r in versus_gd)
  )
  idx = common.log_indices(iterations)
  curves = {
    "iterations": idx.tolist(),
    **{
      f"n={n}": {
        m: {
          "median": common.rounded(np.median(v[:, idx], axis=0)),
          "min": common.rounded(v[:, idx].min(axis=0)),
          "max": common.rounded(v[:, idx].max(axis=0)),
        }
        for m, v in zip(METHODS, values[n], strict=True)
      }
      for n in SIZES
    },
  }
  rec = common.record(
    claim=CLAIM,
    source=SOURCE,
    statement=STATEMENT,
    construction=__doc__.split("\n\n")[1],
    settings={
      "sizes": list(SIZES),
      "C": C,
      "p": P,
      "step_power": STEP_POWER,
      "gamma_0": "2 / L, L = 2 ||A||_2^2",
      "gamma_0_per_instance": gammas,
      "lambd": 1.0,
      "x0": 0.0,
      "iterations": iterations,
      "instances": instances,
      "tail_fraction": TAIL,
    },
    measured=measured,
    summary=summary,
    checks=checks,
    curves=curves,
    seconds=time.perf_counter() - start_s,
  )
  return common.ClaimResult(NAME, rec, {"values": values})


def plot(result: common.ClaimResult, path: Any) -> None:
  """``f(x_k)`` against k for each n (log-log), median and min-max band over the instances."""
  plt = report.pyplot()
  values = result.figure["values"]
  fig, axes = plt.subplots(2, 2, figsize=(9, 6.6))
  for ax, n in zip(axes.flat, SIZES, strict=True):
    k = np.arange(1, values[n].shape[-1])
    for i, (label, runs) in enumerate(zip(METHODS, values[n], strict=True)):
      runs = runs[:, 1:]
      report.line_with_band(ax, k, np.median(runs, axis=0), runs.min(axis=0), runs.max(axis=0), label, i)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("iteration k")
    ax.set_ylabel(r"$f(x_k)$")
    common.title(ax, f"n = {n}")
  report.band_legend(axes.flat[0], f"min-max over {values[SIZES[0]].shape[1]} instances (lines: median)")
  fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=7)
  fig.suptitle(
    f"Claim 2 ({SOURCE}):\n{CLAIM}. C = {C}, p = {P}, gamma_k = (2/L)/(k+1) for all methods", fontsize=8
  )
  report.save(fig, path, dpi=90, rect=(0, 0.05, 1, 1))
