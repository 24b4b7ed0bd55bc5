"""Data for the main job.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no
  download), split 70/30 with symmetric label noise on the training labels.
* ``cifar10`` / ``cifar100``: through ``tfds.data_source`` (random access over
  ArrayRecord files, no TensorFlow needed); the data must be prepared already.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


class Split(NamedTuple):
  x: np.ndarray
  y: np.ndarray


class Dataset(NamedTuple):
  train: Split
  test: Split
  num_classes: int


class DataMissingError(RuntimeError):
  """The requested dataset is not prepared in ``data_dir``."""


def symmetric_noise(
  labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
  """Replaces a ``rate`` fraction of ``labels`` by a uniformly drawn *different* class."""
  labels = labels.copy()
  flip = rng.permutation(len(labels))[: round(rate * len(labels))]
  labels[flip] = (labels[flip] + rng.integers(1, num_classes, len(flip))) % num_classes
  return labels


def load_digits(seed: int, noise: float, test_fraction: float = 0.3) -> Dataset:
  """The digits, shuffled and split by ``seed``; pixels scaled to [0, 1], shape [n, 8, 8, 1]."""
  from sklearn.datasets import load_digits as sklearn_digits

  bunch = sklearn_digits()
  x = (bunch.images / 16.0).astype(np.float32)[..., None]
  y = bunch.target.astype(np.int32)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(y))
  n_test = round(test_fraction * len(y))
  test, train = order[:n_test], order[n_test:]
  y_train = symmetric_noise(y[train], noise, 10, rng)
  return Dataset(Split(x[train], y_train), Split(x[test], y[test]), 10)


def prepare_hint(name: str, data_dir: str | None) -> str:
  where = data_dir or "~/tensorflow_datasets (the default data_dir)"
  return (
    f"dataset {name!r} is not prepared in {where}. On a machine with internet run "
    f"`tfds build {name} --file_format=array_record"
    + (f" --data_dir={data_dir}" if data_dir else "")
    + "` (pip install tensorflow-datasets tensorflow), then copy that directory here "
    "and pass --data-dir."
  )


def load_tfds(name: str, data_dir: str | None) -> Dataset:
  """A CIFAR split pair as uint8 NumPy arrays, via ``tfds.data_source``.

  Raises:
    DataMissingError: the data is not prepared in ``data_dir`` (this never
      downloads).
  """
  import tensorflow_datasets as tfds
  from absl import logging as absl_logging

  verbosity = absl_logging.get_verbosity()
  # tfds warns about the missing files before failing; the error below says it better.
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=False)
  except Exception as err:  # tfds raises several types for "not there"; all mean the same here.
    raise DataMissingError(prepare_hint(name, data_dir)) from err
  finally:
    absl_logging.set_verbosity(verbosity)
  splits = []
  for source in sources:
    records = [source[i] for i in range(len(source))]
    x = np.stack([r["image"] for r in records]).astype(np.uint8)
    y = np.array([r["label"] for r in records], np.int32)
    splits.append(Split(x, y))
  num_classes = {"cifar10": 10, "cifar100": 100}[name]
  return Dataset(splits[0], splits[1], num_classes)


def normalize(images: jax.Array) -> jax.Array:
  """uint8 CIFAR images to float32, standardized per channel."""
  return (images.astype(jnp.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD


def augment(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """Random crop after ``pad``-pixel zero padding, and random horizontal flip, per image."""
  n, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k_crop, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(k_flip, 0.5, (n,))

  def one(image: jax.Array, offset: jax.Array, flip: jax.Array) -> jax.Array:
    crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))
    return jnp.where(flip, crop[:, ::-1], crop)

  return jax.vmap(one)(padded, offsets, flips)
