"""Tests of optax_usam.transform (unified_sam, sam, usam) against independent references.

The float64 NumPy reference (tests/numpy_reference.py) over every form of lambda and rho, ASAM,
``optax.contrib.sam``, the closed forms of the paper's section 4 on a quadratic, pmap and shard_map
against the sharded reference, bfloat16 against float32 on real data; and the inputs that once gave wrong
numbers with no error (eps below what the norm's dtype holds, out-of-range schedule values).
"""

from __future__ import annotations

import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify
from jax.sharding import NamedSharding, PartitionSpec
from sklearn.datasets import load_digits

import optax_usam
from tests import mlp_problem
from tests import numpy_reference as ref

LAMBDAS = [0.0, 0.5, 1.0, "1/t", "1-1/t", "callable"]


def _lambda_args(lambd):
  """The same lambda for the library (jnp) and the reference (NumPy)."""
  if lambd == "callable":
    # Values exact in float32: schedules get optax's int32 count, so they may compute in float32.
    return (lambda c: 0.25 + 0.5 * (c % 2)), (lambda c: 0.25 + 0.5 * (c % 2))
  return lambd, lambd


def _rho_args(scheduled: bool):
  if not scheduled:
    return 0.1, 0.1
  # Knots on a 1/64 grid so the float32 arithmetic inside optax's schedule is exact.
  return optax.linear_schedule(0.25, 0.0625, 4), (lambda c: 0.25 + (0.0625 - 0.25) * min(c, 4) / 4)


@pytest.mark.parametrize("scheduled_rho", [False, True])
@pytest.mark.parametrize("lambd", LAMBDAS)
def test_matches_numpy_reference_in_a_chain(lambd, scheduled_rho):
  steps, lr, momentum, wd = 6, 0.3, 0.9, 5e-2
  p0, x, y = mlp_problem.problem()
  lam_jax, lam_np = _lambda_args(lambd)
  _, rho_np = _rho_args(scheduled_rho)
  want, logs = ref.unified_sam_sgd(
    p0, lambda p: ref.mlp_grad(p, x, y), steps, rho_np, lam_np, lr, momentum, wd
  )

  with jax.enable_x64(True):
    rho_jax, _ = _rho_args(scheduled_rho)
    tx = optax.chain(
      optax_usam.unified_sam(rho_jax, lam_jax),
      optax.add_decayed_weights(wd),
      optax.sgd(lr, momentum=momentum),
    )
    params = jax.tree.map(jnp.asarray, p0)
    state = tx.init(params)
    grad = jax.grad(mlp_problem.jax_loss)

    @jax.jit
    def step(params, state):
      updates, state = tx.update(grad(params, x, y), state, params, grad_fn=lambda q: grad(q, x, y))
      return optax.apply_updates(params, updates), state

    for t in range(steps):
      params, state = step(params, state)
      diag = optax_usam.get_diagnostics(state)
      assert int(diag["count"]) == t + 1
      for key in ("grad_norm", "lambd", "rho", "perturbation_norm"):
        np.testing.assert_allclose(diag[key], logs[t][key], rtol=1e-10, atol=1e-14, err_msg=key)

    assert params["w1"].dtype == jnp.float64
    for k in want:
      np.testing.assert_allclose(params[k], want[k], rtol=1e-10, atol=1e-13, err_msg=k)
    # The perturbation mattered: plain SGD from the same start ends elsewhere.
    plain, _ = ref.unified_sam_sgd(p0, lambda p: ref.mlp_grad(p, x, y), steps, 0.0, 0.0, lr, momentum, wd)
    assert max(np.max(np.abs(plain[k] - want[k])) for k in want) > 1e-4


def test_adaptive_in_a_chain_matches_numpy():
  """ASAM x unified lambda with a callable mask leaving vectors out, two steps of plain SGD."""
  p0, x, y = mlp_problem.problem(6)
  rho, lambd, eta, lr = 0.5, 0.5, 0.01, 0.1
  p = {k: v.copy() for k, v in p0.items()}
  for _ in range(2):
    scales = {k: np.abs(v) + eta if v.ndim > 1 else None for k, v in p.items()}
    e, norm = ref.perturbation(ref.mlp_grad(p, x, y), rho, lambd, scales=scales)
    g_sam = ref.mlp_grad({k: p[k] + e[k] for k in p}, x, y)
    p = {k: p[k] - lr * g_sam[k] for k in p}
  with jax.enable_x64(True):
    tx = optax.chain(
      optax_usam.unified_sam(
        rho,
        lambd,
        adaptive=True,
        adaptive_eta=eta,
        adaptive_mask=lambda q: jax.tree.map(lambda v: v.ndim > 1, q),
      ),
      optax.sgd(lr),
    )
    params = jax.tree.map(jnp.asarray, p0)
    state = tx.init(params)
    grad = jax.grad(mlp_problem.jax_loss)
    for _ in range(2):
      u, state = tx.update(grad(params, x, y), state, params, grad_fn=lambda q: grad(q, x, y))
      params = optax.apply_updates(params, u)
    for k in p:
      np.testing.assert_allclose(params[k], p[k], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(optax_usam.get_diagnostics(state)["grad_norm"], norm, rtol=1e-10)


def test_sam_equals_optax_contrib_sam():
  p0, x, y = mlp_problem.problem(1)
  rho, lr = 0.1, 0.2
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.asarray, p0)
    grad = jax.grad(mlp_problem.jax_loss)
    ours = optax.chain(optax_usam.unified_sam(rho, 1.0), optax.sgd(lr))
    theirs = optax.contrib.sam(
      optax.sgd(lr),
      optax.chain(optax.contrib.normalize(), optax.sgd(rho)),
      opaque_mode=True,
    )
    a, b = params, params
    sa, sb = ours.init(a), theirs.init(b)
    for _ in range(5):
      ua, sa = ours.update(grad(a, x, y), sa, a, grad_fn=lambda q: grad(q, x, y))
      ub, sb = theirs.update(grad(b, x, y), sb, b, grad_fn=lambda q, _: grad(q, x, y))
      a, b = optax.apply_updates(a, ua), optax.apply_updates(b, ub)
    chex.assert_trees_all_close(a, b, rtol=1e-10, atol=1e-14)
    assert not np.allclose(a["w1"], p0["w1"])


