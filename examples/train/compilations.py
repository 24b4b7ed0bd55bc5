"""How many XLA compilations a job triggers, and how long they take: from JAX's own monitoring events."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import jax

# The event JAX records once per XLA compilation (what jax_log_compiles reports), with its duration.
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
  """Counts the XLA compilations made while it is open (``with CompileCounter() as counter:``).

  ``count`` and ``seconds`` total them; ``by_function`` counts them per jitted function name
  (``'jit(train_step)'``).
  """

  def __init__(self) -> None:
    self.count = 0
    self.seconds = 0.0
    self.by_function: Counter[str] = Counter()
    self._lock = threading.Lock()  # the digits job compiles from several threads

  def _on_event(self, event: str, duration: float, **kwargs: Any) -> None:
    if event == BACKEND_COMPILE:
      with self._lock:
        self.count += 1
        self.seconds += duration
        self.by_function[str(kwargs.get("fun_name"))] += 1

  def __enter__(self) -> CompileCounter:
    jax.monitoring.register_event_duration_secs_listener(self._on_event)
    return self

  def __exit__(self, *exc: object) -> None:
    jax.monitoring.unregister_event_duration_listener(self._on_event)

  def summary(self) -> dict[str, float]:
    return {"count": self.count, "seconds": round(self.seconds, 3)}
