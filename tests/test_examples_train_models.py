"""examples/train/models.py: the CIFAR models have the published sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from examples.train import models


@pytest.mark.parametrize(("name", "expected"), [("resnet18", 11_173_962), ("wrn28-10", 36_479_194)])
def test_cifar_models_have_the_published_parameter_counts(name, expected):
  # Counts of the reference PyTorch CIFAR implementations (kuangliu/pytorch-cifar, WRN authors).
  model = models.get_model(name, 10)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"])) == expected
