"""The SAM family (issue 13) against independent float64 NumPy references (tests/numpy_reference.py).

What each reference implements, and where it was checked. The paper texts reachable here gave their
openings and abstracts only, so the update rules come from the authors' public code where it exists; what
could not be verified is said so. Unified SAM's lambda acts on every direction d:
e = rho (1 - lambda + lambda / (||d|| + eps)) d; lambda = 1 is the paper's normalized method.

- VaSSO (Li & Giannakis, NeurIPS 2023; BingcongLi/VaSSO, solver/vasso.py ``first_step``):
  d_t = (1 - theta) d_{t-1} + theta g_t, g_t the fresh gradient at x_t; final gradient at x_t + e_t; two
  gradients per step. Default theta = 0.9, rho = 0.05 (configs/defaulf_cfg.py). theta = 1 is SAM. The code
  starts the average at d_1 = g_1 (not theta g_1, as an EMA from 0 would), and so do the library and the
  reference.
- F-SAM (Li et al., CVPR 2024): d_t = g_t - sigma m_t, m_t = lambda_F m_{t-1} + (1 - lambda_F) g_t, two
  gradients. The paper's form (m_t includes g_t) was read in a third-party transcription only; the authors'
  code (nblt/F-SAM, utils.py ``FriendlySAM.first_step``) subtracts m_{t-1}, before g_t enters it, and
  starts with m_1 = g_1, d_1 = g_1 (with sigma = 1 the two d_t are parallel for the same m_{t-1}). Defaults
  there: sigma = 1, lambda_F = 0.9 (run.sh: 0.95, rho = 0.2). sigma = 0 is SAM. The library and the
  reference follow the code, the one source read here.
- Momentum-SAM (Becker et al. 2024; MarlonBecker/MSAM, optimizer/msam.py; Fig. 1 pseudocode): the
  gradient is taken at w_t - rho v_t / ||v_t||, v the SGD momentum buffer (v_0 = 0: the first step is
  plain SGD), so d = -v; ONE gradient per step. There: rho = 0.3 in msam.py, 3 in configs/*.ini, momentum
  0.9. The code's v contains the weight decay term; here v is the direction's own trace of the SAM
  gradients (the agreed design: unified_sam is first in the chain), equal to the paper's buffer when weight
  decay is 0 and the momenta agree (tested against a literal transcription of Fig. 1).
- RSAM (Liu et al., NeurIPS 2022 as the stored text is filed, not ECCV; abstract: "one-step gradient ascent
  on the smoothed weights"; authors' JAX code RSAM-Optimizer/R-SAM, vit_jax/train.py ``random_vector``,
  ``sam_gradient``): delta_t = std * z * (L2 norm of each output unit of a kernel, of the whole vector for
  a vector), ascent along 2 grad f(x_t + delta_t) + delta_t, normalized; final gradient at x_t + e_t (the
  code adds e to the unperturbed weights), not at x_t + delta_t + e_t. Two gradients, none at x_t. Std
  there: 5e-4 raised to 2.5e-3 along training (``CosineInc``). noise_std = 0 is SAM. The reference takes
  d_t = grad f(x_t + delta_t) + delta_t / 2, the same direction (the library's ``gradient_weight=2``).
- GSAM (Zhuang et al., ICLR 2022; google-research/big_vision, trainers/proj/gsam/gsam.py,
  ``minimize_fp=True``): output g_sam - alpha g_perp, g_perp = g - <g, g_sam/||g_sam||> g_sam/||g_sam||,
  the fresh g decomposed against g_sam; the step then ascends along g_perp ("an ascent step in the
  orthogonal direction", abstract). Two gradients. alpha = 0 is (Unified) SAM.
- Khanh et al. (NeurIPS 2024) treat SAM, VaSSO, F-SAM and RSAM as inexact gradient descent with absolute
  error: ||e_t|| = rho_t, so ||grad f(x_t + e_t) - grad f(x_t)|| <= L rho_t (abstract and reviews; the
  section and equation numbers were not readable here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam
from tests import mlp_problem
from tests import numpy_reference as ref

STEPS, LR, MOMENTUM, WD, RHO = 6, 0.3, 0.9, 5e-2, 0.1
LAMBDAS = [1.0, 0.0, "1-1/t"]
THETA, SIGMA, EMA_DECAY, SAM_MOMENTUM, NOISE_STD, SEED, ALPHA = 0.4, 0.5, 0.8, 0.7, 0.05, 3, 0.3
DIAGNOSTICS = ("grad_norm", "lambd", "rho", "perturbation_norm")


def _rsam_normals(p0: dict[str, np.ndarray], steps: int) -> list[dict[str, np.ndarray]]:
  """The standard normals behind random_smoothing_sam's noise, drawn with the library's jax.random calls.

  Step t splits the key kept in the state, ``key, draw = split(key)`` from ``key(SEED)``; leaf i (in
  ``jax.tree.leaves`` order) draws ``normal(fold_in(draw, i))`` in its dtype (random_smoothing.py ``noise``).
  The reference scales them by noise_std and the filter norms itself.
  """
  names = sorted(p0)  # jax.tree.leaves order of a dict
  normals = []
  with jax.enable_x64(True):
    key = jax.random.key(SEED)
    for _ in range(steps):
      key, draw = jax.random.split(key)
      normals.append(
        {
          k: np.asarray(jax.random.normal(jax.random.fold_in(draw, i), p0[k].shape, jnp.float64))
          for i, k in enumerate(names)
        }
      )
  return normals


def _methods(p0: dict[str, np.ndarray], grad: Callable, lambd: Any) -> dict[str, tuple[Any, Any]]:
  """name -> (the library's transformation, the reference's (params, logs)) for one lambda."""
  run = lambda f, **kw: f(p0, grad, STEPS, RHO, lambd, LR, MOMENTUM, WD, **kw)
  return {
    "vasso": (
      lambda: optax_usam.vasso(RHO, theta=THETA, lambd_schedule=lambd),
      lambda: run(ref.vasso_sgd, theta=THETA),
    ),
    "friendly_sam": (
      lambda: optax_usam.friendly_sam(RHO, sigma=SIGMA, momentum=EMA_DECAY, lambd_schedule=lambd),
      lambda: run(ref.friendly_sam_sgd, sigma=SIGMA, ema_decay=EMA_DECAY),
    ),
    "momentum_sam": (
      lambda: optax_usam.momentum_sam(RHO, momentum=SAM_MOMENTUM, lambd_schedule=lambd),
      lambda: run(ref.momentum_sam_sgd, sam_momentum=SAM_MOMENTUM),
    ),
    "random_smoothing_sam": (
      lambda: optax_usam.random_smoothing_sam(RHO, noise_std=NOISE_STD, seed=SEED, lambd_schedule=lambd),
      lambda: run(ref.random_smoothing_sam_sgd, normals=_rsam_normals(p0, STEPS), noise_std=NOISE_STD),
    ),
    "gsam": (
      lambda: optax_usam.gsam(RHO, alpha=ALPHA, lambd_schedule=lambd),
      lambda: run(ref.gsam_sgd, alpha=ALPHA),
    ),
  }


METHODS = ["vasso", "friendly_sam", "momentum_sam", "random_smoothing_sam", "gsam"]
ONE_PASS = {"momentum_sam", "random_smoothing_sam"}  # directions that do not use the fresh gradient


def _run(
  method: optax.GradientTransformation, p0, x, y, steps: int, fresh: bool, lr=LR, momentum=MOMENTUM, wd=WD
):
  """``steps`` jitted steps of chain(method, add_decayed_weights, sgd(momentum)); params and diagnostics.

  ``fresh=False`` passes ``updates=None``: the caller computes no gradient at x_t.
  """
  tx = optax.chain(method, optax.add_decayed_weights(wd), optax.sgd(lr, momentum=momentum))
  grad = jax.grad(mlp_problem.jax_loss)
  params = jax.tree.map(jnp.asarray, p0)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grad_fn = lambda q: grad(q, x, y)
    updates, state = tx.update(grad_fn(params) if fresh else None, state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state

  logs = []
  for _ in range(steps):
    params, state = step(params, state)
    logs.append({k: np.asarray(v) for k, v in optax_usam.get_diagnostics(state).items()})
  return {k: np.asarray(v) for k, v in params.items()}, logs


def _assert_matches(got, got_logs, want, want_logs):
  for t, (g, w) in enumerate(zip(got_logs, want_logs, strict=True)):
    assert int(g["count"]) == t + 1
    for key in DIAGNOSTICS:
      np.testing.assert_allclose(g[key], w[key], rtol=1e-10, atol=1e-14, err_msg=f"step {t + 1}: {key}")
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("lambd", LAMBDAS)
@pytest.mark.parametrize("name", METHODS)
def test_matches_numpy_reference_in_a_chain(name, lambd):
  p0, x, y = mlp_problem.problem()
  grad = lambda p: ref.mlp_grad(p, x, y)
  make, reference = _methods(p0, grad, lambd)[name]
  want, want_logs = reference()
  # The variant mattered: Unified SAM with the same lambda ends elsewhere.
  sam, _ = ref.unified_sam_sgd(p0, grad, STEPS, RHO, lambd, LR, MOMENTUM, WD)
  assert max(np.max(np.abs(sam[k] - want[k])) for k in want) > 1e-6
  with jax.enable_x64(True):
    got, got_logs = _run(make(), p0, x, y, STEPS, fresh=True)
    assert got["w1"].dtype == np.float64
    _assert_matches(got, got_logs, want, want_logs)
    if name in ONE_PASS:
      # One pass fewer: updates=None gives the same steps, and the fresh gradient above was ignored.
      got, got_logs = _run(make(), p0, x, y, STEPS, fresh=False)
      _assert_matches(got, got_logs, want, want_logs)


@pytest.mark.parametrize("name", METHODS)
def test_gradients_per_step(name):
  """grad_fn calls per update (traced once, not jitted), and whether the fresh gradient is needed."""
  p0, x, y = mlp_problem.problem()
  with jax.enable_x64(True):
    method = _methods(p0, None, 1.0)[name][0]()
    params = jax.tree.map(jnp.asarray, p0)
    state = method.init(params)
    calls = []
    grad = jax.grad(mlp_problem.jax_loss)
    grad_fn = lambda q: calls.append(1) or grad(q, x, y)
    assert optax_usam.needs_fresh_gradient(state) is (name not in ONE_PASS)
    updates = None if name in ONE_PASS else grad(params, x, y)
    for _ in range(2):
      calls.clear()
      _, state = method.update(updates, state, params, grad_fn=grad_fn)
      assert len(calls) == (2 if name == "random_smoothing_sam" else 1)


def test_momentum_sam_is_the_papers_algorithm():
  """Without weight decay and with the optimizer's momentum, MSAM is Becker et al.'s Fig. 1 literally."""
  p0, x, y = mlp_problem.problem(2)
  rho, lr, mu = 0.3, 0.1, 0.9
  want = ref.momentum_sam_paper(p0, lambda p: ref.mlp_grad(p, x, y), STEPS, rho, lr, mu)
  with jax.enable_x64(True):
    got, _ = _run(
      optax_usam.momentum_sam(rho, momentum=mu), p0, x, y, STEPS, fresh=False, lr=lr, momentum=mu, wd=0.0
    )
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-13, err_msg=k)


SPECIAL_CASES = {
  "vasso theta=1": lambda lambd: optax_usam.vasso(RHO, theta=1.0, lambd_schedule=lambd),
  "friendly_sam sigma=0": lambda lambd: optax_usam.friendly_sam(RHO, sigma=0.0, lambd_schedule=lambd),
  "random_smoothing_sam noise_std=0": (
    lambda lambd: optax_usam.random_smoothing_sam(RHO, noise_std=0.0, lambd_schedule=lambd)
  ),
  "gsam alpha=0": lambda lambd: optax_usam.gsam(RHO, alpha=0.0, lambd_schedule=lambd),
}


@pytest.mark.parametrize("lambd", LAMBDAS)
@pytest.mark.parametrize("case", list(SPECIAL_CASES))
def test_special_cases_are_unified_sam_exactly(case, lambd):
  p0, x, y = mlp_problem.problem(1)
  with jax.enable_x64(True):
    want, want_logs = _run(optax_usam.unified_sam(RHO, lambd), p0, x, y, STEPS, fresh=True)
    got, got_logs = _run(SPECIAL_CASES[case](lambd), p0, x, y, STEPS, fresh=True)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  for g, w in zip(got_logs, want_logs, strict=True):
    for key in DIAGNOSTICS:
      np.testing.assert_array_equal(g[key], w[key], err_msg=key)
