"""Section 4.1 of Oikonomou & Loizou (ICLR 2025), reproduced with optax_usam.

Ridge and logistic regression (n = d = 100, data matrix with condition number
10, regularization 3/n, batch size 1, 5 trials), three figures each:

* ``lambda_sweep``: lambda in {0, 0.1, ..., 1}, Theorem 3.2's constant steps;
* ``steps``: constant vs Theorem 3.5's decreasing steps, lambda in {0, 0.5, 1};
* ``sampling``: uniform vs (reweighted, unbiased) importance sampling, lambda in {0, 0.5, 1}.

Every curve runs the library's ``unified_sam`` chained with ``optax.sgd``,
with step sizes from ``optax_usam.theory`` and batches from
``optax_usam.sampling``, under ``lax.scan`` and vmapped over curves and
trials, in float64. Plots (f(x_t) - f*)/(f(x_0) - f*) per epoch (n
iterations), mean and +-1 std over trials, and writes
``benchmarks/results/theory/theory.json`` and ``theory_<problem>_<figure>.png``: the full run only; any
other run (``--quick``, other epochs, trials, n or seed, ``--no-plots``) writes to
``benchmarks/results/theory/quick/`` unless ``--out`` says otherwise, so a short run never replaces the
committed results.

  python -m benchmarks.theory                 # paper lengths
  python -m benchmarks.theory --quick         # a short run
  python -m benchmarks.theory --numpy-baseline 20000   # also time a plain NumPy loop
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_usam
from benchmarks import report
from examples.train import cli
from optax_usam import sampling, theory

RESULTS = report.results_dir("theory")
LAMBDA_SWEEP = tuple(round(0.1 * i, 1) for i in range(11))
LAMBDA_SUBSET = (0.0, 0.5, 1.0)
GD_STEPS = 20_000
UNROLL = 1
PAPER_EPOCHS = 10_000  # the official notebook's ridge runs: 10,000 epochs of n = 100 iterations
# The run whose outputs are committed under RESULTS (and quoted in the README and docs/theory.md).
FULL_RUN = {"epochs": PAPER_EPOCHS, "trials": 5, "n": 100, "seed": 0}


class Problem(NamedTuple):
  """A finite sum f = mean_i f_i + reg/2 ||x||^2 with its constants."""

  name: str
  features: np.ndarray  # (n, d)
  targets: np.ndarray  # (n,)
  reg: float
  smoothness: np.ndarray  # L_i
  L: float  # smoothness of f
  mu: float  # PL (strong convexity) constant of f
  per_example_loss: Callable[[jax.Array, tuple[jax.Array, jax.Array]], jax.Array]
  numpy_grad: Callable[[np.ndarray, int], np.ndarray]  # (x, i) -> grad f_i(x), for the baseline
  numpy_loss: Callable[[np.ndarray], float]  # x -> f(x), for the baseline

  @property
  def data(self) -> tuple[np.ndarray, np.ndarray]:
    return self.features, self.targets

  def full_loss(self, x: jax.Array) -> jax.Array:
    losses = jax.vmap(self.per_example_loss, in_axes=(None, 0))(x, self.data)
    return jnp.mean(losses)


def spd_matrix(rng: np.random.Generator, n: int, cond: float) -> np.ndarray:
  """Symmetric positive definite, eigenvalues log-spaced in [cond^-1/2, cond^1/2], random eigenvectors.

  The construction of the official experiments (its condition number is ``cond``).
  """
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  eigs = np.logspace(-0.5, 0.5, n, base=cond)
  return (q * eigs) @ q.T


def ridge(rng: np.random.Generator, n: int, d: int, cond: float, reg: float) -> Problem:
  """f_i(x) = (a_i.x - b_i)^2 / 2 + reg/2 ||x||^2 with consistent targets b = A x_true."""
  if n != d:
    raise ValueError("the paper's construction needs n == d")
  a = spd_matrix(rng, n, cond)
  b = a @ rng.standard_normal(d)
  hess_eigs = np.linalg.eigvalsh(a.T @ a / n)

  def loss(x: jax.Array, example: tuple[jax.Array, jax.Array]) -> jax.Array:
    row, target = example
    return 0.5 * (row @ x - target) ** 2 + 0.5 * reg * x @ x

  def numpy_grad(x: np.ndarray, i: int) -> np.ndarray:
    return a[i] * (a[i] @ x - b[i]) + reg * x

  def numpy_loss(x: np.ndarray) -> float:
    return 0.5 * np.mean((a @ x - b) ** 2) + 0.5 * reg * x @ x

  return Problem(
    "ridge",
    a,
    b,
    reg,
    np.sum(a**2, axis=1) + reg,
    float(hess_eigs.max() + reg),
    float(hess_eigs.min() + reg),
    loss,
    numpy_grad,
    numpy_loss,
  )


def logistic(rng: np.random.Generator, n: int, d: int, cond: float, reg: float) -> Problem:
  """f_i(x) = log(1 + exp(-y_i a_i.x)) + reg/2 ||x||^2, labels y_i = +-1 uniformly at random.

  (The official script scales the log-loss by 1/2 and regularizes with
  ||x|| instead of ||x||^2 in f but not in its gradient; this is the standard
  objective, with mu = reg.)
  """
  a = spd_matrix(rng, n, cond)
  y = rng.choice(np.array([-1.0, 1.0]), size=n)
  top = np.linalg.eigvalsh(a.T @ a / n).max()

  def loss(x: jax.Array, example: tuple[jax.Array, jax.Array]) -> jax.Array:
    row, label = example
    return jnp.logaddexp(0.0, -label * (row @ x)) + 0.5 * reg * x @ x

  def numpy_grad(x: np.ndarray, i: int) -> np.ndarray:
    return -y[i] * a[i] / (1.0 + np.exp(y[i] * (a[i] @ x))) + reg * x

  def numpy_loss(x: np.ndarray) -> float:
    return np.mean(np.logaddexp(0.0, -y * (a @ x))) + 0.5 * reg * x @ x

  return Problem(
    "logistic",
    a,
    y,
    reg,
    0.25 * np.sum(a**2, axis=1) + reg,
    float(0.25 * top + reg),
    reg,
    loss,
    numpy_grad,
    numpy_loss,
  )


def minimum_value(problem: Problem, x0: jax.Array) -> float:
  """f* from GD_STEPS full-batch gradient steps at 1/L (as the paper does)."""
  grad = jax.grad(problem.full_loss)

  def body(x: jax.Array, _: None) -> tuple[jax.Array, None]:
    return x - grad(x) / problem.L, None

  x, _ = jax.lax.scan(body, x0, None, length=GD_STEPS)
  return float(problem.full_loss(x))


class Curves(NamedTuple):
  """One entry per curve, all simulated by one compiled program (vmapped over curves and trials)."""

  lambdas: np.ndarray
  decreasing: np.ndarray  # bool: Theorem 3.5's schedules instead of Theorem 3.2's constants
  importance: np.ndarray  # bool: importance instead of uniform sampling


def simulate(
  problem: Problem,
  curves: Curves,
  x0: jax.Array,
  epochs: int,
  trials: int,
  key: jax.Array,
  unroll: int = UNROLL,
) -> tuple[np.ndarray, float, float]:
  """Full losses f(x_t) at every epoch, shape (curves, trials, epochs + 1), compile and run seconds."""
  n = problem.features.shape[0]
  samplers = (sampling.uniform(problem.smoothness), sampling.importance(problem.smoothness))
  l_max = float(problem.smoothness.max())
  steps = [
    theory.pl_constant_steps(problem.mu, l_max, samplers[int(imp)].A, samplers[int(imp)].B, float(lam))
    for lam, imp in zip(curves.lambdas, curves.importance, strict=True)
  ]
  rhos = jnp.asarray([s.rho for s in steps])
  gammas = jnp.asarray([s.gamma for s in steps])

  def one_run(
    lam: jax.Array,
    rho: jax.Array,
    gamma: jax.Array,
    decreasing: jax.Array,
    importance: jax.Array,
    run_key: jax.Array,
  ) -> jax.Array:
    dec = theory.pl_decreasing_schedules(rho, gamma, problem.mu)
    # Closing over traced hyperparameters is what lets one compiled program cover every curve.
    tx = optax.chain(
      optax_usam.unified_sam(
        rho=lambda count: jnp.where(decreasing, dec.rho(count), rho),
        lambd_schedule=lambda count: lam,
      ),
      optax.sgd(learning_rate=lambda count: jnp.where(decreasing, dec.gamma(count), gamma)),
    )

    def step(carry: tuple[jax.Array, Any], batch: sampling.Batch) -> tuple[tuple[jax.Array, Any], None]:
      x, opt_state = carry
      grad_fn = sampling.batch_grad_fn(problem.per_example_loss, problem.data, batch)
      updates, opt_state = tx.update(grad_fn(x), opt_state, x, grad_fn=grad_fn)
      return (optax.apply_updates(x, updates), opt_state), None

    def epoch(carry: tuple[jax.Array, Any], epoch_key: jax.Array) -> tuple[tuple[jax.Array, Any], jax.Array]:
      keys = jax.random.split(epoch_key, n)
      uniform, imp = (jax.vmap(s.sample)(keys) for s in samplers)
      batches = jax.tree.map(lambda u, i: jnp.where(importance, i, u), uniform, imp)
      carry, _ = jax.lax.scan(step, carry, batches, unroll=unroll)
      return carry, problem.full_loss(carry[0])

    _, losses = jax.lax.scan(epoch, (x0, tx.init(x0)), jax.random.split(run_key, epochs))
    return jnp.concatenate([problem.full_loss(x0)[None], losses])

  keys = jax.random.split(key, (len(curves.lambdas), trials))
  per_trial = jax.vmap(one_run, in_axes=(None, None, None, None, None, 0))
  args = (
    jnp.asarray(curves.lambdas),
    rhos,
    gammas,
    jnp.asarray(curves.decreasing),
    jnp.asarray(curves.importance),
    keys,
  )
  start = time.perf_counter()
  runs = jax.jit(jax.vmap(per_trial)).lower(*args).compile()
  compiled = time.perf_counter()
  losses = np.asarray(runs(*args))
  return losses, compiled - start, time.perf_counter() - compiled


def numpy_loop(
  problem: Problem, x0: np.ndarray, lam: float, iterations: int, seed: int, style: str, run_length: int
) -> float:
  """Seconds per iteration of one run of the same algorithm as a plain NumPy loop (uniform, constant steps).

  ``style='lean'``: one generator draw, one gradient evaluation per point, the full loss once per epoch.
  ``style='official'``: the structure of the official NumPy experiments (``np.random.choice`` over
  ``range(n)`` each step, batch-indexed gradients, the gradient at x computed twice, every iterate kept,
  a membership test of k + 1 in the array of iterations recorded by a ``run_length`` run).
  """
  l_max = float(problem.smoothness.max())
  steps = theory.pl_constant_steps(problem.mu, l_max, l_max, 0.0, lam)
  n = problem.features.shape[0]
  a, b, reg = problem.features, problem.targets, problem.reg
  x = x0.copy()
  if style == "lean":
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for k in range(iterations):
      i = rng.integers(n)
      g = problem.numpy_grad(x, i)
      norm = np.linalg.norm(g)
      ascent = x + steps.rho * (1 - lam + lam / (norm + 1e-12)) * g
      x = x - steps.gamma * problem.numpy_grad(ascent, i)
      if (k + 1) % n == 0:  # the per-epoch full loss, as the scanned version records it
        problem.numpy_loss(x)
    return (time.perf_counter() - start) / iterations

  def grad(point: np.ndarray, batch: np.ndarray) -> np.ndarray:
    return a[batch].T @ (a[batch] @ point - b[batch]) / batch.shape[0] + reg * point

  np.random.seed(seed)
  recorded = np.arange(0, run_length + 1, n)
  history = [x]
  start = time.perf_counter()
  for k in range(iterations):
    batch = np.random.choice(a=range(n), size=1)
    norm = np.linalg.norm(grad(history[k], batch))
    ascent = history[k] + steps.rho * (1 - lam + lam / (norm + 1e-12)) * grad(history[k], batch)
    history.append(history[k] - steps.gamma * grad(ascent, batch))
    if k + 1 in recorded:
      problem.numpy_loss(history[k + 1])
  return (time.perf_counter() - start) / iterations


def curve_stats(losses: np.ndarray, f_star: float) -> tuple[np.ndarray, np.ndarray]:
  rel = (losses - f_star) / (losses[:, :1] - f_star)
  return rel.mean(axis=0), rel.std(axis=0)


def first_below(mean: np.ndarray, level: float, n: int) -> int | None:
  """Iterations until the mean relative suboptimality first drops below ``level`` (epoch resolution)."""
  below = np.flatnonzero(mean < level)
  return int(below[0]) * n if below.size else None


def plot(
  path: Path, title: str, lines: list[tuple[str, np.ndarray, np.ndarray, Any, str]], n: int, trials: int
) -> None:
  """One figure: (label, mean, std, color, linestyle) per curve, +-1 std band, log y axis."""
  plt = report.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for i, (label, mean, std, color, style) in enumerate(lines):
    iters = np.arange(mean.size) * n
    # The band's lower edge is clipped so the log axis keeps it.
    lower = np.maximum(mean - std, mean * 1e-2)
    report.line_with_band(ax, iters, mean, lower, mean + std, label, i, color, style)
  report.band_legend(ax, f"+-1 std over {trials} trials")
  ax.set_yscale("log")
  ax.set_xlabel("iterations")
  ax.set_ylabel(r"$(f(x_t)-f^*)/(f(x_0)-f^*)$")
  ax.set_title(title, fontsize=9)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  report.save(fig, path, dpi=80)


def run(args: argparse.Namespace) -> dict[str, Any]:
  rng = np.random.default_rng(args.seed)
  key = jax.random.key(args.seed)
  records: list[dict[str, Any]] = []
  timing: dict[str, Any] = {}
  total_iterations = 0
  compute_s = 0.0
  numpy_per_iter: dict[str, list[float]] = {"lean": [], "official": []}
  baseline = ridge(np.random.default_rng(args.seed), args.n, args.n, 10.0, 3.0 / args.n)

  def time_numpy() -> None:
    # Interleaved with the JAX runs so both see the same machine load; the median is reported.
    if args.numpy_baseline:
      x0 = np.random.default_rng(args.seed).standard_normal(args.n)
      for style, samples in numpy_per_iter.items():
        samples.append(
          numpy_loop(baseline, x0, 0.5, args.numpy_baseline, args.seed, style, args.epochs * args.n)
        )

  import matplotlib

  cmap = matplotlib.colormaps["viridis"]
  start_all = time.perf_counter()
  for make in (ridge, logistic):
    time_numpy()
    problem = make(rng, args.n, args.n, 10.0, 3.0 / args.n)
    x0 = jnp.asarray(rng.standard_normal(args.n))
    start = time.perf_counter()
    f_star = minimum_value(problem, x0)
    compute_s += time.perf_counter() - start
    members = (
      [("constant", "uniform", lam) for lam in LAMBDA_SWEEP]
      + [("decreasing", "uniform", lam) for lam in LAMBDA_SUBSET]
      + [("constant", "importance", lam) for lam in LAMBDA_SUBSET]
    )
    curves = Curves(
      np.array([lam for _, _, lam in members]),
      np.array([steps == "decreasing" for steps, _, _ in members]),
      np.array([name == "importance" for _, name, _ in members]),
    )
    key, sub = jax.random.split(key)
    losses, compile_s, run_s = simulate(problem, curves, x0, args.epochs, args.trials, sub)
    seconds = compile_s + run_s
    compute_s += seconds
    iterations = len(members) * args.trials * args.epochs * args.n
    total_iterations += iterations
    timing[problem.name] = {
      "curves": len(members),
      "trials": args.trials,
      "iterations": iterations,
      "compile_s": round(compile_s, 2),
      "run_s": round(run_s, 2),
    }
    stats = {m: (*curve_stats(curve, f_star), seconds) for m, curve in zip(members, losses, strict=True)}
    print(
      f"{problem.name:8s} {len(members)} curves x {args.trials} trials x {args.epochs * args.n} "
      f"iterations: compile {compile_s:.1f} s, run {run_s:.1f} s",
      flush=True,
    )

    figures = {
      "lambda_sweep": [("constant", "uniform", lam) for lam in LAMBDA_SWEEP],
      "steps": [(s, "uniform", lam) for lam in LAMBDA_SUBSET for s in ("constant", "decreasing")],
      "sampling": [("constant", s, lam) for lam in LAMBDA_SUBSET for s in ("uniform", "importance")],
    }
    for figure, figure_members in figures.items():
      lines = []
      for steps, sampler_name, lam in figure_members:
        mean, std, seconds = stats[steps, sampler_name, lam]
        if figure == "lambda_sweep":
          lines.append((f"lambda={lam}", mean, std, cmap(lam * 0.9), "-"))
        else:
          variant = steps if figure == "steps" else sampler_name
          style = "-" if variant in ("constant", "uniform") else "--"
          lines.append((f"lambda={lam}, {variant}", mean, std, cmap(lam * 0.9), style))
        records.append(
          {
            "figure": figure,
            "problem": problem.name,
            "lambd": lam,
            "steps": steps,
            "sampling": sampler_name,
            "iterations": args.epochs * args.n,
            "final_rel_subopt_mean": float(mean[-1]),
            "final_rel_subopt_std": float(std[-1]),
            "iterations_to_rel_subopt": {
              f"{level:.0e}": first_below(mean, level, args.n) for level in (1e-2, 1e-3, 1e-4)
            },
            "wall_time_s": round(seconds, 3),
          }
        )
      if not args.no_plots:
        title = (
          f"{problem.name} ({figure}): n=d={args.n}, cond 10, reg 3/n, batch 1, {args.trials} trials\n"
          f"mu={problem.mu:.3g}, L={problem.L:.3g}, L_max={problem.smoothness.max():.3g}, "
          f"L_avg={problem.smoothness.mean():.3g}; Theorem 3.2/3.5 step sizes"
        )
        plot(args.out / f"theory_{problem.name}_{figure}.png", title, lines, args.n, args.trials)
  time_numpy()
  timing["script_wall_s"] = round(time.perf_counter() - start_all, 2)
  timing["jax_total_s"] = round(compute_s, 2)
  timing["jax_iterations"] = total_iterations
  timing["jax_us_per_iteration"] = round(1e6 * compute_s / total_iterations, 4)
  if args.numpy_baseline:
    timing["numpy_iterations_timed"] = args.numpy_baseline
    for style, samples in numpy_per_iter.items():
      per_iter = float(np.median(samples))
      timing[f"numpy_{style}_us_per_iteration_samples"] = [round(1e6 * t, 2) for t in samples]
      timing[f"numpy_{style}_us_per_iteration"] = round(1e6 * per_iter, 2)
      timing[f"numpy_{style}_estimated_total_s"] = round(per_iter * total_iterations, 1)
      timing[f"speedup_vs_numpy_{style}"] = round(per_iter * total_iterations / compute_s, 1)
  return {
    "config": {
      "n": args.n,
      "d": args.n,
      "cond": 10.0,
      "reg": 3.0 / args.n,
      "batch_size": 1,
      "epochs": args.epochs,
      "trials": args.trials,
      "seed": args.seed,
      "quick": args.quick,
    },
    "machine": report.machine(),
    "timing": timing,
    "records": records,
  }


def parser() -> cli.Parser:
  p = cli.Parser(prog="theory", description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="short run (50 epochs, 2 trials)")
  p.add_argument("--epochs", type=cli.positive_int, default=None, help="epochs of n iterations")
  p.add_argument("--trials", type=cli.positive_int, default=None)
  p.add_argument("--n", type=cli.positive_int, default=100, help="n = d")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--numpy-baseline",
    type=cli.positive_int,
    default=0,
    metavar="ITERATIONS",
    help="also time ITERATIONS of a plain NumPy loop of one curve",
  )
  p.add_argument(
    "--out",
    type=Path,
    default=None,
    help="default: benchmarks/results/theory for the full run, its quick/ otherwise",
  )
  p.add_argument("--no-plots", action="store_true")
  return p


def output_dir(args: argparse.Namespace) -> Path:
  return report.output_dir(args, FULL_RUN, RESULTS)


def main(argv: Sequence[str] | None = None) -> None:
  p = parser()
  with cli.exit_on_error(p.prog):
    args = p.parse_args(argv)
    if args.n < 2:
      p.error(f"--n must be at least 2, got {args.n}")
  args.epochs = args.epochs or (50 if args.quick else PAPER_EPOCHS)
  args.trials = args.trials or (2 if args.quick else 5)
  args.out = output_dir(args)
  with jax.enable_x64(True):
    result = run(args)
  path = report.write_json(args.out / "theory.json", result)
  print(json.dumps(result["timing"]))
  print(f"{'problem':9s}{'figure':14s}{'steps':11s}{'sampling':11s}{'lambda':>7s}{'final rel subopt':>26s}")
  for r in result["records"]:
    if r["figure"] != "lambda_sweep" or r["lambd"] in LAMBDA_SUBSET:
      print(
        f"{r['problem']:9s}{r['figure']:14s}{r['steps']:11s}{r['sampling']:11s}{r['lambd']:7.1f}"
        f"{r['final_rel_subopt_mean']:15.3e} +- {r['final_rel_subopt_std']:.1e}"
      )
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
