"""bfloat16 training with Unified SAM tracks float32 on real data (scikit-learn's digits)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import optax_usam


def _train(dtype: jnp.dtype, lambd: float | str, epochs: int = 25) -> tuple[float, bool]:
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
  acc32, finite32 = _train(jnp.float32, lambd)
  acc16, finite16 = _train(jnp.bfloat16, lambd)
  assert finite32 and finite16
  assert acc32 > 0.9
  assert abs(acc16 - acc32) < 0.03, (acc16, acc32)
