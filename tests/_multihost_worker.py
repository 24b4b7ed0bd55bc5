"""One process of the multi-host test: data-parallel Unified SAM on a (data, model) mesh.

Run by tests/test_multihost.py, either alone (one process, all devices local)
or as one of several processes joined by ``jax.distributed.initialize``. Each
process feeds its own slice of the global batch; parameters are FSDP-sharded
over the ``model`` axis. Process 0 writes the final parameters of both
perturbation modes to ``--out`` (an .npz with keys ``<mode>/<leaf>``).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import optax

from optax_usam import distributed
from tests import mlp_problem

STEPS, N, D, HIDDEN, OUT = 3, 32, 8, 16, 4


def loss_fn(p: dict, batch: tuple) -> jax.Array:
  return mlp_problem.jax_loss(p, *batch)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--coordinator", default=None)
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
      initialization_timeout=60,
    )

  params, x, y = mlp_problem.float32_problem(D, HIDDEN, OUT, N)
  rows = slice(args.process_id * N // args.num_processes, (args.process_id + 1) * N // args.num_processes)

  mesh = distributed.make_mesh(num_model=2)
  shardings = distributed.fsdp_shardings(params, mesh, min_size=0)
  results = {}
  for mode in ("global", "per_device"):
    _, init, step = distributed.make_sharded_trainer(
      loss_fn,
      optax.sgd(0.1, momentum=0.9),
      params,
      mesh=mesh,
      per_device_perturbation=mode == "per_device",
      param_shardings=shardings,
      rho=0.2,
      lambd_schedule="1-1/t",
    )
    p = jax.device_put(params, shardings)
    s = init(p)
    batch = distributed.shard_batch((x[rows], y[rows]), mesh)
    for _ in range(STEPS):
      p, s, _ = step(p, s, batch)
    results.update({f"{mode}/{k}": v for k, v in distributed.to_host(p).items()})
  if args.num_processes > 1:
    # A data slice spread over two processes would need the same rows on both.
    try:
      distributed.shard_batch((x[rows], y[rows]), distributed.make_mesh(num_model=4))
      results["cross_process_error"] = np.array("")
    except ValueError as err:
      results["cross_process_error"] = np.array(str(err))
  if jax.process_index() == 0:
    np.savez(args.out, **results)
  if args.num_processes > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
