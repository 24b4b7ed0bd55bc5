"""What the tests read from a compiled program's HLO text: its collectives (the sharded-step tests) and its
control flow (the tests of the steps that skip a pass)."""

from __future__ import annotations

import re

import numpy as np

from benchmarks import hlo


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


def assert_no_control_flow(text: str, *, prng: bool = False) -> None:
  """No ``conditional`` in the module (XLA:CPU runs the convolutions inside a ``lax.cond`` 20-50x slower);
  no ``while`` either, unless the step draws random numbers (``prng``): on CPU JAX lowers the rounds of its
  threefry PRNG to small while loops."""
  ops = hlo.opcodes(text)
  assert ops["conditional"] == 0, ops["conditional"]
  assert prng or ops["while"] == 0, ops["while"]
