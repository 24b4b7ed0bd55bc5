"""examples/train/results.py and the committed examples/results/: one folder per dataset's job, each file in
it written by a command the docs show (one that names the folder: the job's default folder is the ignored
runs/), and the README's table is the one the main job's JSON holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from examples.train import job, results
from tests._markdown import shell_commands

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "examples" / "results"
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)]
PYTHONS = {"python", "python3", ".venv/bin/python"}


def documented_runs() -> list[list[str]]:
  """The arguments of every command of the docs that runs the main job (``python -m examples.train ...``,
  ``make train ARGS=...``), but for ``--help``."""
  runs = []
  for page in PAGES:
    for _, words in shell_commands(page.read_text()):
      if words[0] in PYTHONS and words[1:3] == ["-m", "examples.train"]:
        runs.append(words[3:])
      elif words[:2] == ["make", "train"]:
        runs.append(" ".join(w.removeprefix("ARGS=") for w in words[2:] if w.startswith("ARGS=")).split())
  return [argv for argv in runs if "--help" not in argv]


def test_every_committed_file_is_written_by_a_documented_command():
  written: dict[Path, list[dict[str, Any]]] = {}  # the files' path without suffix -> the settings
  for argv in documented_runs():
    args = job.parse_args(argv)
    stem = args.name or f"{args.dataset}_results"
    # The docs' commands run from the repository's root.
    written.setdefault(ROOT / args.out / stem, []).append(results.settings(args))
  # CIFAR runs (runs/) are ignored by git.
  files = [p for p in COMMITTED.rglob("*") if p.is_file() and "runs" not in p.relative_to(COMMITTED).parts]
  assert len(files) >= 12, files
  errors = []
  for path in files:
    settings = written.get(path.with_suffix(""), [])
    where = path.relative_to(ROOT)
    if path.suffix not in (".json", ".png") or not settings:
      errors.append(f"{where}: written by no `python -m examples.train` or `make train` of the docs")
    elif path.suffix == ".json":
      saved = json.loads(path.read_text())["config"]
      # A setting added to the job after a run is missing from its JSON; workers is the number it used.
      if not any(all(s.get(k) == v for k, v in saved.items() if k != "workers") for s in settings):
        errors.append(f"{where}: its settings are those of no documented command writing it")
  assert not errors, "\n".join(errors)


def test_the_readme_quotes_the_main_jobs_table():
  saved = json.loads((COMMITTED / "digits" / "digits_results.json").read_text())
  printed = f"{results.title(saved['config'])}\n{results.table(saved['results'])}\n"
  for page in ("README.md", "docs/training.md"):
    assert printed in (ROOT / page).read_text(), page
