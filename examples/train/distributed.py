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
and feeds only its own slice of each global batch, and every process must be
started with process 0's flags (all but the per-process ones, see
:data:`PER_PROCESS`). SIGTERM stops each process (JAX's preemption service,
which would catch it, is switched off); bad flags, values the library refuses,
and a cluster that cannot be found end in one ``error:`` line and exit status 2.

A process of a multi-process run trains in a child process: JAX's distributed
service ends a process with SIGABRT and a native stack when the others do not
all join within ``--timeout`` seconds, or when one of them stops (silent for
``--timeout`` seconds, 10 at least), and only a parent can turn that into one
``error:`` line (exit status 1). The child's stderr shows as it comes, up to
the first line that reports an error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Any, TextIO

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
MODULE = "examples.train.distributed"
# The library's argument names, for its errors, to the flags that set them.
FLAGS = {"rho": "--rho", "lambd": "--lambd", "num_model": "--num-model", "batch": "--batch-size"}
TRAIN_ROWS = 1500
DEFAULT_TIMEOUT_S = 120
# The waits of JAX's distributed service that --timeout never shortens below these (see service_timeouts).
MIN_HEARTBEAT_TIMEOUT_S = 10
JAX_SHUTDOWN_TIMEOUT_S = 300
# The settings that may differ between the processes of a run: which process this is, how it finds the
# coordinator, and how long it waits. Every other flag must be process 0's.
PER_PROCESS = ("process_id", "coordinator", "auto_cluster", "timeout")
# Set in a worker's environment: the descriptor of its end of the link to the command that started it.
WORKER_FD = "EXAMPLES_TRAIN_DISTRIBUTED_WORKER_FD"
JOINED = b"joined"
# The first line of an error report on a worker's stderr: its own error line, a Python traceback, or an error
# or fatal line of absl's log (JAX's runtime, which writes a native stack after a fatal one).
ERROR_REPORT = re.compile(
  rf"{PROG}: error: |Traceback \(most recent call last\):|Fatal Python error|[EF]\d{{4}} \d\d:\d\d:\d\d"
)


def check_batch_split(batch_size: int, processes: int) -> None:
  """Raises :class:`cli.UsageError` unless each of ``processes`` gets an equal, non-empty slice of a batch."""
  if batch_size % processes:
    raise cli.UsageError(
      f"--batch-size {batch_size} must be divisible by the {processes} processes, "
      "which each feed an equal slice of it"
    )


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
  p.add_argument("--seed", type=cli.non_negative_int, default=0)
  p.add_argument("--log-every", type=cli.positive_int, default=100)
  p.add_argument(
    "--timeout",
    type=cli.positive_int,
    default=None,
    help=f"multi-process runs: seconds to wait for every process to join (default: {DEFAULT_TIMEOUT_S}), "
    f"and for a silent one (at least {MIN_HEARTBEAT_TIMEOUT_S})",
  )
  args = p.parse_args(argv)

  if args.batch_size > TRAIN_ROWS:
    p.error(f"--batch-size {args.batch_size} is larger than the {TRAIN_ROWS} training images")
  explicit = [args.coordinator, args.num_processes, args.process_id]
  if not args.auto_cluster and all(v is None for v in explicit):
    if args.timeout is not None:
      p.error(
        "--timeout is for a multi-process run: give it with --coordinator/--num-processes/--process-id "
        "or --auto-cluster"
      )
  elif args.timeout is None:
    args.timeout = DEFAULT_TIMEOUT_S
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
    check_batch_split(args.batch_size, args.num_processes)
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


