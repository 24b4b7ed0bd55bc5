"""The fenced code blocks of a Markdown page, for the tests that run a page's blocks and check its commands.

A ```python block runs in ``tests/test_docs.py`` unless a marker comment stands right above its fence
(blank lines allowed in between):

* ``<!-- docs: run by tests/test_x.py::test_y -->``: the block needs what that test sets up (several devices
  or processes), and that test runs it;
* ``<!-- docs: excerpt of examples/x.py -->``: the block quotes lines of that file, which must contain them
  (a line ``...`` in the block skips lines of the file); the file is run by its own tests.
"""

from __future__ import annotations

import re
import shlex
from typing import NamedTuple

# An opening fence with its info string, the body, and the closing fence.
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
# A marker is a line of its own (one quoted inside a sentence is not a marker).
_MARKER = r"^[ \t]*<!--\s*docs:\s*(run by|excerpt of)\s+(\S+)\s*-->[ \t]*"
MARKER = re.compile(_MARKER + "$", re.MULTILINE)
# The marker of the fence that starts at the end of the match: the comment, then only blank lines.
MARKER_ABOVE = re.compile(_MARKER + r"\n(?:[ \t]*\n)*\Z", re.MULTILINE)
# Fences a page may hold: run (python), checked commands (bash), plain output or formulas (text), and the
# directives of the Sphinx site ({toctree}, {eval-rst}, ...). Anything else (```py, a bare ```) would be
# neither run nor checked.
ALLOWED_INFOS = {"python", "bash", "text"}


class Marker(NamedTuple):
  verb: str  # "run by" or "excerpt of"
  target: str  # "tests/test_x.py::test_y" or "examples/x.py"


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


def unknown_infos(text: str) -> set[str]:
  """Info strings outside :data:`ALLOWED_INFOS` and the ``{directive}`` form."""
  return {info for info in fence_infos(text) if info not in ALLOWED_INFOS and not info.startswith("{")}


def balanced(text: str) -> bool:
  """Whether every ``` belongs to a complete fence (an unclosed one would hide the rest of the page)."""
  return text.count("```") == 2 * len(FENCE.findall(text))


def markers(text: str) -> dict[int, Marker]:
  """The marker above each marked fence, by the line of the block's first code line."""
  found = {}
  for m in FENCE.finditer(text):
    above = MARKER_ABOVE.search(text, 0, m.start())
    if above:
      found[text.count("\n", 0, m.start(2)) + 1] = Marker(above.group(1), above.group(2))
  return found


def all_markers(text: str) -> list[Marker]:
  """Every marker comment of the page, above a fence or not (a stray one is a mistake)."""
  return [Marker(m.group(1), m.group(2)) for m in MARKER.finditer(text)]


def contains_excerpt(source: str, excerpt: str) -> bool:
  """Whether ``source`` holds the lines of ``excerpt`` in order, each part contiguous and equally indented.

  Parts are separated by lines ``...``; a part may be indented less than in ``source`` (a function body
  quoted at the left margin), by the same amount on each of its lines.
  """
  lines = source.splitlines()
  parts, part = [], []
  for line in excerpt.splitlines():
    if line.strip() == "...":
      parts.append(part)
      part = []
    else:
      part.append(line)
  parts.append(part)
  start = 0
  for part in parts:
    while part and not part[0].strip():
      part = part[1:]
    while part and not part[-1].strip():
      part = part[:-1]
    if not part:
      continue
    found = _find_part(lines, part, start)
    if found is None:
      return False
    start = found + len(part)
  return True


def _find_part(lines: list[str], part: list[str], start: int) -> int | None:
  part_indent = len(part[0]) - len(part[0].lstrip())
  for i in range(start, len(lines) - len(part) + 1):
    extra = len(lines[i]) - len(lines[i].lstrip()) - part_indent
    if extra < 0:
      continue
    if all(
      other == " " * extra + line if line.strip() else not other.strip()
      for line, other in zip(part, lines[i : i + len(part)], strict=True)
    ):
      return i
  return None


def shell_commands(text: str) -> list[tuple[int, list[str]]]:
  """``(line, words)`` of each command: every line of a ```bash block, and ``$ `` lines of ```text blocks.

  Comments, a trailing ``&``, ``VAR=value`` prefixes and ``time`` are dropped; ``a && b`` gives two
  commands.
  """
  commands = []
  for m in FENCE.finditer(text):
    info, body = m.group(1).strip(), m.group(2)
    first = text.count("\n", 0, m.start(2)) + 1
    for offset, line in enumerate(body.splitlines()):
      if info == "text":
        if not line.startswith("$ "):
          continue
        line = line[2:]
      elif info != "bash":
        continue
      words = shlex.split(line, comments=True)
      while words and words[-1] == "&":
        words.pop()
      for command in _split_on(words, "&&"):
        while command and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", command[0]) or command[0] == "time"):
          command = command[1:]
        if command:
          commands.append((first + offset, command))
  return commands


def _split_on(words: list[str], separator: str) -> list[list[str]]:
  parts: list[list[str]] = [[]]
  for word in words:
    if word == separator:
      parts.append([])
    else:
      parts[-1].append(word)
  return parts
