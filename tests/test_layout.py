"""The tests mirror the code: every module of optax_usam, examples and benchmarks has its test file, and
every test file names one.

The rule (docs/testing.md): the tests of ``optax_usam/<a>/<b>.py`` live in ``tests/test_<a>_<b>.py``, of
``optax_usam/<m>.py`` in ``tests/test_<m>.py``, a leading underscore of each part dropped (``_trees.py``:
``test_trees.py``; ``_validation/scalars.py``: ``test_validation_scalars.py``). ``examples/<...>.py`` and
``benchmarks/<...>.py`` map the same way to ``tests/test_examples_<...>.py`` and
``tests/test_benchmarks_<...>.py``, where a package's modules may share one file named after the package
(``benchmarks/seed_claims/``: ``test_benchmarks_seed_claims.py``); ``__main__.py`` only calls a ``main``. A
package's ``__init__.py`` only gathers names, tested where they are defined (the top level's
``__all__``: ``test_public_api.py``). The files of ``CROSS_CUTTING`` each test one integration instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"

# Test files named after what they integrate, not after a module: keep this list short.
CROSS_CUTTING = {
  "test_docs.py": "README.md and docs/: every block runs, every command exists, the site builds",
  "test_docstrings.py": "every docstring example of optax_usam, under doctest",
  "test_equinox.py": "Equinox models through unified_sam, against the float64 reference",
  "test_layout.py": "this rule",
  "test_multihost.py": "2 JAX processes against one process of 4 devices",
  "test_optax_idioms.py": "Optax's wrappers around unified_sam: inject_hyperparams, MultiSteps, masked, ...",
  "test_packaging.py": "the wheel and sdist, installed with the core dependencies only",
  "test_public_api.py": "optax_usam/__init__.py: __all__, dir() and star-import agree",
}


def _test_file(parts: tuple[str, ...]) -> str:
  """``tests/test_<...>.py`` for a module's or package's path parts, leading underscores dropped."""
  return "test_" + "_".join(part.lstrip("_") for part in parts) + ".py"


def _modules(package: str) -> set[tuple[str, ...]]:
  """Path parts of every module under ``package`` (``__init__`` and ``__main__`` files left out)."""
  return {
    path.relative_to(ROOT).with_suffix("").parts
    for path in (ROOT / package).rglob("*.py")
    if not path.name.startswith("__")
  }


def _packages(package: str) -> set[tuple[str, ...]]:
  return {path.parent.relative_to(ROOT).parts for path in (ROOT / package).rglob("__init__.py")}


def _wanted(tree: str) -> dict[tuple[str, ...], set[str]]:
  """For every module of ``tree``: the test files that may hold its tests, its own and its packages'.

  ``optax_usam``'s parts drop the package's name and its modules have no shared file (its ``__init__``
  gathers names only); under ``examples/`` and ``benchmarks/`` a package below the top level (``overhead``,
  ``seed_claims``, ``train``) may share one file for its modules.
  """
  wanted = {}
  for parts in _modules(tree):
    if tree == "optax_usam":
      wanted[parts] = {_test_file(parts[1:])}
    else:
      wanted[parts] = {_test_file(parts[:i]) for i in range(2, len(parts) + 1)}
  return wanted


@pytest.mark.parametrize("tree", ["optax_usam", "examples", "benchmarks"])
def test_every_module_has_its_test_file(tree: str) -> None:
  missing = sorted(
    f"tests/{max(names, key=len)} for {'/'.join(parts)}.py"
    for parts, names in _wanted(tree).items()
    if not any((TESTS / name).is_file() for name in names)
  )
  assert not missing, missing


def test_every_test_file_names_a_module_or_one_integration():
  named = {_test_file(parts[1:]) for parts in _modules("optax_usam") | _packages("optax_usam") if parts[1:]}
  for tree in ("examples", "benchmarks"):
    named |= {_test_file(parts) for parts in _modules(tree) | _packages(tree)}
  assert not CROSS_CUTTING.keys() & named, "a module's test file cannot be cross-cutting too"
  unnamed = sorted(
    path.name for path in TESTS.glob("test_*.py") if path.name not in named | CROSS_CUTTING.keys()
  )
  assert not unnamed, f"test files that name no module and are not in CROSS_CUTTING: {unnamed}"
  assert all((TESTS / name).is_file() for name in CROSS_CUTTING), "CROSS_CUTTING names a missing file"


def _imported_test_modules(source: str) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
  return {".".join(name.split(".")[:2]) for name in names if name.startswith("tests.test_")}


def test_no_test_file_imports_another() -> None:
  # What test files share lives in the helpers (tests/numpy_reference.py, tests/_hlo.py, ...), so that each
  # module's tests stand alone; the detector is checked on a sample below, or an empty answer proves nothing.
  importing = {
    path.name: found
    for path in TESTS.glob("test_*.py")
    if (found := _imported_test_modules(path.read_text()))
  }
  assert not importing, importing
  assert _imported_test_modules("from tests.test_x import Y\nfrom tests import test_y, mlp_problem") == {
    "tests.test_x",
    "tests.test_y",
  }


def test_the_rule_on_its_examples():
  assert _test_file(("_trees",)) == "test_trees.py"
  assert _test_file(("_validation", "scalars")) == "test_validation_scalars.py"
  assert _test_file(("distributed", "mesh")) == "test_distributed_mesh.py"
  assert _test_file(("benchmarks", "overhead", "steps")) == "test_benchmarks_overhead_steps.py"
  assert ("optax_usam", "schedules") in _modules("optax_usam")
  assert _wanted("optax_usam")[("optax_usam", "_validation", "scalars")] == {"test_validation_scalars.py"}
  assert _wanted("examples")[("examples", "quickstart")] == {"test_examples_quickstart.py"}
  assert _wanted("examples")[("examples", "train", "compilations")] == {
    "test_examples_train.py",
    "test_examples_train_compilations.py",
  }
  assert _wanted("benchmarks")[("benchmarks", "seed_claims", "quadratic")] == {
    "test_benchmarks_seed_claims.py",
    "test_benchmarks_seed_claims_quadratic.py",
  }
  assert ("examples", "train", "__main__") not in _modules("examples")
  assert ("optax_usam", "distributed") in _packages("optax_usam")
