"""Tests of optax_usam.flax_linen: SAMTrainState and linen_train_step."""

import functools
import subprocess
import sys

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import optax_usam
from benchmarks import hlo
from optax_usam.flax_linen import SAMTrainState, linen_train_step
from tests import numpy_reference as ref
from tests._hlo import assert_no_control_flow

RHO, LR = 0.3, 0.1


class Net(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dropout -> Dense."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Dense(16)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(3)(x)


def _loss_fn(params, batch_stats, batch, rng):
  logits, updates = Net().apply(
    {"params": params, "batch_stats": batch_stats},
    batch["x"],
    train=True,
    mutable=["batch_stats"],
    rngs={"dropout": rng},
  )
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
  return loss, (updates["batch_stats"], logits)


def _setup(tx: optax.GradientTransformation, seed: int = 0):
  kx, ky, kinit = jax.random.split(jax.random.key(seed), 3)
  batch = {"x": jax.random.normal(kx, (32, 5)), "y": jax.random.randint(ky, (32,), 0, 3)}
  variables = Net().init(kinit, batch["x"], train=False)
  state = SAMTrainState.create(
    apply_fn=Net().apply, params=variables["params"], tx=tx, batch_stats=variables["batch_stats"]
  )
  return state, batch


def test_flax_is_optional(monkeypatch):
  # `import optax_usam` needs no flax; `from optax_usam import *` does, as __all__ lists the Flax names.
  code = (
    "import sys\nimport optax_usam\n"
    "assert 'flax' not in sys.modules, 'flax imported eagerly'\n"
    "assert 'SAMTrainState' in dir(optax_usam) and 'SAMTrainState' in optax_usam.__all__"
  )
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
  monkeypatch.setitem(sys.modules, "flax", None)  # as if flax were not installed
  monkeypatch.delitem(sys.modules, "optax_usam.flax_linen")
  with pytest.raises(ImportError, match=r"SAMTrainState needs flax: pip install 'optax_usam\[flax\]'"):
    _ = optax_usam.SAMTrainState


def test_import_is_lazy():
  assert optax_usam.SAMTrainState is SAMTrainState
  assert optax_usam.linen_train_step is linen_train_step
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    _ = optax_usam.nope


@pytest.mark.parametrize("lambd", [0.5, "1/t"])
def test_apply_gradients_equals_plain_optax_bit_for_bit(lambd):
  tx = optax.chain(optax_usam.unified_sam(RHO, lambd), optax.sgd(LR, momentum=0.9))
  state, batch = _setup(tx)
  rng = jax.random.key(7)

  def grad_fn(params):
    return jax.grad(_loss_fn, has_aux=True)(params, state.batch_stats, batch, rng)[0]

  @jax.jit
  def with_state(state):
    for _ in range(2):
      state = state.apply_gradients(grads=grad_fn(state.params), grad_fn=grad_fn)
    return state

  @jax.jit
  def with_optax(params, opt_state):
    for _ in range(2):
      updates, opt_state = tx.update(grad_fn(params), opt_state, params, grad_fn=grad_fn)
      params = optax.apply_updates(params, updates)
    return params, opt_state

  new_state = with_state(state)
  params, opt_state = with_optax(state.params, state.opt_state)
  assert int(new_state.step) == 2
  jax.tree.map(np.testing.assert_array_equal, new_state.params, params)
  jax.tree.map(np.testing.assert_array_equal, new_state.opt_state, opt_state)
  assert not np.array_equal(params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])


def test_stock_train_state_cannot_take_grad_fn():
  # The reason SAMTrainState exists: the stock class treats grad_fn as a field to replace.
  tx = optax.chain(optax_usam.sam(RHO), optax.sgd(LR))
  state, batch = _setup(tx)
  stock = train_state.TrainState.create(apply_fn=state.apply_fn, params=state.params, tx=tx)
  grad_fn = lambda p: jax.grad(_loss_fn, has_aux=True)(p, state.batch_stats, batch, None)[0]
  with pytest.raises((TypeError, ValueError)):
    stock.apply_gradients(grads=grad_fn(state.params), grad_fn=grad_fn)


