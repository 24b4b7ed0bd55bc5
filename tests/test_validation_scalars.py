"""Tests of optax_usam._validation.scalars: the rules every number and schedule check follows.

What each public function refuses is tested in its module's file; here the rules they share: a bool is not
a number, a 0-d array is, a traced value passes only where a check allows it, a schedule is checked at
count 0 when that value can be computed, and eps is checked against the dtype the norm is summed in; a
traced value is checked when the step runs only inside ``checking_traced_values`` (``check_values=True``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from optax_usam._validation import scalars


@pytest.mark.parametrize(
  ("value", "error", "match"),
  [
    (True, TypeError, "got the bool True"),
    (np.bool_(False), TypeError, "got the bool np.False_"),
    (np.ones(2), TypeError, r"must be a scalar; got an array of shape \(2,\)"),
    ("0.1", TypeError, "got '0.1' of type str"),
    (None, TypeError, "of type NoneType"),
    (-0.1, ValueError, "x must be a non-negative finite float; got -0.1"),
    (float("inf"), ValueError, "got inf"),
    (float("nan"), ValueError, "got nan"),
  ],
)
def test_a_number_is_a_real_scalar_not_a_bool(value, error, match):
  with pytest.raises(error, match=match):
    scalars.check_nonnegative(value, "x")


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.5), np.array(0.5), jnp.asarray(2, jnp.int32)])
def test_python_and_zero_d_array_numbers_become_floats(value):
  out = scalars.check_nonnegative(value, "x")
  assert type(out) is float and out == float(value)


def test_traced_values_pass_only_where_allowed():
  assert isinstance(jax.jit(lambda v: scalars.check_positive(v, "x", traced=True))(2.0), jax.Array)
  with pytest.raises(TypeError, match="x must be a concrete number; got a traced value"):
    jax.jit(lambda v: scalars.check_positive(v, "x"))(2.0)


@pytest.mark.parametrize(
  ("kwargs", "value", "ok"),
  [
    ({}, 0.0, True),
    ({}, 1.0, True),
    ({"open_low": True}, 0.0, False),
    ({"open_high": True}, 1.0, False),
    ({"open_low": True, "open_high": True}, 0.5, True),
    ({}, 1.5, False),
  ],
)
def test_interval_ends_open_on_request(kwargs, value, ok):
  if ok:
    assert scalars.check_interval(value, "x", 0.0, 1.0, **kwargs) == value
  else:
    with pytest.raises(ValueError, match=r"x must be a float in [\[(]0.0, 1.0[\])]"):
      scalars.check_interval(value, "x", 0.0, 1.0, **kwargs)


def test_ints_are_ints_in_range_and_not_bools():
  assert scalars.check_int(np.int64(3), "k", 1, bounds="a positive int") == 3
  with pytest.raises(TypeError, match="k must be a positive int; got True"):
    scalars.check_int(True, "k", 1, bounds="a positive int")
  with pytest.raises(TypeError, match=r"got 2\.0"):
    scalars.check_int(2.0, "k", 1, bounds="a positive int")
  with pytest.raises(ValueError, match="got 0"):
    scalars.check_int(0, "k", 1, bounds="a positive int")


@pytest.mark.parametrize("value", [np.array(2), jnp.asarray(2), np.int64(2)])
def test_a_concrete_integer_scalar_array_is_an_int(value):
  """np.array(2) got the hint for inject_hyperparams' traced ints although nothing was traced."""
  out = scalars.check_int(value, "num_microbatches", 1, bounds="a positive int")
  assert type(out) is int and out == 2
  with pytest.raises(ValueError, match="num_microbatches must be a positive int; got 0"):
    scalars.check_int(value * 0, "num_microbatches", 1, bounds="a positive int")


def test_only_a_traced_int_gets_the_static_args_hint():
  check = lambda v: scalars.check_int(v, "every_k", 1, bounds="a positive int")
  with pytest.raises(TypeError, match=r"every_k must be a positive int, fixed when .*static_args"):
    jax.jit(check)(2)
  for value in (np.array([2]), np.array(2.0)):
    with pytest.raises(TypeError, match=r"every_k must be a positive int; got array\(") as info:
      check(value)
    assert "static_args" not in str(info.value)


