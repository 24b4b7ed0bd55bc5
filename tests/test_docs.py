"""Runs every ```python block of docs/recipes.md, each in a fresh namespace.

The blocks end with asserts against a hand-written reference, so a recipe that
stops being true fails here, under the name of its section.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import pytest

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"
TEXT = RECIPES.read_text()

# An opening fence with its info string, the body, and the closing fence.
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def _blank_fences(text: str) -> str:
  """``text`` with the fenced blocks blanked (newlines kept): a ``# comment`` in code is no heading."""
  return FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def _slug(heading: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def _python_blocks(text: str) -> list[tuple[str, int, str]]:
  """``(section heading, line of the block's first code line, code)`` for each ```python block."""
  headings = [(m.start(), m.group(1)) for m in HEADING.finditer(_blank_fences(text))]
  blocks = []
  for m in FENCE.finditer(text):
    if m.group(1).strip() != "python":
      continue
    section = next((h for pos, h in reversed(headings) if pos < m.start()), "top")
    blocks.append((section, text.count("\n", 0, m.start(2)) + 1, m.group(2)))
  return blocks


BLOCKS = _python_blocks(TEXT)


def _ids() -> list[str]:
  slugs = [_slug(section) for section, _, _ in BLOCKS]
  lines = [line for _, line, _ in BLOCKS]
  return [f"{s}-line{line}" if slugs.count(s) > 1 else s for s, line in zip(slugs, lines, strict=True)]


def test_page_has_the_recipes():
  # A broken regex must not make the parametrized test below vacuous.
  assert len(BLOCKS) >= 7, [section for section, _, _ in BLOCKS]
  # Every fence is either run (python) or plainly not code (text): a ```py block would be skipped silently.
  infos = {m.group(1).strip() for m in FENCE.finditer(TEXT)}
  assert infos <= {"python", "text"}, infos
  assert TEXT.count("```") == 2 * len(FENCE.findall(TEXT)), "unbalanced code fences"


@pytest.mark.parametrize(("section", "line", "code"), BLOCKS, ids=_ids())
def test_recipe(section, line, code):
  del section  # in the test id
  x64 = jax.config.jax_enable_x64
  try:
    exec(compile(code, f"docs/recipes.md:{line}", "exec"), {"__name__": "__docs__"})
  finally:
    # A block that switches float64 on globally must not change the blocks after it.
    jax.config.update("jax_enable_x64", x64)
