"""Unified SAM inside the Optax idioms users reach for, each against an independent float64 reference.

inject_hyperparams, gradient accumulation with MultiSteps (microbatch_grad_fn is tested in
tests/test_accumulation.py), perturb_mask and the refusal of optax.masked/partition/multi_transform,
apply_if_finite, lookahead, None and integer leaves.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam
from tests import mlp_problem
from tests import numpy_reference as ref

LR, MOMENTUM, WD = 0.3, 0.9, 5e-2


def _sgd_chain(sam: optax.GradientTransformation) -> optax.GradientTransformation:
  return optax.chain(sam, optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MOMENTUM))


def _run(tx, params, grad, steps, between=None, traces=None):
  """``steps`` jitted updates with grad_fn=grad; ``between(step, state)`` may edit the state.

  ``traces`` (a list) gets one entry each time the update is traced.
  """

  @jax.jit
  def update(g, s, p):
    if traces is not None:
      traces.append(1)
    return tx.update(g, s, p, grad_fn=grad)

  state = tx.init(params)
  for step in range(steps):
    if between is not None:
      state = between(step, state)
    updates, state = update(grad(params), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _assert_close(got, want, rtol=1e-10):
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=1e-13, err_msg=k)


# ---------------------------------------------------------------------------- inject_hyperparams


@pytest.mark.parametrize("lambd", [0.5, "1-1/t"])
def test_inject_hyperparams_under_jit_and_changed_mid_run(lambd):
  """rho changed through opt_state.hyperparams after 3 steps acts on step 4; the lambda count carries on."""
  steps, switch = 6, 3
  p0, x, y = mlp_problem.problem()
  rho_np = lambda c: 0.05 if c < switch else 0.2
  grad_np = lambda p: ref.mlp_grad(p, x, y)
  want, logs = ref.unified_sam_sgd(p0, grad_np, steps, rho_np, lambd, LR, MOMENTUM, WD)
  traces = []

  def between(step, state):
    if step == switch:
      state[0].hyperparams["rho"] = jnp.asarray(0.2, jnp.float64)
    return state

  with jax.enable_x64(True):
    sam = optax.inject_hyperparams(optax_usam.unified_sam)(rho=0.05, lambd_schedule=lambd)
    tx = _sgd_chain(sam)
    grad = jax.grad(lambda p: mlp_problem.jax_loss(p, x, y))
    got, state = _run(tx, jax.tree.map(jnp.asarray, p0), grad, steps, between=between, traces=traces)
    diag = optax_usam.get_diagnostics(state)
  _assert_close(got, want)
  assert int(diag["count"]) == steps
  np.testing.assert_allclose(diag["lambd"], logs[-1]["lambd"], rtol=1e-12)
  np.testing.assert_allclose(diag["rho"], 0.2, rtol=1e-12)
  np.testing.assert_allclose(diag["grad_norm"], logs[-1]["grad_norm"], rtol=1e-10)
  # Hyperparameters live in the state as arrays: changing rho did not retrace the step.
  assert len(traces) == 1


@pytest.mark.parametrize(
  "factory,lambd", [(optax_usam.sam, 1.0), (optax_usam.usam, 0.0), (optax_usam.unified_sam, 0.25)]
)
def test_inject_hyperparams_wrappers_equal_plain_transformation(factory, lambd):
  p0, x, y = mlp_problem.problem()
  want, _ = ref.unified_sam_sgd(p0, lambda p: ref.mlp_grad(p, x, y), 4, 0.1, lambd, LR, MOMENTUM, WD)
  kwargs = {"lambd_schedule": lambd} if factory is optax_usam.unified_sam else {}
  with jax.enable_x64(True):
    tx = _sgd_chain(optax.inject_hyperparams(factory)(rho=0.1, eps=1e-12, **kwargs))
    got, state = _run(tx, jax.tree.map(jnp.asarray, p0), jax.grad(lambda p: mlp_problem.jax_loss(p, x, y)), 4)
  _assert_close(got, want)
  assert set(state[0].hyperparams) >= {"rho", "eps", "adaptive_eta"}


def test_inject_hyperparams_checks_concrete_values():
  params = {"w": jnp.ones(3)}
  grad = lambda p: p
  with pytest.raises(ValueError, match="rho must be"):
    optax.inject_hyperparams(optax_usam.unified_sam)(rho=-0.1, lambd_schedule=1.0).init(params)
  with pytest.raises(ValueError, match="lambd_schedule must be"):
    optax.inject_hyperparams(optax_usam.unified_sam)(rho=0.1, lambd_schedule=1.5).init(params)
  tx = optax.inject_hyperparams(optax_usam.sam)(rho=0.1)
  state = tx.init(params)
  state.hyperparams["rho"] = jnp.asarray(-1.0)
  with pytest.raises(ValueError, match="rho must be"):
    tx.update(params, state, params, grad_fn=grad)


@pytest.mark.parametrize("kwargs", [{"perturb_mask": "fn"}, {"adaptive": True, "adaptive_mask": "fn"}])
def test_inject_hyperparams_with_a_callable_mask(kwargs):
  """Unlisted, inject_hyperparams would call the mask with the count (a silent 'no mask'): refused."""
  p0, x, y = mlp_problem.problem()
  fn = lambda p: jax.tree.map(lambda v: v.ndim > 1, p)
  kwargs = {k: fn if v == "fn" else v for k, v in kwargs.items()}
  name = "perturb_mask" if "perturb_mask" in kwargs else "adaptive_mask"
  with pytest.raises(ValueError, match=f"{name} selects no floating parameter.*static_args"):
    optax.inject_hyperparams(optax_usam.unified_sam)(rho=0.1, lambd_schedule=1.0, **kwargs).init(p0)
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.asarray, p0)
    grad = jax.grad(lambda p: mlp_problem.jax_loss(p, x, y))
    injected = optax.inject_hyperparams(optax_usam.unified_sam, static_args=name)
    tx = injected(rho=0.1, lambd_schedule=1.0, **kwargs)
    got, _ = jax.jit(lambda s: tx.update(grad(params), s, params, grad_fn=grad))(tx.init(params))
    plain = optax_usam.unified_sam(0.1, 1.0, **kwargs)
    want, _ = plain.update(grad(params), plain.init(params), params, grad_fn=grad)
  _assert_close(got, want, rtol=1e-12)


def test_inject_hyperparams_vmapped_over_rho():
  """A sweep over rho in one compiled program: each member equals its own run."""
  p0, x, y = mlp_problem.problem()
  rhos = np.array([0.0, 0.05, 0.3])
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.asarray, p0)
    grad = jax.grad(lambda p: mlp_problem.jax_loss(p, x, y))
    factory = optax.inject_hyperparams(optax_usam.unified_sam)

    def run(rho):
      tx = _sgd_chain(factory(rho=0.0, lambd_schedule="1/t"))
      state = tx.init(params)
      state[0].hyperparams["rho"] = rho
      updates, _ = tx.update(grad(params), state, params, grad_fn=grad)
      return updates

    swept = jax.tree.map(np.asarray, jax.jit(jax.vmap(run))(jnp.asarray(rhos)))
  for i, rho in enumerate(rhos):
    want, _ = ref.unified_sam_sgd(p0, lambda p: ref.mlp_grad(p, x, y), 1, rho, "1/t", LR, MOMENTUM, WD)
    _assert_close({k: p0[k] + swept[k][i] for k in p0}, want)


# ---------------------------------------------------------------------------- gradient accumulation


def _micro(x, y, k):
  n = x.shape[0] // k
  return [(x[i * n : (i + 1) * n], y[i * n : (i + 1) * n]) for i in range(k)]


def _grads_at(p, micro):
  return [ref.mlp_grad(p, xi, yi) for xi, yi in micro]


def _mean(trees):
  return {k: np.mean([t[k] for t in trees], axis=0) for k in trees[0]}


def _multi_steps_run(make_tx, p0, micro, steps):
  """``steps`` optimizer steps of len(micro) micro-steps each, grad_fn on the current micro-batch."""
  with jax.enable_x64(True):
    # Built under x64: MultiSteps fixes its float64 accumulator dtype at construction.
    tx = make_tx()
    params = jax.tree.map(jnp.asarray, p0)
    state = tx.init(params)

    @jax.jit
    def micro_step(params, state, xi, yi):
      grad = jax.grad(lambda p: mlp_problem.jax_loss(p, xi, yi))
      updates, state = tx.update(grad(params), state, params, grad_fn=grad)
      return optax.apply_updates(params, updates), state

    for _ in range(steps):
      for xi, yi in micro:
        params, state = micro_step(params, state, xi, yi)
    return jax.tree.map(np.asarray, params)


def test_multi_steps_around_sam_uses_only_the_last_micro_batch_at_the_ascent_point():
  """What MultiSteps(chain(unified_sam, base)) computes, spelled out: not SAM on the accumulated batch."""
  p0, x, y = mlp_problem.problem()
  micro, rho, lambd = _micro(x, y, 4), 0.1, 0.5
  p, trace = dict(p0), {k: np.zeros_like(v) for k, v in p0.items()}
  for _ in range(3):
    e, _ = ref.perturbation(_mean(_grads_at(p, micro)), rho, lambd)
    last_x, last_y = micro[-1]
    p, trace = ref.momentum_sgd(
      p, trace, ref.mlp_grad({k: p[k] + e[k] for k in p}, last_x, last_y), LR, MOMENTUM, WD
    )
  # MultiSteps accumulates in float32 unless told otherwise.
  make_tx = lambda: optax.MultiSteps(
    _sgd_chain(optax_usam.unified_sam(rho, lambd)), len(micro), accumulator_dtype=jnp.float64
  )
  got = _multi_steps_run(make_tx, p0, micro, 3)
  _assert_close(got, p)
  exact, _ = ref.unified_sam_sgd(p0, lambda q: ref.mlp_grad(q, x, y), 3, rho, lambd, LR, MOMENTUM, WD)
  assert max(np.max(np.abs(got[k] - exact[k])) for k in exact) > 1e-3


def test_sam_before_multi_steps_is_m_sharpness():
  """chain(unified_sam, MultiSteps(base)): each micro-batch perturbed along its own gradient, then averaged.

  unified_sam's count advances per micro-batch, so '1-1/t' sees t = 1, 2, 3, ... micro-step by micro-step.
  """
  p0, x, y = mlp_problem.problem()
  micro, rho = _micro(x, y, 4), 0.1
  p, trace, count = dict(p0), {k: np.zeros_like(v) for k, v in p0.items()}, 0
  for _ in range(3):
    sam_grads = []
    for xi, yi in micro:
      e, _ = ref.perturbation(ref.mlp_grad(p, xi, yi), rho, ref.lambda_at("1-1/t", count))
      sam_grads.append(ref.mlp_grad({k: p[k] + e[k] for k in p}, xi, yi))
      count += 1
    p, trace = ref.momentum_sgd(p, trace, _mean(sam_grads), LR, MOMENTUM, WD)
  base = optax.chain(optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MOMENTUM))
  make_tx = lambda: optax.chain(
    optax_usam.unified_sam(rho, "1-1/t"), optax.MultiSteps(base, len(micro), accumulator_dtype=jnp.float64)
  )
  _assert_close(_multi_steps_run(make_tx, p0, micro, 3), p)


# ---------------------------------------------------------------------------- perturb_mask

WEIGHTS_ONLY = {"w1": True, "b1": False, "w2": True, "b2": False}


@pytest.mark.parametrize(
  "mask",
  [
    pytest.param(WEIGHTS_ONLY, id="tree"),
    pytest.param(lambda p: jax.tree.map(lambda v: v.ndim > 1, p), id="callable"),
    pytest.param({"w1": True, "b1": False, "w2": False, "b2": True}, id="other-tree"),
    pytest.param(True, id="prefix-all"),
  ],
)
@pytest.mark.parametrize("lambd", [0.0, 1.0, "1/t"])
def test_perturb_mask_matches_numpy(mask, lambd):
  p0, x, y = mlp_problem.problem()
  flags = jax.tree.map(lambda v: v.ndim > 1, p0) if callable(mask) else mask
  flags = {k: flags for k in p0} if isinstance(flags, bool) else flags
  want, logs = ref.unified_sam_sgd(
    p0, lambda p: ref.mlp_grad(p, x, y), 4, 0.2, lambd, LR, MOMENTUM, WD, mask=flags
  )
  with jax.enable_x64(True):
    tx = _sgd_chain(optax_usam.unified_sam(0.2, lambd, perturb_mask=mask))
    got, state = _run(tx, jax.tree.map(jnp.asarray, p0), jax.grad(lambda p: mlp_problem.jax_loss(p, x, y)), 4)
    diag = optax_usam.get_diagnostics(state)
  _assert_close(got, want)
  np.testing.assert_allclose(diag["grad_norm"], logs[-1]["grad_norm"], rtol=1e-10, atol=1e-300)
  np.testing.assert_allclose(diag["perturbation_norm"], logs[-1]["perturbation_norm"], rtol=1e-10)


def test_perturb_mask_prefix_over_nested_params():
  """A prefix mask covers whole sub-trees: no SAM on the 'head' block, SAM on every leaf of 'body'."""
  rng = np.random.default_rng(1)
  body = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
  params = {"body": body, "head": {"w": rng.normal(size=4)}}
  grads = jax.tree.map(lambda v: rng.normal(size=v.shape), params)
  e, _ = ref.perturbation({"bw": grads["body"]["w"], "bb": grads["body"]["b"]}, 0.3, 1.0)
  seen = []
  tx = optax_usam.sam(0.3, perturb_mask={"body": True, "head": False})
  with jax.enable_x64(True):
    tx.update(grads, tx.init(params), params, grad_fn=lambda p: (seen.append(p), p)[1])
  np.testing.assert_allclose(seen[0]["body"]["w"], params["body"]["w"] + e["bw"], rtol=1e-13)
  np.testing.assert_allclose(seen[0]["body"]["b"], params["body"]["b"] + e["bb"], rtol=1e-13)
  np.testing.assert_array_equal(seen[0]["head"]["w"], params["head"]["w"])


@pytest.mark.parametrize(
  "mask,error,match",
  [
    ({"w1": "yes"}, TypeError, "perturb_mask must be"),
    ({"w1": True, "b1": False}, ValueError, "perturb_mask must have the tree structure"),
    (lambda p: {"w1": 1}, TypeError, "perturb_mask must hold bools"),
    (False, ValueError, "perturb_mask selects no floating parameter"),
    ({"w1": False, "b1": False, "w2": False, "b2": False}, ValueError, "selects no floating parameter"),
    (lambda p: jax.tree.map(lambda v: v.ndim > 2, p), ValueError, "use rho=0 for plain gradients"),
  ],
)
def test_bad_perturb_mask(mask, error, match):
  p0, x, y = mlp_problem.problem()
  grad = jax.grad(lambda p: mlp_problem.jax_loss(p, x, y))
  with pytest.raises(error, match=match):
    tx = optax_usam.sam(0.1, perturb_mask=mask)
    jax.jit(lambda p: tx.update(grad(p), tx.init(p), p, grad_fn=grad))(p0)


MASK_WRAPPERS = {
  "masked": lambda sam: optax.masked(sam, WEIGHTS_ONLY),
  "partition": lambda sam: optax.partition(
    {"sam": sam, "plain": optax.identity()}, {k: "sam" if v else "plain" for k, v in WEIGHTS_ONLY.items()}
  ),
  "multi_transform": lambda sam: optax.multi_transform(
    {"sam": sam, "plain": optax.identity()}, {k: "sam" if v else "plain" for k, v in WEIGHTS_ONLY.items()}
  ),
}


@pytest.mark.parametrize("wrap", MASK_WRAPPERS.values(), ids=MASK_WRAPPERS.keys())
@pytest.mark.parametrize("jit", [False, True])
def test_masking_wrappers_are_refused_before_grad_fn_runs(wrap, jit):
  p0, x, y = mlp_problem.problem()
  calls = []
  grad = jax.grad(lambda p: mlp_problem.jax_loss(p, x, y))
  tx = optax.chain(wrap(optax_usam.sam(0.1)), optax.sgd(0.1))
  update = lambda g, s, p: tx.update(g, s, p, grad_fn=lambda q: (calls.append(q), grad(q))[1])
  with pytest.raises(ValueError, match="perturb_mask"):
    (jax.jit(update) if jit else update)(grad(p0), tx.init(p0), p0)
  assert calls == []


def test_masked_base_optimizer_after_sam_is_fine():
  """The refusal is about unified_sam itself: a masked base optimizer after it is ordinary optax."""
  p0, x, y = mlp_problem.problem()
  grad = jax.grad(lambda p: mlp_problem.jax_loss(p, x, y))
  tx = optax.chain(optax_usam.sam(0.1, perturb_mask=WEIGHTS_ONLY), optax.masked(optax.sgd(0.1), WEIGHTS_ONLY))
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.asarray, p0)
    updates, _ = tx.update(grad(params), tx.init(params), params, grad_fn=grad)
    e, _ = ref.perturbation(ref.mlp_grad(p0, x, y), 0.1, 1.0, mask=WEIGHTS_ONLY)
    g_sam = ref.mlp_grad({k: p0[k] + e[k] for k in p0}, x, y)
  for k, trained in WEIGHTS_ONLY.items():
    np.testing.assert_allclose(updates[k], -0.1 * g_sam[k] if trained else g_sam[k], rtol=1e-10)


# ---------------------------------------------------------------------------- apply_if_finite


def _nan_at_perturbed_point(params):
  """A gradient that is finite at the unperturbed parameters and NaN at the first step's ascent point."""
  grad = lambda p: {"w": 2 * p["w"] + jnp.where(p["w"][0] > 1.0, jnp.nan, 0.0)}
  return grad(params), grad


