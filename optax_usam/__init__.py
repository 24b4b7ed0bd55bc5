"""optax_usam: Unified SAM (Oikonomou & Loizou, ICLR 2025) for JAX and Optax."""

from optax_usam.diagnostics import find_state, get_diagnostics
from optax_usam.perturbation import Perturbed, global_norm, perturb
from optax_usam.transform import UnifiedSAMState, sam, unified_sam, usam

__version__ = "0.1.0"

__all__ = [
    "Perturbed",
    "UnifiedSAMState",
    "find_state",
    "get_diagnostics",
    "global_norm",
    "perturb",
    "sam",
    "unified_sam",
    "usam",
]

from optax_usam import sampling, theory

__all__ += ["sampling", "theory"]
