"""examples/train/progress.py: a progress bar on a terminal only; in files, a line per run."""

import io
import sys

from examples.train import progress
from tests.train_helpers import run_job


def test_tiny_on_the_digits_into_files_writes_no_progress_bar(tmp_path):
  # The command line with stdout and stderr in files, as under CI or nohup: the table, a line per run,
  # and none of the bar's carriage-return redraws (once ~135 KB for the default job).
  out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
  argv = ["--model", "tiny", "--methods", "sgd,sam", "--epochs", "1", "--seeds", "1"]
  argv += ["--out", str(tmp_path)]
  with out.open("w") as stdout, err.open("w") as stderr:
    proc = run_job(argv, stdout=stdout, stderr=stderr, capture_output=False, text=False)
  assert proc.returncode == 0, err.read_text()
  text = out.read_text() + err.read_text()
  assert "digits (tiny)" in out.read_text() and "\r" not in text and len(text) < 2000, text
  lines = err.read_text().splitlines()
  assert len(lines) == 2 and all(line.startswith("digits: ") and "final test acc" in line for line in lines)


def test_the_progress_bar_is_drawn_on_a_terminal_only(monkeypatch):
  class Terminal(io.StringIO):
    def isatty(self):
      return True

  for stream, drawn in ((Terminal(), True), (io.StringIO(), False)):
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress.Progress(3, "digits", disable=False)
    for _ in range(3):
      bar.update(status="SAM seed 0")
    bar.close()
    assert ("\r" in stream.getvalue()) == drawn, stream.getvalue()