def test_apply_if_finite_goes_around_the_base_optimizer():
  params = {"w": jnp.array([1.0, 0.0])}
  g, grad = _nan_at_perturbed_point(params)
  tx = optax.chain(optax_usam.sam(0.1), optax.apply_if_finite(optax.sgd(0.1), max_consecutive_errors=3))
  state = tx.init(params)
  updates, state = tx.update(g, state, params, grad_fn=grad)
  np.testing.assert_array_equal(updates["w"], 0.0)
  assert int(state[1].notfinite_count) == 1
  # With rho = 0 the ascent point is params itself: finite, so the step goes through as plain SGD.
  tx0 = optax.chain(optax_usam.sam(0.0), optax.apply_if_finite(optax.sgd(0.1), max_consecutive_errors=3))
  updates, state = tx0.update(g, state, params, grad_fn=grad)
  np.testing.assert_allclose(updates["w"], -0.1 * np.array([2.0, 0.0]), rtol=1e-6)
  assert int(state[1].notfinite_count) == 0


def test_apply_if_finite_around_the_chain_cannot_see_grad_fn():
  """The pitfall the docs warn about: the outer check sees only the incoming, finite gradient."""
  params = {"w": jnp.array([1.0, 0.0])}
  g, grad = _nan_at_perturbed_point(params)
  tx = optax.apply_if_finite(optax.chain(optax_usam.sam(0.1), optax.sgd(0.1)), max_consecutive_errors=3)
  updates, _ = tx.update(g, tx.init(params), params, grad_fn=grad)
  assert np.isnan(updates["w"]).all()


