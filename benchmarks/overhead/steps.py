"""The training steps the overhead benchmark compiles and times, one factory per variant.

Every factory takes a loss ``loss(params, x, y)`` and returns a :data:`Variant`: the step
``step(params, state, x, y) -> (params, state, loss)`` and ``init(params) -> state``. All use
momentum SGD (``LR``, ``MOMENTUM``) as the base optimizer and ``RHO``, ``EPS`` for the perturbation.
``tests/test_benchmarks_overhead_steps.py`` compiles the same ``sgd``, ``limit``, ``usam`` and family steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optax_usam
from optax_usam._batches import first_fraction
from optax_usam._passes import sam_passes

LR = 0.01
MOMENTUM = 0.9
RHO = 0.05
EPS = 1e-12
LAMBDAS: dict[str, float | str] = {"usam[0]": 0.0, "usam[1]": 1.0, "usam[1-1/t]": "1-1/t"}
# Row-name prefixes of the cheaper variants (SAM, lambda = 1, inside each).
CHEAPER_PREFIXES = ("reuse[", "random[", "subbatch[")
# The SAM family's rows (docs/sam_family.md), by row name: lambda = 1 and each constructor's defaults; for the
# two parameters without one, the main job's values (the step does the same work for any value).
RSAM_NOISE_STD = 1e-3
GSAM_ALPHA = 0.1
FAMILY: dict[str, Callable[[], optax.GradientTransformationExtraArgs]] = {
  "vasso": lambda: optax_usam.vasso(RHO, eps=EPS),
  "friendly_sam": lambda: optax_usam.friendly_sam(RHO, eps=EPS),
  "momentum_sam": lambda: optax_usam.momentum_sam(RHO, eps=EPS),
  "random_smoothing_sam": lambda: optax_usam.random_smoothing_sam(RHO, RSAM_NOISE_STD, eps=EPS),
  "gsam": lambda: optax_usam.gsam(RHO, GSAM_ALPHA, eps=EPS),
}
# The rows that take one gradient per step, as SGD: their target is SGD's step time.
ONE_GRADIENT = ("momentum_sam",)
# The groups of rows ``--rows`` chooses from; ``sgd`` and ``limit``, the references, are always timed.
ROW_GROUPS = ("usam", "optax_sam", "cheaper", "family")

Loss = Callable[[Any, jax.Array, jax.Array], jax.Array]
Step = Callable[[Any, Any, jax.Array, jax.Array], tuple[Any, Any, jax.Array]]
Variant = tuple[Step, Callable[[Any], Any]]


def _zeros(params: Any) -> Any:
  return jax.tree.map(jnp.zeros_like, params)


def _momentum_sgd(params: Any, mom: Any, g: Any) -> tuple[Any, Any]:
  mom = jax.tree.map(lambda m, g: MOMENTUM * m + g, mom, g)
  return jax.tree.map(lambda p, m: p - LR * m, params, mom), mom


def sgd(loss: Loss) -> Variant:
  """(a) One ``value_and_grad`` and momentum SGD, by hand."""

  def step(params: Any, mom: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
    value, g = jax.value_and_grad(loss)(params, x, y)
    return (*_momentum_sgd(params, mom, g), value)

  return step, _zeros


def limit(loss: Loss) -> Variant:
  """(b) The minimal SAM step, by hand: two gradients, the global norm, the perturbed point, momentum SGD."""

  def step(params: Any, mom: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
    value, g = jax.value_and_grad(loss)(params, x, y)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(g)))
    scale = RHO / (norm + EPS)
    g = jax.grad(loss)(jax.tree.map(lambda p, g: p + scale * g, params, g), x, y)
    return (*_momentum_sgd(params, mom, g), value)

  return step, _zeros


def with_optax(
  loss: Loss,
  tx: optax.GradientTransformationExtraArgs,
  grad_fn_takes_state: bool = False,
  ascent_fraction: float | None = None,
) -> Variant:
  """A step of an Optax SAM transformation: the gradient of the batch (of its first ``ascent_fraction``
  when given) as the update, and ``grad_fn`` evaluating the gradient of the whole batch.

  ``grad_fn_takes_state``: ``optax.contrib.sam`` calls ``grad_fn(params, state)``, ``optax_usam``
  calls ``grad_fn(params)``.
  """

  def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
    first = (x, y) if ascent_fraction is None else first_fraction((x, y), ascent_fraction)
    value, g = jax.value_and_grad(loss)(params, *first)
    grad = jax.grad(loss)
    grad_fn = (lambda p, _: grad(p, x, y)) if grad_fn_takes_state else (lambda p: grad(p, x, y))
    updates, state = tx.update(g, state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state, value

  return step, tx.init


def usam(loss: Loss, lambd: float | str) -> Variant:
  """(c) ``optax.chain(optax_usam.unified_sam(RHO, lambd), optax.sgd(LR, MOMENTUM))``."""
  return with_optax(loss, optax.chain(optax_usam.unified_sam(RHO, lambd, eps=EPS), _base()))


def optax_sam(loss: Loss) -> Variant:
  """(d) ``optax.contrib.sam`` with a normalized-SGD adversary: SAM, Optax's way."""
  tx = optax.contrib.sam(
    _base(), optax.chain(optax.contrib.normalize(), optax.sgd(RHO)), sync_period=2, opaque_mode=True
  )
  return with_optax(loss, tx, grad_fn_takes_state=True)


