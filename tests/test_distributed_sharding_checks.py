"""Tests of optax_usam.distributed.sharding_checks: check_shardings, eager and under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from optax_usam import distributed
from tests import mlp_problem


def _fsdp_params() -> tuple[dict, jax.sharding.Mesh]:
  params, _, _ = mlp_problem.float32_problem()
  mesh = distributed.make_mesh(2, jax.devices()[:4])
  return jax.device_put(params, distributed.fsdp_shardings(params, mesh, min_size=0)), mesh


def test_check_shardings_accepts_matching_layouts():
  p, _ = _fsdp_params()
  loss_fn = lambda p, batch: mlp_problem.jax_loss(p, *batch)
  distributed.check_shardings(jax.jit(jax.grad(loss_fn))(p, (np.ones((4, 8)), np.ones((4, 4)))), p)


@pytest.mark.parametrize("which", ["spec", "devices"])
def test_check_shardings_rejects_mismatch(which):
  p, mesh = _fsdp_params()
  if which == "spec":
    g = dict(p, w2=jax.device_put(p["w2"], NamedSharding(mesh, PartitionSpec())))
  else:
    other = distributed.make_mesh(2, jax.devices()[4:8])
    g = dict(p, w2=jax.device_put(p["w2"], NamedSharding(other, p["w2"].sharding.spec)))
  with pytest.raises(ValueError, match=r"grads leaf \['w2'\] has sharding"):
    distributed.check_shardings(g, p)


def test_check_shardings_inside_jit_with_explicit_axes():
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  a = jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, PartitionSpec("model")))
  b = jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, PartitionSpec(None, "model")))

  def check(g: jax.Array, p: jax.Array) -> jax.Array:
    distributed.check_shardings({"w": g}, {"w": p})
    return g

  with jax.set_mesh(mesh):
    jax.jit(check)(a, a)
    with pytest.raises(ValueError, match=r"grads leaf \['w'\]"):
      jax.jit(check)(a, b)


def test_check_shardings_rejects_structure_mismatch():
  with pytest.raises(ValueError, match="tree structure"):
    distributed.check_shardings({"a": jnp.ones(2)}, {"b": jnp.ones(2)})