@pytest.mark.parametrize("schedule,constant", [("1/t", 1.0), ("1-1/t", 0.0)])
def test_time_varying_lambda_first_step(schedule, constant):
  p0, x, y = mlp_problem.problem(2)
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), p0)
  grad = jax.grad(mlp_problem.jax_loss)
  g = grad(params, x, y)
  gf = lambda q: grad(q, x, y)
  a = optax_usam.unified_sam(0.2, schedule)
  b = optax_usam.unified_sam(0.2, constant)
  ua, sa = a.update(g, a.init(params), params, grad_fn=gf)
  ub, _ = b.update(g, b.init(params), params, grad_fn=gf)
  chex.assert_trees_all_equal(ua, ub)
  assert int(sa.count) == 1 and float(sa.lambd) == constant
  # From the second step on the schedule is at 1/2 and differs from the constant.
  ua2, sa2 = a.update(g, sa, params, grad_fn=gf)
  assert float(sa2.lambd) == 0.5 and int(sa2.count) == 2
  assert not np.allclose(ua2["w1"], ub["w1"])


def test_sam_and_usam_aliases():
  p0, x, y = mlp_problem.problem(3)
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), p0)
  grad = jax.grad(mlp_problem.jax_loss)
  g, gf = grad(params, x, y), (lambda q: grad(q, x, y))
  for alias, lambd in ((optax_usam.sam, 1.0), (optax_usam.usam, 0.0)):
    ua, _ = alias(0.1).update(g, alias(0.1).init(params), params, grad_fn=gf)
    tx = optax_usam.unified_sam(0.1, lambd)
    ub, _ = tx.update(g, tx.init(params), params, grad_fn=gf)
    chex.assert_trees_all_equal(ua, ub)


def test_jit_and_eager_agree():
  p0, x, y = mlp_problem.problem(4)
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), p0)
  grad = jax.grad(mlp_problem.jax_loss)
  tx = optax.chain(optax_usam.unified_sam(0.1, "1-1/t"), optax.sgd(0.1, momentum=0.9))

  def step(params, state):
    u, state = tx.update(grad(params, x, y), state, params, grad_fn=lambda q: grad(q, x, y))
    return optax.apply_updates(params, u), state

  a = b = params
  sa = sb = tx.init(params)
  jitted = jax.jit(step)
  for _ in range(4):
    a, sa = step(a, sa)
    b, sb = jitted(b, sb)
  chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(sa, sb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lambd", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_zero_gradient_gives_finite_result(lambd, dtype):
  params = {"w": jnp.ones((3,), dtype), "b": jnp.zeros((), dtype)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  seen = []

  def grad_fn(q):
    seen.append(q)
    return jax.tree.map(jnp.zeros_like, q)

  tx = optax_usam.unified_sam(0.1, lambd)
  out, state = tx.update(zeros, tx.init(params), params, grad_fn=grad_fn)
  chex.assert_tree_all_finite((out, state))
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, seen[0]), jax.tree.map(np.asarray, params))
  assert float(state.perturbation_norm) == 0.0


def test_integer_leaves_left_untouched():
  params = {"w": jnp.array([1.0, -2.0]), "step": jnp.array(7, jnp.int32)}
  loss = lambda p: jnp.sum(p["w"] ** 2) * p["step"]
  grad = jax.grad(loss, allow_int=True)
  seen = []

  def grad_fn(q):
    seen.append(q)
    return grad(q)

  tx = optax_usam.sam(0.5)
  out, state = tx.update(grad(params), tx.init(params), params, grad_fn=grad_fn)
  assert seen[0]["step"] is params["step"]
  # The norm ignores the integer leaf: ||e|| = rho and e points along dw = 14 w.
  np.testing.assert_allclose(float(state.grad_norm), 14 * np.sqrt(5.0), rtol=1e-6)
  np.testing.assert_allclose(seen[0]["w"], params["w"] * (1 + 0.5 / np.sqrt(5.0)), rtol=1e-6)
  np.testing.assert_allclose(out["w"], grad(seen[0])["w"], rtol=1e-6)