def service_timeouts(timeout: int) -> dict[str, int]:
  """The timeouts of ``jax.distributed.initialize()`` for ``--timeout``, whose defaults (300 s to join, 100 s
  of silence) make a process started alone or left alone wait minutes before JAX aborts it.

  ``timeout`` bounds the join. A process that stops ends the others once its heartbeats have been missed for
  ``timeout`` seconds (a step may find its connection reset sooner), but never fewer than
  ``MIN_HEARTBEAT_TIMEOUT_S``: a healthy process on a loaded machine can send one late. The processes of a
  healthy run may reach the shutdown barrier seconds apart: JAX's 300 s, or ``timeout`` if longer.
  """
  return {
    "initialization_timeout": timeout,
    "heartbeat_timeout_seconds": max(timeout, MIN_HEARTBEAT_TIMEOUT_S),
    "shutdown_timeout_seconds": max(timeout, JAX_SHUTDOWN_TIMEOUT_S),
  }


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
  timeouts = service_timeouts(args.timeout)
  try:
    if args.auto_cluster:
      jax.distributed.initialize(**timeouts)
    else:
      jax.distributed.initialize(
        args.coordinator, num_processes=args.num_processes, process_id=args.process_id, **timeouts
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


def shown(value: Any) -> str:
  """A setting as the user wrote it; a switch is on or off."""
  if value is None:
    return "unset"
  if isinstance(value, bool):
    return "on" if value else "off"
  return str(value)


def check_same_settings(args: argparse.Namespace, timeout_s: int) -> None:
  """Raises :class:`cli.UsageError`, on every process, if a process's flags differ from process 0's.

  Each process publishes its settings in the key-value store of JAX's distributed service and reads all the
  others', so every process finds the same differences and refuses the run before any collective.
  """
  # JAX has no public key-value API: its distributed client is the one jax.experimental.multihost_utils uses.
  from jax._src import distributed as jax_distributed

  client = jax_distributed.global_state.client
  mine = {k: v for k, v in vars(args).items() if k not in PER_PROCESS}
  client.key_value_set(f"{MODULE}/settings/{jax.process_index()}", json.dumps(mine))
  every = [
    json.loads(client.blocking_key_value_get(f"{MODULE}/settings/{i}", timeout_s * 1000))
    for i in range(jax.process_count())
  ]
  differences = [
    f"--{name.replace('_', '-')} {shown(other[name])} on process {i} but {shown(value)} on process 0"
    for i, other in enumerate(every[1:], start=1)
    for name, value in every[0].items()
    if other.get(name) != value
  ]
  if differences:
    raise cli.UsageError(
      "every process must be started with process 0's flags (all but --process-id, --coordinator, "
      f"--auto-cluster and --timeout); got {'; '.join(differences)}"
    )


def load_digits(seed: int) -> tuple[Any, Any, Any, Any]:
  """Standardized digits, split 1500 (``TRAIN_ROWS``) / 297 by a fixed permutation."""
  x, y = sk_digits(return_X_y=True)
  x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)
  order = np.random.default_rng(seed).permutation(len(x))
  train, test = order[:TRAIN_ROWS], order[TRAIN_ROWS:]
  return x[train], y[train].astype(np.int32), x[test], y[test].astype(np.int32)


def run(args: argparse.Namespace) -> None:
  """Trains and reports, on this process's devices and those of the processes it has joined."""
  devices, processes, me = jax.device_count(), jax.process_count(), jax.process_index()
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


def watch_parent(link: socket.socket) -> None:
  """Ends this worker as soon as the command that started it is gone (its end of ``link`` closes).

  ``kill -9`` of the command must stop this process of the run, as it did before there was a worker.
  """

  def wait() -> None:
    try:
      while link.recv(64):
        pass
    except ConnectionResetError:
      pass  # The command died before reading what this worker sent: also gone.
    os.kill(os.getpid(), signal.SIGKILL)

  threading.Thread(target=wait, daemon=True).start()


def worker(args: argparse.Namespace, link: socket.socket) -> None:
  """One process of a multi-process run, started by :func:`supervise`: joins, checks, trains.

  Tells the command through ``link`` once the cluster is joined; a step that fails (another process has
  stopped: its connections reset) ends this process at once with one line.
  """
  watch_parent(link)
  join_cluster(args)
  link.sendall(JOINED)
  check_same_settings(args, args.timeout)
  check_batch_split(args.batch_size, jax.process_count())
  try:
    run(args)
  except jax.errors.JaxRuntimeError as err:
    cli.report(
      PROG, cli.CommandError(f"a step failed, most likely as another process stopped: {first_line(err)}")
    )
    sys.stdout.flush()
    sys.stderr.flush()
    # JAX's shutdown at exit would wait --timeout seconds for the stopped process, then abort.
    os._exit(1)
  jax.distributed.shutdown()


