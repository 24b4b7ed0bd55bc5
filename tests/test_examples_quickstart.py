"""examples/quickstart.py, the README's first example, run as the README runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def test_quickstart_learns_the_digits_in_seconds():
  proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  accuracies = [float(a) for a in re.findall(r"^epoch +\d+ .*test accuracy ([\d.]+)$", proc.stdout, re.M)]
  assert len(accuracies) == 10, proc.stdout
  # Chance is 0.1; the MLP with plain SGD reaches about 0.97. A SAM step that breaks training (a NaN or
  # an exploding perturbation, a lost update) stays far below 0.9.
  assert accuracies[-1] > 0.9, proc.stdout
