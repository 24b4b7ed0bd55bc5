"""Tests of optax_usam.ascent: every member of the SAM family is Unified SAM with another AscentDirection.

The tests here run over all five members (VaSSO, F-SAM, Momentum-SAM, RSAM, GSAM), through the machinery
they share; what only one member does is tested in its module's file. Whole trajectories are checked
against the float64 NumPy references of each paper's update (tests/numpy_reference.py, which says where
each rule was checked), and every ascent point against the Unified SAM perturbation of the member's
direction d_t, replayed by that reference from the gradients the run computed:
e_t = rho (1 - lambda_t + lambda_t / (||d_t|| + eps)) d_t, for constant and scheduled lambdas.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam
from tests import mlp_problem
from tests import numpy_reference as ref

STEPS, LR, MOMENTUM, WD, RHO, EPS = 6, 0.3, 0.9, 5e-2, 0.1, 1e-12
LAMBDAS = [0.0, 0.5, 1.0, "1-1/t"]
DIAGNOSTICS = ("grad_norm", "lambd", "rho", "perturbation_norm")
# Each member's own hyperparameters, as its factory takes them.
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
  "vasso": {"theta": 0.4},
  "friendly_sam": {"sigma": 0.5, "momentum": 0.8},
  "momentum_sam": {"momentum": 0.7},
  "random_smoothing_sam": {"noise_std": 0.05, "seed": 3},
  "gsam": {"alpha": 0.3},
}
METHODS = sorted(HYPERPARAMETERS)
# The value of a member's own parameter that makes it Unified SAM.
NEUTRAL = {
  "vasso": {"theta": 1.0},
  "friendly_sam": {"sigma": 0.0},
  "random_smoothing_sam": {"noise_std": 0.0},
  "gsam": {"alpha": 0.0},
}
ONE_PASS = {"momentum_sam", "random_smoothing_sam"}  # directions that do not read the fresh gradient


def _make(name: str, lambd: Any = 1.0, **overrides: Any) -> optax.GradientTransformationExtraArgs:
  return getattr(optax_usam, name)(RHO, **(HYPERPARAMETERS[name] | overrides), lambd_schedule=lambd)


def _rsam_normals(p0: dict[str, np.ndarray], steps: int) -> list[dict[str, np.ndarray]]:
  """The standard normals behind random_smoothing_sam's noise, drawn with the library's jax.random calls.

  Step t splits the key kept in the state, ``key, draw = split(key)`` from ``key(seed)``; leaf i (in
  ``jax.tree.leaves`` order) draws ``normal(fold_in(draw, i))`` in its dtype (random_smoothing.py ``noise``).
  The reference scales them by noise_std and the filter norms itself.
  """
  names = sorted(p0)  # jax.tree.leaves order of a dict
  normals = []
  with jax.enable_x64(True):
    key = jax.random.key(HYPERPARAMETERS["random_smoothing_sam"]["seed"])
    for _ in range(steps):
      key, draw = jax.random.split(key)
      normals.append(
        {
          k: np.asarray(jax.random.normal(jax.random.fold_in(draw, i), p0[k].shape, jnp.float64))
          for i, k in enumerate(names)
        }
      )
  return normals


def _reference(name: str, p0: dict[str, np.ndarray], grad: Callable, lambd: Any) -> tuple[dict, list]:
  """The member's float64 NumPy run: (params, per-step diagnostics)."""
  hyper = HYPERPARAMETERS[name]
  args = (p0, grad, STEPS, RHO, lambd, LR, MOMENTUM, WD)
  if name == "vasso":
    return ref.vasso_sgd(*args, theta=hyper["theta"])
  if name == "friendly_sam":
    return ref.friendly_sam_sgd(*args, sigma=hyper["sigma"], ema_decay=hyper["momentum"])
  if name == "momentum_sam":
    return ref.momentum_sam_sgd(*args, sam_momentum=hyper["momentum"])
  if name == "random_smoothing_sam":
    normals = _rsam_normals(p0, STEPS)
    return ref.random_smoothing_sam_sgd(*args, normals=normals, noise_std=hyper["noise_std"])
  return ref.gsam_sgd(*args, alpha=hyper["alpha"])


