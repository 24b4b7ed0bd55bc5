"""Tests of optax_usam.theory.epoch_schedules: Khanh et al.'s epoch-wise learning rates.

Every rule against a simulation of the authors' training loop (the learning rate starts at its base value
and the scheduler steps after each epoch), step by step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_usam import theory

RULES = ("constant", "diminish1", "diminish2", "diminish3")


class _AuthorsLoop:
  """The authors' training loop in miniature: SGD starts at ``base``; ``step()`` runs after each epoch.

  Written from the description of their scheduler classes, not from the library's formulas.
  """

  def __init__(self, rule: str, base: float):
    self.rule, self.base, self.lr, self.calls, self.s = rule, base, base, 0, 2

  def step(self) -> None:
    j = self.calls
    if self.rule == "diminish1":  # LambdaLR(1/(epoch+1)): the (j+1)-th step() applies factor(j+1)
      self.lr = self.base / (j + 2)
    elif self.rule == "diminish2":
      self.lr = self.base / (j + 1) ** 0.5001
    elif self.rule == "diminish3" and j % 5 == 0:
      self.s += 1
      self.lr = self.base / (self.s * math.log(self.s))
    self.calls += 1


def _authors_rates(rule: str, base: float, epochs: int, steps_per_epoch: int) -> np.ndarray:
  loop, rates = _AuthorsLoop(rule, base), []
  for _ in range(epochs):
    rates += [loop.lr] * steps_per_epoch
    loop.step()
  return np.array(rates)


@pytest.mark.parametrize("steps_per_epoch", [1, 3, 7])
@pytest.mark.parametrize("rule", RULES)
def test_diminish_schedule_follows_the_authors_loop_step_by_step(rule, steps_per_epoch):
  epochs, base = 30, 0.1
  expected = _authors_rates(rule, base, epochs, steps_per_epoch)
  with jax.enable_x64(True):
    schedule = theory.diminish_schedule(rule, base, steps_per_epoch)
    counts = jnp.arange(epochs * steps_per_epoch, dtype=jnp.int32)
    values = np.asarray(schedule(counts))
    assert values.dtype == np.float64
  np.testing.assert_allclose(values, expected, rtol=1e-14)
  # Constant within each epoch, and in line with the closed forms of the docstring.
  per_epoch = values.reshape(epochs, steps_per_epoch)
  assert np.all(per_epoch == per_epoch[:, :1])
  e = np.arange(1, epochs)
  s = 3 + (e - 1) // 5
  later = {
    "constant": np.full(e.shape, base),
    "diminish1": base / (e + 1),
    "diminish2": base / e**0.5001,
    "diminish3": base / (s * np.log(s)),
  }[rule]
  assert per_epoch[0, 0] == base
  np.testing.assert_allclose(per_epoch[1:, 0], later, rtol=1e-14)


def test_diminish_schedule_first_epochs_are_the_codes():
  base = 0.5
  rates = {rule: _authors_rates(rule, base, 12, 1) for rule in RULES}
  assert rates["diminish2"][0] == rates["diminish2"][1] == base  # epoch 1 repeats epoch 0
  assert rates["diminish3"][1] == pytest.approx(base / (3 * math.log(3)), rel=1e-15)
  assert len(set(rates["diminish3"][1:6])) == 1 and rates["diminish3"][6] < rates["diminish3"][5]
  for rule in RULES:
    schedule = theory.diminish_schedule(rule, base, 1)
    np.testing.assert_allclose([float(schedule(k)) for k in range(12)], rates[rule], rtol=1e-6)


def test_diminish_schedule_under_jit_vmap_and_large_counts():
  with jax.enable_x64(True):

    @jax.jit
    def rates(base, count):
      return jnp.stack([theory.diminish_schedule(rule, base, 4)(count) for rule in RULES])

    out = np.asarray(rates(0.2, jnp.asarray(29, jnp.int32)))  # epoch 7: s = 3 + 6 // 5 = 4
    np.testing.assert_allclose(out, [0.2, 0.2 / 8, 0.2 / 7**0.5001, 0.2 / (4 * math.log(4))], rtol=1e-14)
    bases = jnp.array([0.1, 0.3])
    swept = jax.vmap(lambda b: theory.diminish_schedule("diminish1", b, 10)(25))(bases)
    np.testing.assert_allclose(np.asarray(swept), np.asarray(bases) / 3, rtol=1e-14)
    big = theory.diminish_schedule("diminish1", 1.0, 1000)(jnp.asarray(2_000_000_999, jnp.int32))
    assert float(big) == pytest.approx(1 / 2_000_001, rel=1e-14)
  assert theory.diminish_schedule("diminish3", 0.1, 2)(5).dtype == jnp.float32


def test_diminish_schedule_drives_sgd_epoch_by_epoch():
  # Plain SGD on x^2 / 2: x_{k+1} = (1 - lr_k) x_k, with lr_k from the authors' loop.
  steps_per_epoch, epochs = 3, 8
  rates = _authors_rates("diminish3", 0.5, epochs, steps_per_epoch)
  with jax.enable_x64(True):
    tx = optax.sgd(theory.diminish_schedule("diminish3", 0.5, steps_per_epoch))
    x = jnp.asarray(2.0)
    state, path = tx.init(x), []
    for _ in range(epochs * steps_per_epoch):
      updates, state = tx.update(x, state)
      x = optax.apply_updates(x, updates)
      path.append(float(x))
  np.testing.assert_allclose(path, 2.0 * np.cumprod(1 - rates), rtol=1e-13)


@pytest.mark.parametrize(
  ("args", "error", "match"),
  [
    (("diminish4", 0.1, 10), ValueError, r"rule must be one of \('constant', 'diminish1'"),
    (("Diminish1", 0.1, 10), ValueError, "rule must be one of"),
    ((1, 0.1, 10), TypeError, "rule must be one of .* got 1 of type int"),
    (("diminish1", 0.0, 10), ValueError, "init_value must be a positive finite"),
    (("diminish1", -0.1, 10), ValueError, "init_value"),
    (("diminish1", float("inf"), 10), ValueError, "init_value"),
    (("diminish1", "0.1", 10), TypeError, "init_value"),
    (("diminish1", 0.1, 0), ValueError, r"steps_per_epoch must be an int in \[1, 2\*\*31 - 1\]"),
    (("diminish1", 0.1, 2**31), ValueError, "steps_per_epoch must be an int in"),
    (("diminish1", 0.1, 2.0), TypeError, "steps_per_epoch must be an int in"),
    (("diminish1", 0.1, True), TypeError, "steps_per_epoch"),
  ],
)
def test_diminish_schedule_rejects_bad_arguments(args, error, match):
  with pytest.raises(error, match=match):
    theory.diminish_schedule(*args)
