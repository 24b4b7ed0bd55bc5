"""examples/equinox_mlp.py, a standalone example: it learns the digits, and bad flags exit with status 2."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

pytest.importorskip("equinox")

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "equinox_mlp.py"


def _load_example():
  spec = importlib.util.spec_from_file_location("example_equinox_mlp", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_example_learns_the_digits(capsys):
  result = _load_example().main(["--epochs", "2", "--lambd", "1/t", "--seed", "1"])
  assert set(result) == {"train_accuracy", "test_accuracy"}
  assert np.isfinite(result["test_accuracy"]) and result["test_accuracy"] > 0.5
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
  assert len(lines) == 2


@pytest.mark.parametrize(
  "argv", [["--lambd", "1.5"], ["--lambd", "1/t2"], ["--rho", "-1"], ["--epochs", "0"], ["--epochs", "x"]]
)
def test_example_rejects_bad_arguments(argv):
  with pytest.raises(SystemExit) as err:
    _load_example().parse_args(argv)
  assert err.value.code == 2
