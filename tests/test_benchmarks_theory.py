"""``python -m benchmarks.theory`` rejects bad input in one line (``tests/test_train_reliability.py`` runs its
shortest run and checks that it leaves the committed results alone)."""

from __future__ import annotations

import pytest

from benchmarks import theory


@pytest.mark.parametrize(("args", "flag"), [(["--n", "1"], "--n"), (["--epochs", "0"], "--epochs")])
def test_bad_arguments_exit_2_with_one_line(
  capsys: pytest.CaptureFixture[str], args: list[str], flag: str
) -> None:
  with pytest.raises(SystemExit) as exit_:
    theory.main(args)
  assert exit_.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("theory: error: ") and flag in lines[0]
