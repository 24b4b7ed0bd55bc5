"""The collectives of a compiled program, read from its HLO text: the helper of the sharded-step tests."""

from __future__ import annotations

import re

import numpy as np


def collectives(hlo: str, op: str) -> list[list[tuple[int, ...]]]:
  """Result shapes of every ``op`` (e.g. ``all-gather``) instruction in compiled HLO text."""
  found = []
  for line in hlo.splitlines():
    m = re.search(rf"= (.*?) {op}(?:-start)?\(", line)
    if m:
      found.append(
        [tuple(int(d) for d in dims.split(",") if d) for dims in re.findall(r"\w+\[([\d,]*)\]", m.group(1))]
      )
  return found


def collective_bytes(hlo: str, op: str) -> int:
  """Bytes of every ``op``'s results, at 4 bytes an element (the float32 of these tests)."""
  return sum(4 * int(np.prod(shape)) for shapes in collectives(hlo, op) for shape in shapes)
