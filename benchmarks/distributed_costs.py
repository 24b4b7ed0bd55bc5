"""Per-device memory and communication of one Unified SAM step, from the compiled program.

Compiles the step of ``optax_usam.distributed.make_sharded_trainer`` for a 1024-4096-1024 MLP
(8.4M parameters) on 8 virtual CPU devices, for every (data x model) mesh and
both perturbation modes, and prints what XLA reports: per-device bytes
(arguments + outputs - aliased + temporaries, from ``memory_analysis()``) and
the bytes each device all-reduces / all-gathers per step (from the HLO text).
Nothing is executed, so the figures do not depend on the machine's load.

  python benchmarks/distributed_costs.py
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_usam import distributed

D, HIDDEN, OUT, BATCH = 1024, 4096, 1024, 64


def loss_fn(p: dict, batch: tuple) -> jax.Array:
  x, y = batch
  h = jnp.tanh(x @ p["w1"] + p["b1"])
  return 0.5 * jnp.sum((h @ p["w2"] + p["b2"] - y) ** 2) / x.shape[0]


def collective_bytes(hlo: str, op: str) -> int:
  total = 0
  for line in hlo.splitlines():
    m = re.search(rf"= (.*?) {op}(?:-start)?\(", line)
    if m:
      for dims in re.findall(r"f32\[([\d,]*)\]", m.group(1)):
        total += 4 * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
  return total


PARAMS = {
  "w1": jax.ShapeDtypeStruct((D, HIDDEN), jnp.float32),
  "b1": jax.ShapeDtypeStruct((HIDDEN,), jnp.float32),
  "w2": jax.ShapeDtypeStruct((HIDDEN, OUT), jnp.float32),
  "b2": jax.ShapeDtypeStruct((OUT,), jnp.float32),
}


def rows() -> list[dict]:
  """One row per (data x model) mesh and perturbation mode: compiled per-device bytes and collective bytes."""
  found = []
  for num_model in (1, 2, 4, 8):
    mesh = distributed.make_mesh(num_model)
    shardings = distributed.fsdp_shardings(PARAMS, mesh)
    p = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), PARAMS, shardings)
    batch_sh = distributed.batch_sharding(mesh)
    batch = (
      jax.ShapeDtypeStruct((BATCH, D), jnp.float32, sharding=batch_sh),
      jax.ShapeDtypeStruct((BATCH, OUT), jnp.float32, sharding=batch_sh),
    )
    for per_device in (False, True):
      if per_device and num_model == 8:
        continue  # a single data shard: both modes are the same program
      _, init, step = distributed.make_sharded_trainer(
        loss_fn,
        optax.sgd(0.1, momentum=0.9),
        PARAMS,
        mesh=mesh,
        per_device_perturbation=per_device,
        param_shardings=shardings,
        rho=0.05,
        lambd_schedule=1.0,
      )
      opt_state = jax.eval_shape(init, p)
      compiled = step.lower(p, opt_state, batch).compile()
      mem = compiled.memory_analysis()
      hlo = compiled.as_text()
      found.append(
        {
          "num_data": 8 // num_model,
          "num_model": num_model,
          "per_device": per_device,
          "bytes": mem.argument_size_in_bytes
          + mem.output_size_in_bytes
          - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes,
          "all_reduce_bytes": collective_bytes(hlo, "all-reduce"),
          "all_gather_bytes": collective_bytes(hlo, "all-gather"),
        }
      )
  return found


def table(found: list[dict]) -> str:
  lines = [
    "| mesh (data x model) | perturbation | per-device MiB | all-reduce MiB | all-gather MiB |",
    "|---|---|---|---|---|",
  ]
  for row in found:
    mode = "per-device" if row["per_device"] else "global"
    lines.append(
      f"| {row['num_data']} x {row['num_model']} | {mode} | {row['bytes'] / 2**20:.1f} | "
      f"{row['all_reduce_bytes'] / 2**20:.2f} | {row['all_gather_bytes'] / 2**20:.2f} |"
    )
  return "\n".join(lines)


def main() -> None:
  count = sum(int(np.prod(v.shape)) for v in PARAMS.values())
  print(
    f"{count / 1e6:.1f}M parameters ({4 * count / 2**20:.1f} MiB), global batch {BATCH}, SGD with momentum, "
    "8 CPU devices"
  )
  print(table(rows()))


if __name__ == "__main__":
  main()
