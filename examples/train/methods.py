"""The methods the main job compares, and the optimizer each one trains with: the SAM part of the job.

A method is SGD, Unified SAM with a lambda (a number or one of ``optax_usam.schedules.LAMBDA_STRINGS``), one
of the cheaper variants of SAM (fewer than two gradients per step on average), or a member of the SAM family
(another ascent direction, or GSAM's descent term). :func:`make_tx` puts it in front of weight decay and
momentum SGD.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Hashable

import jax
import jax.numpy as jnp
import optax

import optax_usam
from examples.train.cli import UsageError, library_errors
from optax_usam.flax_linen import SAMTrainState, linen_train_step
from optax_usam.schedules import LAMBDA_FORMS, LAMBDA_STRINGS, inverse_t

# The cheaper variants of SAM: reuse the SAM correction (LookSAM), take SAM steps at random, or take the
# ascent gradient on a sub-batch; each with the option (argparse's dest) of its parameter.
CHEAPER_VARIANTS = {
  "reuse-sam": "reuse_every",
  "random-sam": "sam_probability",
  "subbatch-sam": "ascent_fraction",
}
# The SAM family (docs/sam_family.md), at the library's lambda = 1: the command-line name, its optax_usam
# constructor, and the parameters the command line sets (what each means, for --help). Each parameter has the
# flag --<name>-<parameter> (kebab-case) with the constructor's default; the library checks the values.
FAMILY: dict[str, tuple[str, dict[str, str]]] = {
  "vasso": ("vasso", {"theta": "weight of the new gradient in the average of gradients"}),
  "friendly-sam": (
    "friendly_sam",
    {"sigma": "share of the averaged gradient removed", "momentum": "decay of that average"},
  ),
  "momentum-sam": ("momentum_sam", {"momentum": "decay of the average of past SAM gradients"}),
  "random-smoothing-sam": ("random_smoothing_sam", {"noise_std": "std of the Gaussian smoothing noise"}),
  "gsam": ("gsam", {"alpha": "weight of the surrogate-gap term"}),
}
# Defaults of the two parameters the library leaves to the caller, our choices: RSAM's noise (relative to the
# filter norms) between the 5e-4 and 2.5e-3 its authors use (random_smoothing_sam's docstring), and a
# moderate GSAM alpha.
OWN_DEFAULTS = {("random-smoothing-sam", "noise_std"): 1e-3, ("gsam", "alpha"): 0.1}


@dataclasses.dataclass(frozen=True)
class Method:
  """SGD (``lambd is None``) or Unified SAM with ``lambd``, possibly in a cheaper variant or as a SAM-family
  member (``variant``)."""

  name: str
  lambd: float | str | None
  variant: str | None = None

  @property
  def slug(self) -> str:
    return self.name.replace("/", "_").replace("=", "").replace(" ", "")


def family_flag(name: str, parameter: str) -> str:
  """A SAM-family parameter's flag: ``--momentum-sam-momentum`` (the base optimizer has ``--momentum``)."""
  return f"--{name}-{parameter.replace('_', '-')}"


def family_dest(name: str, parameter: str) -> str:
  """Where argparse keeps that flag's value: ``args.momentum_sam_momentum``."""
  return family_flag(name, parameter)[2:].replace("-", "_")


def family_default(name: str, parameter: str) -> float:
  """A SAM-family parameter's default: the constructor's (the command line keeps it), else ours."""
  constructor, _ = FAMILY[name]
  default = inspect.signature(getattr(optax_usam, constructor)).parameters[parameter].default
  return OWN_DEFAULTS[name, parameter] if default is inspect.Parameter.empty else default


def method_options(method: Method) -> set[str]:
  """The options (argparse's dests) ``method`` reads: none for SGD; ``rho`` and its cheaper variant's or SAM
  family member's parameters for the others. The job refuses an option given that no method of the run
  reads."""
  if method.lambd is None:
    return set()
  if method.variant in CHEAPER_VARIANTS:
    return {"rho", CHEAPER_VARIANTS[method.variant]}
  _, parameters = FAMILY.get(method.variant, ("", {}))
  return {"rho", *(family_dest(method.variant, p) for p in parameters)}


def method_readers(dest: str) -> str:
  """Which methods read the option ``dest`` (one of :func:`method_options`'), in words, for an error."""
  if dest in method_options(parse_method("sam")):
    return "a method other than sgd"
  return " or ".join(
    name for name in (*CHEAPER_VARIANTS, *FAMILY) if dest in method_options(parse_method(name))
  )


def parse_method(token: str) -> Method:
  """'sgd', 'usam', 'sam', a lambda (a number or a lambda string), a cheaper variant or a SAM-family member.

  A number's range is the library's to check, when the method's transformation is built.
  """
  token = token.strip()
  named = {"sgd": Method("SGD", None), "usam": Method("USAM", 0.0), "sam": Method("SAM", 1.0)}
  if token.lower() in named:
    return named[token.lower()]
  if token.lower() in (*CHEAPER_VARIANTS, *FAMILY):
    return Method(token.lower(), 1.0, token.lower())
  if token in LAMBDA_STRINGS:
    return Method(f"lambda={token}", token)
  try:
    value = float(token)
  except ValueError:
    raise UsageError(
      f"unknown method or lambda {token!r}: use sgd, usam, sam, {', '.join(LAMBDA_STRINGS)}, "
      f"a number in [0, 1], one of the cheaper variants {', '.join(CHEAPER_VARIANTS)}, or one of the SAM "
      f"family {', '.join(FAMILY)}"
    ) from None
  return Method(f"lambda={value:g}", value)


