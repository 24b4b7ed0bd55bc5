"""Runs every ```python block of docs/recipes.md, each in a fresh namespace.

The blocks end with asserts against a hand-written reference, so a recipe that
stops being true fails here, under the name of its section.
"""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

from tests._markdown import balanced, block_ids, fence_infos, python_blocks

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"
TEXT = RECIPES.read_text()

BLOCKS = python_blocks(TEXT)


def test_page_has_the_recipes():
  # A broken regex must not make the parametrized test below vacuous.
  assert len(BLOCKS) >= 7, [section for section, _, _ in BLOCKS]
  # Every fence is either run (python) or plainly not code (text): a ```py block would be skipped silently.
  assert fence_infos(TEXT) <= {"python", "text"}, fence_infos(TEXT)
  assert balanced(TEXT), "unbalanced code fences"


@pytest.mark.parametrize(("section", "line", "code"), BLOCKS, ids=block_ids(BLOCKS))
def test_recipe(section, line, code):
  del section  # in the test id
  x64 = jax.config.jax_enable_x64
  try:
    exec(compile(code, f"docs/recipes.md:{line}", "exec"), {"__name__": "__docs__"})
  finally:
    # A block that switches float64 on globally must not change the blocks after it.
    jax.config.update("jax_enable_x64", x64)
