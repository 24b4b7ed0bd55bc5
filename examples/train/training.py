"""What the digits and the CIFAR runners share: the loss, the diagnostics, and the check that stops a run
that diverged."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optax_usam
from examples.train.cli import CommandError
from optax_usam.flax_linen import SAMTrainState


class DivergedError(CommandError):
  """A run reached a non-finite loss or parameter: exit status 1, and no results are written."""


def model_variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  """The variables ``model.apply`` takes: ``batch_stats`` only for a model that has them (BatchNorm; the
  digits CNN has none, and Flax refuses a ``None`` collection)."""
  return {"params": params} if batch_stats is None else {"params": params, "batch_stats": batch_stats}


def make_loss_fn(model: Any) -> Callable[..., Any]:
  """``loss_fn(params, batch_stats, batch, rng)`` for :func:`optax_usam.flax_linen.linen_train_step`."""

  def loss_fn(params, batch_stats, batch, rng):
    variables = model_variables(params, batch_stats)
    rngs = {"dropout": rng} if rng is not None else {}
    logits, updates = model.apply(variables, batch["x"], train=True, mutable=["batch_stats"], rngs=rngs)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, (updates.get("batch_stats", batch_stats), logits)

  return loss_fn


def diagnostics(state: SAMTrainState) -> dict[str, float]:
  """lambda_t, rho_t and the gradient norm of the last step; empty for SGD."""
  try:
    d = optax_usam.get_diagnostics(state.opt_state)
  except ValueError:  # SGD has no Unified SAM state.
    return {}
  return {"lambda_t": float(d["lambd"]), "rho_t": float(d["rho"]), "grad_norm": float(d["grad_norm"])}


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  """True if every floating leaf of ``tree`` is finite: one reduction on the device, one scalar to read."""
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def check_finite(run: str, epoch: int, loss: float, state: SAMTrainState) -> None:
  """Stops the job at the first non-finite training loss or parameter (or BatchNorm statistic).

  Called once per epoch (and before any checkpoint), on a loss the caller has already read back: a diverged
  run must end in an error, not in a table of chance-level accuracies computed from NaN parameters.
  """
  params_ok = bool(all_finite((state.params, state.batch_stats)))
  if math.isfinite(loss) and params_ok:
    return
  what = f"training loss {loss:g}" + ("" if params_ok else ", non-finite parameters")
  raise DivergedError(
    f"{run} diverged in epoch {epoch} ({what}); no results written: try a smaller --lr or --rho (a value "
    "too large for float32 is inf), or check --weight-decay"
  )