def _shard_problem():
  p0, x, y = mlp_problem.problem(5)
  return p0, x.reshape(4, 4, 5), y.reshape(4, 4, 3)


@pytest.mark.parametrize("sync", [True, False])
def test_pmap_matches_hand_computed_reference(sync):
  assert jax.device_count() >= 4
  p0, xs, ys = _shard_problem()
  rho, lambd = 0.3, 0.5
  # NumPy reference for one step, computed by hand from the per-shard gradients.
  shard_grads = [ref.mlp_grad(p0, xs[k], ys[k]) for k in range(4)]
  mean = lambda trees: {k: np.mean([t[k] for t in trees], axis=0) for k in p0}
  if sync:
    e, _ = ref.perturbation(mean(shard_grads), rho, lambd)
    want = mean([ref.mlp_grad({k: p0[k] + e[k] for k in p0}, xs[j], ys[j]) for j in range(4)])
  else:
    es = [ref.perturbation(g, rho, lambd)[0] for g in shard_grads]
    want = mean([ref.mlp_grad({k: p0[k] + es[j][k] for k in p0}, xs[j], ys[j]) for j in range(4)])

  tx = optax_usam.unified_sam(rho, lambd, axis_name="batch", sync_perturbation=sync)
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), p0)
  grad = jax.grad(mlp_problem.jax_loss)

  def step(params, state, x, y):
    return tx.update(grad(params, x, y), state, params, grad_fn=lambda q: grad(q, x, y))

  replicate = lambda t: jax.tree.map(lambda v: jnp.stack([v] * 4), t)
  out, state = jax.pmap(step, axis_name="batch", devices=jax.devices()[:4])(
    replicate(params), replicate(tx.init(params)), xs.astype(np.float32), ys.astype(np.float32)
  )
  for k in p0:
    for d in range(4):
      np.testing.assert_allclose(out[k][d], want[k], rtol=2e-5, atol=1e-6, err_msg=k)
  norms = [ref.perturbation(g, rho, lambd)[1] for g in shard_grads]
  want_norm = ref.perturbation(mean(shard_grads), rho, lambd)[1] if sync else np.mean(norms)
  np.testing.assert_allclose(state.grad_norm, np.full(4, want_norm), rtol=1e-5)


@pytest.mark.parametrize("sync", [True, False], ids=["global", "per_device"])
@pytest.mark.parametrize("recipe", ["pmap", "shard_map"])
def test_documented_recipes_without_the_helper(recipe, sync):
  """The pmap and shard_map snippets of docs/distributed.md, on 4 devices, against the sharded reference."""
  rho, lambd = 0.2, 0.5
  params, x, y = mlp_problem.float32_problem()
  loss_fn = lambda p, batch: mlp_problem.jax_loss(p, *batch)
  tx = optax_usam.unified_sam(rho, lambd, axis_name="data", sync_perturbation=sync)
  state = tx.init(params)

  def sam_grad(p: dict, state: optax_usam.UnifiedSAMState, batch: tuple) -> tuple:
    g = jax.grad(loss_fn)(p, batch)
    return tx.update(g, state, p, grad_fn=lambda q: jax.grad(loss_fn)(q, batch))

  if recipe == "pmap":
    split = lambda a: a.reshape(4, -1, a.shape[-1])
    out, state = jax.pmap(sam_grad, axis_name="data", in_axes=(None, None, 0), devices=jax.devices()[:4])(
      params, state, (split(x), split(y))
    )
    out, state = jax.tree.map(lambda a: a[0], (out, state))
  else:
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])

    def local(p: dict, state: optax_usam.UnifiedSAMState, batch: tuple) -> tuple:
      p = jax.tree.map(lambda a: jax.lax.pcast(a, "data", to="varying"), p)
      return sam_grad(p, state, batch)

    batch = jax.device_put((x, y), NamedSharding(mesh, PartitionSpec("data")))
    out, state = jax.jit(
      jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec("data")),
        out_specs=PartitionSpec(),
      )
    )(params, state, batch)
    assert int(state.count) == 1
  p64 = {k: v.astype(np.float64) for k, v in params.items()}
  want, want_norm = ref.sharded_sam_gradient(p64, x, y, rho, lambd, 1 if sync else 4)
  for k in params:
    np.testing.assert_allclose(out[k], want[k], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.grad_norm, want_norm, rtol=1e-5)


