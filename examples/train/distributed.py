"""Data-parallel (and FSDP) Unified SAM on every local device, or on several hosts.

Trains a 64-256-10 MLP on scikit-learn's digits (bundled, no download) with
``optax_usam.distributed.make_sharded_trainer``: the global batch is split over
the ``data`` mesh axis, parameters over the ``model`` axis (``--num-model``).

One machine, 8 virtual CPU devices (4-way data x 2-way parameter sharding), from the repository's root::

  python -m examples.train.distributed --cpu-devices 8 --num-model 2

Two processes on one machine (each with 2 virtual CPU devices)::

  python -m examples.train.distributed --cpu-devices 2 --coordinator 127.0.0.1:12355 \\
      --num-processes 2 --process-id 0 &
  python -m examples.train.distributed --cpu-devices 2 --coordinator 127.0.0.1:12355 \\
      --num-processes 2 --process-id 1

A cluster (SLURM, TPU pod, ...): one process per host, with
``--auto-cluster`` (``jax.distributed.initialize()`` finds the coordinator and
the process ids) or the three explicit flags. Every process loads the same data
and feeds only its own slice of each global batch. SIGTERM stops each process
(JAX's preemption service, which would catch it, is switched off); bad flags,
values the library refuses, and a cluster that cannot be found or joined end in
one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits as sk_digits

import optax_usam
from examples.train import cli
from optax_usam import distributed
from optax_usam.schedules import LAMBDA_STRINGS

PROG = "distributed"
# The library's argument names, for its errors, to the flags that set them.
FLAGS = {"rho": "--rho", "lambd": "--lambd", "num_model": "--num-model", "batch": "--batch-size"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The command line; raises :class:`cli.UsageError` for bad flags and values the library refuses."""
  p = cli.Parser(prog=PROG, description=__doc__.splitlines()[0])
  p.add_argument(
    "--cpu-devices",
    type=cli.positive_int,
    default=None,
    help="number of virtual CPU devices of this process (sets XLA_FLAGS)",
  )
  p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
  p.add_argument("--num-processes", type=cli.positive_int, default=None)
  p.add_argument("--process-id", type=int, default=None)
  p.add_argument(
    "--auto-cluster",
    action="store_true",
    help="jax.distributed.initialize() with cluster auto-detection (SLURM, TPU, ...)",
  )
  p.add_argument("--num-model", type=cli.positive_int, default=1, help="size of the parameter (FSDP) axis")
  p.add_argument(
    "--per-device-perturbation",
    action="store_true",
    help="m-sharpness: each device perturbs along its own gradient",
  )
  p.add_argument("--steps", type=cli.positive_int, default=300)
  p.add_argument("--batch-size", type=cli.positive_int, default=128, help="global batch size")
  p.add_argument("--rho", type=float, default=0.05)
  p.add_argument(
    "--lambd",
    type=cli.lambda_value,
    default="1-1/t",
    help=f"a float in [0, 1] or one of {', '.join(LAMBDA_STRINGS)}",
  )
  p.add_argument("--lr", type=cli.positive_float, default=0.1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--log-every", type=cli.positive_int, default=100)
  args = p.parse_args(argv)

  explicit = [args.coordinator, args.num_processes, args.process_id]
  if any(v is not None for v in explicit):
    if args.auto_cluster:
      p.error("give either --auto-cluster or --coordinator/--num-processes/--process-id, not both")
    if any(v is None for v in explicit):
      p.error("--coordinator, --num-processes and --process-id go together")
    if not 0 <= args.process_id < args.num_processes:
      p.error(f"need 0 <= --process-id < --num-processes; got {args.process_id} and {args.num_processes}")
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      p.error(f"--coordinator must be HOST:PORT with a port in 1..65535; got {args.coordinator!r}")
  with cli.library_errors(FLAGS):
    optax_usam.unified_sam(args.rho, args.lambd)
  return args


def port_in_use(port: int) -> bool:
  """Whether a socket already listens on ``port`` here (SO_REUSEADDR, as gRPC: TIME_WAIT is no conflict)."""
  with socket.socket() as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      probe.bind(("", port))
    except OSError:
      return True
  return False


def first_line(err: BaseException) -> str:
  lines = str(err).strip().splitlines()
  return lines[0] if lines else type(err).__name__


def join_cluster(args: argparse.Namespace) -> None:
  """``jax.distributed.initialize()`` from the flags; its failures become one-line usage errors."""
  if args.process_id == 0 and port_in_use(int(args.coordinator.rpartition(":")[2])):
    # Process 0 starts the coordinator on this port; JAX can crash outright when the port is taken.
    raise cli.UsageError(
      f"--coordinator {args.coordinator}: the port is in use on this host, where "
      "process 0 starts the coordinator; pick a free port"
    )
  # CPU processes need a collectives backend; GPU/TPU ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # The preemption service turns SIGTERM into a notice for preemption sync points, which this
  # script never polls: with it on, SIGTERM would not stop a run (only SIGKILL would).
  jax.config.update("jax_enable_preemption_service", False)
  try:
    if args.auto_cluster:
      jax.distributed.initialize()
    else:
      jax.distributed.initialize(
        args.coordinator, num_processes=args.num_processes, process_id=args.process_id
      )
  except (ValueError, TypeError) as err:
    # Off a cluster, jax.distributed.initialize() lacks the coordinator, process count or id.
    if args.auto_cluster:
      raise cli.UsageError(
        f"--auto-cluster found no cluster environment (jax.distributed.initialize(): "
        f"{first_line(err).rstrip('.')}); pass --coordinator/--num-processes/--process-id"
      ) from err
    raise cli.UsageError(f"jax.distributed.initialize() rejected the flags: {first_line(err)}") from err
  except RuntimeError as err:
    # The coordinator could not be started (port taken) or reached in time.
    where = "" if args.auto_cluster else f" with --coordinator {args.coordinator}"
    raise cli.UsageError(f"jax.distributed.initialize() failed{where}: {first_line(err)}") from err


def load_digits(seed: int) -> tuple[Any, Any, Any, Any]:
  """Standardized digits, split 1500 / 297 by a fixed permutation."""
  x, y = sk_digits(return_X_y=True)
  x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)
  order = np.random.default_rng(seed).permutation(len(x))
  train, test = order[:1500], order[1500:]
  return x[train], y[train].astype(np.int32), x[test], y[test].astype(np.int32)


