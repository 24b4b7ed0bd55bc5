"""Collectives over a named axis, with the error a user can act on."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import jax


def pmean(tree: Any, axis_name: Hashable) -> Any:
  """``jax.lax.pmean`` over ``axis_name``; an unbound axis is a ValueError saying where to call it from."""
  try:
    return jax.lax.pmean(tree, axis_name)
  except NameError as err:
    raise ValueError(
      f"axis_name={axis_name!r} is not bound here: call update inside jax.pmap or "
      f"jax.shard_map over that axis, or build unified_sam with axis_name=None."
    ) from err