@pytest.mark.parametrize(
  "kwargs,error,match",
  [
    ({"rho": -0.1, "lambd_schedule": 1.0}, ValueError, "rho"),
    ({"rho": float("nan"), "lambd_schedule": 1.0}, ValueError, "rho"),
    ({"rho": float("inf"), "lambd_schedule": 1.0}, ValueError, "rho"),
    ({"rho": "0.1", "lambd_schedule": 1.0}, TypeError, "rho"),
    ({"rho": None, "lambd_schedule": 1.0}, TypeError, "rho"),
    ({"rho": True, "lambd_schedule": 1.0}, TypeError, "rho"),
    ({"rho": lambda c: -1.0 + 0 * c, "lambd_schedule": 1.0}, ValueError, "rho"),
    ({"rho": 0.1, "lambd_schedule": 1.5}, ValueError, "lambd_schedule"),
    ({"rho": 0.1, "lambd_schedule": -0.1}, ValueError, "lambd_schedule"),
    ({"rho": 0.1, "lambd_schedule": float("nan")}, ValueError, "lambd_schedule"),
    ({"rho": 0.1, "lambd_schedule": "1/t^2"}, ValueError, "unknown string '1/t\\^2'"),
    ({"rho": 0.1, "lambd_schedule": None}, TypeError, "lambd_schedule"),
    ({"rho": 0.1, "lambd_schedule": lambda c: 2.0 + 0 * c}, ValueError, "lambd_schedule"),
    ({"rho": 0.1, "lambd_schedule": 1.0, "eps": 0.0}, ValueError, "eps"),
    ({"rho": 0.1, "lambd_schedule": 1.0, "eps": -1e-12}, ValueError, "eps"),
    ({"rho": 0.1, "lambd_schedule": 1.0, "eps": -1.0}, ValueError, "eps"),
    # Below float64's smallest normal: unrepresentable for every parameter dtype.
    ({"rho": 0.1, "lambd_schedule": 1.0, "eps": 1e-320}, ValueError, "eps"),
    ({"rho": 0.1, "lambd_schedule": 1.0, "eps": "small"}, TypeError, "eps"),
    ({"rho": 0.1, "lambd_schedule": 1.0, "sync_perturbation": "yes"}, TypeError, "sync_perturbation"),
    ({"rho": 0.1, "lambd_schedule": 1.0, "axis_name": ["batch"]}, TypeError, "axis_name"),
    ({"rho": 0.1, "lambd_schedule": 1.0, "adaptive": 1}, TypeError, "adaptive"),
    ({"rho": 0.1, "lambd_schedule": 1.0, "check_values": "yes"}, TypeError, "check_values"),
    (
      {"rho": 0.1, "lambd_schedule": 1.0, "adaptive": True, "adaptive_eta": -0.1},
      ValueError,
      "adaptive_eta",
    ),
    ({"rho": 0.1, "lambd_schedule": 1.0, "adaptive_mask": {"w": True}}, ValueError, "adaptive_mask"),
    (
      {"rho": 0.1, "lambd_schedule": 1.0, "adaptive": True, "adaptive_mask": {"w": "yes"}},
      TypeError,
      "adaptive_mask",
    ),
    (
      {"rho": lambda c: jnp.full((1,), 0.1), "lambd_schedule": 1.0},
      ValueError,
      "rho: a schedule must return a scalar",
    ),
    (
      {"rho": 0.1, "lambd_schedule": lambda c: jnp.ones(2)},
      ValueError,
      "lambd_schedule: a schedule must return a",
    ),
    # A schedule's value must be a real number: None failed at update, "0.5" was used as 0.5, complex warned.
    ({"rho": lambda c: None, "lambd_schedule": 1.0}, TypeError, "rho: a schedule must return a real number"),
    ({"rho": lambda c: "0.5", "lambd_schedule": 1.0}, TypeError, "rho: a schedule must return a real number"),
    ({"rho": lambda c: jnp.asarray(0.1 + 1j), "lambd_schedule": 1.0}, TypeError, "rho: .*dtype=complex64"),
    (
      {"rho": 0.1, "lambd_schedule": lambda c: "0.5"},
      TypeError,
      "lambd_schedule: a schedule must return a real",
    ),
    (
      {"rho": 0.1, "lambd_schedule": lambda c: 0.5 + 0.5j},
      TypeError,
      "lambd_schedule: a schedule must return",
    ),
  ],
)
def test_bad_construction_arguments(kwargs, error, match):
  with pytest.raises(error, match=match):
    optax_usam.unified_sam(**kwargs)


def _update_args():
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros((3,))}
  grads = jax.tree.map(lambda v: 0.5 * jnp.ones_like(v), params)
  return params, grads


@pytest.mark.parametrize(
  "grad_fn,error,match",
  [
    (None, ValueError, "grad_fn"),
    ("not callable", TypeError, "grad_fn"),
    (lambda q: {"w": q["w"]}, ValueError, "tree structure"),
    (lambda q: {"w": q["w"][0], "b": q["b"]}, ValueError, r"\['w'\] has shape \(3,\)"),
    (lambda q: {"w": q["w"].astype(jnp.bfloat16), "b": q["b"]}, TypeError, r"\['w'\] has dtype bfloat16"),
  ],
)
@pytest.mark.parametrize("jit", [False, True])
def test_bad_grad_fn(grad_fn, error, match, jit):
  params, grads = _update_args()
  tx = optax.chain(optax_usam.sam(0.1), optax.sgd(0.1))
  state = tx.init(params)
  update = lambda g, s, p: tx.update(g, s, p, grad_fn=grad_fn)
  with pytest.raises(error, match=match):
    (jax.jit(update) if jit else update)(grads, state, params)


def test_params_none_and_mismatched_updates():
  params, grads = _update_args()
  tx = optax_usam.sam(0.1)
  with pytest.raises(ValueError, match="params=None"):
    tx.init(None)
  state = tx.init(params)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(grads, state, None, grad_fn=lambda q: q)
  with pytest.raises(ValueError, match="updates must have the tree structure"):
    tx.update({"w": grads["w"]}, state, params, grad_fn=lambda q: q)