def family_member(loss: Loss, tx: optax.GradientTransformationExtraArgs) -> Variant:
  """A SAM-family step as the Flax steps take it (the library's ``sam_passes``): without the first pass when
  ``tx`` does not need the fresh gradient (``optax_usam.needs_fresh_gradient``), one gradient per step; the
  loss is then that of its one pass, at the ascent point."""

  def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
    value_and_grad = lambda p: jax.value_and_grad(loss)(p, x, y)
    (updates, state), value = sam_passes(
      state,
      lambda: value_and_grad(params),
      value_and_grad,
      lambda g, grad_fn: tx.update(g, state, params, grad_fn=grad_fn),
    )
    return optax.apply_updates(params, updates), state, value

  return step, tx.init


def cheaper_variant_names(every_k: int, probability: float, fraction: float) -> tuple[str, str, str]:
  """Row names of the cheaper variants: ``reuse_sam``, ``randomized_sam`` and sub-batch ascent."""
  return f"reuse[k={every_k}]", f"random[p={probability:g}]", f"subbatch[f={fraction:g}]"


def cheaper_variants(loss: Loss, every_k: int, probability: float, fraction: float) -> dict[str, Variant]:
  """The cheaper variants of SAM (lambda = 1), by row name."""
  sam = lambda: optax_usam.unified_sam(RHO, 1.0, eps=EPS)
  reuse, random, subbatch = cheaper_variant_names(every_k, probability, fraction)
  return {
    reuse: with_optax(loss, optax.chain(optax_usam.reuse_sam(sam(), every_k), _base())),
    random: with_optax(loss, optax.chain(optax_usam.randomized_sam(sam(), probability), _base())),
    subbatch: with_optax(loss, optax.chain(sam(), _base()), ascent_fraction=fraction),
  }


def jax_steps(
  loss: Loss,
  every_k: int = 4,
  probability: float = 0.25,
  fraction: float = 0.25,
  groups: tuple[str, ...] = ROW_GROUPS,
) -> dict[str, Variant]:
  """The JAX rows of the benchmark in ``groups`` (of :data:`ROW_GROUPS`), in table order."""
  steps = {"sgd": sgd(loss), "limit": limit(loss)}
  if "usam" in groups:
    steps.update({name: usam(loss, lambd) for name, lambd in LAMBDAS.items()})
  if "optax_sam" in groups:
    steps["optax_sam"] = optax_sam(loss)
  if "cheaper" in groups:
    steps.update(cheaper_variants(loss, every_k, probability, fraction))
  if "family" in groups:
    steps.update({name: family_member(loss, make()) for name, make in FAMILY.items()})
  return steps


def _base() -> optax.GradientTransformation:
  return optax.sgd(LR, momentum=MOMENTUM)