def test_choices_and_seeds():
  assert scalars.check_choice("b", "rule", ("a", "b")) == "b"
  with pytest.raises(TypeError, match="of type int"):
    scalars.check_choice(1, "rule", ("a", "b"))
  with pytest.raises(ValueError, match=r"rule must be one of \('a', 'b'\); got 'c'"):
    scalars.check_choice("c", "rule", ("a", "b"))
  seed = jnp.asarray(7, jnp.int32)  # what optax.inject_hyperparams makes of an int
  assert scalars.check_seed(seed) is seed
  with pytest.raises(TypeError, match="seed"):
    scalars.check_seed(jnp.asarray(7.0))


# Seeds at and beyond the ends of each mode's range, and pairs whose low bits agree (-1 and 2**32 - 1).
SEEDS = {
  False: [-(2**31) - 1, -(2**31), -1, 0, 2**31 - 1, 2**31, 2**32 - 1, 2**32],
  True: [-(2**63) - 1, -(2**63), -1, 0, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1],
}


@pytest.mark.parametrize("x64", [False, True])
def test_two_accepted_seeds_never_give_the_same_key(x64):
  """Without x64 JAX keeps a seed's low 32 bits: key(-1) was key(2**32 - 1), and both were accepted."""
  with jax.enable_x64(x64):
    keys = {}
    for seed in SEEDS[x64]:
      try:
        scalars.check_seed(seed)
      except ValueError as err:
        assert "seed must be an int in [" in str(err)
        continue
      key = tuple(np.asarray(jax.random.key_data(jax.random.key(seed))).tolist())
      assert key not in keys, f"seeds {keys.get(key)} and {seed} give the same key"
      keys[key] = seed
  low, high = (-(2**63), 2**63 - 1) if x64 else (-(2**31), 2**31 - 1)
  assert sorted(keys.values()) == [s for s in SEEDS[x64] if low <= s <= high]


@pytest.mark.parametrize(("eps", "dtype", "ok"), [(1e-40, jnp.float32, False), (1e-40, jnp.float64, True)])
def test_eps_is_checked_against_the_dtype_of_the_norm(eps, dtype, ok):
  """Below the smallest normal of that dtype XLA:CPU flushes eps to 0, and 0 / 0 follows a zero gradient."""
  if ok:
    assert scalars.check_eps(eps, dtype) == eps
  else:
    with pytest.raises(ValueError, match="eps=1e-40 is below the smallest normal float32"):
      scalars.check_eps(eps, dtype)


def test_a_schedule_is_checked_at_count_zero_when_it_can_be():
  assert scalars.bounded_schedule(0.5, "lambd", 0.0, 1.0)(jnp.asarray(3)) == 0.5
  with pytest.raises(ValueError, match=r"lambd schedule must give values in \[0.0, 1.0\]; lambd\(0\) = 2.0"):
    scalars.bounded_schedule(lambda count: 2.0 + 0 * count, "lambd", 0.0, 1.0)
  with pytest.raises(ValueError, match="a schedule must return a scalar"):
    scalars.bounded_schedule(lambda count: jnp.ones(2), "lambd", 0.0, 1.0)
  # A schedule closing over a traced value (a vmapped sweep) cannot be read at build time: it passes.
  swept = jax.vmap(lambda v: scalars.bounded_schedule(lambda count: v, "lambd", 0.0, 1.0)(0))(
    jnp.array([2.0])
  )
  np.testing.assert_array_equal(swept, [2.0])


@pytest.mark.parametrize(
  ("value", "first"),
  [(0.5, 0.5), (np.float64(1e39), 1e39), (lambda count: 1e39, 1e39), (lambda count: 0.1 * (count + 1), 0.1)],
)
def test_a_bounded_schedule_keeps_its_value_at_count_zero(value, first):
  """What the step checks against its parameters' dtype: a schedule's rho(0) = 1e39 was inf in float32."""
  assert scalars.bounded_schedule(value, "rho", 0.0, np.inf).first == pytest.approx(first)
  # Traced (a vmapped sweep, inject_hyperparams under jit): nothing concrete to keep.
  firsts = []
  jax.vmap(lambda v: firsts.append(scalars.bounded_schedule(v, "rho", 0.0, np.inf).first) or v)(jnp.ones(2))
  jax.vmap(lambda v: firsts.append(scalars.bounded_schedule(lambda c: v, "rho", 0.0, np.inf).first) or v)(
    jnp.ones(2)
  )
  assert firsts == [None, None]


