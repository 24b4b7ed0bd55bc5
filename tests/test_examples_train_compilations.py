"""examples/train/compilations.py: the XLA compilations counted through JAX's monitoring events."""

from __future__ import annotations

import threading

import jax
import numpy as np

from examples.train.compilations import CompileCounter


def test_a_new_shape_compiles_once_and_a_cached_call_not_at_all() -> None:
  def double(x: jax.Array) -> jax.Array:
    return 2 * x

  step = jax.jit(double)
  # NumPy inputs: building them compiles nothing, so every count below is the jitted function's.
  small, large = np.ones(3, np.float32), np.ones(5, np.float32)
  with CompileCounter() as counter:
    step(small)
    assert (counter.count, dict(counter.by_function)) == (1, {"jit(double)": 1})
    step(small)
    assert counter.count == 1
    step(large)
    assert (counter.count, dict(counter.by_function)) == (2, {"jit(double)": 2})
  seconds = counter.seconds
  assert counter.summary() == {"count": 2, "seconds": round(seconds, 3)}
  # Closed, it hears nothing more.
  step(np.ones(7, np.float32))
  assert (counter.count, counter.seconds) == (2, seconds)


def test_compilations_from_several_threads_are_all_counted() -> None:
  # The digits job compiles from its worker threads: each thread's compilation is counted once.
  steps = [jax.jit(lambda x, k=k: x + k) for k in range(4)]
  x = np.ones(3, np.float32)
  with CompileCounter() as counter:
    threads = [threading.Thread(target=step, args=(x,)) for step in steps]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
  assert counter.count == len(steps) == sum(counter.by_function.values())


def test_a_counter_inside_another_counts_only_its_own_compilations() -> None:
  # As the job's counter inside a test's (tests/test_examples_train_digits_runner.py): both hear the event.
  step = jax.jit(lambda x: x - 1)
  with CompileCounter() as outer:
    step(np.ones(2, np.float32))
    with CompileCounter() as inner:
      step(np.ones(4, np.float32))
  assert (inner.count, outer.count) == (1, 2)
