"""Tests of optax_usam.distributed.mesh: meshes, FSDP shardings and batches on 8 virtual CPU devices."""

from __future__ import annotations

import numpy as np
import pytest
from jax.sharding import PartitionSpec

from optax_usam import distributed


def test_fsdp_shardings_split_largest_divisible_dimension():
  mesh = distributed.make_mesh(4)
  tree = {"big": np.zeros((6, 64)), "odd": np.zeros((7, 9, 5)), "small": np.zeros(8), "scalar": 0.0}
  specs = {k: s.spec for k, s in distributed.fsdp_shardings(tree, mesh, min_size=16).items()}
  assert specs == {
    "big": PartitionSpec(None, "model"),
    "odd": PartitionSpec(None, None, None),
    "small": PartitionSpec(None),
    "scalar": PartitionSpec(),
  }


@pytest.mark.parametrize(
  ("call", "error", "match"),
  [
    (lambda: distributed.make_mesh(3), ValueError, "num_model=3 must divide"),
    (lambda: distributed.make_mesh(0), ValueError, "num_model must be a positive int"),
    (lambda: distributed.make_mesh(2, data_axis="x", model_axis="x"), ValueError, "must differ"),
    (
      lambda: distributed.fsdp_shardings({}, distributed.make_mesh(), axis="tp"),
      ValueError,
      "axis='tp' is not an axis",
    ),
    (
      lambda: distributed.shard_batch(np.ones((6, 2)), distributed.make_mesh()),
      ValueError,
      "divisible over 8 devices",
    ),
  ],
)
def test_bad_arguments(call, error, match):
  with pytest.raises(error, match=match):
    call()
