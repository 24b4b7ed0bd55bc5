"""The documentation cannot rot: README.md and every page of docs/ are run, checked and built here.

* Every ```python block runs, a page's blocks in order in one namespace; most end in asserts against a
  hand-written step, so a page that stops being true fails under its own file and line. A block marked
  ``<!-- docs: run by tests/x.py::test_y -->`` runs in that test instead (it needs several devices or
  processes); one marked ``<!-- docs: excerpt of examples/x.py -->`` must be found in that file.
* Every shell command names a script, module, ``make`` target or ``pip`` extra that exists, and every
  ``--flag`` it passes is in that script's ``--help``.
* The Sphinx site builds with warnings as errors (as ``make docs``), lists every public name on an API page,
  and shows every committed figure.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import jax
import pytest

import optax_usam
from tests._markdown import (
  all_markers,
  balanced,
  block_ids,
  contains_excerpt,
  fence_infos,
  markers,
  python_blocks,
  shell_commands,
  unknown_infos,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [
  "README.md",
  *sorted(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md") if "_build" not in p.parts),
]
PYTHONS = {"python", "python3", ".venv/bin/python"}
# The modules whose public names the API pages must list, beside optax_usam.__all__.
API_MODULES = (
  "optax_usam.distributed",
  "optax_usam.flax_linen",
  "optax_usam.flax_nnx",
  "optax_usam.theory",
  "optax_usam.sampling",
  "optax_usam.schedules",
  # The modules behind the top-level names: their other public names (__all__) are documented too.
  "optax_usam.accumulation",
  "optax_usam.ascent",
  "optax_usam.chain_order",
  "optax_usam.cheaper",
  "optax_usam.diagnostics",
  "optax_usam.directions",
  "optax_usam.gsam",
  "optax_usam.perturbation",
  "optax_usam.random_smoothing",
  "optax_usam.transform",
)
FIGURE_DIRS = (ROOT / "benchmarks" / "results", ROOT / "examples" / "results")
# Outputs that .gitignore keeps out of the repository: short runs and CIFAR runs.
IGNORED_FIGURE_DIRS = {"quick", "runs"}


def read(page: str) -> str:
  return (ROOT / page).read_text()


# Its blocks need 4 or more devices (tests/conftest.py asks for 8 virtual CPU devices): each runs alone.
DISTRIBUTED = "docs/distributed.md"
DISTRIBUTED_BLOCKS = python_blocks((ROOT / DISTRIBUTED).read_text())


def blocks_to_run(page: str) -> list[tuple[int, str]]:
  text = read(page)
  marked = markers(text)
  return [(line, code) for _, line, code in python_blocks(text) if line not in marked]


PAGES_WITH_CODE = [page for page in PAGES if blocks_to_run(page)]


def test_the_pages_are_found():
  # A broken glob or regex must not make the parametrized tests below vacuous.
  assert {"README.md", "docs/index.md", "docs/recipes.md", "docs/getting_started.md"} <= set(PAGES), PAGES
  assert len(python_blocks(read("docs/recipes.md"))) >= 7
  assert len(PAGES_WITH_CODE) >= 8, PAGES_WITH_CODE


@pytest.mark.parametrize("page", PAGES)
def test_fences_and_markers(page):
  text = read(page)
  assert balanced(text), f"{page}: unbalanced code fences"
  # A ```py or bare ``` block would be neither run nor checked.
  assert not unknown_infos(text), f"{page}: fences that are neither python, bash, text nor a directive"
  marked = markers(text)
  assert len(all_markers(text)) == len(marked), f"{page}: a docs marker stands above no code block"
  python_lines = {line for _, line, _ in python_blocks(text)}
  for line, (verb, target) in marked.items():
    where = f"{page}:{line}"
    assert line in python_lines, f"{where}: a docs marker above a block that is not python"
    if verb == "run by":
      path, _, name = target.partition("::")
      assert name, f"{where}: 'run by' names no test: {target}"
      assert (ROOT / path).is_file(), f"{where}: no file {path}"
      source = (ROOT / path).read_text()
      defined = {
        node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef | ast.ClassDef)
      }
      assert set(name.split("::")) <= defined, f"{where}: {path} defines no {name}"
      assert Path(page).name in source, f"{where}: {path} does not read {page}"
    else:
      assert (ROOT / target).is_file(), f"{where}: no file {target}"
      code = next(code for _, block_line, code in python_blocks(text) if block_line == line)
      assert contains_excerpt((ROOT / target).read_text(), code), f"{where}: not an excerpt of {target}"


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_python_blocks_run(page):
  namespace = {"__name__": "__docs__"}
  x64 = jax.config.jax_enable_x64
  try:
    for line, code in blocks_to_run(page):
      exec(compile(code, f"{page}:{line}", "exec"), namespace)
  finally:
    # A block that switches float64 on globally must not change the pages after it.
    jax.config.update("jax_enable_x64", x64)


def flags(words: list[str]) -> list[str]:
  return [w.split("=")[0] for w in words if w.startswith("--")]


def start_help(script: tuple[str, ...]) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, *script, "--help"],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
  )


def test_shell_commands_name_what_exists():
  makefile = (ROOT / "Makefile").read_text()
  extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
  errors: list[str] = []
  wanted: dict[tuple[str, ...], list[tuple[str, str]]] = {}  # script -> (where, flag) to find in its --help

  for page in PAGES:
    for line, words in shell_commands(read(page)):
      where = f"{page}:{line}: {' '.join(words)}"
      if words[0] in PYTHONS:
        if words[1] == "-m":
          module = words[2]
          path = ROOT / (module.replace(".", "/") + ".py")
          if not path.is_file():  # a package run by its __main__
            path = ROOT / module.replace(".", "/") / "__main__.py"
          script, rest = ("-m", module), words[3:]
        else:
          path, script, rest = ROOT / words[1], (words[1],), words[2:]
        if not path.is_file():
          errors.append(f"{where}: no {path.relative_to(ROOT)}")
          continue
        for flag in flags(rest):
          wanted.setdefault(script, []).append((where, flag))
      elif words[0] == "make":
        for word in words[1:]:
          if word.startswith("ARGS="):
            for flag in flags(word.removeprefix("ARGS=").split()):
              wanted.setdefault(("-m", "examples.train"), []).append((where, flag))
          elif not re.search(rf"^{re.escape(word)}:", makefile, re.MULTILINE):
            errors.append(f"{where}: no make target {word!r}")
      elif words[:2] == ["pip", "install"]:
        for word in words[2:]:
          match = re.fullmatch(r"(?:\.|optax_usam)\[([\w,-]+)\]", word)
          if match and not set(match.group(1).split(",")) <= extras:
            errors.append(f"{where}: pyproject.toml has no extra {match.group(1)!r}")
      else:
        errors.append(f"{where}: unknown command {words[0]!r} (check it here)")

  # The option table of the training page documents the main job.
  for number, line in enumerate(read("docs/training.md").splitlines(), start=1):
    if line.startswith("|"):
      for flag in re.findall(r"--[a-z][a-z0-9-]*", line):
        wanted.setdefault(("-m", "examples.train"), []).append((f"docs/training.md:{number}", flag))

  running = {script: start_help(script) for script in wanted}  # in parallel: each imports jax
  for script, process in running.items():
    output, _ = process.communicate(timeout=300)
    if process.returncode != 0:
      errors.append(f"{' '.join(script)} --help failed:\n{output[-2000:]}")
      continue
    for where, flag in wanted[script]:
      if not re.search(rf"{re.escape(flag)}\b", output):
        errors.append(f"{where}: {flag} is not in `{' '.join(script)} --help`")
  assert not errors, "\n".join(errors)


def documented_names() -> set[str]:
  names = set()
  for page in (DOCS / "api").glob("*.md"):
    text = page.read_text()
    names |= set(re.findall(r"^\.\. auto(?:function|class|data|exception)::\s+(\S+)", text, re.MULTILINE))
    # Described by hand: ".. py:data:: NAME" with its ":module:".
    names |= {
      f"{module}.{name}"
      for name, module in re.findall(r"^\.\. py:data::\s+(\S+)\n\s+:module:\s+(\S+)", text, re.MULTILINE)
    }
  return names


def public_names(module: types.ModuleType) -> list[str]:
  if hasattr(module, "__all__"):
    return list(module.__all__)
  return [
    name
    for name, value in vars(module).items()
    if not name.startswith("_")
    and getattr(value, "__module__", None) == module.__name__
    and (isinstance(value, type) or callable(value))
  ]


def test_every_public_name_is_on_an_api_page():
  documented = documented_names()
  missing = []
  for name in optax_usam.__all__:
    value = getattr(optax_usam, name)
    if isinstance(value, types.ModuleType):
      continue  # a submodule: its names are checked below
    # A lazily imported Flax name may be documented where it is defined.
    if f"optax_usam.{name}" not in documented and f"{value.__module__}.{name}" not in documented:
      missing.append(f"optax_usam.{name}")
  for module_name in API_MODULES:
    module = importlib.import_module(module_name)
    missing += [
      f"{module_name}.{name}"
      for name in public_names(module)
      if f"{module_name}.{name}" not in documented and f"optax_usam.{name}" not in documented
    ]
  assert not missing, f"not on any page of docs/api/: {missing}"


def test_every_figure_is_on_a_page():
  pages = "\n".join(read(page) for page in PAGES if page.startswith("docs/"))
  figures = [
    path
    for directory in FIGURE_DIRS
    for path in directory.rglob("*.png")
    if not IGNORED_FIGURE_DIRS & set(path.relative_to(directory).parts)
  ]
  assert figures
  missing = [str(f.relative_to(ROOT)) for f in figures if f"../{f.relative_to(ROOT)}" not in pages]
  assert not missing, f"figures on no page of docs/: {missing}"


def test_the_site_builds_without_warnings(tmp_path):
  # As `make docs`: warnings are errors, every cross-reference must resolve (-n), no network.
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "sphinx",
      "-W",
      "--keep-going",
      "-n",
      "-q",
      "-j",
      "1",
      "-b",
      "html",
      str(DOCS),
      str(tmp_path / "html"),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-5000:]
  html = tmp_path / "html"
  core = (html / "api" / "core.html").read_text()
  assert 'id="optax_usam.unified_sam"' in core and 'class="math' in core  # docstring math, for MathJax
  assert {p.name for p in (html / "_images").iterdir()} >= {"overhead.png", "digits_results.png"}


def test_the_distributed_page_runs_its_blocks_on_both_mesh_kinds():
  text = read(DISTRIBUTED)
  assert len(DISTRIBUTED_BLOCKS) >= 2, [section for section, _, _ in DISTRIBUTED_BLOCKS]
  assert fence_infos(text) <= {"python", "text"}, fence_infos(text)
  assert balanced(text), "unbalanced code fences"
  by_hand = "\n".join(code for section, _, code in DISTRIBUTED_BLOCKS if "by hand" in section)
  # The shard_map recipe once failed on the mesh jax.make_mesh builds by default (explicit axes): JAX's
  # default mesh and an automatic-axes mesh are both exercised.
  assert 'jax.make_mesh((n,), ("data",))' in by_hand and "AxisType.Auto" in by_hand, by_hand


@pytest.mark.parametrize(("section", "line", "code"), DISTRIBUTED_BLOCKS, ids=block_ids(DISTRIBUTED_BLOCKS))
def test_distributed_block(section, line, code):
  del section  # in the test id
  assert jax.device_count() >= 4
  exec(compile(code, f"{DISTRIBUTED}:{line}", "exec"), {"__name__": "__docs__"})


def test_reading_the_code_names_every_module_in_under_40_lines():
  text = read("docs/reading_the_code.md")
  assert len(text.splitlines()) < 40
  package = ROOT / "optax_usam"
  modules = [p.relative_to(package) for p in package.rglob("*.py") if p.name != "__init__.py"]
  missing = [str(path) for path in modules if not re.search(rf"[`/]{re.escape(path.name)}`", text)]
  assert not missing, f"docs/reading_the_code.md does not name {missing}"
