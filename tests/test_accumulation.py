"""Tests of optax_usam.accumulation: microbatch_grad_fn gives full-batch Unified SAM in micro-batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam
from tests import mlp_problem
from tests import numpy_reference as ref

STEPS, RHO, LR, MOMENTUM, WD = 4, 0.1, 0.3, 0.9, 5e-2


@pytest.mark.parametrize("lambd", [0.0, 0.5, 1.0, "1-1/t"])
@pytest.mark.parametrize("num_microbatches", [1, 4, 16])
def test_microbatch_grad_fn_is_full_batch_sam(lambd, num_microbatches):
  p0, x, y = mlp_problem.problem()
  want, _ = ref.unified_sam_sgd(p0, lambda p: ref.mlp_grad(p, x, y), STEPS, RHO, lambd, LR, MOMENTUM, WD)
  with jax.enable_x64(True):
    tx = optax.chain(
      optax_usam.unified_sam(RHO, lambd), optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MOMENTUM)
    )
    grad_of_batch = jax.grad(lambda p, b: mlp_problem.jax_loss(p, *b))
    grad = optax_usam.microbatch_grad_fn(grad_of_batch, (jnp.asarray(x), jnp.asarray(y)), num_microbatches)
    update = jax.jit(lambda p, s: tx.update(grad(p), s, p, grad_fn=grad))
    params = jax.tree.map(jnp.asarray, p0)
    state = tx.init(params)
    for _ in range(STEPS):
      updates, state = update(params, state)
      params = optax.apply_updates(params, updates)
  for k in want:
    np.testing.assert_allclose(params[k], want[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_microbatch_grad_fn_holds_one_micro_batch_of_activations():
  """Compiled temporary memory falls with the micro-batch size: the activations are not all alive at once."""
  rng = np.random.default_rng(0)
  n, d, h = 1024, 16, 512
  params = {"w1": jnp.asarray(rng.normal(size=(d, h)), jnp.float32), "w2": jnp.zeros((h, 1), jnp.float32)}
  batch = (jnp.asarray(rng.normal(size=(n, d)), jnp.float32), jnp.zeros((n, 1), jnp.float32))
  loss = lambda p, b: jnp.mean((jnp.tanh(b[0] @ p["w1"]) @ p["w2"] - b[1]) ** 2)

  def temp_bytes(k):
    grad_fn = optax_usam.microbatch_grad_fn(jax.grad(loss), batch, k)
    return jax.jit(grad_fn).lower(params).compile().memory_analysis().temp_size_in_bytes

  whole, eighth = temp_bytes(1), temp_bytes(8)
  activations = n * h * 4
  assert whole >= activations
  assert eighth < whole - activations // 2


def test_low_precision_and_integer_leaves():
  """bfloat16 gradients are summed wide and returned in bfloat16; an integer leaf's float0 gradient stays."""
  params = {"w": jnp.ones(2, jnp.bfloat16), "n": jnp.asarray(3, jnp.int32)}
  batch = jnp.arange(4096.0).reshape(2048, 2) / 2048
  loss = lambda p, b: jnp.mean(b @ p["w"].astype(jnp.float32)) * p["n"]
  grad_fn = optax_usam.microbatch_grad_fn(jax.grad(loss, allow_int=True), batch, 8)
  out = grad_fn(params)
  assert out["w"].dtype == jnp.bfloat16 and out["n"].dtype == jax.dtypes.float0
  np.testing.assert_allclose(np.asarray(out["w"], np.float32), 3 * np.mean(np.asarray(batch), 0), rtol=1e-2)


@pytest.mark.parametrize(
  "batch,k,error,match",
  [
    ((np.ones((12, 3)), np.ones(12)), 5, ValueError, "must divide the batch size 12"),
    ((np.ones((12, 3)), np.ones(10)), 2, ValueError, "sharing their leading axis"),
    ((np.ones((12, 3)),), 0, ValueError, "num_microbatches"),
    ((np.ones((12, 3)),), 2.0, TypeError, "num_microbatches"),
    ((np.float32(1.0),), 1, ValueError, "leading axis"),
  ],
)
def test_microbatch_grad_fn_bad_input(batch, k, error, match):
  with pytest.raises(error, match=match):
    optax_usam.microbatch_grad_fn(lambda p, b: p, batch, k)


def test_an_empty_batch_is_refused():
  # A mean over no examples would be a NaN gradient.
  grad = jax.grad(lambda params, batch: jnp.mean(batch["x"] @ params["w"]))
  with pytest.raises(ValueError, match="batch has no examples"):
    optax_usam.microbatch_grad_fn(grad, {"x": jnp.zeros((0, 3))}, 1)


