"""optax_usam: Unified SAM (Oikonomou & Loizou, ICLR 2025) for JAX and Optax."""

from optax_usam import distributed, sampling, schedules, theory
from optax_usam.accumulation import microbatch_grad_fn
from optax_usam.ascent import AscentDirection
from optax_usam.chain_order import check_sam_first
from optax_usam.cheaper import randomized_sam, reuse_sam
from optax_usam.diagnostics import get_diagnostics, needs_fresh_gradient
from optax_usam.directions import friendly_sam, momentum_sam, vasso
from optax_usam.gsam import gsam
from optax_usam.perturbation import perturb
from optax_usam.random_smoothing import random_smoothing_sam
from optax_usam.transform import UnifiedSAMState, sam, unified_sam, usam

__version__ = "0.1.0"

__all__ = [
  "AscentDirection",
  "SAMTrainState",
  "UnifiedSAMState",
  "check_sam_first",
  "distributed",
  "friendly_sam",
  "get_diagnostics",
  "gsam",
  "linen_train_step",
  "microbatch_grad_fn",
  "momentum_sam",
  "needs_fresh_gradient",
  "perturb",
  "random_smoothing_sam",
  "randomized_sam",
  "reuse_sam",
  "sam",
  "sam_update",
  "sampling",
  "schedules",
  "theory",
  "unified_sam",
  "usam",
  "vasso",
]

# Flax is an optional extra: its glue is imported on first use only, so `import optax_usam` does not need it
# (`from optax_usam import *` does, since __all__ lists these names).
_LAZY = {
  "SAMTrainState": ("optax_usam.flax_linen", "SAMTrainState"),
  "linen_train_step": ("optax_usam.flax_linen", "linen_train_step"),
  "sam_update": ("optax_usam.flax_nnx", "sam_update"),
  "flax_linen": ("optax_usam.flax_linen", None),
  "flax_nnx": ("optax_usam.flax_nnx", None),
}


def __dir__() -> list[str]:
  # The public names and the dunders; the implementation modules (transform, cheaper, ...) stay importable.
  return sorted(name for name in {*globals(), *_LAZY} if name in __all__ or name.startswith("__"))


def __getattr__(name: str):
  if name not in _LAZY:
    raise AttributeError(f"module 'optax_usam' has no attribute {name!r}")
  import importlib

  module_name, attr = _LAZY[name]
  try:
    module = importlib.import_module(module_name)
  except ImportError as err:
    if (err.name or "").split(".")[0] != "flax":
      raise
    raise ImportError(f"optax_usam.{name} needs flax: pip install 'optax_usam[flax]'.") from err
  return module if attr is None else getattr(module, attr)
