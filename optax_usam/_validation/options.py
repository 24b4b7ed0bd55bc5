"""Checks of :func:`optax_usam.unified_sam`'s keyword options, the ascent direction among them."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from optax_usam._validation.scalars import check_bools, check_eps, check_nonnegative
from optax_usam._validation.trees import check_mask


def check_transformation(x: Any, name: str, example: str) -> None:
  """Raises TypeError unless ``x`` has an optax transformation's callable ``init`` and ``update``.

  Duck-typed, as optax itself is: any object with the two methods works, not only the
  ``optax.GradientTransformation`` tuple. ``example``: one the user could pass, for the message.
  """
  if not (callable(getattr(x, "init", None)) and callable(getattr(x, "update", None))):
    raise TypeError(f"{name} must be an optax.GradientTransformation, e.g. {example}; got {x!r}.")


def check_direction(direction: Any, sources: tuple[str, ...]) -> Any:
  """``direction`` if it is None or an ``AscentDirection``-like pair (transform, source); raises otherwise."""
  if direction is None:
    return None
  if not (hasattr(direction, "transform") and hasattr(direction, "source")):
    raise TypeError(
      f"direction must be None or an optax_usam.AscentDirection(transform, source); got {direction!r}."
    )
  check_transformation(direction.transform, "direction.transform", "optax.ema(0.9)")
  if not isinstance(direction.source, str) or direction.source not in sources:
    raise ValueError(f"direction.source must be one of {sources}; got {direction.source!r}.")
  return direction


def check_sam_options(
  eps: Any,
  axis_name: Any,
  sync_perturbation: Any,
  adaptive: Any,
  adaptive_eta: Any,
  adaptive_mask: Any,
  perturb_mask: Any,
  check_values: Any,
) -> tuple[Any, Any, Any, Any]:
  """Checks unified_sam's keyword options; returns eps, adaptive_eta and the two masks."""
  eps = check_eps(eps)
  check_bools(sync_perturbation=sync_perturbation, adaptive=adaptive, check_values=check_values)
  adaptive_eta = check_nonnegative(adaptive_eta, "adaptive_eta", traced=True)
  if axis_name is not None and not isinstance(axis_name, Hashable):
    raise TypeError(f"axis_name must be None or a hashable axis name; got {axis_name!r}.")
  if adaptive_mask is not None and not adaptive:
    raise ValueError("adaptive_mask only applies with adaptive=True.")
  masks = check_mask(adaptive_mask, "adaptive_mask"), check_mask(perturb_mask, "perturb_mask")
  return eps, adaptive_eta, *masks