@pytest.mark.parametrize("num_microbatches", [1, 4, 16])
def test_with_loss_gives_the_full_batch_loss_and_gradient_of_the_same_passes(num_microbatches):
  """Against the float64 NumPy loss and gradient of the whole batch."""
  p0, x, y = mlp_problem.problem()
  with jax.enable_x64(True):
    value_and_grad = jax.value_and_grad(lambda p, b: mlp_problem.jax_loss(p, *b))
    fn = optax_usam.microbatch_grad_fn(
      value_and_grad, (jnp.asarray(x), jnp.asarray(y)), num_microbatches, with_loss=True
    )
    loss, grads = jax.jit(fn)(jax.tree.map(jnp.asarray, p0))
  assert loss.dtype == jnp.float64 and loss.shape == ()
  np.testing.assert_allclose(loss, ref.mlp_loss(p0, x, y), rtol=1e-13)
  want = ref.mlp_grad(p0, x, y)
  for k in want:
    np.testing.assert_allclose(grads[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_has_aux_stacks_each_micro_batchs_aux_and_keeps_the_gradients():
  p0, x, y = mlp_problem.problem()
  params, batch = jax.tree.map(jnp.asarray, p0), (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
  params = jax.tree.map(lambda v: v.astype(jnp.float32), params)

  def loss_aux(p, b):
    residual = jnp.tanh(b[0] @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"] - b[1]
    return mlp_problem.jax_loss(p, *b), {"residual": residual, "count": jnp.asarray(b[0].shape[0])}

  fn = optax_usam.microbatch_grad_fn(
    jax.value_and_grad(loss_aux, has_aux=True), batch, 4, with_loss=True, has_aux=True
  )
  (loss, aux), grads = fn(params)
  full_loss, full_aux = loss_aux(params, batch)
  np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
  assert aux["residual"].shape == (4, 4, 3) and aux["count"].tolist() == [4, 4, 4, 4]
  np.testing.assert_allclose(aux["residual"].reshape(16, 3), full_aux["residual"], rtol=1e-5, atol=1e-6)
  plain = optax_usam.microbatch_grad_fn(jax.grad(lambda p, b: loss_aux(p, b)[0]), batch, 4)(params)
  jax.tree.map(np.testing.assert_array_equal, grads, plain)


def test_with_loss_sums_a_low_precision_loss_wide():
  """A bfloat16 loss is accumulated in float32 and returned in bfloat16, like the gradients."""
  params = {"w": jnp.ones(2, jnp.bfloat16)}
  batch = jnp.arange(4096.0).reshape(2048, 2) / 2048
  loss = lambda p, b: jnp.mean(b.astype(jnp.bfloat16) @ p["w"])
  fn = optax_usam.microbatch_grad_fn(jax.value_and_grad(loss), batch, 8, with_loss=True)
  value, grads = fn(params)
  assert value.dtype == jnp.bfloat16 and grads["w"].dtype == jnp.bfloat16
  np.testing.assert_allclose(float(value), float(np.mean(np.asarray(batch).sum(1))), rtol=1e-2)


PARAMS = {"w": jnp.zeros(2)}
BATCH = {"x": jnp.ones((8, 2)), "y": jnp.arange(8.0)}
_loss = lambda p, b: jnp.mean((b["x"] @ p["w"] - b["y"]) ** 2)


@pytest.mark.parametrize(
  ("batch_grad_fn", "options", "error", "match"),
  [
    # What batch_grad_fn returns is checked when the result is traced: one line naming it.
    (lambda p, b: 1.0, {}, ValueError, r"the gradients batch_grad_fn returns must have the tree structure"),
    (lambda p, b: {"v": jnp.zeros(2)}, {}, ValueError, r"got PyTreeDef\(\{'v': \*\}\), expected"),
    (lambda p, b: {"w": jnp.zeros(3)}, {}, ValueError, r"leaf \['w'\] has shape \(3,\)"),
    (lambda p, b: {"w": jnp.zeros(2, jnp.int32)}, {}, TypeError, r"leaf \['w'\] has dtype int32"),
    (jax.value_and_grad(_loss), {}, TypeError, r"returns \(value, gradients\).*pass with_loss=True"),
    (jax.grad(_loss), {"with_loss": True}, TypeError, r"batch_grad_fn must return \(loss, gradients\)"),
    (
      jax.value_and_grad(_loss),
      {"with_loss": True, "has_aux": True},
      TypeError,
      r"must return \(\(loss, aux\), gradients\) .*got \(float32\[\], \{'w': float32\[2\]\}\)",
    ),
    (
      jax.value_and_grad(lambda p, b: (_loss(p, b), None), has_aux=True),
      {"with_loss": True},
      TypeError,
      r"the loss batch_grad_fn returns must be a real floating scalar, not a tuple: pass has_aux=True",
    ),
    (lambda p, b: (jnp.ones(3), p), {"with_loss": True}, ValueError, r"must be a scalar.*got shape \(3,\)"),
    (lambda p, b: (jnp.ones((), jnp.int32), p), {"with_loss": True}, TypeError, "real floating scalar"),
  ],
)
def test_what_batch_grad_fn_returns_is_checked(batch_grad_fn, options, error, match):
  fn = optax_usam.microbatch_grad_fn(batch_grad_fn, BATCH, 2, **options)
  with pytest.raises(error, match=match):
    jax.jit(fn)(PARAMS)


@pytest.mark.parametrize(
  ("options", "error", "match"),
  [
    ({"has_aux": True}, ValueError, "has_aux=True .* set with_loss=True too"),
    ({"with_loss": 1}, TypeError, "with_loss must be a bool"),
    ({"with_loss": True, "has_aux": "yes"}, TypeError, "has_aux must be a bool"),
  ],
)
def test_the_loss_options_are_checked_at_construction(options, error, match):
  with pytest.raises(error, match=match):
    optax_usam.microbatch_grad_fn(jax.value_and_grad(_loss), BATCH, 2, **options)