def test_overwrite_with_gradient_is_refused():
  state, _ = _setup(optax.chain(optax_usam.sam(RHO), optax.sgd(LR)))
  grads = {"params": state.params, train_state.OVERWRITE_WITH_GRADIENT: {}}
  with pytest.raises(ValueError, match="does not support the '_overwrite_with_gradient' collection"):
    state.apply_gradients(grads=grads, grad_fn=lambda p: p)


@pytest.mark.parametrize("lambd", [1.0, "1-1/t"])
def test_linen_train_step_batchnorm_and_dropout(lambd):
  tx = optax.chain(optax_usam.unified_sam(RHO, lambd), optax.sgd(LR))
  state, batch = _setup(tx, seed=1)
  rng = jax.random.key(3)
  step = jax.jit(functools.partial(linen_train_step, loss_fn=_loss_fn))
  new_state, out = step(state, batch, rng=rng)

  # Independent reference: the two passes written out, e in float64 NumPy.
  (loss1, (stats1, _)), g1 = jax.value_and_grad(_loss_fn, has_aux=True)(
    state.params, state.batch_stats, batch, rng
  )
  e = ref.tree_perturbation(g1, RHO, ref.lambda_at(lambd, 0))
  ascent = jax.tree.map(lambda x, d: (np.asarray(x, np.float64) + d).astype(np.float32), state.params, e)
  (_, (stats2, _)), g2 = jax.value_and_grad(_loss_fn, has_aux=True)(ascent, state.batch_stats, batch, rng)
  expected = jax.tree.map(lambda x, g: x - LR * g, state.params, g2)

  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_state.params, expected
  )
  np.testing.assert_allclose(out.loss, loss1, rtol=1e-6)
  # Batch statistics: those of the first pass, not of the perturbed one.
  # (eager reference vs jitted step: equal up to float32 rounding)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new_state.batch_stats, stats1)
  assert not np.allclose(stats1["BatchNorm_0"]["mean"], stats2["BatchNorm_0"]["mean"])
  assert not np.allclose(stats1["BatchNorm_0"]["mean"], state.batch_stats["BatchNorm_0"]["mean"])

  # Same dropout key in both passes: another key for the second pass moves elsewhere.
  g2_other = jax.grad(_loss_fn, has_aux=True)(ascent, state.batch_stats, batch, jax.random.key(4))[0]
  other = jax.tree.map(lambda x, g: x - LR * g, state.params, g2_other)
  assert not np.allclose(other["Dense_0"]["kernel"], new_state.params["Dense_0"]["kernel"], atol=1e-6)


def test_linen_train_step_sub_batch_ascent():
  tx = optax.chain(optax_usam.sam(RHO), optax.sgd(LR))
  state, batch = _setup(tx, seed=2)
  rng = jax.random.key(5)
  step = jax.jit(functools.partial(linen_train_step, loss_fn=_loss_fn, ascent_fraction=0.25))
  new_state, out = step(state, batch, rng=rng)

  # Reference: ascent direction, loss and statistics from the first 8 of 32 examples,
  # the gradient at the ascent point from all 32.
  head = {k: v[:8] for k, v in batch.items()}
  (loss1, (stats1, _)), g1 = jax.value_and_grad(_loss_fn, has_aux=True)(
    state.params, state.batch_stats, head, rng
  )
  e = ref.tree_perturbation(g1, RHO, 1.0)
  ascent = jax.tree.map(lambda x, d: (np.asarray(x, np.float64) + d).astype(np.float32), state.params, e)
  g2 = jax.grad(_loss_fn, has_aux=True)(ascent, state.batch_stats, batch, rng)[0]
  expected = jax.tree.map(lambda x, g: x - LR * g, state.params, g2)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_state.params, expected
  )
  np.testing.assert_allclose(out.loss, loss1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new_state.batch_stats, stats1)


