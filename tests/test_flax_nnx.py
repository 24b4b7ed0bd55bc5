"""Tests of Unified SAM with flax.nnx: nnx.Optimizer directly and optax_usam.flax_nnx.sam_update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_usam
from benchmarks import hlo
from optax_usam.flax_nnx import sam_update
from tests import numpy_reference as ref
from tests._hlo import assert_no_control_flow

RHO, LR = 0.3, 0.1


class Net(nnx.Module):
  """Linear -> BatchNorm -> ReLU -> Dropout -> Linear."""

  def __init__(self, rngs: nnx.Rngs):
    self.dense = nnx.Linear(5, 16, rngs=rngs)
    self.bn = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(self.dropout(nnx.relu(self.bn(self.dense(x)))))


def _loss(model: Net, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _data(seed: int = 0):
  kx, ky = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, (32, 5)), jax.random.randint(ky, (32,), 0, 3)


def test_optimizer_update_forwards_grad_fn_bit_for_bit():
  # Without dropout, so a hand-written grad_fn on the pure parameter state suffices.
  model = Net(nnx.Rngs(0, dropout=1))
  model.dropout.deterministic = True
  x, y = _data()
  tx = optax.chain(optax_usam.unified_sam(RHO, "1-1/t"), optax.sgd(LR, momentum=0.9))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.as_pure(params), nnx.as_pure(rest)

  def grad_fn(p):
    return jax.grad(lambda p: _loss(nnx.merge(graphdef, p, rest), x, y))(p)

  @jax.jit
  def plain(params, opt_state):
    updates, opt_state = tx.update(grad_fn(params), opt_state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), opt_state

  expected, expected_state = plain(params, tx.init(params))

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(_loss)(model, x, y)
    optimizer.update(model, grads, grad_fn=grad_fn)

  step(model, optimizer)
  got = nnx.as_pure(nnx.state(model, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  assert int(optax_usam.get_diagnostics(nnx.as_pure(optimizer.opt_state))["count"]) == 1
  np.testing.assert_array_equal(
    optax_usam.get_diagnostics(nnx.as_pure(optimizer.opt_state))["grad_norm"],
    optax_usam.get_diagnostics(expected_state)["grad_norm"],
  )
  assert not np.array_equal(got["dense"]["kernel"], params["dense"]["kernel"])


@pytest.mark.parametrize("lambd", [1.0, "1-1/t"])
def test_sam_update_batchnorm_and_dropout(lambd):
  model = Net(nnx.Rngs(0, dropout=1))
  x, y = _data(1)
  tx = optax.chain(optax_usam.unified_sam(RHO, lambd), optax.sgd(LR))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  before = nnx.clone(model)

  # Independent reference, on clones: a plain first pass, then the second pass on a
  # fresh clone (same RNG count, hence the same dropout mask) with e from float64 NumPy.
  first = nnx.clone(before)
  loss1, g1 = nnx.value_and_grad(_loss)(first, x, y)
  e = ref.tree_perturbation(nnx.as_pure(g1), RHO, ref.lambda_at(lambd, 0))
  params0 = nnx.as_pure(nnx.state(before, nnx.Param))
  second = nnx.clone(before)
  nnx.update(
    second, jax.tree.map(lambda p, d: (np.asarray(p, np.float64) + d).astype(np.float32), params0, e)
  )
  g2 = nnx.as_pure(nnx.grad(_loss)(second, x, y))
  expected = jax.tree.map(lambda p, g: p - LR * g, params0, g2)

  loss = nnx.jit(sam_update, static_argnums=2)(model, optimizer, _loss, x, y)

  got = nnx.as_pure(nnx.state(model, nnx.Param))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected)
  np.testing.assert_allclose(loss, loss1, rtol=1e-6)
  # Batch statistics and RNG count: those after one plain pass, not two passes.
  np.testing.assert_allclose(model.bn.mean[...], first.bn.mean[...], rtol=1e-6)
  np.testing.assert_allclose(model.bn.var[...], first.bn.var[...], rtol=1e-6)
  assert not np.allclose(second.bn.mean[...], first.bn.mean[...])
  assert int(model.dropout.rngs.count[...]) == int(first.dropout.rngs.count[...]) == 1

  # Diagnostics straight from the nnx.Optimizer state: plain arrays, the float64 NumPy values.
  diag = optax_usam.get_diagnostics(optimizer.opt_state)
  assert all(type(v) is type(jnp.zeros(())) for v in diag.values()), {k: type(v) for k, v in diag.items()}
  g1_norm = ref.global_norm(jax.tree.leaves(nnx.as_pure(g1)))
  np.testing.assert_allclose(diag["grad_norm"], g1_norm, rtol=1e-5)
  np.testing.assert_allclose(diag["perturbation_norm"], ref.global_norm(jax.tree.leaves(e)), rtol=1e-5)
  assert int(diag["count"]) == 1

  # The same dropout mask in both passes matters: a different mask moves elsewhere.
  other = nnx.clone(first)  # its RNG count is one ahead: another mask
  nnx.update(other, nnx.state(second, nnx.Param))
  g2_other = nnx.as_pure(nnx.grad(_loss)(other, x, y))
  assert not np.allclose(g2_other["dense"]["kernel"], g2["dense"]["kernel"], atol=1e-6)


def test_sam_update_with_aux():
  model = Net(nnx.Rngs(0, dropout=1))
  x, y = _data(2)
  optimizer = nnx.Optimizer(model, optax.chain(optax_usam.sam(RHO), optax.sgd(LR)), wrt=nnx.Param)

  def loss_aux(model, x, y):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), jnp.argmax(logits, -1)

  loss, preds = sam_update(model, optimizer, loss_aux, x, y, has_aux=True)
  assert preds.shape == (32,) and np.isfinite(loss)
  assert int(optimizer.step[...]) == 1


@pytest.mark.parametrize("has_aux", [False, True])
def test_sam_update_one_pass_for_momentum_sam(has_aux):
  """No first pass: the step's one pass is at the ascent point (the parameters themselves on step 1, where
  e = 0), and the model keeps that pass's statistics and RNG count, as after a plain step."""
  model = Net(nnx.Rngs(0, dropout=1))
  x, y = _data(3)
  optimizer = nnx.Optimizer(model, optax.chain(optax_usam.momentum_sam(RHO), optax.sgd(LR)), wrt=nnx.Param)
  assert not optax_usam.needs_fresh_gradient(optimizer.opt_state)

  def loss_aux(model, x, y):
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return (loss, jnp.argmax(logits, -1)) if has_aux else loss

  # Reference for step 1 (e_1 = 0): one plain pass on a clone.
  plain = nnx.clone(model)
  want_loss, g = nnx.value_and_grad(_loss)(plain, x, y)
  params0 = nnx.as_pure(nnx.state(model, nnx.Param))
  expected = jax.tree.map(lambda p, gi: p - LR * gi, params0, nnx.as_pure(g))

  out = nnx.jit(sam_update, static_argnums=(2,), static_argnames="has_aux")(
    model, optimizer, loss_aux, x, y, has_aux=has_aux
  )
  loss = out[0] if has_aux else out
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  got = nnx.as_pure(nnx.state(model, nnx.Param))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected)
  np.testing.assert_allclose(model.bn.mean[...], plain.bn.mean[...], rtol=1e-6)
  assert int(model.dropout.rngs.count[...]) == int(plain.dropout.rngs.count[...]) == 1

  # Step 2 perturbs along the negative momentum: ||e|| = rho.
  nnx.jit(sam_update, static_argnums=(2,), static_argnames="has_aux")(
    model, optimizer, loss_aux, x, y, has_aux=has_aux
  )
  diag = optax_usam.get_diagnostics(optimizer.opt_state)
  np.testing.assert_allclose(diag["perturbation_norm"], RHO, rtol=1e-5)
  assert int(optimizer.step[...]) == 2 and int(model.dropout.rngs.count[...]) == 2