@pytest.mark.parametrize(
  ("state", "got"),
  [
    (None, "got None"),
    (optax.EmptyState(), "got a state of type EmptyState"),
    ((optax.EmptyState(),), "got a state of type tuple"),
  ],
)
def test_update_refuses_a_state_its_init_did_not_return(state, got):
  params, grads = _update_args()
  with pytest.raises(TypeError, match=f"state must be the UnifiedSAMState its init returned; {got}"):
    optax_usam.sam(0.1).update(grads, state, params, grad_fn=lambda q: q)


@pytest.mark.parametrize(
  "wrap",
  [
    lambda t: t,
    lambda t: optax_usam.reuse_sam(t, 2),
    lambda t: optax_usam.randomized_sam(t, 0.5),
  ],
)
def test_state_can_be_donated(wrap):
  """Every state leaf is its own buffer, so jit(..., donate_argnums) accepts it from init on."""
  params = {"w": jnp.ones((3,)), "b": jnp.zeros((2,))}
  tx = optax.chain(wrap(optax_usam.unified_sam(0.1, "1-1/t")), optax.sgd(0.1, momentum=0.9))
  loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state):
    u, state = tx.update(jax.grad(loss)(params), state, params, grad_fn=jax.grad(loss))
    return optax.apply_updates(params, u), state

  state = tx.init(params)
  ids = [id(x) for x in jax.tree.leaves(state)]
  assert len(set(ids)) == len(ids)
  for _ in range(3):
    params, state = step(params, state)
  chex.assert_tree_all_finite(params)


# ---------------------------------------------------------------------------- eps


QUADRATIC = {"w": jnp.array([1.0, -2.0, 3.0, 0.7]), "b": jnp.array([0.3, 0.1])}
quadratic_grad = jax.grad(lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2))


@pytest.mark.parametrize("eps", [1e-50, 1e-40])
def test_eps_below_float32_is_refused_for_float32_parameters(eps):
  tx = optax_usam.sam(0.1, eps=eps)
  zero = jax.tree.map(jnp.zeros_like, QUADRATIC)
  with pytest.raises(ValueError, match=r"eps=1e-[45]0 .* float32"):
    tx.update(zero, tx.init(QUADRATIC), QUADRATIC, grad_fn=lambda p: zero)


def test_tiny_eps_is_fine_in_float64():
  with jax.enable_x64(True):
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), QUADRATIC)
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = optax_usam.sam(0.1, eps=1e-50)
    out, state = tx.update(zero, tx.init(params), params, grad_fn=lambda p: p)
    chex.assert_trees_all_equal(out, params)  # e = 0: grad_fn saw params unchanged
    assert float(optax_usam.get_diagnostics(state)["perturbation_norm"]) == 0.0


def test_zero_gradient_with_traced_eps_that_underflows_gives_no_nan():
  """Under inject_hyperparams + jit eps is traced and cannot be checked: a zero gradient still gives e = 0."""
  tx = optax.inject_hyperparams(optax_usam.sam)(rho=0.1, eps=1e-12)
  state = tx.init(QUADRATIC)
  state.hyperparams["eps"] = jnp.asarray(0.0, jnp.float32)
  zero = jax.tree.map(jnp.zeros_like, QUADRATIC)
  out, state = jax.jit(lambda s: tx.update(zero, s, QUADRATIC, grad_fn=lambda p: p))(state)
  chex.assert_trees_all_equal(out, QUADRATIC)
  chex.assert_tree_all_finite(optax_usam.get_diagnostics(state))


# ---------------------------------------------------------------------------- out-of-range schedule values


@pytest.mark.parametrize(
  "rho,lambd",
  [
    (0.1, lambda c: jnp.where(c >= 2, 1.5, 0.5)),
    (lambda c: jnp.where(c >= 2, -0.1, 0.1), 1.0),
    (lambda c: jnp.where(c >= 2, jnp.nan, 0.1), 0.5),
  ],
  ids=["lambda-1.5", "rho-negative", "rho-nan"],
)
def test_out_of_range_schedule_values_are_caught_by_checkify(rho, lambd):
  tx = optax_usam.unified_sam(rho, lambd, check_values=True)
  grad = quadratic_grad

  def step(state):
    return tx.update(grad(QUADRATIC), state, QUADRATIC, grad_fn=grad)[1]

  checked = jax.jit(checkify.checkify(step, errors=checkify.user_checks))
  state = tx.init(QUADRATIC)
  for _ in range(2):
    err, state = checked(state)
    err.throw()
  err, state = checked(state)
  with pytest.raises(checkify.JaxRuntimeError, match=r"(rho|lambd_schedule) must be .* when the step ran"):
    err.throw()
  # Not checkified (and without check_values), the same step runs; the logged ||e|| is still a norm.
  unchecked = optax_usam.unified_sam(rho, lambd)
  _, plain = unchecked.update(grad(QUADRATIC), state, QUADRATIC, grad_fn=grad)
  assert not float(optax_usam.get_diagnostics(plain)["perturbation_norm"]) < 0


