"""Tests of optax_usam.chain_order: Unified SAM first in its chain, whatever wraps the chain or it."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import optax_usam
from optax_usam.chain_order import check_sam_order, sam_state_paths

PARAMS = {"w": jnp.ones(3), "b": jnp.zeros(())}
SAM = lambda: optax_usam.unified_sam(0.05, "1-1/t")
BASE = lambda: optax.sgd(0.1, momentum=0.9)

# What the docs show: wrappers around the whole chain or around unified_sam itself, and the family.
FIRST = {
  "alone": lambda: SAM(),
  "chain": lambda: optax.chain(SAM(), optax.add_decayed_weights(5e-4), optax.adamw(1e-3)),
  "nested_chain": lambda: optax.chain(optax.chain(SAM(), BASE()), optax.add_noise(0.0, 0.5, 0)),
  "inject_hyperparams": lambda: optax.chain(optax.inject_hyperparams(optax_usam.sam)(rho=0.05), BASE()),
  "inject_around_chain": lambda: optax.inject_hyperparams(lambda lr: optax.chain(SAM(), optax.sgd(lr)))(
    lr=0.1
  ),
  "reuse_sam": lambda: optax.chain(optax_usam.reuse_sam(SAM(), 2), BASE()),
  "randomized_sam": lambda: optax.chain(optax_usam.randomized_sam(SAM(), 0.5), BASE()),
  "multi_steps_outside": lambda: optax.MultiSteps(optax.chain(SAM(), BASE()), 2),
  "multi_steps_inside": lambda: optax.chain(SAM(), optax.MultiSteps(BASE(), 2)),
  "apply_if_finite_outside": lambda: optax.apply_if_finite(optax.chain(SAM(), BASE()), 3),
  "apply_if_finite_inside": lambda: optax.chain(SAM(), optax.apply_if_finite(BASE(), 3)),
  "masked_base": lambda: optax.chain(SAM(), optax.masked(BASE(), {"w": True, "b": False})),
  "named_chain": lambda: optax.named_chain(("sam", SAM()), ("sgd", BASE())),
  "gsam": lambda: optax.chain(optax_usam.gsam(0.05, alpha=0.1), BASE()),
  "momentum_sam": lambda: optax.chain(optax_usam.momentum_sam(0.05), BASE()),
  "vasso": lambda: optax.chain(optax_usam.vasso(0.05, theta=0.4), BASE()),
}

# Unified SAM after another transformation, and where the check finds it.
AFTER = {
  "after_adamw": (lambda: optax.chain(optax.adamw(1e-3), SAM()), "[1]"),
  "after_clipping": (lambda: optax.chain(optax.clip_by_global_norm(1.0), SAM(), BASE()), "[1]"),
  "after_a_stateless_one": (lambda: optax.chain(optax.identity(), SAM()), "[1]"),
  "in_a_nested_chain": (lambda: optax.chain(optax.chain(optax.adamw(1e-3), SAM()), BASE()), "[0][1]"),
  "in_multi_steps": (lambda: optax.MultiSteps(optax.chain(BASE(), SAM()), 2), ".inner_opt_state[1]"),
  "reuse_sam_second": (lambda: optax.chain(BASE(), optax_usam.reuse_sam(SAM(), 2)), "[1]"),
  "inject_hyperparams_second": (
    lambda: optax.chain(BASE(), optax.inject_hyperparams(optax_usam.sam)(rho=0.05)),
    "[1].inner_state",
  ),
}


@pytest.mark.parametrize("tx", FIRST.values(), ids=FIRST.keys())
def test_unified_sam_first_passes_also_after_jit(tx):
  opt_state = tx().init(PARAMS)
  optax_usam.check_sam_first(opt_state)
  optax_usam.check_sam_first(jax.jit(lambda s: s)(opt_state))  # dicts come back sorted, tuples as they were
  assert len(sam_state_paths(opt_state)) == 1


@pytest.mark.parametrize(("tx", "where"), AFTER.values(), ids=AFTER.keys())
def test_unified_sam_after_another_transformation_is_refused(tx, where):
  message = (
    f"opt_state puts the Unified SAM transformation after another one (opt_state{where}): it must come first"
  )
  with pytest.raises(ValueError, match=re.escape(message)):
    optax_usam.check_sam_first(tx().init(PARAMS))


def test_two_unified_sam_transformations_or_none_are_refused():
  with pytest.raises(
    ValueError, match=r"opt_state holds 2 Unified SAM transformations \(opt_state\[0\], opt_state\[1\]\)"
  ):
    optax_usam.check_sam_first(optax.chain(SAM(), SAM()).init(PARAMS))
  with pytest.raises(ValueError, match="opt_state holds no Unified SAM transformation"):
    optax_usam.check_sam_first(BASE().init(PARAMS))
  # The Flax steps and the trainer accept an optimizer of one's own without one.
  check_sam_order(BASE().init(PARAMS), "state.tx", required=False)


def test_an_nnx_optimizers_state_is_checked_as_it_is():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  good = nnx.Optimizer(
    model, optax.chain(optax.inject_hyperparams(optax_usam.sam)(rho=0.05), BASE()), wrt=nnx.Param
  )
  optax_usam.check_sam_first(good.opt_state)
  wrong = nnx.Optimizer(model, optax.chain(optax.adamw(1e-3), SAM()), wrt=nnx.Param)
  with pytest.raises(ValueError, match=r"after another one \(opt_state\[1\]\)"):
    optax_usam.check_sam_first(wrong.opt_state)
