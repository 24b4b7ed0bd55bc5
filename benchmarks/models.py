"""The benchmark models, written twice: in plain JAX and in PyTorch.

The two versions of a model have the same layers, widths and batch-norm
semantics (normalisation by the statistics of the current batch, with a
learned scale and offset, and no running averages), so that one step does the
same arithmetic in both frameworks. Each framework uses its native layout:
NHWC for XLA on CPU, NCHW for PyTorch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]

BN_EPS = 1e-5


@dataclass(frozen=True)
class ModelSpec:
  """A benchmark model: its architecture and the shape of one batch."""

  name: str
  kind: str  # "mlp" or "resnet"
  input_shape: tuple[int, ...]  # one example, without the batch axis (HWC for images)
  batch: int
  num_classes: int = 10
  hidden: tuple[int, ...] = ()  # MLP hidden widths
  blocks_per_stage: int = 0  # ResNet blocks per stage (3 stages)
  widths: tuple[int, ...] = ()  # ResNet stem width, then the 3 stage widths
  preact: bool = False  # pre-activation (wide ResNet) or post-activation (He et al. 2016) blocks


def resnet(name: str, depth: int, widen: int, batch: int, preact: bool) -> ModelSpec:
  """A CIFAR ResNet with n blocks per stage and stage widths 16, 32, 64 times ``widen``.

  Depth counts as in the papers: ``6 n + 2`` for He et al. (2016) ResNets,
  ``6 n + 4`` for wide ResNets (Zagoruyko & Komodakis 2016, ``preact=True``).
  """
  extra = 4 if preact else 2
  if depth < 6 + extra or (depth - extra) % 6:
    raise ValueError(f"depth must be 6 n + {extra} with n >= 1; got {depth}.")
  return ModelSpec(
    name,
    "resnet",
    (32, 32, 3),
    batch,
    blocks_per_stage=(depth - extra) // 6,
    widths=(16, 16 * widen, 32 * widen, 64 * widen),
    preact=preact,
  )


def zoo(wrn_batch: int = 128) -> dict[str, ModelSpec]:
  """The models of the overhead benchmark, by name."""
  specs = [
    # Dispatch-bound: its step time is the fixed per-step cost of each variant.
    ModelSpec("tiny_mlp", "mlp", (4,), 2, num_classes=4, hidden=(4, 4)),
    ModelSpec("mlp", "mlp", (64,), 128, hidden=(256, 256)),
    ModelSpec("wide_mlp", "mlp", (64,), 128, hidden=(1024, 1024)),
    resnet("resnet8", depth=8, widen=1, batch=128, preact=False),
    resnet("wrn16_4", depth=16, widen=4, batch=wrn_batch, preact=True),
    resnet("wrn28_10", depth=28, widen=10, batch=128, preact=True),
  ]
  return {s.name: s for s in specs}


def _he(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
  return jax.random.normal(key, shape, jnp.float32) * math.sqrt(2.0 / fan_in)


def _conv_params(key: jax.Array, cin: int, cout: int, size: int) -> jax.Array:
  return _he(key, (size, size, cin, cout), size * size * cin)


def _bn_params(c: int) -> dict[str, jax.Array]:
  return {"scale": jnp.ones((c,), jnp.float32), "offset": jnp.zeros((c,), jnp.float32)}


def _block_plan(spec: ModelSpec) -> list[tuple[int, int, int]]:
  """(in channels, out channels, stride) of every residual block."""
  plan, cin = [], spec.widths[0]
  for stage, cout in enumerate(spec.widths[1:]):
    for i in range(spec.blocks_per_stage):
      plan.append((cin, cout, 2 if stage > 0 and i == 0 else 1))
      cin = cout
  return plan


def init_jax(spec: ModelSpec, key: jax.Array) -> Params:
  """Parameters of ``spec`` as a pytree of float32 arrays (He initialisation)."""
  keys = iter(jax.random.split(key, 64))
  if spec.kind == "mlp":
    sizes = (spec.input_shape[0], *spec.hidden, spec.num_classes)
    return [
      {"w": _he(next(keys), (a, b), a), "b": jnp.zeros((b,), jnp.float32)}
      for a, b in itertools.pairwise(sizes)
    ]
  params: dict[str, Any] = {"stem": _conv_params(next(keys), 3, spec.widths[0], 3), "blocks": []}
  if not spec.preact:
    params["stem_bn"] = _bn_params(spec.widths[0])
  for cin, cout, stride in _block_plan(spec):
    block = {
      "conv1": _conv_params(next(keys), cin, cout, 3),
      "bn1": _bn_params(cin if spec.preact else cout),
      "conv2": _conv_params(next(keys), cout, cout, 3),
      "bn2": _bn_params(cout),
    }
    if stride != 1 or cin != cout:
      block["short"] = _conv_params(next(keys), cin, cout, 1)
      if not spec.preact:
        block["short_bn"] = _bn_params(cout)
    params["blocks"].append(block)
  if spec.preact:
    params["final_bn"] = _bn_params(spec.widths[-1])
  params["head"] = {
    "w": _he(next(keys), (spec.widths[-1], spec.num_classes), spec.widths[-1]),
    "b": jnp.zeros((spec.num_classes,), jnp.float32),
  }
  return params


def _conv(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
  pad = w.shape[0] // 2
  return jax.lax.conv_general_dilated(
    x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _bn(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  return (x - mean) * jax.lax.rsqrt(var + BN_EPS) * p["scale"] + p["offset"]


def apply_jax(spec: ModelSpec) -> ApplyFn:
  """``(params, inputs) -> logits`` for ``spec``."""
  if spec.kind == "mlp":

    def mlp(params: Params, x: jax.Array) -> jax.Array:
      for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        if i < len(params) - 1:
          x = jax.nn.relu(x)
      return x

    return mlp
  plan = _block_plan(spec)

  def net(params: Params, x: jax.Array) -> jax.Array:
    x = _conv(x, params["stem"], 1)
    if not spec.preact:
      x = jax.nn.relu(_bn(x, params["stem_bn"]))
    for p, (_, _, stride) in zip(params["blocks"], plan, strict=True):
      if spec.preact:
        a = jax.nn.relu(_bn(x, p["bn1"]))
        h = _conv(a, p["conv1"], stride)
        h = _conv(jax.nn.relu(_bn(h, p["bn2"])), p["conv2"], 1)
        x = h + (_conv(a, p["short"], stride) if "short" in p else x)
      else:
        h = jax.nn.relu(_bn(_conv(x, p["conv1"], stride), p["bn1"]))
        h = _bn(_conv(h, p["conv2"], 1), p["bn2"])
        short = _bn(_conv(x, p["short"], stride), p["short_bn"]) if "short" in p else x
        x = jax.nn.relu(h + short)
    if spec.preact:
      x = jax.nn.relu(_bn(x, params["final_bn"]))
    x = jnp.mean(x, axis=(1, 2))
    return x @ params["head"]["w"] + params["head"]["b"]

  return net


def loss_jax(spec: ModelSpec) -> Callable[[Params, jax.Array, jax.Array], jax.Array]:
  """Mean softmax cross-entropy of ``spec`` on a batch ``(inputs, integer labels)``."""
  apply = apply_jax(spec)

  def loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()

  return loss


def batch_jax(spec: ModelSpec, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A fixed random batch (standard normal inputs, uniform labels)."""
  kx, ky = jax.random.split(key)
  x = jax.random.normal(kx, (spec.batch, *spec.input_shape), jnp.float32)
  return x, jax.random.randint(ky, (spec.batch,), 0, spec.num_classes)