def test_check_values_reports_an_ascent_point_beyond_the_parameters_dtype():
  """float16 holds 65504: x + e = 1 + 10 * 1e4 is inf there, and grad_fn would be evaluated at inf."""
  params = {"w": jnp.array([1.0, 2.0], jnp.float16), "b": jnp.zeros(2, jnp.float16)}
  grads = {"w": jnp.array([1e4, 0.0], jnp.float16), "b": jnp.zeros(2, jnp.float16)}

  def step(tx):
    run = lambda s: tx.update(grads, s, params, grad_fn=lambda q: q)[0]
    return jax.jit(checkify.checkify(run, errors=checkify.user_checks))(tx.init(params))

  err, out = step(optax_usam.unified_sam(10.0, 0.0, check_values=True))
  assert np.isinf(out["w"][0])
  with pytest.raises(checkify.JaxRuntimeError, match=r"params \+ e is not finite at leaf \['w'\].*float16"):
    err.throw()
  # In range, and unchecked, nothing is reported.
  assert step(optax_usam.unified_sam(1.0, 0.0, check_values=True))[0].get() is None
  assert step(optax_usam.unified_sam(10.0, 0.0))[0].get() is None


# ---------------------------------------------------------------------------- schedules under vmap


def test_lambda_and_rho_can_be_vmapped_through_unified_sam():
  def run(lam, rho):
    tx = optax.chain(
      optax_usam.unified_sam(rho=lambda count: rho, lambd_schedule=lambda count: lam), optax.sgd(0.1)
    )
    x = jnp.array([1.0, -0.5])
    state = tx.init(x)
    grad_fn = jax.grad(lambda p: jnp.sum(p**4) / 4)
    for _ in range(3):
      updates, state = tx.update(grad_fn(x), state, x, grad_fn=grad_fn)
      x = optax.apply_updates(x, updates)
    return x

  lams, rhos = jnp.array([0.0, 0.5, 1.0]), jnp.array([0.05, 0.1, 0.2])
  batched = jax.jit(jax.vmap(run))(lams, rhos)
  for i in range(3):
    np.testing.assert_allclose(batched[i], run(float(lams[i]), float(rhos[i])), rtol=1e-6)


# ---------------------------------------------------------------------------- closed forms on h x^2 / 2


def _quadratic_run(h: float, gamma: float, rho: float, lambd: float, steps: int, x0: float = 1.0):
  """The iterates x_1..x_steps of Unified SAM + SGD on h x^2 / 2, in float64."""
  with jax.enable_x64(True):
    tx = optax.chain(optax_usam.unified_sam(rho, lambd), optax.sgd(gamma))
    grad_fn = lambda x: h * x

    def step(carry, _):
      x, state = carry
      updates, state = tx.update(grad_fn(x), state, x, grad_fn=grad_fn)
      x = optax.apply_updates(x, updates)
      return (x, state), x

    x = jnp.asarray(x0)
    return np.asarray(jax.lax.scan(step, (x, tx.init(x)), None, length=steps)[1])


@pytest.mark.parametrize("threshold", [1.9, 1.99, 2.01, 2.1])
@pytest.mark.parametrize(("h", "rho"), [(4.0, 0.05), (1.0, 0.5)])
def test_usam_on_a_quadratic_converges_iff_gamma_h_one_plus_rho_h_below_two(threshold, h, rho):
  gamma = threshold / (h * (1 + rho * h))
  path = _quadratic_run(h, gamma, rho, 0.0, 3000)
  if threshold < 2:
    assert abs(path[-1]) < 1e-10
  else:
    assert abs(path[-1]) > 1e10


@pytest.mark.parametrize(("h", "gamma", "rho"), [(4.0, 0.1, 0.05), (2.0, 0.3, 0.5), (10.0, 0.05, 0.05)])
def test_usam_on_a_quadratic_contracts_by_one_minus_gamma_h_one_plus_rho_h(h, gamma, rho):
  path = _quadratic_run(h, gamma, rho, 0.0, 30, x0=1.5)
  factor = 1 - gamma * h - gamma * rho * h**2
  np.testing.assert_allclose(path, 1.5 * factor ** np.arange(1, 31), rtol=1e-12)


@pytest.mark.parametrize(("lambd", "xbar"), [(1.0, 0.0125), (0.5, 0.00641)])
def test_normalized_sam_on_a_quadratic_ends_on_the_period_two_orbit(lambd, xbar):
  h, gamma, rho = 4.0, 0.1, 0.05
  closed_form = gamma * h * rho * lambd / (2 - gamma * h - gamma * rho * (1 - lambd) * h**2)
  assert closed_form == pytest.approx(xbar, rel=1e-3)
  path = _quadratic_run(h, gamma, rho, lambd, 200)
  np.testing.assert_allclose(np.abs(path[-10:]), closed_form, rtol=1e-9)
  assert np.all(np.sign(path[-10:-1]) == -np.sign(path[-9:]))


# ---------------------------------------------------------------------------- bfloat16 on real data