def test_linen_train_step_averages_batch_stats_over_devices():
  n = 4
  if jax.local_device_count() < n:
    pytest.skip("needs 4 devices (XLA_FLAGS in conftest.py)")
  tx = optax.chain(optax_usam.unified_sam(RHO, 0.5, axis_name="d"), optax.sgd(LR))
  state, batch = _setup(tx, seed=2)
  shards = jax.tree.map(lambda x: x.reshape(n, -1, *x.shape[1:]), batch)
  rng = jax.random.key(5)
  step = jax.pmap(
    lambda s, b, r: linen_train_step(s, b, _loss_fn, r, axis_name="d"),
    axis_name="d",
    in_axes=(None, 0, None),
  )
  new_state, out = step(state, shards, rng)
  per_device = [
    _loss_fn(state.params, state.batch_stats, jax.tree.map(lambda x, i=i: x[i], shards), rng)
    for i in range(n)
  ]
  stats = jax.tree.map(lambda *s: np.mean(np.stack(s), axis=0), *[p[1][0] for p in per_device])
  for i in range(n):
    jax.tree.map(
      lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-7),
      new_state.batch_stats,
      stats,
    )
  np.testing.assert_allclose(out.loss, np.mean([p[0] for p in per_device]), rtol=1e-5)
  # Parameters stay replicated: the gradients were averaged by unified_sam.
  kernel = np.asarray(new_state.params["Dense_0"]["kernel"])
  np.testing.assert_array_equal(kernel, np.broadcast_to(kernel[0], kernel.shape))


def test_linen_train_step_with_an_unbound_axis_is_a_clear_error():
  """axis_name outside pmap/shard_map: the core's ValueError, not JAX's NameError."""
  model = nn.Dense(2)
  params = model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
  tx = optax.chain(optax_usam.sam(0.1), optax.sgd(0.1))
  state = optax_usam.SAMTrainState.create(apply_fn=model.apply, params=params, tx=tx)

  def loss_fn(params, batch_stats, batch, rng):
    return jnp.mean(model.apply({"params": params}, batch) ** 2), (batch_stats, None)

  with pytest.raises(ValueError, match="axis_name='data' is not bound"):
    optax_usam.linen_train_step(state, jnp.ones((4, 3)), loss_fn, None, axis_name="data")


def test_linen_train_step_one_pass_for_momentum_sam():
  """No first pass: two steps equal the hand-written Momentum-SAM steps; loss, aux and statistics are those
  of the pass at the ascent point."""
  mu = 0.9
  tx = optax.chain(optax_usam.momentum_sam(RHO, momentum=mu), optax.sgd(LR))
  state, batch = _setup(tx, seed=4)
  assert not optax_usam.needs_fresh_gradient(state.opt_state)
  step = jax.jit(functools.partial(linen_train_step, loss_fn=_loss_fn))

  params, stats, v = state.params, state.batch_stats, None
  for t in range(2):
    rng = jax.random.key(10 + t)
    state, out = step(state, batch, rng=rng)
    # Reference: e = -rho v / ||v|| (0 on the first step), the one pass at params + e, in float64 NumPy.
    d = jax.tree.map(jnp.zeros_like, params) if v is None else jax.tree.map(jnp.negative, v)
    e = ref.tree_perturbation(d, RHO, 1.0)
    ascent = jax.tree.map(lambda x, d: (np.asarray(x, np.float64) + d).astype(np.float32), params, e)
    (loss, (stats, logits)), g = jax.value_and_grad(_loss_fn, has_aux=True)(ascent, stats, batch, rng)
    v = g if v is None else jax.tree.map(lambda a, b: mu * a + b, v, g)
    params = jax.tree.map(lambda x, gi: x - LR * gi, params, g)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), state.params, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), state.batch_stats, stats)
    np.testing.assert_allclose(out.loss, loss, rtol=1e-5)
    np.testing.assert_allclose(out.aux, logits, rtol=1e-5, atol=1e-6)
  assert int(state.step) == 2