def run(args: argparse.Namespace) -> None:
  if args.coordinator is not None or args.auto_cluster:
    join_cluster(args)
  devices, processes, me = jax.device_count(), jax.process_count(), jax.process_index()
  if args.batch_size % processes:
    raise cli.UsageError(
      f"--batch-size {args.batch_size} must be divisible by the {processes} processes, "
      "which each feed an equal slice of it"
    )
  with cli.library_errors(FLAGS):
    mesh = distributed.make_mesh(args.num_model)

  x_train, y_train, x_test, y_test = load_digits(args.seed)
  rng = np.random.default_rng(args.seed)
  params = {
    "w1": (rng.normal(size=(64, 256)) / 8).astype(np.float32),
    "b1": np.zeros(256, np.float32),
    "w2": (rng.normal(size=(256, 10)) / 16).astype(np.float32),
    "b2": np.zeros(10, np.float32),
  }

  def logits_fn(p: Any, x: jax.Array) -> jax.Array:
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

  def loss_fn(p: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, x), y).mean()

  shardings = distributed.fsdp_shardings(params, mesh)
  _, init, step = distributed.make_sharded_trainer(
    loss_fn,
    optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(args.lr, momentum=0.9)),
    params,
    mesh=mesh,
    per_device_perturbation=args.per_device_perturbation,
    param_shardings=shardings,
    rho=args.rho,
    lambd_schedule=args.lambd,
  )
  params = jax.device_put(params, shardings)
  opt_state = init(params)
  if me == 0:
    mode = "per-device (m-sharpness)" if args.per_device_perturbation else "global"
    print(
      f"processes={processes} devices={devices} mesh=data:{mesh.shape['data']} x model:{args.num_model} "
      f"perturbation={mode} global_batch={args.batch_size}",
      flush=True,
    )

  local = args.batch_size // processes
  order = np.random.default_rng(args.seed + 1)
  start, index = time.perf_counter(), np.arange(0)
  for t in range(1, args.steps + 1):
    if len(index) < args.batch_size:
      index = np.concatenate([index, order.permutation(len(x_train))])
    rows, index = index[: args.batch_size], index[args.batch_size :]
    mine = rows[me * local : (me + 1) * local]
    with cli.library_errors(FLAGS):
      batch = distributed.shard_batch((x_train[mine], y_train[mine]), mesh)
    # Asynchronous: on CPU the step itself waits for the step distributed.CPU_MAX_STEPS_AHEAD calls back,
    # since a host far ahead of its devices deadlocks XLA's CPU client in a collective.
    params, opt_state, loss = step(params, opt_state, batch)
    if t == 1:
      jax.block_until_ready(loss)
      start = time.perf_counter()
    if t % args.log_every == 0 or t == args.steps:
      diag = optax_usam.get_diagnostics(opt_state)
      if me == 0:
        print(
          f"step {t:5d}  loss {float(loss):.4f}  ||g|| {float(diag['grad_norm']):.4f}  "
          f"||e|| {float(diag['perturbation_norm']):.4f}  lambda {float(diag['lambd']):.3f}",
          flush=True,
        )
  jax.block_until_ready(params)
  per_step = (time.perf_counter() - start) / max(args.steps - 1, 1)
  host = distributed.to_host(params)
  accuracy = float(np.mean(np.argmax(logits_fn(host, jnp.asarray(x_test)), -1) == y_test))
  if me == 0:
    print(f"test accuracy {accuracy:.4f}  ({per_step * 1e3:.1f} ms/step after compilation)", flush=True)
  if processes > 1:
    jax.distributed.shutdown()


def main(argv: list[str] | None = None) -> None:
  with cli.exit_on_error(PROG):
    args = parse_args(argv)
    if args.cpu_devices is not None:
      # Read when JAX starts its backend, at the first use of a device below: not yet started here.
      flags = os.environ.get("XLA_FLAGS", "")
      os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.cpu_devices}"
    run(args)


if __name__ == "__main__":
  main()
