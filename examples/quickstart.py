"""Quickstart: Unified SAM in an optax chain, training a Flax Linen MLP on scikit-learn's digits.

The 8x8 handwritten digits ship with scikit-learn (no download); a run takes seconds on a CPU::

  python examples/quickstart.py
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import optax_usam
from optax_usam.flax_linen import SAMTrainState, linen_train_step


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(10)(nn.relu(nn.Dense(128)(x)))


model = MLP()


def loss_fn(params, batch_stats, batch, rng):
  # linen_train_step's loss: (loss, (new batch statistics, aux)); this model has no BatchNorm and no dropout.
  logits = model.apply({"params": params}, batch["x"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
  return loss, (None, logits)


@jax.jit
def train_step(state: SAMTrainState, batch: dict[str, jax.Array]) -> tuple[SAMTrainState, jax.Array]:
  # Two gradients: at the parameters, then at the point the transformation perturbs them to.
  state, out = linen_train_step(state, batch, loss_fn)
  return state, out.loss


@jax.jit
def accuracy(params, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(model.apply({"params": params}, x), -1) == y)


def main(epochs: int = 10, batch_size: int = 64, seed: int = 0) -> float:
  """Trains, prints the test accuracy after each epoch, and returns the last one."""
  x, y = load_digits(return_X_y=True)
  x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(y))
  test, train = order[:500], order[500:]

  tx = optax.chain(
    # rho = 0.05, lambda_t = 1 - 1/t: from USAM (lambda = 0) at the first step towards SAM (lambda = 1).
    optax_usam.unified_sam(0.05, "1-1/t"),
    optax.sgd(0.1, momentum=0.9),
  )
  params = model.init(jax.random.key(seed), x[:1])["params"]
  state = SAMTrainState.create(apply_fn=model.apply, params=params, tx=tx)

  for epoch in range(1, epochs + 1):
    shuffled, losses = rng.permutation(train), []
    # Whole batches only: one batch shape, one compilation.
    for start in range(0, len(shuffled) - batch_size + 1, batch_size):
      idx = shuffled[start : start + batch_size]
      state, loss = train_step(state, {"x": x[idx], "y": y[idx]})
      losses.append(loss)
    test_acc = float(accuracy(state.params, x[test], y[test]))
    print(f"epoch {epoch:2d}  train loss {np.mean(losses):.3f}  test accuracy {test_acc:.3f}")
  return test_acc


if __name__ == "__main__":
  main()
