"""The compiled ``unified_sam`` step does the limit's work and no more.

Any SAM step needs two gradient evaluations; the limit is a hand-written step
that does exactly those (plus the global norm and momentum SGD). These tests
compile small networks on CPU and compare the optimized HLO of the Unified SAM
step with the plain SGD step and with the limit step: the matrix products and
convolutions (one per forward or backward use of a layer) must be exactly twice
SGD's, and the compiled temporary memory must not exceed the limit's by a
parameter-sized buffer.

The steps and the HLO counts are the overhead benchmark's own
(``benchmarks/overhead/steps.py``, ``benchmarks/hlo.py``): what is checked here
is what the benchmark times and reports. Its SAM-family steps too: Momentum-SAM
perturbs along the previous SAM gradients, so its step skips the first pass and
has SGD's products; every other member has SAM's two passes, RSAM's included
(at x + delta and x + e), and none has control flow.
"""

from __future__ import annotations

import collections
import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_usam
from benchmarks import hlo
from benchmarks.overhead import steps
from benchmarks.overhead.steps import Loss
from tests._hlo import assert_no_control_flow


def _mlp() -> tuple[Loss, Any, tuple[jax.Array, jax.Array]]:
  keys = jax.random.split(jax.random.key(0), 4)
  sizes = (16, 32, 32, 32)
  params = [
    {"w": jax.random.normal(k, (a, b)) / a**0.5, "b": jnp.zeros((b,))}
    for k, (a, b) in zip(keys, itertools.pairwise(sizes), strict=False)
  ]

  def loss(p: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    for i, layer in enumerate(p):
      x = x @ layer["w"] + layer["b"]
      x = jax.nn.relu(x) if i < len(p) - 1 else x
    return optax.softmax_cross_entropy_with_integer_labels(x, y).mean()

  x = jax.random.normal(keys[3], (8, 16))
  return loss, params, (x, jnp.arange(8) % 32)


def _convnet() -> tuple[Loss, Any, tuple[jax.Array, jax.Array]]:
  keys = jax.random.split(jax.random.key(1), 4)
  params = {
    "conv1": jax.random.normal(keys[0], (3, 3, 4, 8)) / 6.0,
    "conv2": jax.random.normal(keys[1], (3, 3, 8, 8)) / 8.5,
    "head": jax.random.normal(keys[2], (8, 32)) / 3.0,
  }

  def conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def loss(p: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    h = jax.nn.relu(conv(jax.nn.relu(conv(x, p["conv1"])), p["conv2"]))
    logits = jnp.mean(h, axis=(1, 2)) @ p["head"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  x = jax.random.normal(keys[3], (4, 8, 8, 4))
  return loss, params, (x, jnp.arange(4))


def _three_gradients_step(loss: Loss, lambd: float | str) -> steps.Variant:
  """``steps.usam`` whose ``grad_fn`` wastefully evaluates a third gradient: what the checks must catch."""
  tx = optax.chain(
    optax_usam.unified_sam(steps.RHO, lambd, eps=steps.EPS), optax.sgd(steps.LR, momentum=steps.MOMENTUM)
  )

  def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
    value, g = jax.value_and_grad(loss)(params, x, y)
    grad = lambda p: jax.grad(loss)(p, x, y)
    grad_fn = lambda p: jax.tree.map(lambda a, b: (a + b) / 2, grad(p), grad(jax.tree.map(jnp.negative, p)))
    updates, state = tx.update(g, state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state, value

  return step, tx.init


def _compile(variant: steps.Variant, params: Any, batch: tuple[jax.Array, ...]) -> Any:
  step, init = variant
  return jax.jit(step, donate_argnums=(0, 1)).lower(params, init(params), *batch).compile()


def _counts(compiled: Any) -> tuple[int, int]:
  """(dot products, convolutions) in the optimized HLO, fusion bodies included."""
  return hlo.products(compiled.as_text())


def _array_ops(compiled: Any) -> collections.Counter[str]:
  """Kinds of the entry computation's instructions that produce arrays, not scalars.

  Everything whose cost grows with the model is among them; the scalar ones
  (the norm's square root, the schedule, the step counter) are not, and neither
  are the instructions that do no work (``hlo.FREE``).
  """
  return hlo.entry_ops(compiled.as_text())[0]


def _temp(compiled: Any) -> int:
  return compiled.memory_analysis().temp_size_in_bytes


MODELS = {"mlp": _mlp, "convnet": _convnet}
# (dots, convolutions) of one forward + backward pass, counted by hand: the MLP
# has 3 dense layers (3 forward, 3 weight-gradient and 2 input-gradient
# products); the conv net has 2 convolutions (2 forward, 2 kernel-gradient,
# 1 input-gradient: the image needs none) and a dense head (1 + 1 + 1).
ONE_PASS = {"mlp": (8, 0), "convnet": (3, 5)}
LAMBDAS = [0.0, 1.0, "1-1/t"]


@functools.cache
def _compiled(model: str, step: str, lambd: float | str = 1.0) -> tuple[Any, int]:
  """The compiled step and the size in bytes of the model's smallest parameter leaf."""
  loss, params, batch = MODELS[model]()
  variant = {
    "sgd": lambda: steps.sgd(loss),
    "limit": lambda: steps.limit(loss),
    "usam": lambda: steps.usam(loss, lambd),
    "three_gradients": lambda: _three_gradients_step(loss, lambd),
    **{name: lambda make=make: steps.family_member(loss, make()) for name, make in steps.FAMILY.items()},
  }[step]()
  return _compile(variant, params, batch), min(x.nbytes for x in jax.tree.leaves(params))


def _scaled(pair: tuple[int, int], k: int) -> tuple[int, int]:
  return pair[0] * k, pair[1] * k


@pytest.mark.parametrize("model", sorted(MODELS))
def test_reference_steps_have_the_counted_passes(model: str) -> None:
  assert _counts(_compiled(model, "sgd")[0]) == ONE_PASS[model]
  assert _counts(_compiled(model, "limit")[0]) == _scaled(ONE_PASS[model], 2)


@pytest.mark.parametrize("lambd", LAMBDAS)
@pytest.mark.parametrize("model", sorted(MODELS))
def test_two_forward_and_two_backward_passes(model: str, lambd: float | str) -> None:
  assert _counts(_compiled(model, "usam", lambd)[0]) == _scaled(ONE_PASS[model], 2)


@pytest.mark.parametrize("lambd", LAMBDAS)
@pytest.mark.parametrize("model", sorted(MODELS))
def test_no_parameter_sized_temporary_beyond_the_limit(model: str, lambd: float | str) -> None:
  usam, leaf_bytes = _compiled(model, "usam", lambd)
  # A time-varying lambda adds one scalar temporary; a parameter-sized one is at least a leaf.
  assert _temp(usam) - _temp(_compiled(model, "limit")[0]) < leaf_bytes


@pytest.mark.parametrize("lambd", LAMBDAS)
@pytest.mark.parametrize("model", sorted(MODELS))
def test_same_array_operations_as_the_limit(model: str, lambd: float | str) -> None:
  limit = _array_ops(_compiled(model, "limit")[0])
  assert sum(limit.values()) > 0
  assert _array_ops(_compiled(model, "usam", lambd)[0]) == limit


@pytest.mark.parametrize("model", sorted(MODELS))
def test_checks_detect_a_third_gradient(model: str) -> None:
  wasteful, leaf_bytes = _compiled(model, "three_gradients")
  limit = _compiled(model, "limit")[0]
  assert _counts(wasteful) == _scaled(ONE_PASS[model], 3)
  assert _temp(wasteful) - _temp(limit) >= leaf_bytes
  assert _array_ops(wasteful) != _array_ops(limit)


@pytest.mark.parametrize(
  ("name", "passes"), [(name, 1 if name == "momentum_sam" else 2) for name in steps.FAMILY]
)
@pytest.mark.parametrize("model", sorted(MODELS))
def test_family_steps_take_their_passes_without_control_flow(model: str, name: str, passes: int) -> None:
  compiled = _compiled(model, name)[0]
  assert _counts(compiled) == _scaled(ONE_PASS[model], passes)
  assert_no_control_flow(compiled.as_text(), prng=name == "random_smoothing_sam")
