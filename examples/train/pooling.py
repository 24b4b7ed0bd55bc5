"""A 2x2 max-pool whose gradient XLA:CPU computes several times faster than ``flax.linen.max_pool``'s.

``nn.max_pool``'s gradient is XLA's select-and-scatter, which XLA:CPU runs slowly (docs/benchmarks.md has
the measurement and a reproducer). :func:`max_pool_2x2` computes the same values and the same gradient to the
last bit, with a backward pass made of comparisons and selects that XLA fuses into one loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """``nn.max_pool(x, (2, 2), (2, 2))`` for NHWC ``x`` of even height and width.

  Reverse-mode only (``jax.grad``, ``jax.vjp``): a custom VJP has no forward-mode derivative, so
  ``jax.jvp`` and ``jax.hessian`` of a model using it raise an error.
  """
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"max_pool_2x2 needs an even height and width; got an input of shape {x.shape}.")
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  return max_pool_2x2(x), x


def _backward(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
  """Each window's gradient goes to the element select-and-scatter picks: it scans the window in row-major
  order and keeps its current pick while ``pick >= next`` (JAX's selection for max), so the first maximum
  wins ties and a NaN is handled as XLA handles it; the other three elements get zero."""
  b, h, w, c = x.shape
  window = x.reshape(b, h // 2, 2, w // 2, 2, c)
  pick = window[:, :, 0, :, 0]
  index = jnp.zeros(pick.shape, jnp.int8)
  for k, (i, j) in enumerate(((0, 1), (1, 0), (1, 1)), start=1):
    candidate = window[:, :, i, :, j]
    keep = pick >= candidate
    pick = jnp.where(keep, pick, candidate)
    index = jnp.where(keep, index, jnp.int8(k))
  zero = jnp.zeros((), g.dtype)
  g00, g01, g10, g11 = (jnp.where(index == k, g, zero) for k in range(4))
  rows = jnp.stack([jnp.stack([g00, g01], axis=3), jnp.stack([g10, g11], axis=3)], axis=2)
  return (rows.reshape(b, h, w, c),)


max_pool_2x2.defvjp(_forward, _backward)
