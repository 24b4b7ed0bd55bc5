"""``python -m benchmarks.theory`` rejects bad input in one line, and its shortest run leaves the committed
results alone."""

from __future__ import annotations

import json

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


def test_theory_quick_leaves_the_committed_results_alone(tmp_path, monkeypatch, capsys):
  committed = tmp_path / "results"
  committed.mkdir()
  files = {name: f"committed {name}".encode() for name in ("theory.json", "theory_ridge_steps.png")}
  for name, content in files.items():
    (committed / name).write_bytes(content)
  monkeypatch.setattr(theory, "RESULTS", committed)
  theory.main(["--quick", "--epochs", "1", "--trials", "1", "--n", "2"])  # its smallest settings
  assert {name: (committed / name).read_bytes() for name in files} == files
  quick = json.loads((committed / "quick" / "theory.json").read_text())
  assert quick["config"]["quick"] and (committed / "quick" / "theory_ridge_steps.png").stat().st_size > 0
  assert f"wrote {committed / 'quick' / 'theory.json'}" in capsys.readouterr().out

  def default_out(**changes):
    args = theory.parser().parse_args([])
    vars(args).update({"quick": False, "no_plots": False, "out": None, **theory.FULL_RUN, **changes})
    return theory.output_dir(args)

  assert default_out() == committed  # only the full run replaces the committed results
  for change in ({"quick": True}, {"epochs": 50}, {"trials": 2}, {"n": 50}, {"seed": 1}, {"no_plots": True}):
    assert default_out(**change) == committed / "quick", change
  assert default_out(quick=True, out=tmp_path / "mine") == tmp_path / "mine"
