"""Data-parallel (and FSDP) Unified SAM on every local device, or on several hosts.

Trains a 64-256-10 MLP on scikit-learn's digits (bundled, no download) with
``optax_usam.distributed.sam_train_step``: the global batch is split over the
``data`` mesh axis, parameters over the ``model`` axis (``--num_model``).

One machine, 8 virtual CPU devices (4-way data x 2-way parameter sharding)::

  python examples/distributed.py --cpu_devices 8 --num_model 2

Two processes on one machine (each with 2 virtual CPU devices)::

  python examples/distributed.py --cpu_devices 2 --coordinator 127.0.0.1:12355 \\
      --num_processes 2 --process_id 0 &
  python examples/distributed.py --cpu_devices 2 --coordinator 127.0.0.1:12355 \\
      --num_processes 2 --process_id 1

A cluster (SLURM, TPU pod, ...): one process per host, with
``--auto_cluster`` (``jax.distributed.initialize()`` finds the coordinator and
the process ids) or the three explicit flags. Every process loads the same data
and feeds only its own slice of each global batch. SIGTERM stops each process
(JAX's preemption service, which would catch it, is switched off); bad flags
and a cluster that cannot be found or joined end in one ``error:`` line and
exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, NoReturn

LAMBDA_STRINGS = ("1/t", "1-1/t")


class _Parser(argparse.ArgumentParser):
  def error(self, message: str) -> NoReturn:
    self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = _Parser(description=__doc__.splitlines()[0])
  p.add_argument("--cpu_devices", type=int, default=None,
                 help="number of virtual CPU devices of this process (sets XLA_FLAGS)")
  p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  p.add_argument("--auto_cluster", action="store_true",
                 help="jax.distributed.initialize() with cluster auto-detection (SLURM, TPU, ...)")
  p.add_argument("--num_model", type=int, default=1, help="size of the parameter (FSDP) axis")
  p.add_argument("--per_device_perturbation", action="store_true",
                 help="m-sharpness: each device perturbs along its own gradient")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch_size", type=int, default=128, help="global batch size")
  p.add_argument("--rho", type=float, default=0.05)
  p.add_argument("--lambd", default="1-1/t", help=f"a float in [0, 1] or one of {LAMBDA_STRINGS}")
  p.add_argument("--lr", type=float, default=0.1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--log_every", type=int, default=100)
  args = p.parse_args(argv)

  for name in ("steps", "batch_size", "num_model", "log_every"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be a positive integer; got {getattr(args, name)}")
  if args.cpu_devices is not None and args.cpu_devices < 1:
    p.error(f"--cpu_devices must be a positive integer; got {args.cpu_devices}")
  if not args.rho >= 0:
    p.error(f"--rho must be a non-negative number; got {args.rho}")
  if not args.lr > 0:
    p.error(f"--lr must be a positive number; got {args.lr}")
  if args.lambd not in LAMBDA_STRINGS:
    try:
      args.lambd = float(args.lambd)
    except ValueError:
      args.lambd = None
    if args.lambd is None or not 0 <= args.lambd <= 1:
      p.error(f"--lambd must be a float in [0, 1] or one of {LAMBDA_STRINGS}")
  explicit = [args.coordinator, args.num_processes, args.process_id]
  if any(v is not None for v in explicit):
    if args.auto_cluster:
      p.error("give either --auto_cluster or --coordinator/--num_processes/--process_id, not both")
    if any(v is None for v in explicit):
      p.error("--coordinator, --num_processes and --process_id go together")
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
      p.error(f"need --num_processes >= 1 and 0 <= --process_id < --num_processes; got "
              f"{args.num_processes} and {args.process_id}")
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      p.error(f"--coordinator must be HOST:PORT with a port in 1..65535; got {args.coordinator!r}")
  return args


def fail(message: str) -> NoReturn:
  print(f"distributed.py: error: {message}", file=sys.stderr)
  raise SystemExit(2)


def port_in_use(port: int) -> bool:
  """Whether a socket already listens on ``port`` here (SO_REUSEADDR, as gRPC: TIME_WAIT is no conflict)."""
  import socket

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


def load_digits(seed: int) -> tuple[Any, Any, Any, Any]:
  """Standardized digits, split 1500 / 297 by a fixed permutation."""
  import numpy as np
  from sklearn.datasets import load_digits as sk_digits

  x, y = sk_digits(return_X_y=True)
  x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)
  order = np.random.default_rng(seed).permutation(len(x))
  train, test = order[:1500], order[1500:]
  return x[train], y[train].astype(np.int32), x[test], y[test].astype(np.int32)


def run(args: argparse.Namespace) -> None:
  # jax reads XLA_FLAGS when it is first imported, so these imports wait for the CLI.
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import optax_usam
  from optax_usam import distributed

  if args.process_id == 0 and port_in_use(int(args.coordinator.rpartition(":")[2])):
    # Process 0 starts the coordinator on this port; JAX can crash outright when the port is taken.
    fail(f"--coordinator {args.coordinator}: the port is in use on this host, where process 0 starts "
         "the coordinator; pick a free port")
  if args.coordinator is not None or args.auto_cluster:
    # CPU processes need a collectives backend; GPU/TPU ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # The preemption service turns SIGTERM into a notice for preemption sync points, which this
    # script never polls: with it on, SIGTERM would not stop a run (only SIGKILL would).
    jax.config.update("jax_enable_preemption_service", False)
    try:
      if args.auto_cluster:
        jax.distributed.initialize()
      else:
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id)
    except (ValueError, TypeError) as err:
      # Off a cluster, jax.distributed.initialize() lacks the coordinator, process count or id.
      if args.auto_cluster:
        fail(f"--auto_cluster found no cluster environment (jax.distributed.initialize(): "
             f"{first_line(err).rstrip('.')}); pass --coordinator/--num_processes/--process_id")
      fail(f"jax.distributed.initialize() rejected the flags: {first_line(err)}")
    except RuntimeError as err:
      # The coordinator could not be started (port taken) or reached in time.
      where = "" if args.auto_cluster else f" with --coordinator {args.coordinator}"
      fail(f"jax.distributed.initialize() failed{where}: {first_line(err)}")
  devices, processes, me = jax.device_count(), jax.process_count(), jax.process_index()
  if devices % args.num_model:
    fail(f"--num_model={args.num_model} must divide the number of devices ({devices})")
  data_shards = devices // args.num_model
  if args.batch_size % data_shards or args.batch_size % processes:
    fail(f"--batch_size={args.batch_size} must be divisible by the {data_shards} data shards "
         f"and the {processes} processes")

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

  mesh = distributed.make_mesh(args.num_model)
  shardings = distributed.fsdp_shardings(params, mesh)
  _, init, step = distributed.sam_train_step(
      loss_fn,
      optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(args.lr, momentum=0.9)),
      rho=args.rho,
      lambd_schedule=args.lambd,
      mesh=mesh,
      per_device_perturbation=args.per_device_perturbation,
      param_shardings=shardings,
  )
  params = jax.device_put(params, shardings)
  opt_state = init(params)
  if me == 0:
    mode = "per-device (m-sharpness)" if args.per_device_perturbation else "global"
    print(f"processes={processes} devices={devices} mesh=data:{data_shards} x model:{args.num_model} "
          f"perturbation={mode} global_batch={args.batch_size}", flush=True)

  local = args.batch_size // processes
  order = np.random.default_rng(args.seed + 1)
  start, index = time.perf_counter(), np.arange(0)
  for t in range(1, args.steps + 1):
    if len(index) < args.batch_size:
      index = np.concatenate([index, order.permutation(len(x_train))])
    rows, index = index[: args.batch_size], index[args.batch_size :]
    mine = rows[me * local : (me + 1) * local]
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
        print(f"step {t:5d}  loss {float(loss):.4f}  ||g|| {float(diag['grad_norm']):.4f}  "
              f"||e|| {float(diag['perturbation_norm']):.4f}  lambda {float(diag['lambd']):.3f}",
              flush=True)
  jax.block_until_ready(params)
  per_step = (time.perf_counter() - start) / max(args.steps - 1, 1)
  host = distributed.to_host(params)
  accuracy = float(np.mean(np.argmax(logits_fn(host, jnp.asarray(x_test)), -1) == y_test))
  if me == 0:
    print(f"test accuracy {accuracy:.4f}  ({per_step * 1e3:.1f} ms/step after compilation)", flush=True)
  if processes > 1:
    jax.distributed.shutdown()


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  if args.cpu_devices is not None:
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.cpu_devices}"
  run(args)


if __name__ == "__main__":
  main()
