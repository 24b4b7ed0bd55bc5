"""What an optimized HLO module does, counted from its text (``compiled.as_text()``).

One parser for the overhead benchmark and for ``tests/test_benchmarks_overhead_steps.py``, so that the
benchmark's "same array ops as the limit" and the test's assertion count the same thing.

Two counts answer "does this step do more work than the limit?":

* the products: ``dot`` and ``convolution`` instructions anywhere in the module, fusion bodies
  included (one per forward or backward use of a layer, so two gradients are twice SGD's);
* the entry computation's instructions by kind, split into those that produce an array (the work
  that grows with the model: fusions, copies, reductions, products) and those that produce a scalar
  (schedules, norms, step counters).

Instructions that do no work are not counted (``FREE``): ``parameter`` and ``constant`` name inputs
and literals, ``tuple`` and ``get-tuple-element`` pack and unpack results without touching their
buffers, and ``bitcast`` reinterprets a buffer's shape in place. XLA adds and removes them as it
rearranges buffers, so counting them would make two steps that do the same work differ.
"""

from __future__ import annotations

import collections
import re
from typing import Any

# Result shape (an array, a scalar or a tuple of them) and opcode of one HLO instruction.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?\S+ = (\([^()]*\)|\S+?)(?:\{[^}]*\})? ([a-z][\w-]*)\(", flags=re.M)
_SCALAR = re.compile(r"[a-z]+\d*\[\]")
FREE = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "bitcast"})


def opcodes(hlo: str) -> collections.Counter[str]:
  """Every instruction of the module by opcode, fusion bodies and other computations included."""
  return collections.Counter(op for _, op in _INSTRUCTION.findall(hlo))


def entry_ops(hlo: str) -> tuple[collections.Counter[str], int]:
  """The entry computation's instructions that do work: array-valued ones by opcode, and how many
  are scalar-valued."""
  entry = _INSTRUCTION.findall(hlo[hlo.index("\nENTRY") :])
  array_ops: collections.Counter[str] = collections.Counter()
  scalar_ops = 0
  for shape, op in entry:
    if op in FREE:
      continue
    if _SCALAR.fullmatch(shape):
      scalar_ops += 1
    else:
      array_ops[op] += 1
  return array_ops, scalar_ops


def products(hlo: str) -> tuple[int, int]:
  """(dot products, convolutions) in the module, fusion bodies included."""
  ops = opcodes(hlo)
  return ops["dot"], ops["convolution"]


def summary(hlo: str) -> dict[str, Any]:
  """The counts as JSON: ``dot``, ``convolution``, ``instructions`` (all of them), ``array_ops``
  (by opcode) and ``scalar_ops``."""
  ops = opcodes(hlo)
  array_ops, scalar_ops = entry_ops(hlo)
  return {
    "dot": ops["dot"],
    "convolution": ops["convolution"],
    "instructions": ops.total(),
    "array_ops": dict(sorted(array_ops.items())),
    "scalar_ops": scalar_ops,
  }
