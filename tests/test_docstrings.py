"""Every docstring example of every ``optax_usam`` module runs, so none can rot.

The examples are doctest blocks (``>>>`` lines and their output), run with ``ELLIPSIS`` and
``NORMALIZE_WHITESPACE``, one test per module, with ``jax``, ``jnp``, ``np``, ``optax`` and ``optax_usam``
imported (the API reference says so). A code example written another way (an ``Example::``
literal block, a ``.. code-block::``) would never run, so one fails the module's test.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam

MODULES = sorted(
  [optax_usam.__name__, *(m.name for m in pkgutil.walk_packages(optax_usam.__path__, "optax_usam."))]
)
# What every example may use without importing it: the imports an optax_usam user always has.
IMPORTED = {"jax": jax, "jnp": jnp, "np": np, "optax": optax, "optax_usam": optax_usam}
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# An RST literal block: a line ending in "::" (or a code-block directive), then the more indented lines.
LITERAL_INTRO = re.compile(r"(::|^\s*\.\. (?:code-block|code|sourcecode)::.*)\s*$")


def literal_blocks(docstring: str) -> list[str]:
  """The RST literal blocks of ``docstring``, dedented."""
  lines = docstring.expandtabs().splitlines()
  blocks = []
  for i, line in enumerate(lines):
    if not LITERAL_INTRO.search(line):
      continue
    indent = len(line) - len(line.lstrip())
    body = []
    for following in lines[i + 1 :]:
      if following.strip() and len(following) - len(following.lstrip()) <= indent:
        break
      body.append(following)
    text = "\n".join(body).strip("\n")
    if text:
      margin = min(len(b) - len(b.lstrip()) for b in body if b.strip())
      blocks.append("\n".join(b[margin:] for b in body).strip("\n"))
  return blocks


def is_python_code(block: str) -> bool:
  """Python that does something (a call or an import), and no doctest: a formula or a tree is not code."""
  if ">>>" in block:
    return False
  try:
    tree = ast.parse(block)
  except SyntaxError:
    return False
  return any(isinstance(node, ast.Call | ast.Import | ast.ImportFrom) for node in ast.walk(tree))


def test_the_modules_are_found():
  assert {"optax_usam.transform", "optax_usam.flax_linen", "optax_usam.distributed.trainer"} <= set(MODULES)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
  module = importlib.import_module(module_name)
  tests = doctest.DocTestFinder(exclude_empty=False).find(module, module_name)
  unrun = [
    f"{test.name}:\n{block}"
    for test in tests
    for block in literal_blocks(test.docstring or "")
    if is_python_code(block)
  ]
  assert not unrun, "code examples that are not doctests (write them as >>> lines):\n\n" + "\n\n".join(unrun)

  runner = doctest.DocTestRunner(optionflags=OPTIONS)
  report: list[str] = []  # the failures: the docstring, the example, what it printed
  x64 = jax.config.jax_enable_x64
  try:
    for test in tests:
      test.globs.update(IMPORTED)
      runner.run(test, out=report.append)
  finally:
    jax.config.update("jax_enable_x64", x64)  # an example that turns float64 on must not leak
  assert not runner.failures, "".join(report)