def _train_digits(dtype: jnp.dtype, lambd: float | str, epochs: int = 25) -> tuple[float, bool]:
  """An MLP in ``dtype`` trained with Unified SAM on scikit-learn's digits: (test accuracy, all finite)."""
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target
  rng = np.random.default_rng(0)
  order = rng.permutation(len(x))
  train, test = order[:1300], order[1300:]
  keys = jax.random.split(jax.random.key(0), 2)
  params = {
    "w1": jax.random.normal(keys[0], (64, 128)) / 8.0,
    "b1": jnp.zeros(128),
    "w2": jax.random.normal(keys[1], (128, 10)) / np.sqrt(128),
    "b2": jnp.zeros(10),
  }
  params = jax.tree.map(lambda p: p.astype(dtype), params)

  def loss_fn(p, xb, yb):
    h = jax.nn.relu(xb.astype(dtype) @ p["w1"] + p["b1"])
    logits = (h @ p["w2"] + p["b2"]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  tx = optax.chain(optax_usam.unified_sam(0.05, lambd), optax.sgd(0.1, momentum=0.9))
  state = tx.init(params)

  @jax.jit
  def epoch(params, state, perm):
    def body(carry, idx):
      params, state = carry
      xb, yb = jnp.asarray(x)[idx], jnp.asarray(y)[idx]
      grad = jax.grad(loss_fn)
      u, state = tx.update(grad(params, xb, yb), state, params, grad_fn=lambda q: grad(q, xb, yb))
      return (optax.apply_updates(params, u), state), None

    (params, state), _ = jax.lax.scan(body, (params, state), perm.reshape(-1, 50))
    return params, state

  finite = True
  for e in range(epochs):
    perm = jnp.asarray(np.random.default_rng(e).permutation(train))
    params, state = epoch(params, state, perm)
    finite &= all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves((params, state)))
    assert all(v.dtype == dtype for v in jax.tree.leaves(params))
  h = jax.nn.relu(jnp.asarray(x[test]).astype(dtype) @ params["w1"] + params["b1"])
  accuracy = float(jnp.mean(jnp.argmax(h @ params["w2"] + params["b2"], -1) == y[test]))
  return accuracy, finite


@pytest.mark.parametrize("lambd", [1.0, "1-1/t"])
def test_bfloat16_tracks_float32(lambd):
  acc32, finite32 = _train_digits(jnp.float32, lambd)
  acc16, finite16 = _train_digits(jnp.bfloat16, lambd)
  assert finite32 and finite16
  assert acc32 > 0.9
  assert abs(acc16 - acc32) < 0.03, (acc16, acc32)


# The SAM family's keyword options: written once, in unified_sam's signature (with_sam_options).
MEMBERS = {
  "sam": (optax_usam.sam, {}),
  "usam": (optax_usam.usam, {}),
  "vasso": (optax_usam.vasso, {"theta": 0.4}),
  "friendly_sam": (optax_usam.friendly_sam, {"sigma": 0.5, "momentum": 0.8}),
  "momentum_sam": (optax_usam.momentum_sam, {"momentum": 0.8}),
  "gsam": (optax_usam.gsam, {"alpha": 0.3}),
  "random_smoothing_sam": (optax_usam.random_smoothing_sam, {"noise_std": 0.01, "gradient_weight": 3.0}),
}
OPTIONS = [
  name
  for name, p in inspect.signature(optax_usam.unified_sam).parameters.items()
  if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "direction"
]


@pytest.mark.parametrize("name", MEMBERS)
def test_members_list_every_option(name):
  member, _ = MEMBERS[name]
  parameters = inspect.signature(member).parameters
  assert [p for p in parameters if p in OPTIONS] == OPTIONS
  for option in OPTIONS:
    assert parameters[option].default == inspect.signature(optax_usam.unified_sam).parameters[option].default
  with pytest.raises(TypeError, match=r"unexpected keyword argument 'rh0'.*options are unified_sam's: eps, "):
    member(0.1, rh0=0.1, **MEMBERS[name][1])


@pytest.mark.parametrize("name", MEMBERS)
def test_inject_hyperparams_reaches_every_numeric_hyperparameter(name):
  # Each numeric hyperparameter set in the injected state under jit gives the three steps of the member built
  # with that value directly (momentum enters the third); one compilation serves them all.
  member, own = MEMBERS[name]
  start = {"rho": 0.05, "eps": 1e-9, "adaptive_eta": 0.02, **own}
  if "lambd_schedule" in inspect.signature(member).parameters:
    start["lambd_schedule"] = 0.7
  changed = {key: value * 0.6 if key != "eps" else 0.5 for key, value in start.items()}
  loss = lambda p: jnp.sum(jnp.cos(p["w"])) + 0.5 * jnp.sum(p["w"] ** 2)
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  injected = optax.inject_hyperparams(member)(**start, adaptive=True)

  def three_steps(tx, state, params=params):
    for _ in range(3):
      g = jax.grad(loss)(params) if optax_usam.needs_fresh_gradient(state) else None
      updates, state = tx.update(g, state, params, grad_fn=jax.grad(loss))
      params = jax.tree.map(lambda p, u: p - 0.5 * u, params, updates)
    return params

  step = jax.jit(lambda state: three_steps(injected, state))

  state = injected.init(params)
  assert set(start) <= set(state.hyperparams)
  for key, value in changed.items():
    hyperparams = {**state.hyperparams, key: jnp.asarray(value, state.hyperparams[key].dtype)}
    direct = member(**{**start, key: value}, adaptive=True)
    want = three_steps(direct, direct.init(params))
    got = step(state._replace(hyperparams=hyperparams))
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6, err_msg=key)
    if (name, key) != ("usam", "eps"):  # lambda = 0: nothing is normalized
      assert not np.allclose(got["w"], step(state)["w"], rtol=1e-5), f"{key} changes nothing"
  assert step._cache_size() == 1


