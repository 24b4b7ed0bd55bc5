"""The fenced code blocks of a Markdown page, for the tests that run a page's ```python blocks."""

from __future__ import annotations

import re

# An opening fence with its info string, the body, and the closing fence.
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def blank_fences(text: str) -> str:
  """``text`` with the fenced blocks blanked (newlines kept): a ``# comment`` in code is no heading."""
  return FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def slug(heading: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def python_blocks(text: str) -> list[tuple[str, int, str]]:
  """``(section heading, line of the block's first code line, code)`` for each ```python block."""
  headings = [(m.start(), m.group(1)) for m in HEADING.finditer(blank_fences(text))]
  blocks = []
  for m in FENCE.finditer(text):
    if m.group(1).strip() != "python":
      continue
    section = next((h for pos, h in reversed(headings) if pos < m.start()), "top")
    blocks.append((section, text.count("\n", 0, m.start(2)) + 1, m.group(2)))
  return blocks


def block_ids(blocks: list[tuple[str, int, str]]) -> list[str]:
  """Test ids: the section's slug, with the line number where a section holds several blocks."""
  slugs = [slug(section) for section, _, _ in blocks]
  lines = [line for _, line, _ in blocks]
  return [f"{s}-line{line}" if slugs.count(s) > 1 else s for s, line in zip(slugs, lines, strict=True)]


def fence_infos(text: str) -> set[str]:
  """The info strings of every fence: a page whose blocks are all run or plainly text has {python, text}."""
  return {m.group(1).strip() for m in FENCE.finditer(text)}


def balanced(text: str) -> bool:
  """Whether every ``` belongs to a complete fence (an unclosed one would hide the rest of the page)."""
  return text.count("```") == 2 * len(FENCE.findall(text))
