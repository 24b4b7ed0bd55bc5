"""Tests of optax_usam._batches: sampled batches, the batch loss, and the first fraction of a batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_usam import _batches


def test_batch_loss_uses_the_same_examples_at_every_point():
  data = (jnp.arange(12.0).reshape(6, 2), jnp.arange(6.0))
  batch = _batches.Batch(jnp.array([4, 1], jnp.int32), jnp.array([1.0, 3.0]))
  loss = _batches.batch_loss_fn(lambda p, ex: jnp.sum(ex[0] * p) + ex[1], data, batch)
  for p in (jnp.zeros(2), jnp.array([1.0, -2.0])):
    expected = (1.0 * (np.dot([8.0, 9.0], p) + 4.0) + 3.0 * (np.dot([2.0, 3.0], p) + 1.0)) / 2
    assert float(loss(p)) == pytest.approx(expected)


def test_draws_take_their_float_dtype_when_sampling_not_when_built():
  """One sampler serves inside and outside jax.enable_x64: its weights follow the mode of the call."""
  draws = {
    "uniform": _batches.uniform_draws(5, 3),
    "subset": _batches.subset_draws(5, 3),
    "inverse_cdf": _batches.inverse_cdf_draws(np.full(5, 0.2), np.arange(1.0, 6.0), 3),
  }
  key = jax.random.key(0)
  for name, sample in draws.items():
    assert sample(key).weights.dtype == jnp.float32, name
    assert sample(key).indices.dtype == jnp.int32, name
    with jax.enable_x64(True):
      assert sample(key).weights.dtype == jnp.float64, name


def test_inverse_cdf_draws_read_each_index_with_its_weight():
  probs, weights = np.array([0.0, 1.0, 0.0]), np.array([5.0, 7.0, 9.0])
  batch = _batches.inverse_cdf_draws(probs, weights, 64)(jax.random.key(1))
  np.testing.assert_array_equal(batch.indices, 1)
  np.testing.assert_array_equal(batch.weights, 7.0)


def test_first_fraction_keeps_the_first_ceil_f_n_examples():
  batch = {"x": jnp.arange(20).reshape(10, 2), "y": jnp.arange(10)}
  out = _batches.first_fraction(batch, 0.25)
  np.testing.assert_array_equal(out["y"], np.arange(3))
  assert out["x"].shape == (3, 2)
  assert _batches.first_fraction(batch, 1e-6)["y"].shape == (1,)  # at least one example
  with pytest.raises(ValueError, match="fraction"):
    _batches.first_fraction(batch, 0.0)
  with pytest.raises(ValueError, match="leading axis"):
    _batches.first_fraction({"x": jnp.ones((4,)), "y": jnp.ones((5,))}, 0.5)


def test_the_first_fraction_of_an_empty_batch_is_refused():
  with pytest.raises(ValueError, match="batch has no examples"):
    _batches.first_fraction({"x": jnp.zeros((0, 3))}, 0.5)