def _assert_matches(got, history, want, want_logs):
  for t, (h, w) in enumerate(zip(history, want_logs, strict=True)):
    assert int(h["diagnostics"]["count"]) == t + 1
    for key in DIAGNOSTICS:
      np.testing.assert_allclose(
        h["diagnostics"][key], w[key], rtol=1e-10, atol=1e-14, err_msg=f"step {t + 1}: {key}"
      )
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("lambd", LAMBDAS)
@pytest.mark.parametrize("name", METHODS)
def test_matches_numpy_reference_in_a_chain(name, lambd):
  p0, x, y = mlp_problem.problem()
  grad = lambda p: ref.mlp_grad(p, x, y)
  want, want_logs = _reference(name, p0, grad, lambd)
  # The variant mattered: Unified SAM with the same lambda ends elsewhere.
  sam, _ = ref.unified_sam_sgd(p0, grad, STEPS, RHO, lambd, LR, MOMENTUM, WD)
  assert max(np.max(np.abs(sam[k] - want[k])) for k in want) > 1e-6
  with jax.enable_x64(True):
    got, history = mlp_problem.run_chain(_make(name, lambd), STEPS, fresh=True, lr=LR, weight_decay=WD)
    assert got["w1"].dtype == np.float64
    _assert_matches(got, history, want, want_logs)
    if name in ONE_PASS:
      # One pass fewer: updates=None gives the same steps, and the fresh gradient above was ignored.
      got, history = mlp_problem.run_chain(_make(name, lambd), STEPS, fresh=False, lr=LR, weight_decay=WD)
      _assert_matches(got, history, want, want_logs)


@pytest.mark.parametrize("lambd", LAMBDAS)
@pytest.mark.parametrize("name", METHODS)
def test_ascent_point_is_the_unified_perturbation_of_the_direction(name, lambd):
  """The last grad_fn point of step t is x_t + rho (1 - lambda_t + lambda_t / (||d_t|| + eps)) d_t."""
  _, x, y = mlp_problem.problem()
  with jax.enable_x64(True):
    _, history = mlp_problem.run_chain(_make(name, lambd), STEPS, lr=LR, weight_decay=WD)
  seen = [
    {
      "g": ref.mlp_grad(h["params"], x, y),
      "g_sam": ref.mlp_grad(h["points"][-1], x, y),
      # RSAM's first point is x_t + delta_t: the noise is read back from it.
      "delta": {k: h["points"][0][k] - h["params"][k] for k in h["params"]},
      "g_smoothed": ref.mlp_grad(h["points"][0], x, y),
    }
    for h in history
  ]
  directions = ref.directions_seen(
    name,
    seen,
    theta=HYPERPARAMETERS["vasso"]["theta"],
    sigma=HYPERPARAMETERS["friendly_sam"]["sigma"],
    ema_decay=HYPERPARAMETERS["friendly_sam"]["momentum"],
    sam_momentum=HYPERPARAMETERS["momentum_sam"]["momentum"],
  )
  for count, (h, d) in enumerate(zip(history, directions, strict=True)):
    lam = ref.lambda_at(lambd, count)
    e, norm = ref.perturbation(d, RHO, lam, eps=EPS)
    rtol = 1e-12 if name == "random_smoothing_sam" else 1e-14  # delta is read back as (x + delta) - x
    for k in d:
      np.testing.assert_allclose(h["points"][-1][k], h["params"][k] + e[k], rtol=rtol, atol=1e-15)
    diag = h["diagnostics"]
    np.testing.assert_allclose(diag["lambd"], lam, rtol=1e-15)
    np.testing.assert_allclose(diag["grad_norm"], norm, rtol=1e-12)
    np.testing.assert_allclose(diag["perturbation_norm"], ref.global_norm(e.values()), rtol=1e-12)
  assert int(history[-1]["diagnostics"]["count"]) == STEPS


@pytest.mark.parametrize("lambd", LAMBDAS)
@pytest.mark.parametrize("name", sorted(NEUTRAL))
def test_neutral_parameter_is_unified_sam_exactly(name, lambd):
  """VaSSO theta = 1, F-SAM sigma = 0, RSAM noise_std = 0 and GSAM alpha = 0 are Unified SAM, bit for bit."""
  with jax.enable_x64(True):
    want, want_history = mlp_problem.run_chain(optax_usam.unified_sam(RHO, lambd), STEPS, 1, fresh=True)
    got, history = mlp_problem.run_chain(_make(name, lambd, **NEUTRAL[name]), STEPS, 1, fresh=True)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  for h, w in zip(history, want_history, strict=True):
    for key in DIAGNOSTICS:
      np.testing.assert_array_equal(h["diagnostics"][key], w["diagnostics"][key], err_msg=key)


