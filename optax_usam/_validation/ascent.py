"""Checks of :class:`optax_usam.AscentDirection`, the pluggable ascent direction of ``unified_sam``."""

from __future__ import annotations

from typing import Any

#: Where an ascent direction's transform takes its input from (see ``optax_usam.AscentDirection``).
ASCENT_SOURCES = ("gradient", "previous_sam_gradient", "grad_fn")


def check_direction(direction: Any) -> Any:
  """``direction`` if it is None or an ``AscentDirection``-like pair (transform, source); raises otherwise."""
  if direction is None:
    return None
  transform, source = getattr(direction, "transform", None), getattr(direction, "source", None)
  if not (callable(getattr(transform, "init", None)) and callable(getattr(transform, "update", None))):
    raise TypeError(
      "direction must be None or an optax_usam.AscentDirection(transform, source) whose transform is an "
      f"optax GradientTransformation; got {direction!r}."
    )
  if not isinstance(source, str) or source not in ASCENT_SOURCES:
    raise ValueError(f"direction.source must be one of {ASCENT_SOURCES}; got {source!r}.")
  return direction