def test_non_scalars_are_named():
  scalars.check_scalars(rho=0.1, lambd=jnp.asarray(0.5))
  with pytest.raises(ValueError, match=r"lambd must be a scalar; got shape \(2,\)"):
    scalars.check_scalars(rho=0.1, lambd=jnp.ones(2))


@pytest.mark.parametrize(
  ("returned", "error", "match"),
  [
    (None, TypeError, "lambd: a schedule must return a real number.*got None"),
    ("0.5", TypeError, "lambd: a schedule must return a real number.*got '0.5'"),  # it was used as 0.5
    (0.5 + 0.5j, TypeError, r"lambd: a schedule must return a real number.*got \(0.5\+0.5j\)"),
    (jnp.asarray(0.5 + 0.5j), TypeError, "lambd: a schedule must return a real number.*complex64"),
    (jnp.ones(2), ValueError, r"lambd: a schedule must return a scalar; got shape \(2,\)"),
  ],
)
def test_a_schedule_must_return_a_real_scalar(returned, error, match):
  with pytest.raises(error, match=match):
    scalars.bounded_schedule(lambda count: returned, "lambd", 0.0, 1.0)
  # A value that goes wrong in the step only (count 0 is read concretely) is refused as the step is traced.
  later = lambda count: returned if isinstance(count, jax.core.Tracer) else 0.5
  schedule = scalars.bounded_schedule(later, "lambd", 0.0, 1.0)
  with pytest.raises(error, match=match):
    jax.jit(schedule)(1)


def _reported(fn, *args) -> str | None:
  """The message of the check ``fn`` fails when run under checkify, or None."""
  err, _ = jax.jit(checkify.checkify(fn, errors=checkify.user_checks))(*args)
  return err.get()


@pytest.mark.parametrize(
  ("check", "bad", "good"),
  [
    (lambda v: scalars.check_interval(v, "theta", 0.0, 1.0), 1.5, 1.0),
    (lambda v: scalars.check_interval(v, "momentum", 0.0, 1.0, open_high=True), 1.0, 0.0),
    (lambda v: scalars.check_nonnegative(v, "sigma", traced=True), -1.0, 0.0),
    (lambda v: scalars.check_positive(v, "eps", traced=True), 0.0, 1e-12),
    (lambda v: scalars.bounded_schedule(v, "rho", 0.0, np.inf)(0), np.inf, 0.0),
    (lambda v: scalars.bounded_schedule(lambda count: v * (count + 1), "rho", 0.0, 1.0)(1), 0.75, 0.5),
  ],
)
def test_traced_values_are_checked_when_the_step_runs_only_when_asked(check, bad, good):
  """What optax.inject_hyperparams gives under jit: the value is known only to the run."""

  def build(value, enabled):
    with scalars.checking_traced_values(enabled):
      return check(value)

  message = _reported(lambda v: build(v, True), bad)
  assert message is not None and "when the step ran (check_values=True)" in message
  assert _reported(lambda v: build(v, True), float("nan")) is not None
  assert _reported(lambda v: build(v, True), good) is None
  assert _reported(lambda v: build(v, False), bad) is None  # off by default: nothing added to the step


def test_check_at_run_time_names_the_value_and_its_range():
  message = _reported(lambda v: scalars.check_at_run_time(v, "probability", 0.0, 1.0), 1.5)
  assert message.startswith("probability must be a finite float in [0.0, 1.0]; got 1.5 when the step ran")
  assert _reported(lambda v: scalars.check_at_run_time(v, "x", 0.0, 1.0, open_low=True), 0.0) is not None
  # A Python number was checked when the step was built: nothing is added for it.
  assert _reported(lambda v: (scalars.check_at_run_time(2.0, "x", 0.0, 1.0), v)[1], 0.0) is None