# ---------------------------------------------------------------------------- lookahead


def test_lookahead_takes_unified_sam_with_grad_fn_bound_for_the_step():
  """optax.lookahead passes no extra arguments to the optimizer inside it: its update refuses grad_fn=, and
  without it unified_sam's error says to bind grad_fn for the step, which gives Lookahead over SAM + SGD."""
  p0, x, y = mlp_problem.problem()
  rho, sync_period, slow_step_size, steps = 0.1, 2, 0.5, 5
  fast, slow = dict(p0), dict(p0)
  for t in range(steps):
    g = ref.mlp_grad(fast, x, y)
    e, _ = ref.perturbation(g, rho, 1.0)
    g_sam = ref.mlp_grad({k: fast[k] + e[k] for k in fast}, x, y)
    fast = {k: fast[k] - LR * g_sam[k] for k in fast}
    if (t + 1) % sync_period == 0:
      slow = {k: slow[k] + slow_step_size * (fast[k] - slow[k]) for k in slow}
      fast = dict(slow)
  with jax.enable_x64(True):
    params = optax.LookaheadParams.init_synced(jax.tree.map(jnp.asarray, p0))
    grad = jax.grad(lambda p: mlp_problem.jax_loss(p, x, y))
    sam = optax_usam.sam(rho)
    lookahead = lambda inner: optax.lookahead(optax.chain(inner, optax.sgd(LR)), sync_period, slow_step_size)
    state = lookahead(sam).init(params)
    with pytest.raises(TypeError, match="unexpected keyword argument 'grad_fn'"):  # optax's own signature
      lookahead(sam).update(grad(params.fast), state, params, grad_fn=grad)
    with pytest.raises(
      ValueError, match=r"optax\.lookahead.*functools\.partial\(tx\.update, grad_fn=grad_fn\)"
    ):
      lookahead(sam).update(grad(params.fast), state, params)

    @jax.jit
    def step(params, state):
      bound = optax.GradientTransformation(sam.init, functools.partial(sam.update, grad_fn=grad))
      updates, state = lookahead(bound).update(grad(params.fast), state, params)
      return optax.apply_updates(params, updates), state

    for _ in range(steps):
      params, state = step(params, state)
  _assert_close(params.slow, slow)
  _assert_close(params.fast, fast)