def make_tx(
  method: Method, args: argparse.Namespace, total_steps: int, axis_name: Hashable | None = None
) -> optax.GradientTransformationExtraArgs:
  """Unified SAM or a SAM-family member (for SGD, a gradient average over ``axis_name``) + weight decay +
  momentum SGD."""
  if method.lambd is None:
    first = (
      optax.identity()
      if axis_name is None
      else optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (jax.lax.pmean(updates, axis_name), state),
      )
    )
  elif method.variant in FAMILY:
    constructor, parameters = FAMILY[method.variant]
    settings = {p: getattr(args, family_dest(method.variant, p)) for p in parameters}
    first = getattr(optax_usam, constructor)(
      args.rho, lambd_schedule=method.lambd, axis_name=axis_name, **settings
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


def lambda_form(lambd: float | str) -> tuple[float, float]:
  """``(constant, per_t)`` of :func:`optax_usam.schedules.inverse_t` (lambda_t = constant + per_t / t): every
  lambda of the job, a number or one of ``LAMBDA_STRINGS``, in one form whose coefficients are numbers."""
  return LAMBDA_FORMS.get(lambd, (lambd, 0.0))  # type: ignore[arg-type]


def unified_sam_inverse_t(
  rho: float, lambd_constant: float, lambd_per_t: float
) -> optax.GradientTransformation:
  """Unified SAM with lambda_t = lambd_constant + lambd_per_t / t: the factory whose arguments
  ``optax.inject_hyperparams`` keeps as arrays."""
  return optax_usam.unified_sam(rho, inverse_t(lambd_constant, lambd_per_t))


def shares_sam_step(method: Method) -> bool:
  """Whether ``method`` is plain Unified SAM, whose rho and lambda :func:`make_shared_sam_tx` takes as
  arrays."""
  return method.lambd is not None and method.variant is None


def make_shared_sam_tx(args: argparse.Namespace, total_steps: int) -> optax.GradientTransformationExtraArgs:
  """One optimizer for every plain Unified SAM method: rho and lambda's coefficients are hyperparameters in
  its state (``optax.inject_hyperparams``), so one compiled step serves them all; :func:`set_lambda` puts a
  method's lambda in a state. Otherwise as :func:`make_tx` builds it."""
  sam = optax.inject_hyperparams(unified_sam_inverse_t)(rho=args.rho, lambd_constant=0.0, lambd_per_t=0.0)
  schedule = optax.cosine_decay_schedule(args.lr, total_steps)
  return optax.chain(
    sam, optax.add_decayed_weights(args.weight_decay), optax.sgd(schedule, momentum=args.momentum)
  )


def set_lambda(opt_state: optax.OptState, method: Method) -> optax.OptState:
  """``opt_state`` of :func:`make_shared_sam_tx` with ``method``'s lambda (same dtypes: no new compile)."""
  constant, per_t = (jnp.asarray(c, jnp.result_type(float)) for c in lambda_form(method.lambd))
  return optax.tree_utils.tree_set(opt_state, lambd_constant=constant, lambd_per_t=per_t)


def ascent_fraction(method: Method, args: argparse.Namespace) -> float | None:
  """The sub-batch fraction of ``method``'s ascent gradient (``linen_train_step(ascent_fraction=)``)."""
  return args.ascent_fraction if method.variant == "subbatch-sam" else None


def check_step(tx: optax.GradientTransformationExtraArgs, fraction: float | None) -> None:
  """The library checks some values in the step that takes them (an ascent fraction; a rho the float32 step
  cannot hold): traces a ``linen_train_step`` with ``tx`` on a one-parameter model (nothing is computed)."""
  state = SAMTrainState.create(apply_fn=None, params=jnp.zeros(1), tx=tx)
  loss_fn = lambda params, batch_stats, batch, rng: (jnp.sum(params * batch), (batch_stats, None))
  jax.eval_shape(lambda: linen_train_step(state, jnp.zeros(1), loss_fn, ascent_fraction=fraction))


def check_with_library(methods: list[Method], args: argparse.Namespace, lambda_flag: str) -> None:
  """Builds every method once, so that whatever the library refuses stops the job before any training.

  The library checks its own arguments (rho, lambda, the parameters of the cheaper variants and of the SAM
  family); its ValueError or TypeError becomes a usage error naming the flag. ``lambda_flag`` is the flag the
  lambdas came from.
  """
  flags = {
    "rho": "--rho",
    "lambd": lambda_flag,
    "every_k": "--reuse-every",
    "probability": "--sam-probability",
    "ascent_fraction": "--ascent-fraction",
  }
  if any(shares_sam_step(m) for m in methods):
    with library_errors(flags):
      # The shared optimizer keeps rho in a float32 array, where a rho beyond float32 (1e39) is inf: building
      # its state runs the library's check on that value (before any parameter is needed).
      make_shared_sam_tx(args, total_steps=1).init({})
  for method in methods:
    # Per method: two members of the family name a parameter "momentum", each with its own flag.
    _, parameters = FAMILY.get(method.variant, ("", {}))
    with library_errors({**flags, **{p: family_flag(method.variant, p) for p in parameters}}):
      check_step(make_tx(method, args, total_steps=1), ascent_fraction(method, args))