@pytest.mark.parametrize(
  ("rho", "value"),
  [
    (1e39, 1e39),
    (10**40, 1e40),
    # A schedule's value at count 0: it was used as inf, with only NumPy's overflow warning.
    (lambda count: 1e39, 1e39),
    (lambda count: np.float64(1e40), 1e40),
  ],
  ids=["float", "int", "schedule", "numpy-schedule"],
)
def test_a_rho_the_parameters_dtype_cannot_hold_is_refused(rho, value):
  # In float32 the step would compute with rho = inf; float64 parameters hold it.
  grad_fn = lambda p: {"w": 2 * p["w"]}
  params = {"w": jnp.array([3.0, 4.0])}
  tx = optax_usam.unified_sam(rho, 1.0)
  with pytest.raises(ValueError, match=r"rho=1e\+(39|40) is beyond the largest float32"):
    tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
  with jax.enable_x64(True):
    params = {"w": jnp.array([3.0, 4.0], jnp.float64)}
    _, state = tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
    np.testing.assert_allclose(
      float(optax_usam.get_diagnostics(state)["perturbation_norm"]), value, rtol=1e-12
    )


@pytest.mark.parametrize("x64", [False, True])
def test_check_values_reports_a_later_rho_beyond_the_parameters_dtype(x64):
  """rho_2 = 1e39 with float32 parameters: inf in float32 arithmetic (reported as rho), or, computed in
  float64 under x64, an ascent point the float32 step cannot hold (reported there)."""
  grad_fn = lambda p: {"w": 2 * p["w"]}
  with jax.enable_x64(x64):
    params = {"w": jnp.array([3.0, 4.0], jnp.float32)}
    # 0.1, 0.1, then 0.1 * 1e40 = 1e39 (computed, so no constant is cast to float32 with a NumPy warning).
    rho = lambda c: 0.1 * jnp.where(c >= 2, 1e20, 1.0) ** 2
    tx = optax_usam.unified_sam(rho, 1.0, check_values=True)
    run = lambda s: tx.update(grad_fn(params), s, params, grad_fn=grad_fn)[1]
    step = jax.jit(checkify.checkify(run, errors=checkify.user_checks))
    state = tx.init(params)
    for _ in range(2):
      err, state = step(state)
      err.throw()
    err, state = step(state)
  want = (
    r"params \+ e is not finite at leaf \['w'\].*float32"
    if x64
    else r"rho must be .*got inf when the step ran"
  )
  with pytest.raises(checkify.JaxRuntimeError, match=want):
    err.throw()


# What a traced hyperparameter of each member must not be, and what NaN is for all of them.
OUT_OF_RANGE = {
  "rho": -1.0,
  "lambd_schedule": 1.5,
  "eps": -1.0,  # it gave a SAM ||e|| of 0.19 for rho = 0.1 with no word
  "adaptive_eta": -1.0,
  "theta": 1.5,
  "sigma": -1.0,
  "momentum": 1.0,
  "alpha": -1.0,
  "noise_std": -1.0,
  "gradient_weight": 0.0,
}


@pytest.mark.parametrize("name", [*MEMBERS, "unified_sam"])
def test_check_values_covers_every_traced_hyperparameter(name):
  """inject_hyperparams under jit traces each numeric hyperparameter: check_values=True checks all of them."""
  member, own = MEMBERS.get(name, (optax_usam.unified_sam, {"lambd_schedule": 0.5}))
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  grad_fn = jax.grad(lambda p: jnp.sum(jnp.cos(p["w"])) + 0.5 * jnp.sum(p["w"] ** 2))

  def run(injected):
    state = injected.init(params)

    def step(state):
      g = grad_fn(params) if optax_usam.needs_fresh_gradient(state) else None
      return injected.update(g, state, params, grad_fn=grad_fn)[0]

    checked = jax.jit(checkify.checkify(step, errors=checkify.user_checks))
    return state, lambda key, value: checked(
      state._replace(hyperparams={**state.hyperparams, key: jnp.asarray(value, state.hyperparams[key].dtype)})
    )[0]

  state, checked = run(optax.inject_hyperparams(member)(rho=0.05, **own, adaptive=True, check_values=True))
  traced = [key for key, value in state.hyperparams.items() if jnp.issubdtype(value.dtype, jnp.floating)]
  assert set(traced) >= {"rho", "eps", "adaptive_eta", *own}
  assert checked("rho", 0.05).get() is None
  for key in traced:
    for bad in (OUT_OF_RANGE[key], float("nan")):
      message = checked(key, bad).get()
      assert message is not None and message.startswith(f"{key} must be"), (key, bad, message)
  _, unchecked = run(optax.inject_hyperparams(member)(rho=0.05, **own, adaptive=True))
  assert unchecked("eps", -1.0).get() is None