class WorkerError(cli.CommandError):
  """A failed worker, reported with its own exit status."""

  def __init__(self, message: str, exit_code: int) -> None:
    super().__init__(message)
    self.exit_code = exit_code


def relay_stderr(stream: IO[bytes], sink: TextIO, held: list[str]) -> None:
  """Copies a worker's stderr to ``sink`` line by line as it comes, until a line reports an error
  (:data:`ERROR_REPORT`): that line and every later one go to ``held`` instead, up to the end of ``stream``.

  The warnings and logs of a long run show at once; what a failing worker writes as it ends, a native stack
  included, is left to :func:`supervise`, which makes it one line.
  """
  for raw in iter(stream.readline, b""):
    line = raw.decode(errors="replace")
    if held or ERROR_REPORT.match(line):
      held.append(line)
    else:
      sink.write(line)
      sink.flush()


def supervise(argv: list[str], args: argparse.Namespace) -> None:
  """Runs this process of a multi-process run as a worker child; raises :class:`WorkerError` if it fails.

  JAX's distributed service ends a process with SIGABRT and a native stack when the processes do not all
  join within the timeout, or when one of them stops; no handler in that process can stop it. Here the
  worker's stdout passes through, and its stderr as it comes up to the first line that reports an error
  (:func:`relay_stderr`); the rest is written at the end if the worker succeeds. A worker that failed is one
  line, its own ``error:`` line if it wrote one.
  """
  ours, theirs = socket.socketpair()
  env = {**os.environ, WORKER_FD: str(theirs.fileno())}
  with theirs:
    child = subprocess.Popen(
      [sys.executable, "-m", MODULE, *argv], env=env, stderr=subprocess.PIPE, pass_fds=(theirs.fileno(),)
    )
  held: list[str] = []
  relay = threading.Thread(target=relay_stderr, args=(child.stderr, sys.stderr, held), daemon=True)
  relay.start()
  with ours, child.stderr:
    try:
      code = child.wait()
    except KeyboardInterrupt:
      child.kill()
      child.wait()
      raise cli.CommandError("interrupted") from None
    finally:
      relay.join()  # to the end of the worker's stderr, which comes as it exits
    joined = ours.recv(len(JOINED)) == JOINED
  text = "".join(held)
  if code == 0:
    sys.stderr.write(text)
    return
  who = "this process" if args.auto_cluster else f"process {args.process_id} of {args.num_processes}"
  own = [line for line in text.splitlines() if line.startswith(f"{PROG}: error: ")]
  if own:
    raise WorkerError(own[-1].removeprefix(f"{PROG}: error: "), max(code, 1))
  if code == -signal.SIGABRT and not joined:
    raise WorkerError(
      f"{who}: the processes did not all join within --timeout {args.timeout} s; start every process "
      "of the run, with the same coordinator",
      1,
    )
  if code == -signal.SIGABRT:
    raise WorkerError(
      f"{who}: another process of the run stopped, and JAX's distributed service ended this one", 1
    )
  if code < 0:
    raise WorkerError(f"{who} was ended by {signal.Signals(-code).name}", 1)
  last = [line for line in text.splitlines() if line.strip()]
  raise WorkerError(f"{who} failed: {last[-1] if last else f'exit status {code}'}", code)


def main(argv: list[str] | None = None) -> None:
  """The command: one process trains here; each process of a multi-process run, in a worker (supervise)."""
  argv = sys.argv[1:] if argv is None else argv
  link = os.environ.pop(WORKER_FD, None)
  with cli.exit_on_error(PROG):
    args = parse_args(argv)
    multi = args.coordinator is not None or args.auto_cluster
    if multi and link is None:
      supervise(argv, args)
      return
    if args.cpu_devices is not None:
      # Read when JAX starts its backend, at the first use of a device below: not yet started here.
      flags = os.environ.get("XLA_FLAGS", "")
      os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.cpu_devices}"
    if multi:
      worker(args, socket.socket(fileno=int(link)))
    else:
      run(args)


if __name__ == "__main__":
  main()
