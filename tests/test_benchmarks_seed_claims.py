"""``python -m benchmarks.seed_claims``: its short run's verdicts, its simulations against NumPy loops written
here, its output folder rule and its one-line argument errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from benchmarks.seed_claims import almost_constant, cli, common, neighbourhood, quadratic
from tests import numpy_reference as ref

CLAIM_NAMES = ("quadratic", "almost_constant", "neighbourhood", "nonconvex")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
  """The whole ``--quick`` run once (with its figures), into a temporary folder."""
  out = tmp_path_factory.mktemp("seed_claims")
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    cli.main(["--quick", "--out", str(out)])
  return out, json.loads((out / "seed_claims.json").read_text()), printed.getvalue()


@pytest.mark.parametrize("name", CLAIM_NAMES)
def test_every_claim_holds_in_the_quick_run(quick_run: tuple[Path, dict[str, Any], str], name: str) -> None:
  out, data, _ = quick_run
  record = data["claims"][name]
  failed = [c["rule"] for c in record["checks"] if not c["passed"]]
  assert record["verdict"] == "holds" and not failed, failed
  assert (out / f"seed_claims_{name}.png").stat().st_size > 10_000


def test_the_quick_run_writes_its_table_and_machine(quick_run: tuple[Path, dict[str, Any], str]) -> None:
  out, data, printed = quick_run
  assert data["config"] == {"quick": True, "seed": 0, "claims": list(CLAIM_NAMES)}
  assert {"cpu", "jax", "backend"} <= set(data["machine"])
  table = data["verdict_table"].splitlines()
  assert table[0] == "| claim | source | measured | verdict |" and len(table) == 2 + len(CLAIM_NAMES)
  # Escaped pipes keep four columns in every row.
  assert all(row.replace("\\|", "").count("|") == 5 for row in table)
  assert data["verdict_table"] in printed and f"wrote {out / 'seed_claims.json'}" in printed


def test_the_quick_quadratic_plateau_is_the_closed_form(quick_run: tuple[Path, dict[str, Any], str]) -> None:
  measured = quick_run[1]["claims"]["quadratic"]["measured"]
  settings = quick_run[1]["claims"]["quadratic"]["settings"]
  h, gamma, rho = max(settings["eigenvalues"]), settings["gamma"], settings["rho"]
  xbar = gamma * h * rho / (2 - gamma * h)  # Section 4 of the reference, lambda = 1
  np.testing.assert_allclose(measured["sam_constant_plateau"], xbar, rtol=1e-9)
  # With diminishing steps the distance follows the orbit at the current step, gamma_T = gamma / T^0.5.
  gamma_t = gamma / settings["iterations"] ** settings["step_power"]
  orbit = gamma_t * h * rho / (2 - gamma_t * h)
  np.testing.assert_allclose(measured["sam_diminishing_final_distance"], orbit, rtol=1e-3)


def test_quadratic_simulation_matches_a_numpy_loop() -> None:
  steps = 60
  rng = np.random.default_rng(5)
  x_star = rng.standard_normal(quadratic.EIGENVALUES.size)
  starts = x_star + rng.standard_normal((3, x_star.size))
  with jax.enable_x64(True):
    dist = quadratic.simulate(x_star, starts, np.arange(3), steps)
  k = np.arange(steps)
  gamma, rho = quadratic.GAMMA, quadratic.RHO
  schedules = [
    (np.full(steps, gamma), np.zeros(steps)),
    (np.full(steps, gamma), np.full(steps, rho)),
    (gamma / (k + 1) ** quadratic.STEP_POWER, np.full(steps, rho)),
  ]  # GD, constant, diminishing
  for start, row, (gammas, rhos) in zip(starts, dist, schedules, strict=True):
    xs = ref.sam_gd(lambda x: quadratic.EIGENVALUES * (x - x_star), start, gammas, rhos)
    np.testing.assert_allclose(row, [np.linalg.norm(x - x_star) for x in xs], rtol=1e-10, atol=1e-14)


def test_almost_constant_simulation_matches_a_numpy_loop() -> None:
  steps, n = 40, 5
  rng = np.random.default_rng(6)
  a, b = rng.standard_normal((1, n, n)) / np.sqrt(n), rng.standard_normal((1, n))
  gamma0 = 0.3
  with jax.enable_x64(True):
    values = almost_constant.simulate(a, b, np.array([gamma0]), steps)[:, 0]

  def f(x: np.ndarray) -> float:
    return float(np.sum(np.log1p((a[0] @ x - b[0]) ** 2)))

  def grad(x: np.ndarray) -> np.ndarray:
    r = a[0] @ x - b[0]
    return a[0].T @ (2 * r / (1 + r**2))

  k = np.arange(steps)
  gammas = gamma0 / (k + 1)
  radii = [np.zeros(steps), np.full(steps, 0.2), 0.2 / (k + 1) ** 1e-3]  # GD, constant, almost constant
  for row, rhos in zip(values, radii, strict=True):
    np.testing.assert_allclose(row, [f(x) for x in ref.sam_gd(grad, np.zeros(n), gammas, rhos)], rtol=1e-10)


def test_deterministic_ridge_simulation_matches_a_numpy_loop() -> None:
  problem = neighbourhood.Ridge(np.random.default_rng(7))
  steps, rho = 2 * neighbourhood.RECORDS, 0.05
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(0), (1, 1))
    subopt = neighbourhood.simulate(problem, np.ones(1), np.array([rho]), keys, steps, stochastic=False)[0, 0]
  a, b, reg = problem.a, problem.b, neighbourhood.REG
  hessian = a.T @ a / a.shape[0] + reg * np.eye(a.shape[1])
  x_star = np.linalg.solve(hessian, a.T @ b / a.shape[0])
  k = np.arange(steps)
  gammas = np.minimum(problem.gamma, (2 * k + 1) / ((k + 1) ** 2 * problem.mu))  # Theorem 3.5's steps
  xs = ref.sam_gd(lambda x: hessian @ (x - x_star), np.zeros(a.shape[1]), gammas, np.full(steps, rho))
  expected = [0.5 * (x - x_star) @ hessian @ (x - x_star) for x in xs[2::2]]
  np.testing.assert_allclose(subopt, expected, rtol=1e-8)


def test_the_ridge_prediction_is_quadratic_in_rho_to_first_order() -> None:
  # For small rho the zero of the averaged SAM update is x* - rho H^-1 v, v = mean_i H_i u_i(x*), u_i the
  # unit gradient of f_i at x*: its suboptimality is rho^2 v^T H^-1 v / 2.
  problem = neighbourhood.Ridge(np.random.default_rng(8))
  a, b, reg = problem.a, problem.b, neighbourhood.REG
  n, d = a.shape
  hessian = a.T @ a / n + reg * np.eye(d)
  x_star = np.linalg.solve(hessian, a.T @ b / n)
  g = a * (a @ x_star - b)[:, None] + reg * x_star
  u = g / np.linalg.norm(g, axis=1, keepdims=True)
  v = np.mean(a * np.sum(a * u, axis=1, keepdims=True), axis=0) + reg * u.mean(axis=0)
  for rho in (1e-4, 1e-3):
    value, residual = problem.predicted(rho, 1.0)
    assert residual < 1e-12
    np.testing.assert_allclose(value, 0.5 * rho**2 * v @ np.linalg.solve(hessian, v), rtol=20 * rho)


@pytest.mark.parametrize(
  ("args", "flag"),
  [
    (["--claims", "nope"], "--claims"),
    (["--seed", "-1"], "--seed"),
    (["--quick", "--epochs", "3"], "--epochs"),
  ],
)
def test_bad_arguments_exit_2_with_one_line(
  capsys: pytest.CaptureFixture[str], args: list[str], flag: str
) -> None:
  with pytest.raises(SystemExit) as exit_:
    cli.main(args)
  assert exit_.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("seed_claims: error: ") and flag in lines[0]


def test_only_the_full_run_writes_the_committed_results(tmp_path: Path) -> None:
  def default_out(**changes: Any) -> Path:
    args = cli.parser().parse_args([])
    vars(args).update({"quick": False, "no_plots": False, "out": None, **cli.FULL_RUN, **changes})
    return cli.output_dir(args)

  assert default_out() == cli.RESULTS
  for change in ({"quick": True}, {"seed": 1}, {"claims": ["quadratic"]}, {"no_plots": True}):
    assert default_out(**change) == cli.RESULTS / "quick", change
  assert default_out(quick=True, out=tmp_path) == tmp_path


def test_a_verdict_is_partly_when_some_checks_fail() -> None:
  passed, failed = common.Check("a", 1.0, True), common.Check("b", 2.0, False)
  assert common.verdict([passed, passed]) == "holds"
  assert common.verdict([passed, failed]) == "partly"
  assert common.verdict([failed, failed]) == "does not hold"


@pytest.mark.parametrize("page", ["README.md", "docs/theory.md", "docs/seed_claims.md"])
def test_the_pages_quote_the_committed_verdict_table(page: str) -> None:
  root = Path(__file__).resolve().parent.parent
  committed = json.loads((root / "benchmarks" / "results" / "seed_claims" / "seed_claims.json").read_text())
  assert committed["verdict_table"] in (root / page).read_text()
