"""examples/train/pooling.py: max_pool_2x2 is nn.max_pool, values and gradients, to the last bit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from examples.train.pooling import max_pool_2x2


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_max_pool_2x2_is_nn_max_pool_to_the_last_bit(dtype):
  # Values and gradients, with ties (ReLU zeros), -0.0, +-inf and NaN in the windows: the gradient goes
  # where XLA's select-and-scatter puts it.
  rng = np.random.default_rng(0)
  x = np.maximum(rng.normal(size=(4, 8, 8, 3)), 0).astype(np.float32)
  u = rng.random(x.shape)
  x[u < 0.05], x[(u > 0.05) & (u < 0.1)], x[(u > 0.1) & (u < 0.13)], x[(u > 0.13) & (u < 0.16)] = (
    np.nan,
    -0.0,
    np.inf,
    -np.inf,
  )
  x, g = jnp.asarray(x, dtype), jnp.asarray(rng.normal(size=(4, 4, 4, 3)), dtype)
  bits = np.uint16 if dtype == jnp.bfloat16 else np.uint32
  want, want_vjp = jax.vjp(lambda z: nn.max_pool(z, (2, 2), (2, 2)), x)
  got, got_vjp = jax.jit(lambda z: jax.vjp(max_pool_2x2, z))(x)
  np.testing.assert_array_equal(np.asarray(got).view(bits), np.asarray(want).view(bits))
  np.testing.assert_array_equal(np.asarray(got_vjp(g)[0]).view(bits), np.asarray(want_vjp(g)[0]).view(bits))
  with pytest.raises(ValueError, match="even height and width"):
    max_pool_2x2(jnp.zeros((1, 5, 4, 1)))
