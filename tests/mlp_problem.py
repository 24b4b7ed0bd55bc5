"""The small tanh MLP regression problem shared by the tests: data in NumPy, the loss in JAX.

Its gradient, derived by hand, is ``numpy_reference.mlp_grad``. :func:`run_chain` trains it with a
transformation in front of weight decay and momentum SGD, recording what each step saw.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_usam


def problem(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
  """Float64 parameters {w1 (5, 4), b1, w2 (4, 3), b2} and a batch x (16, 5), y (16, 3)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(16, 5))
  y = rng.normal(size=(16, 3))
  params = {
    "w1": rng.normal(size=(5, 4)) * 0.5,
    "b1": rng.normal(size=(4,)) * 0.1,
    "w2": rng.normal(size=(4, 3)) * 0.5,
    "b2": np.zeros(3),
  }
  return params, x, y


def jax_loss(p: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
  """0.5 * mean((tanh(x W1 + b1) w2 + b2 - y)^2), summed over outputs; numpy_reference.mlp_loss in JAX."""
  h = jnp.tanh(x @ p["w1"] + p["b1"])
  r = h @ p["w2"] + p["b2"] - y
  return 0.5 * jnp.sum(r**2) / x.shape[0]


def float32_problem(
  d: int = 8, h: int = 16, o: int = 4, n: int = 32
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
  """Float32 parameters {w1 (d, h), b1, w2 (h, o), b2} and a batch x (n, d), y (n, o), seeded with 0."""
  rng = np.random.default_rng(0)
  params = {
    "w1": rng.normal(size=(d, h)) / np.sqrt(d),
    "b1": rng.normal(size=h) * 0.1,
    "w2": rng.normal(size=(h, o)) / np.sqrt(h),
    "b2": rng.normal(size=o) * 0.1,
  }
  params = {k: v.astype(np.float32) for k, v in params.items()}
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = rng.normal(size=(n, o)).astype(np.float32)
  return params, x, y


def run_chain(
  tx: optax.GradientTransformation,
  steps: int,
  seed: int = 0,
  *,
  fresh: bool | None = None,
  lr: float = 0.3,
  momentum: float = 0.9,
  weight_decay: float = 5e-2,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
  """``steps`` jitted steps of chain(tx, add_decayed_weights, sgd(lr, momentum)) on :func:`problem`.

  Float64 inside ``jax.enable_x64``. ``fresh``: pass the gradient at x_t as ``updates`` (True), pass
  None (False), or do what ``optax_usam.needs_fresh_gradient`` says (None). Returns the final parameters
  and, for each step, ``params`` (x_t), ``points`` (where grad_fn was called, in order) and
  ``diagnostics`` (after the step), all as NumPy.
  """
  p0, x, y = problem(seed)
  tx = optax.chain(tx, optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum))
  grad = jax.grad(jax_loss)
  params = jax.tree.map(jnp.asarray, p0)
  state = tx.init(params)
  use_fresh = optax_usam.needs_fresh_gradient(state) if fresh is None else fresh

  @jax.jit
  def step(params, state):
    points = []

    def grad_fn(q):
      points.append(q)
      return grad(q, x, y)

    updates, state = tx.update(grad(params, x, y) if use_fresh else None, state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state, points

  history = []
  for _ in range(steps):
    new_params, state, points = step(params, state)
    history.append(
      {
        "params": jax.tree.map(np.asarray, params),
        "points": jax.tree.map(np.asarray, points),
        "diagnostics": {k: np.asarray(v) for k, v in optax_usam.get_diagnostics(state).items()},
      }
    )
    params = new_params
  return jax.tree.map(np.asarray, params), history