@pytest.mark.parametrize(("sam_tx", "passes"), [(optax_usam.momentum_sam, 1), (optax_usam.sam, 2)])
def test_sam_update_compiles_one_pass_for_momentum_sam_and_two_for_sam(sam_tx, passes):
  """The compiled step skips the first pass (Momentum-SAM) or takes it (SAM, the control), in the HLO: 2 dots
  forward, 3 backward (the input needs no gradient); no dropout, whose random bits would add while loops."""

  class TwoLayers(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
      self.dense, self.out = nnx.Linear(5, 16, rngs=rngs), nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
      return self.out(nnx.relu(self.dense(x)))

  model = TwoLayers(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.chain(sam_tx(0.05), optax.sgd(0.1)), wrt=nnx.Param)
  step = nnx.jit(lambda m, o, x, y: sam_update(m, o, _loss, x, y))
  text = step.lower(model, optimizer, jnp.ones((8, 5)), jnp.zeros(8, jnp.int32)).compile().as_text()
  assert hlo.products(text)[0] == 5 * passes
  assert_no_control_flow(text)


def _loss_aux(model, x, y):
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


SAM_FIRST = {
  "sam": lambda: optax.chain(optax_usam.sam(RHO), optax.sgd(LR)),
  "momentum_sam": lambda: optax.chain(optax_usam.momentum_sam(RHO), optax.sgd(LR)),
}


@pytest.mark.parametrize("tx", SAM_FIRST.values(), ids=SAM_FIRST.keys())
@pytest.mark.parametrize(
  ("loss_fn", "has_aux", "error", "match"),
  [
    (
      _loss_aux,
      False,
      TypeError,
      r"loss_fn returns \(float32\[\], float32\[32,3\]\), but with has_aux=False",
    ),
    (_loss, True, TypeError, r"loss_fn must return \(loss, aux\) with has_aux=True; got float32\[\]"),
    (_loss, "yes", TypeError, "has_aux must be a bool; got 'yes'"),
    (lambda m, x, y: _loss(m, x, y) * jnp.ones(2), False, ValueError, r"must be a scalar .*got shape \(2,\)"),
    (None, False, TypeError, "loss_fn must be callable"),
  ],
)
def test_a_loss_fn_unlike_has_aux_is_one_clear_error(tx, loss_fn, has_aux, error, match):
  model = Net(nnx.Rngs(0, dropout=1))
  optimizer = nnx.Optimizer(model, tx(), wrt=nnx.Param)
  step = nnx.jit(lambda model, optimizer, x, y: sam_update(model, optimizer, loss_fn, x, y, has_aux=has_aux))
  with pytest.raises(error, match=match):
    step(model, optimizer, *_data())


def test_arguments_of_the_wrong_kind_are_named():
  model = Net(nnx.Rngs(0, dropout=1))
  optimizer = nnx.Optimizer(model, optax.chain(optax_usam.sam(RHO), optax.sgd(LR)), wrt=nnx.Param)
  with pytest.raises(TypeError, match=r"model must be an nnx\.Module; got dict"):
    sam_update({"w": 1.0}, optimizer, _loss, *_data())
  with pytest.raises(
    TypeError, match=r"optimizer must be an nnx\.Optimizer over model; got GradientTransformation"
  ):
    sam_update(model, optax.sgd(LR), _loss, *_data())


def test_unified_sam_after_another_transformation_is_refused():
  model = Net(nnx.Rngs(0, dropout=1))
  tx = optax.chain(optax.adamw(1e-3), optax_usam.unified_sam(RHO, "1/t"))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  with pytest.raises(ValueError, match=r"optimizer.tx puts the Unified SAM transformation after another one"):
    sam_update(model, optimizer, _loss, *_data())
  assert int(optimizer.step[...]) == 0  # refused before any pass


def test_an_optimizer_without_unified_sam_still_steps():
  model = Net(nnx.Rngs(0, dropout=1))
  optimizer = nnx.Optimizer(model, optax.sgd(LR), wrt=nnx.Param)
  assert np.isfinite(sam_update(model, optimizer, _loss, *_data()))
  assert int(optimizer.step[...]) == 1
