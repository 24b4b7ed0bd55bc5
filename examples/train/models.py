"""Flax Linen models for the main job.

All take ``(x, train)`` with ``x`` of shape ``[batch, height, width, channels]``
and return logits. The CIFAR models follow the usual CIFAR variants: the
ResNet-18 of the SAM literature (3x3 stem, no max-pool) and the pre-activation
Wide ResNet of Zagoruyko & Komodakis (2016).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from examples.train.pooling import max_pool_2x2

# PyTorch's BatchNorm2d defaults (momentum 0.1 there is 0.9 here); He-normal
# fan-out init for convolutions as in both reference architectures.
_BatchNorm = partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
_Conv = partial(
  nn.Conv, use_bias=False, kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal")
)


class DigitsCNN(nn.Module):
  """A small CNN for 8x8 images: two 3x3 convolutions, a max-pool and two dense layers."""

  num_classes: int = 10
  # Parameter and computation dtype (bfloat16 for the mixed-precision run); logits come out in float32.
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    del train
    conv = partial(nn.Conv, dtype=self.dtype, param_dtype=self.dtype)
    dense = partial(nn.Dense, dtype=self.dtype, param_dtype=self.dtype)
    x = nn.relu(conv(16, (3, 3))(x.astype(self.dtype)))
    x = nn.relu(conv(32, (3, 3))(x))
    x = max_pool_2x2(x)
    x = nn.relu(dense(64)(x.reshape(x.shape[0], -1)))
    return dense(self.num_classes)(x).astype(jnp.float32)


class TinyNet(nn.Module):
  """Conv -> BatchNorm -> ReLU -> global average pool -> Dense: for tests of the CIFAR path."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    x = _Conv(8, (3, 3))(x)
    x = nn.relu(_BatchNorm(use_running_average=not train)(x))
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class _BasicBlock(nn.Module):
  planes: int
  stride: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = partial(_BatchNorm, use_running_average=not train)
    y = _Conv(self.planes, (3, 3), self.stride, padding=1)(x)
    y = nn.relu(norm()(y))
    y = norm()(_Conv(self.planes, (3, 3), padding=1)(y))
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = norm()(_Conv(self.planes, (1, 1), self.stride)(x))
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """ResNet-18 for 32x32 inputs (He et al. 2016, CIFAR variant): 11,173,962 parameters for 10 classes.

  ``width`` is the number of channels of the stem and the first stage (64), doubled at each later stage.
  """

  num_classes: int = 10
  width: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    x = nn.relu(_BatchNorm(use_running_average=not train)(_Conv(self.width, (3, 3), padding=1)(x)))
    for i, planes in enumerate(self.width * k for k in (1, 2, 4, 8)):
      for j in range(2):
        x = _BasicBlock(planes, 2 if i > 0 and j == 0 else 1)(x, train)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class _WideBlock(nn.Module):
  planes: int
  stride: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = partial(_BatchNorm, use_running_average=not train)
    out = nn.relu(norm()(x))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      # Pre-activation: the projection reads the normalized input.
      shortcut = _Conv(self.planes, (1, 1), self.stride)(out)
    y = _Conv(self.planes, (3, 3), self.stride, padding=1)(out)
    y = _Conv(self.planes, (3, 3), padding=1)(nn.relu(norm()(y)))
    return shortcut + y


class WideResNet(nn.Module):
  """Pre-activation Wide ResNet-depth-width (Zagoruyko & Komodakis 2016).

  WRN-28-10 has 36,479,194 parameters for 10 classes.
  """

  depth: int = 28
  width: int = 10
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    blocks = (self.depth - 4) // 6
    x = _Conv(16, (3, 3), padding=1)(x)
    for i, planes in enumerate((16 * self.width, 32 * self.width, 64 * self.width)):
      for j in range(blocks):
        x = _WideBlock(planes, 2 if i > 0 and j == 0 else 1)(x, train)
    x = nn.relu(_BatchNorm(use_running_average=not train)(x))
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


MODELS: dict[str, Callable[[int], nn.Module]] = {
  "cnn": lambda n: DigitsCNN(num_classes=n),
  "tiny": lambda n: TinyNet(num_classes=n),
  "resnet18": lambda n: ResNet18(num_classes=n),
  "wrn28-10": lambda n: WideResNet(28, 10, num_classes=n),
}


def get_model(name: str, num_classes: int, dtype: jnp.dtype = jnp.float32) -> nn.Module:
  """The model called ``name`` (one of :data:`MODELS`); only ``cnn`` takes another ``dtype``."""
  if name not in MODELS:
    raise ValueError(f"model must be one of {sorted(MODELS)}; got {name!r}.")
  if name == "cnn":
    return DigitsCNN(num_classes, dtype=dtype)
  if dtype != jnp.float32:
    raise ValueError(f"only the cnn model runs in {jnp.dtype(dtype).name}; got model {name!r}.")
  return MODELS[name](num_classes)
