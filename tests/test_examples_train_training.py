"""examples/train/training.py: a run that diverges stops the job with one line, not a table."""

import pytest

from examples.train import job
from tests.train_helpers import DIGITS_1_EPOCH, only_line


@pytest.mark.parametrize(
  "argv",
  [
    ["--methods", "sgd", "--lr", "1e39"],  # finite, legal, and diverges at once
    ["--methods", "sam", "--weight-decay", "inf"],  # optax accepts an infinite decay
  ],
)
def test_a_diverged_digits_run_is_an_error_not_a_table(argv, tmp_path, capsys):
  assert job.main([*argv, *DIGITS_1_EPOCH, "--out", str(tmp_path)]) == 1
  captured = capsys.readouterr()
  only_line(captured.err, "seed 0 diverged in epoch 1", "training loss nan")
  assert captured.out == "" and not list(tmp_path.iterdir())  # no table, no JSON, no PNG
