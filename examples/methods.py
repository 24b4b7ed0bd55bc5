"""The methods examples/train.py compares, and the optimizer each one trains with: the SAM part of the job.

A method is SGD, Unified SAM with a lambda (a number or one of ``optax_usam.LAMBDA_STRINGS``), or one of the
cheaper variants of SAM (fewer than two gradients per step on average). :func:`make_tx` puts it in front of
weight decay and momentum SGD.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Hashable

import jax
import numpy as np
import optax
from cli import UsageError, library_errors

import optax_usam

# The cheaper variants of SAM: reuse the SAM correction (LookSAM), take SAM steps at random, or take the
# ascent gradient on a sub-batch.
CHEAPER_VARIANTS = ("reuse-sam", "random-sam", "subbatch-sam")


@dataclasses.dataclass(frozen=True)
class Method:
  """SGD (``lambd is None``) or Unified SAM with ``lambd``, possibly in one of the cheaper variants."""

  name: str
  lambd: float | str | None
  variant: str | None = None

  @property
  def slug(self) -> str:
    return self.name.replace("/", "_").replace("=", "").replace(" ", "")


def parse_method(token: str) -> Method:
  """'sgd', 'usam', 'sam', a lambda (a number or a lambda string), or one of the cheaper variants.

  A number's range is the library's to check, when the method's transformation is built.
  """
  token = token.strip()
  named = {"sgd": Method("SGD", None), "usam": Method("USAM", 0.0), "sam": Method("SAM", 1.0)}
  if token.lower() in named:
    return named[token.lower()]
  if token.lower() in CHEAPER_VARIANTS:
    return Method(token.lower(), 1.0, token.lower())
  if token in optax_usam.LAMBDA_STRINGS:
    return Method(f"lambda={token}", token)
  try:
    value = float(token)
  except ValueError:
    raise UsageError(
      f"unknown method or lambda {token!r}: use sgd, usam, sam, {', '.join(optax_usam.LAMBDA_STRINGS)}, "
      f"a number in [0, 1], or one of the cheaper variants {', '.join(CHEAPER_VARIANTS)}"
    ) from None
  return Method(f"lambda={value:g}", value)


def make_tx(
  method: Method, args: argparse.Namespace, total_steps: int, axis_name: Hashable | None = None
) -> optax.GradientTransformationExtraArgs:
  """Unified SAM (or, for SGD, a gradient average over ``axis_name``) + weight decay + momentum SGD."""
  if method.lambd is None:
    first = (
      optax.identity()
      if axis_name is None
      else optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (jax.lax.pmean(updates, axis_name), state),
      )
    )
  else:
    first = optax_usam.unified_sam(args.rho, method.lambd, axis_name=axis_name)
  if method.variant == "reuse-sam":
    first = optax_usam.reuse_sam(first, args.reuse_every)
  elif method.variant == "random-sam":
    first = optax_usam.randomized_sam(first, args.sam_probability)
  schedule = optax.cosine_decay_schedule(args.lr, total_steps)
  return optax.chain(
    first, optax.add_decayed_weights(args.weight_decay), optax.sgd(schedule, momentum=args.momentum)
  )


def ascent_fraction(method: Method, args: argparse.Namespace) -> float | None:
  """The sub-batch fraction of ``method``'s ascent gradient (``linen_train_step(ascent_fraction=)``)."""
  return args.ascent_fraction if method.variant == "subbatch-sam" else None


def check_with_library(methods: list[Method], args: argparse.Namespace, lambda_flag: str) -> None:
  """Builds every method once, so that whatever the library refuses stops the job before any training.

  The library checks its own arguments (rho, lambda, the cheaper variants' parameters); its ValueError or
  TypeError becomes a usage error naming the flag. ``lambda_flag`` is the flag the lambdas came from.
  """
  flags = {
    "rho": "--rho",
    "lambd": lambda_flag,
    "every_k": "--reuse-every",
    "probability": "--sam-probability",
    "fraction": "--ascent-fraction",
  }
  with library_errors(flags):
    for method in methods:
      make_tx(method, args, total_steps=1)
      fraction = ascent_fraction(method, args)
      if fraction is not None:
        optax_usam.sub_batch(np.zeros(1), fraction)  # the library checks a fraction when it takes one
