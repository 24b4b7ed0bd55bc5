"""``benchmarks/hlo.py``: the HLO counts the overhead benchmark reports and its structural test asserts."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks import hlo


def _compiled_text() -> str:
  # A product, a scalar kernel, and a reshape that XLA turns into a free bitcast followed by a copy.
  step = lambda x, s: (x @ x, s * 2, x.reshape(-1))
  return jax.jit(step).lower(jnp.ones((4, 4)), 1.0).compile().as_text()


def test_counts_of_a_compiled_module() -> None:
  text = _compiled_text()
  assert hlo.products(text) == (1, 0)
  array_ops, scalar_ops = hlo.entry_ops(text)
  assert array_ops == {"dot": 1, "copy": 1}  # parameters, the bitcast and the result tuple do no work
  assert scalar_ops == 1  # s * 2
  summary = hlo.summary(text)
  assert summary["dot"] == 1 and summary["convolution"] == 0
  assert summary["array_ops"] == {"copy": 1, "dot": 1} and summary["scalar_ops"] == 1
  assert summary["instructions"] == sum(hlo.opcodes(text).values()) > 4


def test_free_instructions_are_never_counted() -> None:
  text = """HloModule m

%body (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %e = f32[8]{0} exponential(%p)
}

ENTRY %main (a: f32[8], b: (f32[8], f32[])) -> (f32[8], f32[2,4]) {
  %a = f32[8]{0} parameter(0)
  %b = (f32[8]{0}, f32[]) parameter(1)
  %c = f32[] constant(1)
  %g = f32[8]{0} get-tuple-element(%b), index=0
  %s = f32[] get-tuple-element(%b), index=1
  %r = f32[2,4]{1,0} bitcast(%g)
  %n = f32[] add(%s, %c)
  %f = f32[8]{0} fusion(%a, %g), kind=kLoop, calls=%body
  ROOT %t = (f32[8]{0}, f32[2,4]{1,0}) tuple(%f, %r)
}
"""
  array_ops, scalar_ops = hlo.entry_ops(text)
  assert array_ops == {"fusion": 1}
  assert scalar_ops == 1  # the add; the scalar get-tuple-element and constant are free
  assert hlo.opcodes(text)["exponential"] == 1  # computations other than the entry count everywhere
  assert set(hlo.FREE) == {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
