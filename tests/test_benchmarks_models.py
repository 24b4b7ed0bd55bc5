"""benchmarks/models.py: the overhead benchmark's models in JAX, against hand counts and what the docs quote.

The PyTorch twins need torch (never installed in CI); the overhead benchmark's tests run them where it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import models

ROOT = Path(__file__).resolve().parent.parent


def _conv(size: int, cin: int, cout: int) -> int:
  return size * size * cin * cout


def _bn(c: int) -> int:
  return 2 * c  # scale and offset


# Parameters counted by hand from the architectures: dense layers (weights + biases); ResNets as a 3x3 stem,
# two 3x3 convolutions per block, a 1x1 shortcut where the width or the stride changes, and a dense head.
PARAMS = {
  "tiny_mlp": 3 * (4 * 4 + 4),
  "mlp": (64 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10),
  "wide_mlp": (64 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 10 + 10),
  # He et al.: a batch norm after the stem and after every convolution, shortcuts included.
  "resnet8": _conv(3, 3, 16)
  + _bn(16)
  + (_conv(3, 16, 16) + _bn(16) + _conv(3, 16, 16) + _bn(16))
  + (_conv(3, 16, 32) + _bn(32) + _conv(3, 32, 32) + _bn(32) + _conv(1, 16, 32) + _bn(32))
  + (_conv(3, 32, 64) + _bn(64) + _conv(3, 64, 64) + _bn(64) + _conv(1, 32, 64) + _bn(64))
  + (64 * 10 + 10),
  # Zagoruyko & Komodakis: a batch norm before each convolution of a block and one before the head.
  "wrn16_4": _conv(3, 3, 16)
  + (_bn(16) + _conv(3, 16, 64) + _bn(64) + _conv(3, 64, 64) + _conv(1, 16, 64))
  + (_bn(64) + _conv(3, 64, 64) + _bn(64) + _conv(3, 64, 64))
  + (_bn(64) + _conv(3, 64, 128) + _bn(128) + _conv(3, 128, 128) + _conv(1, 64, 128))
  + (_bn(128) + _conv(3, 128, 128) + _bn(128) + _conv(3, 128, 128))
  + (_bn(128) + _conv(3, 128, 256) + _bn(256) + _conv(3, 256, 256) + _conv(1, 128, 256))
  + (_bn(256) + _conv(3, 256, 256) + _bn(256) + _conv(3, 256, 256))
  + _bn(256)
  + (256 * 10 + 10),
  "wrn28_10": 36_479_194,  # WRN-28-10's 36.5M of the paper's Table 1, to the parameter
}


def _shapes(spec: models.ModelSpec) -> models.Params:
  # Shapes only: WRN-28-10's parameters are never allocated.
  return jax.eval_shape(lambda: models.init_jax(spec, jax.random.key(0)))


@pytest.mark.parametrize("name", sorted(models.zoo()))
def test_parameter_counts_and_output_shapes(name: str) -> None:
  spec = models.zoo()[name]
  params = _shapes(spec)
  assert models.count_params(params) == PARAMS[name]
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  x = jax.ShapeDtypeStruct((spec.batch, *spec.input_shape), jnp.float32)
  assert jax.eval_shape(models.apply_jax(spec), params, x).shape == (spec.batch, spec.num_classes)


def test_committed_results_and_docs_quote_these_models() -> None:
  committed = json.loads((ROOT / "benchmarks" / "results" / "overhead" / "overhead.json").read_text())
  zoo = models.zoo(wrn_batch=committed["models"]["wrn16_4"]["batch"])
  for name, measured in committed["models"].items():
    assert (measured["params"], measured["batch"]) == (PARAMS[name], zoo[name].batch), name
  page = " ".join((ROOT / "docs" / "benchmarks.md").read_text().split())
  for name in ("tiny_mlp", "mlp", "wide_mlp"):
    spec = zoo[name]
    sizes = "-".join(map(str, (*spec.input_shape, *spec.hidden, spec.num_classes)))
    assert f"`{name}` ({sizes}, batch {spec.batch}" in page, name
  assert f"WRN-16-4, {PARAMS['wrn16_4'] / 1e6:.1f} M parameters" in page


def test_the_mlp_loss_is_the_mean_cross_entropy_of_its_relu_layers() -> None:
  spec = models.zoo()["mlp"]
  params = jax.jit(models.init_jax, static_argnums=0)(spec, jax.random.key(0))
  x, y = jax.jit(models.batch_jax, static_argnums=0)(spec, jax.random.key(1))
  assert x.shape == (spec.batch, *spec.input_shape) and y.shape == (spec.batch,)
  # The same network in NumPy float64: ReLU between the dense layers, none after the last.
  h = np.asarray(x, np.float64)
  for i, layer in enumerate(params):
    h = h @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
    h = np.maximum(h, 0) if i < len(params) - 1 else h
  log_softmax = h - h.max(1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
  want = -np.mean(log_softmax[np.arange(spec.batch), np.asarray(y)])
  assert float(jax.jit(models.loss_jax(spec))(params, x, y)) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize(("depth", "preact"), [(10, False), (14, True), (2, False)])
def test_resnet_depths_the_papers_do_not_define_are_refused(depth: int, preact: bool) -> None:
  with pytest.raises(ValueError, match="depth must be 6 n"):
    models.resnet("bad", depth=depth, widen=1, batch=8, preact=preact)
