r"""Unified SAM on many devices and many hosts: ``jit`` with shardings and ``shard_map``.

Two ways to spread the batch over a ``data`` mesh axis:

* **Global perturbation** (``per_device_perturbation=False``, the default):
  ``jax.jit`` over the sharded batch. The gradient of the mean loss is already
  the all-reduced full-batch gradient, so one perturbation
  :math:`e = \rho_t (1 - \lambda_t + \lambda_t / \|g\|) g` is shared by every
  device and the step equals single-device Unified SAM on the full batch. The
  global norm reduces each parameter shard locally and all-reduces one scalar,
  so it works with parameters sharded FSDP-style over a ``model`` axis without
  gathering them. Communication per step: two gradient all-reduces (one per
  backward pass) and a few scalars.
* **Per-device perturbation** (``per_device_perturbation=True``, m-sharpness,
  Foret et al. 2021, m = per-device batch size): ``jax.shard_map`` over the
  ``data`` axis; each device perturbs along its own gradient and only the
  gradients at the perturbed points are averaged
  (``unified_sam(..., axis_name="data", sync_perturbation=False)``). It saves
  the first gradient all-reduce (one all-reduce of gradients per step instead
  of two), but it is not the update the paper's theorems analyse: those take
  one perturbation from the gradient of the whole (global) minibatch.

Both run unchanged on several hosts after ``jax.distributed.initialize()``:
each process feeds its own slice of the global batch with :func:`shard_batch`.

Three modules, one idea each: :mod:`~optax_usam.distributed.mesh` (meshes,
shardings, batches in and results out), :mod:`~optax_usam.distributed.sharding_checks`
(:func:`check_shardings`) and :mod:`~optax_usam.distributed.trainer`
(:func:`make_sharded_trainer`, whose example is a whole training loop). Their
public names are all here, e.g. ``optax_usam.distributed.make_sharded_trainer``.
``docs/distributed.md`` runs the loop on a ``(data, model)`` mesh of 8 devices
with FSDP-sharded parameters.

References:
  Foret et al., `Sharpness-Aware Minimization for Efficiently Improving
  Generalization <https://arxiv.org/abs/2010.01412>`_, ICLR 2021 (m-sharpness).
  Oikonomou & Loizou, `Sharpness-Aware Minimization: General Analysis and
  Improved Rates <https://arxiv.org/abs/2410.03345>`_, ICLR 2025.
"""

from __future__ import annotations

from optax_usam.distributed.mesh import (
  DEFAULT_MIN_SHARD_SIZE,
  batch_sharding,
  fsdp_shardings,
  make_mesh,
  shard_batch,
  to_host,
)
from optax_usam.distributed.sharding_checks import check_shardings
from optax_usam.distributed.trainer import CPU_MAX_STEPS_AHEAD, ShardedTrainer, make_sharded_trainer

__all__ = [
  "CPU_MAX_STEPS_AHEAD",
  "DEFAULT_MIN_SHARD_SIZE",
  "ShardedTrainer",
  "batch_sharding",
  "check_shardings",
  "fsdp_shardings",
  "make_mesh",
  "make_sharded_trainer",
  "shard_batch",
  "to_host",
]
