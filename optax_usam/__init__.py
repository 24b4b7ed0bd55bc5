"""optax_usam: Unified SAM (Oikonomou & Loizou, ICLR 2025) for JAX and Optax."""

from optax_usam import distributed, sampling, theory
from optax_usam.diagnostics import find_state, get_diagnostics
from optax_usam.efficient import RandomizedState, ReuseState, randomized_sam, reuse_sam, sub_batch
from optax_usam.perturbation import Perturbed, adaptive_scales, global_norm, perturb
from optax_usam.transform import UnifiedSAMState, sam, unified_sam, usam

__version__ = "0.1.0"

__all__ = [
    "Perturbed",
    "RandomizedState",
    "ReuseState",
    "UnifiedSAMState",
    "adaptive_scales",
    "distributed",
    "find_state",
    "get_diagnostics",
    "global_norm",
    "perturb",
    "randomized_sam",
    "reuse_sam",
    "sam",
    "sampling",
    "sub_batch",
    "theory",
    "unified_sam",
    "usam",
]
