"""Unified SAM with Equinox: an ``eqx.nn.MLP`` on scikit-learn's digits.

Trains a 64-128-128-10 MLP on the 8x8 handwritten digits bundled with
scikit-learn (no download) with ``optax.chain(optax_usam.unified_sam(rho, lambd),
optax.sgd(lr, momentum=0.9))`` and prints the test accuracy after each epoch.
Needs equinox and scikit-learn (``pip install equinox scikit-learn``)::

  python examples/equinox_mlp.py
  python examples/equinox_mlp.py --epochs 30 --rho 0.1 --lambd 1/t
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optax_usam


def number_or_text(text: str) -> float | str:
  """``type=`` for lambda: a number, else the text ('1/t', '1-1/t'; the library refuses any other)."""
  try:
    return float(text)
  except ValueError:
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The command line; a bad flag, or a value the library refuses, exits with its message and status 2."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--epochs", type=int, default=20)
  p.add_argument("--rho", type=float, default=0.05, help="perturbation radius")
  strings = ", ".join(optax_usam.schedules.LAMBDA_STRINGS)
  p.add_argument(
    "--lambd", type=number_or_text, default="1-1/t", help=f"a float in [0, 1] or one of {strings}"
  )
  p.add_argument("--lr", type=float, default=0.05)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--seed", type=int, default=0, help="seeds the train/test split, the model and the batches")
  args = p.parse_args(argv)
  if args.epochs < 1 or args.batch_size < 1:
    p.error("--epochs and --batch-size must be positive")
  try:
    optax_usam.unified_sam(args.rho, args.lambd)  # the library checks rho and lambda
  except (ValueError, TypeError) as err:
    p.error(str(err))
  return args


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Flattened digits split 70/30 by ``seed``, standardized with the training statistics."""
  digits = load_digits()
  x = digits.images.reshape(-1, 64).astype(np.float32)
  y = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
  mean, std = x_train.mean(0), x_train.std(0)
  std = np.where(std > 0, std, 1.0)  # some border pixels are always 0
  return (x_train - mean) / std, (x_test - mean) / std, y_train, y_test


def loss_fn(model: eqx.nn.MLP, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y).mean()


@eqx.filter_jit
def accuracy(model: eqx.nn.MLP, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(jax.vmap(model)(x), -1) == y)


def main(argv: list[str] | None = None) -> dict[str, float]:
  """Trains and returns the final ``train_accuracy`` and ``test_accuracy``."""
  args = parse_args(argv)
  x_train, x_test, y_train, y_test = load_data(args.seed)
  model = eqx.nn.MLP(64, 10, width_size=128, depth=2, activation=jax.nn.relu, key=jax.random.key(args.seed))
  tx = optax.chain(optax_usam.unified_sam(args.rho, args.lambd), optax.sgd(args.lr, momentum=0.9))
  opt_state = tx.init(eqx.filter(model, eqx.is_array))

  @eqx.filter_jit
  def train_step(model, opt_state, x, y):
    params, static = eqx.partition(model, eqx.is_array)
    # The second pass: the gradient on the same batch at the perturbed parameters.
    grad_fn = lambda p: eqx.filter_grad(loss_fn)(eqx.combine(p, static), x, y)
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
    # params and grads hold None for the activation functions: unified_sam treats them as absent, like optax.
    updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
    return eqx.apply_updates(model, updates), opt_state, loss

  rng = np.random.default_rng(args.seed)
  for epoch in range(1, args.epochs + 1):
    order = rng.permutation(len(y_train))
    # Drop the last partial batch: one batch shape, one compilation.
    for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
      batch = order[start : start + args.batch_size]
      model, opt_state, loss = train_step(model, opt_state, x_train[batch], y_train[batch])
    test_acc = float(accuracy(model, x_test, y_test))
    print(f"epoch {epoch:3d}  loss {float(loss):.4f}  test accuracy {test_acc:.4f}")
  return {"train_accuracy": float(accuracy(model, x_train, y_train)), "test_accuracy": test_acc}


if __name__ == "__main__":
  main()
