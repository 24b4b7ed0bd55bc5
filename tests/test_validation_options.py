"""Tests of optax_usam._validation.options: unified_sam's keyword options, the ascent direction among them."""

from __future__ import annotations

from typing import Any, NamedTuple

import optax
import pytest

from optax_usam._validation import options

SOURCES = ("gradient", "previous_sam_gradient", "grad_fn")
DEFAULTS: dict[str, Any] = {
  "eps": 1e-12,
  "axis_name": None,
  "sync_perturbation": True,
  "adaptive": False,
  "adaptive_eta": 0.01,
  "adaptive_mask": None,
  "perturb_mask": None,
  "check_values": False,
}


class _Pair(NamedTuple):
  """Not an AscentDirection, but shaped like one: (transform, source)."""

  transform: Any
  source: Any


def test_a_direction_is_none_or_a_transform_with_a_known_source():
  assert options.check_direction(None, SOURCES) is None
  pair = _Pair(optax.identity(), "grad_fn")
  assert options.check_direction(pair, SOURCES) is pair
  with pytest.raises(
    TypeError,
    match=r"^direction.transform must be an optax.GradientTransformation, e.g. optax.ema\(0.9\); got",
  ):
    options.check_direction(_Pair(lambda g: g, "gradient"), SOURCES)
  with pytest.raises(
    TypeError,
    match=r"^direction must be None or an optax_usam.AscentDirection\(transform, source\); got 'ema'",
  ):
    options.check_direction("ema", SOURCES)
  with pytest.raises(ValueError, match=r"direction.source must be one of \('gradient', .*; got 'new'"):
    options.check_direction(_Pair(optax.identity(), "new"), SOURCES)


class _Duck:
  """Not an optax.GradientTransformation, but has its two methods."""

  def init(self, params):
    return ()

  def update(self, updates, state, params=None):
    return updates, state


@pytest.mark.parametrize("tx", [optax.sgd(0.1), optax.chain(optax.sgd(0.1)), _Duck()])
def test_check_transformation_takes_what_has_init_and_update(tx):
  options.check_transformation(tx, "base_optimizer", "optax.sgd(0.1)")


@pytest.mark.parametrize(
  ("tx", "shown"),
  [(None, "None"), ("sgd", "'sgd'"), (optax.sgd, "<function sgd"), (_Pair(None, None), "_Pair")],
)
def test_check_transformation_names_the_argument_and_an_example(tx, shown):
  with pytest.raises(
    TypeError,
    match=rf"^base_optimizer must be an optax.GradientTransformation, e.g. optax.sgd\(0.1\); got {shown}",
  ):
    options.check_transformation(tx, "base_optimizer", "optax.sgd(0.1)")


def test_sam_options_are_returned_checked():
  mask = {"w": True}
  checked = options.check_sam_options(
    **(DEFAULTS | {"adaptive": True, "adaptive_mask": mask, "perturb_mask": mask})
  )
  assert checked == (1e-12, 0.01, mask, mask)


@pytest.mark.parametrize(
  ("changed", "error", "match"),
  [
    ({"axis_name": ["batch"]}, TypeError, "axis_name must be None or a hashable axis name"),
    ({"sync_perturbation": "yes"}, TypeError, "sync_perturbation must be a bool"),
    ({"adaptive_mask": {"w": True}}, ValueError, "adaptive_mask only applies with adaptive=True"),
    ({"perturb_mask": {"w": False}}, ValueError, "perturb_mask selects no floating parameter"),
    ({"adaptive_eta": -1.0}, ValueError, "adaptive_eta must be a non-negative"),
    ({"eps": 0.0}, ValueError, "eps must be a positive"),
  ],
)
def test_bad_options_are_named(changed, error, match):
  with pytest.raises(error, match=match):
    options.check_sam_options(**(DEFAULTS | changed))
