"""Momentum-SAM at the cost of SGD: one forward and one backward pass per step, in the compiled HLO.

``optax_usam.momentum_sam`` perturbs along the previous SAM gradients, so its step needs no gradient at
the current parameters: the documented loop passes ``updates=None`` and the Flax steps skip their first
pass. These tests compile the steps on the models of ``tests/test_benchmarks_overhead_steps.py`` and count the
matrix products and convolutions with the benchmark's own parser (``benchmarks/hlo.py``): as many as
the SGD step's, and no ``conditional`` or ``while`` (XLA:CPU runs a ``lax.cond`` around convolutions
20-50x slower). The step is the overhead benchmark's (``benchmarks/overhead/steps.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import optax_usam
from benchmarks import hlo
from benchmarks.overhead import steps
from optax_usam.flax_linen import SAMTrainState, linen_train_step
from tests.test_benchmarks_overhead_steps import MODELS, ONE_PASS


def _compiled_text(step: Any, *args: Any) -> str:
  return jax.jit(step).lower(*args).compile().as_text()


@functools.cache
def _family_step(model: str, name: str) -> str:
  loss, params, batch = MODELS[model]()
  step, init = steps.family_member(loss, steps.FAMILY[name]())
  return _compiled_text(step, params, init(params), *batch)


@functools.cache
def _sgd_step(model: str) -> str:
  loss, params, batch = MODELS[model]()
  step, init = steps.sgd(loss)
  return _compiled_text(step, params, init(params), *batch)


def _no_control_flow(text: str, *, prng: bool = False) -> None:
  """No ``conditional``; no ``while`` either, unless the step draws random numbers (``prng``): on CPU
  JAX lowers the rounds of its threefry PRNG to small while loops."""
  ops = hlo.opcodes(text)
  assert ops["conditional"] == 0, ops["conditional"]
  assert prng or ops["while"] == 0, ops["while"]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_momentum_sam_step_has_the_products_of_sgd(model):
  assert hlo.products(_sgd_step(model)) == ONE_PASS[model]
  assert hlo.products(_family_step(model, "momentum_sam")) == ONE_PASS[model]
  _no_control_flow(_family_step(model, "momentum_sam"))


@pytest.mark.parametrize("model", sorted(MODELS))
def test_random_smoothing_sam_takes_two_passes_and_no_third(model):
  """RSAM needs no gradient at x_t either: its two passes are at x_t + delta_t and x_t + e_t."""
  dots, convs = ONE_PASS[model]
  assert hlo.products(_family_step(model, "random_smoothing_sam")) == (2 * dots, 2 * convs)
  _no_control_flow(_family_step(model, "random_smoothing_sam"), prng=True)


@pytest.mark.parametrize("name", ["vasso", "friendly_sam", "gsam"])
def test_two_gradient_members_take_two_passes_without_control_flow(name):
  dots, convs = ONE_PASS["convnet"]
  assert hlo.products(_family_step("convnet", name)) == (2 * dots, 2 * convs)
  _no_control_flow(_family_step("convnet", name))


# Momentum-SAM skips the first pass; SAM, the control, takes it.
ONE_AND_TWO_PASSES = [(lambda: optax_usam.momentum_sam(0.05), 1), (lambda: optax_usam.sam(0.05), 2)]


class _Net(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dense: 2 dots forward, 3 backward (the input needs no gradient)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return nn.Dense(4)(nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(16)(x))))


def _linen_loss(params: Any, batch_stats: Any, batch: Any, rng: Any) -> Any:
  logits, updates = _Net().apply(
    {"params": params, "batch_stats": batch_stats}, batch[0], train=True, mutable=["batch_stats"]
  )
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
  return loss, (updates["batch_stats"], logits)


@pytest.mark.parametrize("sam_tx,passes", ONE_AND_TWO_PASSES)
def test_linen_train_step_skips_the_first_pass(sam_tx, passes):
  batch = (jnp.ones((8, 5)), jnp.zeros(8, jnp.int32))
  variables = jax.jit(functools.partial(_Net().init, train=False))(jax.random.key(0), batch[0])
  state = SAMTrainState.create(
    apply_fn=_Net().apply,
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    tx=optax.chain(sam_tx(), optax.sgd(0.1, momentum=0.9)),
  )
  text = _compiled_text(functools.partial(linen_train_step, loss_fn=_linen_loss), state, batch)
  assert hlo.products(text)[0] == 5 * passes
  _no_control_flow(text)


@pytest.mark.parametrize("sam_tx,passes", ONE_AND_TWO_PASSES)
def test_nnx_sam_update_skips_the_first_pass(sam_tx, passes):
  class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
      self.dense, self.out = nnx.Linear(5, 16, rngs=rngs), nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
      return self.out(nnx.relu(self.dense(x)))

  model = Net(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.chain(sam_tx(), optax.sgd(0.1)), wrt=nnx.Param)
  loss_fn = lambda m, x, y: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
  step = nnx.jit(lambda m, o, x, y: optax_usam.flax_nnx.sam_update(m, o, loss_fn, x, y))
  text = step.lower(model, optimizer, jnp.ones((8, 5)), jnp.zeros(8, jnp.int32)).compile().as_text()
  assert hlo.products(text)[0] == 5 * passes
  _no_control_flow(text)