class _NoDropoutNet(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dense: 2 dots forward, 3 backward (the input needs no gradient); no
  dropout, whose random bits would add while loops to the compiled step."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return nn.Dense(4)(nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(16)(x))))


@pytest.mark.parametrize(("sam_tx", "passes"), [(optax_usam.momentum_sam, 1), (optax_usam.sam, 2)])
def test_linen_train_step_compiles_one_pass_for_momentum_sam_and_two_for_sam(sam_tx, passes):
  """The compiled step skips the first pass (Momentum-SAM) or takes it (SAM, the control), in the HLO."""

  def loss_fn(params, batch_stats, batch, rng):
    logits, updates = _NoDropoutNet().apply(
      {"params": params, "batch_stats": batch_stats}, batch[0], train=True, mutable=["batch_stats"]
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
    return loss, (updates["batch_stats"], logits)

  batch = (jnp.ones((8, 5)), jnp.zeros(8, jnp.int32))
  variables = jax.jit(functools.partial(_NoDropoutNet().init, train=False))(jax.random.key(0), batch[0])
  state = SAMTrainState.create(
    apply_fn=_NoDropoutNet().apply,
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    tx=optax.chain(sam_tx(0.05), optax.sgd(0.1, momentum=0.9)),
  )
  step = jax.jit(functools.partial(linen_train_step, loss_fn=loss_fn))
  text = step.lower(state, batch).compile().as_text()
  assert hlo.products(text)[0] == 5 * passes
  assert_no_control_flow(text)


def test_linen_train_step_one_pass_refuses_ascent_fraction():
  state, batch = _setup(optax.chain(optax_usam.momentum_sam(RHO), optax.sgd(LR)))
  with pytest.raises(ValueError, match="ascent_fraction"):
    linen_train_step(state, batch, _loss_fn, jax.random.key(0), ascent_fraction=0.5)


def _stats_loss(returned):
  """A loss_fn over Net returning ``returned(loss, new_batch_stats, logits)``, not the documented form."""

  def loss_fn(params, batch_stats, batch, rng):
    loss, (stats, logits) = _loss_fn(params, batch_stats, batch, rng)
    return returned(loss, stats, logits)

  return loss_fn


@pytest.mark.parametrize(
  ("loss_fn", "error", "match"),
  [
    (
      _stats_loss(lambda loss, s, a: loss),
      TypeError,
      r"loss_fn must return \(loss, \(new_batch_stats, aux\)\)",
    ),
    (_stats_loss(lambda loss, s, a: (loss, s)), TypeError, r"got \(float32\[\], \{'BatchNorm_0'"),
    (_stats_loss(lambda loss, s, a: (loss, a)), TypeError, r"got \(float32\[\], float32\[32,3\]\)"),
    (_stats_loss(lambda loss, s, a: (loss * jnp.ones(3), (s, a))), ValueError, r"must be a scalar"),
    (_stats_loss(lambda loss, s, a: (loss > 0, (s, a))), TypeError, "must be a real floating scalar"),
    (
      _stats_loss(lambda loss, s, a: (loss, ({"x": loss}, a))),
      ValueError,
      r"the new_batch_stats loss_fn returns must have the structure and shapes of state.batch_stats",
    ),
    (_stats_loss(lambda loss, s, a: (loss, (None, a))), ValueError, "got None"),
    (None, TypeError, "loss_fn must be callable"),
  ],
)
def test_a_loss_fn_of_the_wrong_form_is_one_clear_error(loss_fn, error, match):
  state, batch = _setup(optax.chain(optax_usam.sam(RHO), optax.sgd(LR)))
  with pytest.raises(error, match=match):
    jax.jit(functools.partial(linen_train_step, loss_fn=loss_fn))(state, batch, rng=jax.random.key(0))


def test_a_stock_train_state_is_refused_by_name():
  state, batch = _setup(optax.chain(optax_usam.sam(RHO), optax.sgd(LR)))
  stock = train_state.TrainState.create(apply_fn=state.apply_fn, params=state.params, tx=state.tx)
  with pytest.raises(TypeError, match=r"state must be an optax_usam.flax_linen.SAMTrainState; got flax\."):
    linen_train_step(stock, batch, _loss_fn, jax.random.key(0))


def _no_stats_in_variables(params, batch_stats, batch, rng):
  # A loss that leaves batch_stats out when it is None: Flax creates fresh statistics.
  variables = {"params": params} if batch_stats is None else {"params": params, "batch_stats": batch_stats}
  logits, updates = Net().apply(
    variables, batch["x"], train=True, mutable=["batch_stats"], rngs={"dropout": rng}
  )
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), (
    updates["batch_stats"],
    logits,
  )


@pytest.mark.parametrize(
  ("loss_fn", "match"),
  [
    (_loss_fn, r"state.batch_stats is None, but loss_fn's model has batch statistics \(BatchNorm\)"),
    (
      _no_stats_in_variables,
      r"loss_fn returns new_batch_stats \{'BatchNorm_0'.*but state.batch_stats is None",
    ),
  ],
)
def test_a_state_without_batch_stats_for_a_model_with_batchnorm_is_one_clear_error(loss_fn, match):
  state, batch = _setup(optax.chain(optax_usam.sam(RHO), optax.sgd(LR)))
  state = state.replace(batch_stats=None)
  with pytest.raises(ValueError, match=match):
    jax.jit(functools.partial(linen_train_step, loss_fn=loss_fn))(state, batch, rng=jax.random.key(0))


@pytest.mark.parametrize("ascent_fraction", [None, 0.5])
def test_batch_leaves_of_different_leading_sizes_are_refused(ascent_fraction):
  state, batch = _setup(optax.chain(optax_usam.sam(RHO), optax.sgd(LR)))
  batch = {"x": batch["x"], "y": batch["y"][:31]}
  with pytest.raises(
    ValueError, match=r"batch must be a pytree of arrays sharing their leading axis; .*\[31, 32\]"
  ):
    linen_train_step(state, batch, _loss_fn, jax.random.key(0), ascent_fraction=ascent_fraction)


def _data_loss(batch):
  """``_loss_fn`` on ``batch``'s x and y whatever batch it is given: its data comes by closure."""
  return lambda params, batch_stats, _, rng: _loss_fn(params, batch_stats, batch, rng)


def _scaled_loss(params, batch_stats, batch, rng):
  """``_loss_fn`` with its logits divided by ``batch["temperature"]``, a 0-d leaf of the batch."""
  _, (stats, logits) = _loss_fn(params, batch_stats, {"x": batch["x"], "y": batch["y"]}, rng)
  logits = logits / batch["temperature"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), (stats, logits)


@pytest.mark.parametrize(
  ("make_batch", "loss_fn"),
  [
    (lambda batch: {**batch, "temperature": 1.0}, _scaled_loss),
    (lambda batch: {**batch, "temperature": jnp.float32(1.0)}, _scaled_loss),
    (lambda batch: {}, _data_loss),
    (lambda batch: None, _data_loss),
    (lambda batch: (), _data_loss),
  ],
  ids=["python_scalar_leaf", "0d_array_leaf", "empty_dict", "none", "empty_tuple"],
)
def test_a_batch_with_0d_leaves_or_none_trains_as_the_plain_batch(make_batch, loss_fn):
  """0-d leaves and a batch without leaves (loss_fn closes over its data) reach loss_fn unchanged."""
  state, batch = _setup(optax.chain(optax_usam.sam(RHO), optax.sgd(LR)))
  rng = jax.random.key(0)
  want, want_out = jax.jit(functools.partial(linen_train_step, loss_fn=_loss_fn))(state, batch, rng=rng)
  fn = loss_fn(batch) if loss_fn is _data_loss else loss_fn
  got, got_out = jax.jit(functools.partial(linen_train_step, loss_fn=fn))(state, make_batch(batch), rng=rng)
  jax.tree.map(np.testing.assert_array_equal, (got.params, got.batch_stats), (want.params, want.batch_stats))
  np.testing.assert_array_equal(got_out.loss, want_out.loss)


@pytest.mark.parametrize(
  ("make_batch", "shown"),
  [
    (lambda batch: {**batch, "temperature": 1.0}, r"\{'temperature': float32\[\], 'x': float32\[32,5\]"),
    (lambda batch: {}, r"\{\}"),
  ],
  ids=["0d_leaf", "no_leaves"],
)
def test_ascent_fraction_needs_a_leading_axis_on_every_leaf(make_batch, shown):
  state, batch = _setup(optax.chain(optax_usam.sam(RHO), optax.sgd(LR)))
  with pytest.raises(
    ValueError,
    match=rf"ascent_fraction takes the first examples of every leaf of batch, .*; got batch {shown}",
  ):
    linen_train_step(state, make_batch(batch), _loss_fn, jax.random.key(0), ascent_fraction=0.5)


def test_a_state_with_frozen_batch_stats_trains_as_the_plain_one():
  """model.apply(..., mutable=...) returns plain dicts; a state built from flax.core.freeze(variables) has
  FrozenDicts: the same statistics by key path and shape."""
  state, batch = _setup(optax.chain(optax_usam.sam(RHO), optax.sgd(LR)))
  frozen = state.replace(batch_stats=flax.core.freeze(state.batch_stats))
  step = jax.jit(functools.partial(linen_train_step, loss_fn=_loss_fn))
  want, _ = step(state, batch, rng=jax.random.key(0))
  got, _ = step(frozen, batch, rng=jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, (got.params, got.batch_stats), (want.params, want.batch_stats))


SAM_SECOND = optax.chain(optax.adamw(1e-3), optax_usam.unified_sam(RHO, "1-1/t"))


def test_unified_sam_after_another_transformation_is_refused_at_create():
  state, _ = _setup(optax.chain(optax_usam.sam(RHO), optax.sgd(LR)))
  with pytest.raises(
    ValueError, match=r"tx puts the Unified SAM transformation after another one \(opt_state\[1\]\)"
  ):
    SAMTrainState.create(apply_fn=state.apply_fn, params=state.params, tx=SAM_SECOND)


def test_unified_sam_after_another_transformation_is_refused_by_the_step():
  """A state built around create (replace, a checkpoint) is caught where the step updates it."""
  state, batch = _setup(optax.chain(optax_usam.sam(RHO), optax.sgd(LR)))
  state = state.replace(tx=SAM_SECOND, opt_state=SAM_SECOND.init(state.params))
  with pytest.raises(ValueError, match=r"state.tx puts the Unified SAM transformation after another one"):
    jax.jit(functools.partial(linen_train_step, loss_fn=_loss_fn))(state, batch, rng=jax.random.key(0))


@pytest.mark.parametrize(
  "tx",
  [
    optax.sgd(LR),  # no Unified SAM: a plain step, whose sgd ignores grad_fn
    optax.chain(optax.inject_hyperparams(optax_usam.sam)(rho=RHO), optax.sgd(LR)),
    optax.chain(optax_usam.reuse_sam(optax_usam.sam(RHO), 2), optax.sgd(LR)),
    optax.MultiSteps(optax.chain(optax_usam.sam(RHO), optax.sgd(LR)), 2),
    optax.chain(optax_usam.sam(RHO), optax.apply_if_finite(optax.sgd(LR), 3)),
  ],
  ids=["no_sam", "inject_hyperparams", "reuse_sam", "multi_steps", "apply_if_finite"],
)
def test_the_wrappers_the_docs_show_pass_the_order_check(tx):
  state, batch = _setup(tx)
  step = jax.jit(functools.partial(linen_train_step, loss_fn=_loss_fn))
  new_state, out = step(state, batch, rng=jax.random.key(0))
  assert int(new_state.step) == 1 and np.isfinite(out.loss)