# ---------------------------------------------------------------------------- None and integer leaves


def test_none_leaves_are_absent():
  """None leaves (eqx.filter's non-array fields) are skipped as optax skips them."""
  p0, x, y = mlp_problem.problem()
  want, _ = ref.unified_sam_sgd(p0, lambda p: ref.mlp_grad(p, x, y), 3, 0.1, "1/t", LR, MOMENTUM, WD)
  with jax.enable_x64(True):
    params = {**jax.tree.map(jnp.asarray, p0), "activation": None, "extra": {"scale": None}}
    dense = lambda p: {k: p[k] for k in p0}
    grad = lambda p: {**jax.grad(lambda q: mlp_problem.jax_loss(dense(q), x, y))(p), "extra": {"scale": None}}
    got, _ = _run(_sgd_chain(optax_usam.unified_sam(0.1, "1/t")), params, grad, 3)
  assert got["activation"] is None and got["extra"]["scale"] is None
  _assert_close(got, want)


def test_integer_leaves_kept_out_of_the_optimized_tree():
  """The documented way: optax's optimizers cannot take float0 gradients, so integer leaves become None."""
  p0, x, y = mlp_problem.problem()
  want, _ = ref.unified_sam_sgd(p0, lambda p: ref.mlp_grad(p, x, y), 3, 0.1, 1.0, LR, MOMENTUM, WD)
  with jax.enable_x64(True):
    model = {**jax.tree.map(jnp.asarray, p0), "calls": jnp.asarray(7, jnp.int32)}
    is_float = lambda v: jnp.issubdtype(v.dtype, jnp.inexact)
    trainable = jax.tree.map(lambda v: v if is_float(v) else None, model)
    frozen = jax.tree.map(lambda v: None if is_float(v) else v, model)
    is_none = lambda v: v is None
    combine = lambda t: jax.tree.map(lambda a, b: b if a is None else a, t, frozen, is_leaf=is_none)
    loss = lambda t: mlp_problem.jax_loss({k: v for k, v in combine(t).items() if k != "calls"}, x, y)
    got, _ = _run(_sgd_chain(optax_usam.sam(0.1)), trainable, jax.grad(loss), 3)
  _assert_close(combine(got), want)
  assert int(combine(got)["calls"]) == 7


def test_integer_leaves_inside_the_tree_reach_sgd_as_float0():
  """unified_sam passes a float0 gradient through untouched; optax.sgd itself then rejects it."""
  params = {"w": jnp.array([1.0, -2.0]), "n": jnp.asarray(3, jnp.int32)}
  grad = jax.grad(lambda p: jnp.sum(p["w"] ** 2) * p["n"], allow_int=True)
  sam = optax_usam.sam(0.1)
  out, _ = sam.update(grad(params), sam.init(params), params, grad_fn=grad)
  assert out["n"].dtype == jax.dtypes.float0
  # The gradient of 3 sum(w^2) at the ascent point w + e: 6 (w + e), e SAM's perturbation of g = 6 w.
  e, _ = ref.perturbation({"w": np.array([6.0, -12.0])}, 0.1, 1.0)
  np.testing.assert_allclose(out["w"], 6 * (np.array([1.0, -2.0]) + e["w"]), rtol=1e-6)
  tx = optax.chain(optax_usam.sam(0.1), optax.sgd(0.1))
  with pytest.raises(TypeError, match="float0"):
    tx.update(grad(params), tx.init(params), params, grad_fn=grad)
