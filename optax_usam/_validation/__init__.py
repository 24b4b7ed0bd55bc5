"""Every argument check of the core, in one place.

The algorithm's modules (``perturbation``, ``transform``, ``cheaper``,
``accumulation``, ``sampling``, ``theory``) call these before they compute, so
each reads as a few lines of checks followed by the method. Bad input is a
``ValueError`` or ``TypeError`` naming the argument and what is allowed, raised
when a transformation is built or, for trees, at trace time.
"""

from optax_usam._validation.options import check_direction, check_sam_options
from optax_usam._validation.scalars import (
  bounded_schedule,
  check_bools,
  check_callable,
  check_choice,
  check_eps,
  check_int,
  check_interval,
  check_inverse_t,
  check_lambda_string,
  check_nonnegative,
  check_perturb_values,
  check_pl_caps,
  check_pl_constants,
  check_positive,
  check_scalars,
  check_seed,
  check_smoothness,
  check_summable_powers,
  check_unit_interval,
)
from optax_usam._validation.trees import (
  check_divides,
  check_mask,
  check_matches_params,
  check_params_given,
  check_real,
  check_selects_some,
  check_update_args,
  expand_perturb_mask,
  leading_size,
  leaf_mask,
)

__all__ = [
  "bounded_schedule",
  "check_bools",
  "check_callable",
  "check_choice",
  "check_direction",
  "check_divides",
  "check_eps",
  "check_int",
  "check_interval",
  "check_inverse_t",
  "check_lambda_string",
  "check_mask",
  "check_matches_params",
  "check_nonnegative",
  "check_params_given",
  "check_perturb_values",
  "check_pl_caps",
  "check_pl_constants",
  "check_positive",
  "check_real",
  "check_sam_options",
  "check_scalars",
  "check_seed",
  "check_selects_some",
  "check_smoothness",
  "check_summable_powers",
  "check_unit_interval",
  "check_update_args",
  "expand_perturb_mask",
  "leading_size",
  "leaf_mask",
]