@pytest.mark.parametrize("name", ["sam", *METHODS])
def test_gradients_per_step_and_updates_none(name):
  """grad_fn calls per update (traced once, not jitted); the one-pass members take updates=None, the others
  say they need the fresh gradient and refuse None."""
  p0, x, y = mlp_problem.problem()
  grad = jax.grad(mlp_problem.jax_loss)
  one_pass = name in ONE_PASS
  with jax.enable_x64(True):
    method = optax_usam.sam(RHO) if name == "sam" else _make(name)
    params = jax.tree.map(jnp.asarray, p0)
    state = method.init(params)
    calls = []
    grad_fn = lambda q: calls.append(1) or grad(q, x, y)
    assert optax_usam.needs_fresh_gradient(state) is not one_pass
    updates = None if one_pass else grad(params, x, y)
    for _ in range(2):
      calls.clear()
      out, state = method.update(updates, state, params, grad_fn=grad_fn)
      chex.assert_tree_all_finite(out)
      assert len(calls) == (2 if name == "random_smoothing_sam" else 1)
    if not one_pass:
      with pytest.raises(ValueError, match="updates=None"):
        method.update(None, state, params, grad_fn=grad_fn)


@pytest.mark.parametrize("name", METHODS)
def test_inject_hyperparams_matches_the_plain_transformation(name):
  factory = getattr(optax_usam, name)
  kwargs = {"rho": RHO, **HYPERPARAMETERS[name], "lambd_schedule": "1-1/t"}
  with jax.enable_x64(True):
    want, _ = mlp_problem.run_chain(factory(**kwargs), 3)
    got, history = mlp_problem.run_chain(optax.inject_hyperparams(factory)(**kwargs), 3)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-13, atol=1e-15, err_msg=k)
  assert int(history[-1]["diagnostics"]["count"]) == 3


@pytest.mark.parametrize("name", METHODS)
def test_pmap_over_shards_is_one_device_on_the_whole_batch(name):
  """With axis_name (sync_perturbation), four shards of the batch step as one device on all of it."""
  assert jax.device_count() >= 4
  p0, x, y = mlp_problem.problem(5)
  grad = jax.grad(mlp_problem.jax_loss)
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.asarray, p0)
    single, sharded = _make(name), _make(name, axis_name="batch")

    def step(tx, params, state, x, y):
      g = grad(params, x, y) if optax_usam.needs_fresh_gradient(state) else None
      return tx.update(g, state, params, grad_fn=lambda q: grad(q, x, y))

    state = single.init(params)
    sharded_state = jax.tree.map(lambda v: jnp.stack([v] * 4), state)
    replicated = jax.tree.map(lambda v: jnp.stack([v] * 4), params)
    pstep = jax.pmap(functools.partial(step, sharded), axis_name="batch", devices=jax.devices()[:4])
    for _ in range(2):  # the second step reads the direction's state (momentum_sam: a non-zero d)
      want, state = jax.jit(functools.partial(step, single))(params, state, x, y)
      got, sharded_state = pstep(replicated, sharded_state, x.reshape(4, 4, 5), y.reshape(4, 4, 3))
      for k in want:
        for dev in range(4):
          np.testing.assert_allclose(got[k][dev], want[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_custom_direction_and_plain_state():
  """An AscentDirection from optax parts; plain unified_sam keeps an empty direction state."""
  params = {"w": jnp.array([3.0, 4.0])}
  grad_fn = jax.grad(lambda p: jnp.sum(p["w"] ** 2))
  sign = optax_usam.AscentDirection(optax.scale_by_sign(), "gradient")
  tx = optax_usam.unified_sam(RHO, 0.0, direction=sign)
  seen = []
  tx.update(grad_fn(params), tx.init(params), params, grad_fn=lambda q: seen.append(q) or grad_fn(q))
  np.testing.assert_allclose(seen[0]["w"], params["w"] + RHO, rtol=1e-6)  # e = rho * sign(g)
  assert jax.tree.leaves(optax_usam.sam(RHO).init(params).direction) == []
  assert "direction" not in optax_usam.get_diagnostics(tx.init(params))


def test_every_source_is_accepted_and_no_other():
  assert optax_usam.ascent.ASCENT_SOURCES == ("gradient", "previous_sam_gradient", "grad_fn")
  params = {"w": jnp.ones(2)}
  for source in optax_usam.ascent.ASCENT_SOURCES:
    tx = optax_usam.unified_sam(RHO, 1.0, direction=optax_usam.AscentDirection(optax.identity(), source))
    assert optax_usam.needs_fresh_gradient(tx.init(params)) is (source == "gradient")
  with pytest.raises(ValueError, match="source"):
    optax_usam.unified_sam(RHO, 1, direction=optax_usam.AscentDirection(optax.sgd(1), "new"))
  with pytest.raises(TypeError, match="direction"):
    optax_usam.unified_sam(RHO, 1.0, direction="ema")
