"""Tests of the SAM family on Unified SAM: VaSSO, F-SAM, Momentum-SAM, RSAM (ascent directions) and GSAM.

The special cases that must coincide with SAM / Unified SAM are checked exactly, in float64; every
method's ascent point is checked against its direction d_t computed here from the gradients it saw,
e_t = rho (1 - lambda_t + lambda_t / (||d_t|| + eps)) d_t, for constant and scheduled lambdas. Whole
trajectories against float64 NumPy references of each paper's update are tested with ``numpy_reference``.
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
from optax_usam.random_smoothing import noise
from tests import mlp_problem

RHO, LR, MOMENTUM, WD, EPS, STEPS = 0.2, 0.1, 0.9, 5e-2, 1e-12, 4
LAMBDAS = [0.0, 0.5, 1.0, "1-1/t"]
GRAD = jax.grad(mlp_problem.jax_loss)

# Each method with its hyperparameters, the SAM family's constructors all taking (rho, ..., lambd_schedule).
METHODS: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
  "vasso": lambda lambd, **kw: optax_usam.vasso(RHO, theta=kw.get("theta", 0.4), lambd_schedule=lambd),
  "friendly_sam": lambda lambd, **kw: optax_usam.friendly_sam(
    RHO, sigma=kw.get("sigma", 0.7), momentum=0.8, lambd_schedule=lambd
  ),
  "momentum_sam": lambda lambd, **kw: optax_usam.momentum_sam(RHO, momentum=0.8, lambd_schedule=lambd),
  "random_smoothing_sam": lambda lambd, **kw: optax_usam.random_smoothing_sam(
    RHO, kw.get("noise_std", 0.05), seed=3, lambd_schedule=lambd
  ),
  "gsam": lambda lambd, **kw: optax_usam.gsam(RHO, kw.get("alpha", 0.3), lambd_schedule=lambd),
}
# The value of each method's own parameter that makes it Unified SAM.
NEUTRAL = {
  "vasso": {"theta": 1.0},
  "friendly_sam": {"sigma": 0.0},
  "random_smoothing_sam": {"noise_std": 0.0},
  "gsam": {"alpha": 0.0},
}


def _lambda_at(lambd: float | str, t: int) -> float:
  """lambda_t of step t = 1, 2, ..."""
  return 1.0 - 1.0 / t if lambd == "1-1/t" else float(lambd)


def _chain(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  return optax.chain(tx, optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MOMENTUM))


def _run(tx: optax.GradientTransformation, steps: int = STEPS, seed: int = 0, fresh: bool | None = None):
  """Float64 steps of ``_chain(tx)`` under jit: the parameters and states before each step, the fresh
  gradients, and the points grad_fn was called at, step by step. Call inside ``jax.enable_x64``."""
  p0, x, y = mlp_problem.problem(seed)
  tx = _chain(tx)
  params = jax.tree.map(jnp.asarray, p0)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    points = []

    def grad_fn(q):
      points.append(q)
      return GRAD(q, x, y)

    g = GRAD(params, x, y)
    use_fresh = optax_usam.needs_fresh_gradient(state) if fresh is None else fresh
    updates, state = tx.update(g if use_fresh else None, state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state, g, points

  history = []
  for _ in range(steps):
    new_params, new_state, g, points = step(params, state)
    history.append({"params": params, "g": g, "points": points, "state": new_state, "batch": (x, y)})
    params, state = new_params, new_state
  return params, state, history


def _norm(tree: Any) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(v))) for v in jax.tree.leaves(tree))))


def _directions(name: str, history: list[dict], **kw: float) -> list[Any]:
  """d_t of each step, from the gradients the method saw, by the formulas of its docstring."""
  sub = lambda a, b: jax.tree.map(lambda u, v: u - v, a, b)
  theta, sigma, beta = kw.get("theta", 0.4), kw.get("sigma", 0.7), 0.8
  out, m, v = [], None, None
  for t, h in enumerate(history):
    g = h["g"]
    if name == "gsam":
      d = g
    elif name == "vasso":
      d = g if t == 0 else jax.tree.map(lambda a, b: (1 - theta) * a + theta * b, out[-1], g)
    elif name == "friendly_sam":
      d = g if t == 0 else jax.tree.map(lambda a, b: a - sigma * b, g, m)
      m = g if t == 0 else jax.tree.map(lambda a, b: beta * a + (1 - beta) * b, m, g)
    elif name == "momentum_sam":
      d = jax.tree.map(jnp.zeros_like, g) if v is None else jax.tree.map(jnp.negative, v)
      g_sam = GRAD(h["points"][-1], *h["batch"])
      v = g_sam if v is None else jax.tree.map(lambda a, b: 0.8 * a + b, v, g_sam)
    else:  # random_smoothing_sam: the noise is read back from the first evaluation point
      delta = sub(h["points"][0], h["params"])
      g_delta = GRAD(h["points"][0], *h["batch"])
      d = jax.tree.map(lambda a, b: a + b / 2.0, g_delta, delta)
    out.append(d)
  return out


@pytest.mark.parametrize("lambd", LAMBDAS)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_ascent_point_is_the_unified_perturbation_of_the_direction(name, lambd):
  """The last grad_fn point of step t is x_t + rho (1 - lambda_t + lambda_t / (||d_t|| + eps)) d_t."""
  with jax.enable_x64(True):
    _, state, history = _run(METHODS[name](lambd))
    for t, (h, d) in enumerate(zip(history, _directions(name, history), strict=True), start=1):
      lam = _lambda_at(lambd, t)
      scale = RHO * (1 - lam + lam / (_norm(d) + EPS))
      want = jax.tree.map(lambda x, v, s=scale: x + s * v, h["params"], d)
      rtol = 1e-12 if name == "random_smoothing_sam" else 1e-14  # delta is read back as (x + delta) - x
      chex.assert_trees_all_close(h["points"][-1], want, rtol=rtol, atol=1e-15)
      diag = optax_usam.get_diagnostics(h["state"])
      np.testing.assert_allclose(diag["lambd"], lam, rtol=1e-15)
      np.testing.assert_allclose(diag["grad_norm"], _norm(d), rtol=1e-12)
      np.testing.assert_allclose(diag["perturbation_norm"], abs(scale) * _norm(d), rtol=1e-12)
    assert int(optax_usam.get_diagnostics(state)["count"]) == STEPS


@pytest.mark.parametrize("lambd", LAMBDAS)
@pytest.mark.parametrize("name", sorted(NEUTRAL))
def test_neutral_parameter_is_unified_sam_exactly(name, lambd):
  """VaSSO theta = 1, F-SAM sigma = 0, RSAM noise_std = 0 and GSAM alpha = 0 are Unified SAM."""
  with jax.enable_x64(True):
    want, _, _ = _run(optax_usam.unified_sam(RHO, lambd))
    got, _, _ = _run(METHODS[name](lambd, **NEUTRAL[name]))
  chex.assert_trees_all_equal(got, want)  # bit for bit, after four steps with weight decay and momentum


def test_momentum_sam_first_step_is_plain_gradient_descent_and_reads_no_fresh_gradient():
  with jax.enable_x64(True):
    _, _, history = _run(optax_usam.momentum_sam(RHO), steps=2)
  assert len(history[0]["points"]) == len(history[1]["points"]) == 1  # one gradient per step
  chex.assert_trees_all_equal(history[0]["points"][0], history[0]["params"])  # e_1 = 0


def test_gsam_output_is_the_surrogate_gap_step():
  p0, x, y = mlp_problem.problem(1)
  alpha = 0.3
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.asarray, p0)
    tx = optax_usam.gsam(RHO, alpha)
    g = GRAD(params, x, y)
    out, _ = tx.update(g, tx.init(params), params, grad_fn=lambda q: GRAD(q, x, y))
    sam_out, _ = optax_usam.sam(RHO).update(
      g, optax_usam.sam(RHO).init(params), params, grad_fn=lambda q: GRAD(q, x, y)
    )
  gv = np.concatenate([np.ravel(g[k]) for k in sorted(g)])
  sv = np.concatenate([np.ravel(sam_out[k]) for k in sorted(g)])
  want = sv - alpha * (gv - (gv @ sv) / (sv @ sv) * sv)
  got = np.concatenate([np.ravel(out[k]) for k in sorted(g)])
  np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-16)


def test_random_smoothing_noise_follows_the_documented_keys():
  p0, x, y = mlp_problem.problem(2)
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.asarray, p0)
    tx = optax_usam.random_smoothing_sam(RHO, 0.05, seed=7)
    points = []
    grad_fn = lambda q: points.append(q) or GRAD(q, x, y)
    state = tx.init(params)
    keys = jax.random.key(7)
    for _ in range(2):
      _, state = tx.update(None, state, params, grad_fn=grad_fn)
      keys, draw = jax.random.split(keys)
      want = jax.tree.map(lambda p, n: p + n, params, noise(params, draw, 0.05, filter_wise=True))
      chex.assert_trees_all_close(points[-2], want, rtol=1e-15, atol=0)
  # Filter-wise: each output unit's noise scales with that unit's weight norm; b2 = 0 gets none.
  assert np.all(np.asarray(points[-2]["b2"]) == 0)
  assert not np.allclose(points[-2]["w1"], params["w1"])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_inject_hyperparams_matches_the_plain_transformation(name):
  kwargs = {
    "vasso": {"rho": RHO, "theta": 0.4},
    "friendly_sam": {"rho": RHO, "sigma": 0.7, "momentum": 0.8},
    "momentum_sam": {"rho": RHO, "momentum": 0.8},
    "gsam": {"rho": RHO, "alpha": 0.3},
    "random_smoothing_sam": {"rho": RHO, "noise_std": 0.05, "seed": 3},
  }[name]
  factory = getattr(optax_usam, name)
  with jax.enable_x64(True):
    want, _, _ = _run(factory(**kwargs, lambd_schedule="1-1/t"), steps=3)
    injected = optax.inject_hyperparams(factory)(**kwargs, lambd_schedule="1-1/t")
    got, state, _ = _run(injected, steps=3)
  chex.assert_trees_all_close(got, want, rtol=1e-13, atol=1e-15)
  assert int(optax_usam.get_diagnostics(state)["count"]) == 3


@pytest.mark.parametrize("name", sorted(METHODS))
def test_pmap_over_shards_is_one_device_on_the_whole_batch(name):
  """With axis_name (sync_perturbation), four shards of the batch step as one device on all of it."""
  assert jax.device_count() >= 4
  p0, x, y = mlp_problem.problem(5)
  factory = getattr(optax_usam, name)
  args = {"random_smoothing_sam": (0.05,), "gsam": (0.3,)}.get(name, ())
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.asarray, p0)
    single, sharded = factory(RHO, *args), factory(RHO, *args, axis_name="batch")

    def step(tx, params, state, x, y):
      g = GRAD(params, x, y) if optax_usam.needs_fresh_gradient(state) else None
      return tx.update(g, state, params, grad_fn=lambda q: GRAD(q, x, y))

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


def test_one_gradient_methods_take_updates_none_and_two_gradient_ones_refuse_it():
  params = {"w": jnp.array([3.0, 4.0])}
  grad_fn = jax.grad(lambda p: jnp.sum(p["w"] ** 2))
  for tx in (optax_usam.momentum_sam(RHO), optax_usam.random_smoothing_sam(RHO, 0.01)):
    state = tx.init(params)
    assert not optax_usam.needs_fresh_gradient(state)
    out, _ = tx.update(None, state, params, grad_fn=grad_fn)
    chex.assert_tree_all_finite(out)
  two_gradients = (optax_usam.sam, optax_usam.vasso, optax_usam.friendly_sam, lambda r: optax_usam.gsam(r, 1))
  for tx in (make(RHO) for make in two_gradients):
    state = tx.init(params)
    assert optax_usam.needs_fresh_gradient(state)
    with pytest.raises(ValueError, match="updates=None"):
      tx.update(None, state, params, grad_fn=grad_fn)


def test_needs_fresh_gradient_sees_through_wrappers():
  params = {"w": jnp.ones(2)}
  inner = optax_usam.momentum_sam(RHO)
  injected = optax.inject_hyperparams(optax_usam.momentum_sam)(rho=RHO)
  assert not optax_usam.needs_fresh_gradient(optax.chain(injected, optax.sgd(0.1)).init(params))
  # Wrappers that read the fresh gradient themselves need it, whatever the direction inside.
  wrappers = (
    optax.MultiSteps(inner, 2),
    optax_usam.reuse_sam(inner, 2),
    optax_usam.randomized_sam(inner, 0.5),
  )
  for wrapped in wrappers:
    assert optax_usam.needs_fresh_gradient(wrapped.init(params))
  assert optax_usam.needs_fresh_gradient(optax.sgd(0.1).init(params))  # no Unified SAM: a plain gradient


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


@pytest.mark.parametrize(
  "make,error,match",
  [
    (lambda: optax_usam.vasso(RHO, theta=1.5), ValueError, "theta"),
    (lambda: optax_usam.vasso(RHO, theta=-0.1), ValueError, "theta"),
    (lambda: optax_usam.vasso(RHO, theta="0.5"), TypeError, "theta"),
    (lambda: optax_usam.vasso(RHO, theta=True), TypeError, "theta"),
    (lambda: optax_usam.friendly_sam(RHO, sigma=-1.0), ValueError, "sigma"),
    (lambda: optax_usam.friendly_sam(RHO, sigma=float("nan")), ValueError, "sigma"),
    (lambda: optax_usam.friendly_sam(RHO, momentum=1.0), ValueError, "momentum"),
    (lambda: optax_usam.momentum_sam(RHO, momentum=-0.1), ValueError, "momentum"),
    (lambda: optax_usam.momentum_sam(RHO, momentum=None), TypeError, "momentum"),
    (lambda: optax_usam.random_smoothing_sam(RHO, -0.01), ValueError, "noise_std"),
    (lambda: optax_usam.random_smoothing_sam(RHO, float("inf")), ValueError, "noise_std"),
    (lambda: optax_usam.random_smoothing_sam(RHO, 0.1, gradient_weight=0), ValueError, "gradient_weight"),
    (lambda: optax_usam.random_smoothing_sam(RHO, 0.01, seed=1.5), TypeError, "seed"),
    (lambda: optax_usam.random_smoothing_sam(RHO, 0.01, filter_wise=1), TypeError, "filter_wise"),
    (lambda: optax_usam.gsam(RHO, alpha=-0.1), ValueError, "alpha"),
    (lambda: optax_usam.gsam(RHO, alpha="0.1"), TypeError, "alpha"),
    (lambda: optax_usam.vasso(-1.0), ValueError, "rho"),
    (lambda: optax_usam.momentum_sam(RHO, lambd_schedule=2.0), ValueError, "lambd_schedule"),
    (lambda: optax_usam.unified_sam(RHO, 1.0, direction="ema"), TypeError, "direction"),
    (
      lambda: optax_usam.unified_sam(RHO, 1, direction=optax_usam.AscentDirection(optax.sgd(1), "new")),
      ValueError,
      "source",
    ),
  ],
)
def test_bad_arguments_are_refused_with_their_name(make, error, match):
  with pytest.raises(error, match=match):
    make()
