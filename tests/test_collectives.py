"""Tests of optax_usam._collectives: pmean over a named axis, and the error of an unbound one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_usam
from optax_usam._collectives import pmean


def test_pmean_averages_over_the_bound_axis():
  tree = {"a": jnp.arange(4.0), "b": jnp.arange(8.0).reshape(4, 2)}
  out = jax.vmap(lambda t: pmean(t, "batch"), axis_name="batch")(tree)
  for k, v in tree.items():
    np.testing.assert_allclose(out[k], np.broadcast_to(np.mean(v, axis=0), v.shape))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_unbound_axis_name_is_a_clear_error(jit):
  """unified_sam(axis_name=...) outside pmap or shard_map names the axis and where to call update from."""
  tx = optax_usam.sam(0.1, axis_name="data")
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros((3,))}
  update = lambda g, s, p: tx.update(g, s, p, grad_fn=lambda q: q)
  update = jax.jit(update) if jit else update
  with pytest.raises(ValueError, match=r"axis_name='data' is not bound here: call update inside jax\.pmap"):
    update(params, tx.init(params), params)
