"""examples/train/data.py: the digits split and its label noise, CIFAR's augmentation, and missing data."""

import jax
import jax.numpy as jnp
import numpy as np

from examples.train import data as data_lib
from examples.train import job


def test_digits_split_and_symmetric_noise():
  noisy, clean = data_lib.load_digits(0, 0.4), data_lib.load_digits(0, 0.0)
  assert noisy.train.x.shape == (1258, 8, 8, 1) and noisy.test.x.shape == (539, 8, 8, 1)
  assert 0.0 <= noisy.train.x.min() and noisy.train.x.max() <= 1.0
  np.testing.assert_array_equal(noisy.train.x, clean.train.x)
  np.testing.assert_array_equal(noisy.test.y, clean.test.y)  # the test labels stay clean
  changed = noisy.train.y != clean.train.y
  assert changed.sum() == round(0.4 * 1258)
  assert set(np.unique(noisy.train.y[changed])) == set(range(10))
  assert not np.array_equal(data_lib.load_digits(1, 0.4).test.y, noisy.test.y)


def test_augment_is_a_padded_crop_or_its_mirror():
  images = jnp.arange(3 * 6 * 6 * 2, dtype=jnp.float32).reshape(3, 6, 6, 2) + 1
  out = np.asarray(data_lib.augment(jax.random.key(0), images, pad=2))
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for n in range(3):
    candidates = [padded[n, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
    candidates += [c[:, ::-1] for c in candidates]
    assert any(np.array_equal(out[n], c) for c in candidates)


def test_missing_cifar_says_what_and_where(tmp_path, capsys):
  data_dir = str(tmp_path / "tfds")
  assert job.main(["--dataset", "cifar100", "--data-dir", data_dir, "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert "'cifar100'" in err and data_dir in err and "tfds build cifar100" in err
