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