def count_params(params: Params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def build_torch(spec: ModelSpec) -> Any:
  """The PyTorch twin of ``spec`` (NCHW layout); needs ``torch``."""
  import torch
  from torch import nn

  def bn(c: int) -> nn.Module:
    return nn.BatchNorm2d(c, eps=BN_EPS, track_running_stats=False)

  def conv(cin: int, cout: int, size: int, stride: int) -> nn.Module:
    return nn.Conv2d(cin, cout, size, stride, padding=size // 2, bias=False)

  if spec.kind == "mlp":
    sizes = (spec.input_shape[0], *spec.hidden, spec.num_classes)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
      layers.append(nn.Linear(a, b))
      if i < len(sizes) - 2:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)

  class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
      super().__init__()
      self.conv1, self.conv2 = conv(cin, cout, 3, stride), conv(cout, cout, 3, 1)
      self.bn1, self.bn2 = bn(cin if spec.preact else cout), bn(cout)
      self.short = conv(cin, cout, 1, stride) if stride != 1 or cin != cout else None
      self.short_bn = bn(cout) if self.short is not None and not spec.preact else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
      if spec.preact:
        a = torch.relu(self.bn1(x))
        h = self.conv2(torch.relu(self.bn2(self.conv1(a))))
        return h + (self.short(a) if self.short is not None else x)
      h = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
      short = self.short_bn(self.short(x)) if self.short is not None else x
      return torch.relu(h + short)

  class Net(nn.Module):
    def __init__(self) -> None:
      super().__init__()
      self.stem = conv(3, spec.widths[0], 3, 1)
      self.stem_bn = None if spec.preact else bn(spec.widths[0])
      self.blocks = nn.Sequential(*[Block(*b) for b in _block_plan(spec)])
      self.final_bn = bn(spec.widths[-1]) if spec.preact else None
      self.head = nn.Linear(spec.widths[-1], spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
      x = self.stem(x)
      if self.stem_bn is not None:
        x = torch.relu(self.stem_bn(x))
      x = self.blocks(x)
      if self.final_bn is not None:
        x = torch.relu(self.final_bn(x))
      return self.head(x.mean(dim=(2, 3)))

  return Net()
