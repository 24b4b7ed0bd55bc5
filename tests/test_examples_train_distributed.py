"""examples/train/distributed.py: runs on virtual devices and on 2 processes; bad CLI input exits 2; and the
faults it once met, kept from coming back:

* 2 processes at the default length (300 steps) hung for good after ``step 100``, and ignored SIGTERM while
  hung.
* ``--auto-cluster`` off a cluster, and a coordinator port in use, ended in raw tracebacks.
* A global batch larger than the training set, or not split evenly over the processes, gave a process an
  empty slice: it exited 0 while the others died in a Gloo timeout.
* Processes started with different flags trained, each with its own.
* A process started alone waited 300 s, then aborted with a native stack (SIGABRT), as did the survivor of a
  killed process (at once, or after up to 100 s); both are one line now, within ``--timeout`` (10 s at least
  for a silent process).
* ``--timeout`` also set JAX's heartbeat and shutdown timeouts, short enough to end a healthy run; a worker's
  stderr was held back until it ended.

Processes run in sessions of their own and are SIGKILLed at their time limit, so a regression fails these
tests instead of hanging the suite. The library's faults are tested in tests/test_distributed_trainer.py, the
blocks of docs/distributed.md in tests/test_docs.py.
"""

from __future__ import annotations

import io
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from examples.train import distributed as example

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Run from the repository's root, which `python -m` puts on the module path.
COMMAND = [sys.executable, "-m", "examples.train.distributed"]
TIMEOUT_S = 180


def example_env() -> dict[str, str]:
  """This environment, minus XLA_FLAGS (the command sets its own)."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return env


def start(argv: list[str], log: pathlib.Path, env: dict[str, str] | None = None) -> subprocess.Popen:
  """Starts the command in a session of its own, so that :func:`stop` can kill all it started."""
  with open(log, "w") as out:
    return subprocess.Popen(
      [*COMMAND, *argv],
      cwd=ROOT,
      env=example_env() if env is None else env,
      stdout=out,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )


def stop(job: subprocess.Popen) -> None:
  """SIGKILL to a job's process group: a process stuck in a collective may not die of SIGTERM."""
  if job.poll() is None:
    try:
      os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    job.wait()


def run_processes(argvs: list[list[str]], tmp_path: pathlib.Path, timeout_s: float = TIMEOUT_S) -> list[str]:
  """Runs the example once per argv, all at once; returns the outputs.

  Fails the test, after killing every process, if one exits non-zero or all have
  not finished within ``timeout_s``: a hung collective must not hang the suite.
  """
  jobs, logs = [], [tmp_path / f"run{i}.log" for i in range(len(argvs))]
  try:
    for argv, log in zip(argvs, logs, strict=True):
      jobs.append(start(argv, log))
    deadline = time.monotonic() + timeout_s
    for job, log in zip(jobs, logs, strict=False):
      try:
        code = job.wait(timeout=max(1.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        tails = "\n".join(f"--- {lg.name}:\n{lg.read_text()[-1500:]}" for lg in logs)
        pytest.fail(f"not finished after {timeout_s:.0f} s; killed all {len(jobs)} processes\n{tails}")
      assert code == 0, f"exit {code}:\n{log.read_text()[-3000:]}"
  finally:
    for job in jobs:
      stop(job)
  return [log.read_text() for log in logs]


# What a process may take beyond --timeout on a loaded machine: the command and its worker each start Python
# and import JAX, then JAX's own delays. Below JAX's defaults (300 s to join, 100 s of silence), which the
# tests must tell apart from --timeout.
START_SLACK_S = 120
# After the peer is killed, a process needs no start: only JAX's delays before it gives up, and the command's.
END_SLACK_S = 60


def wait_all(jobs: list[subprocess.Popen], logs: list[pathlib.Path], deadline: float, what: str) -> list[int]:
  """The exit statuses of ``jobs``, failing the test if one still runs at ``deadline`` (time.monotonic())."""
  codes = []
  for job, log in zip(jobs, logs, strict=True):
    try:
      codes.append(job.wait(timeout=max(0.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
      pytest.fail(f"{log.stem} still runs {what}:\n{log.read_text()[-2000:]}")
  return codes


def free_address() -> str:
  """127.0.0.1:PORT with a port free right now, for a coordinator."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return f"127.0.0.1:{s.getsockname()[1]}"


def accuracy(output: str) -> float:
  return float(re.search(r"test accuracy ([\d.]+)", output).group(1))


def test_one_process_fsdp_and_two_processes_train_the_same_model(tmp_path):
  common = ["--steps", "30", "--log-every", "30", "--lambd", "0.5"]
  address = free_address()
  local, first, _ = run_processes(
    [
      ["--cpu-devices", "4", "--num-model", "2", *common],
      *[
        [
          "--cpu-devices",
          "2",
          "--coordinator",
          address,
          "--num-processes",
          "2",
          "--process-id",
          str(i),
          *common,
        ]
        for i in range(2)
      ],
    ],
    tmp_path,
  )
  assert "processes=1 devices=4 mesh=data:2 x model:2" in local
  assert "processes=2 devices=4 mesh=data:4 x model:1" in first
  # Ten classes: chance is 0.1; 30 steps of a 2-layer MLP on digits reach far more.
  assert accuracy(local) > 0.8
  # Global perturbation is the full-batch step whatever the layout: same loss to 4 digits.
  last = lambda out: re.search(r"step\s+30\s+loss ([\d.]+)", out).group(1)
  assert last(local) == last(first)


@pytest.mark.parametrize(
  ("argv", "match"),
  [
    (["--steps", "0"], "argument --steps: must be a positive integer"),
    # Values the library refuses: its own message, led by the flag.
    (["--rho", "-1"], "argument --rho: rho must be a finite float in [0.0, inf)"),
    (["--lambd", "2"], "argument --lambd: lambd_schedule must be a finite float in [0.0, 1.0]"),
    (["--lambd", "sam"], "argument --lambd: lambd_schedule must be a float in [0, 1], one of"),
    (["--coordinator", "127.0.0.1:1"], "go together"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "0 <= --process-id"),
    (["--auto-cluster", "--coordinator", "h:1", "--num-processes", "1", "--process-id", "0"], "not both"),
    (
      ["--coordinator", "nonsense", "--num-processes", "2", "--process-id", "0"],
      "--coordinator must be HOST:PORT",
    ),
    (
      ["--coordinator", "h:99999", "--num-processes", "2", "--process-id", "0"],
      "--coordinator must be HOST:PORT",
    ),
    (["--num-model", "3"], "argument --num-model: num_model=3 must divide the number of devices"),
    (
      ["--batch-size", "12", "--num-model", "1"],
      "argument --batch-size: batch leaves need a leading dimension divisible over 8 devices",
    ),
    (["--auto_cluster"], "unrecognized arguments: --auto_cluster"),
    (["--seed", "-1"], "argument --seed: must be a non-negative integer; got -1"),
    (["--timeout", "0", "--auto-cluster"], "argument --timeout: must be a positive integer; got 0"),
    (["--timeout", "5"], "--timeout is for a multi-process run"),
    # The single-process job's rule and words; refused on every process before it joins the others.
    (["--batch-size", "1501"], "--batch-size 1501 is larger than the 1500 training images"),
    *[
      (
        ["--batch-size", size, "--coordinator", "h:1", "--num-processes", "2", "--process-id", i],
        match,
      )
      for size, match in [
        ("4000", "--batch-size 4000 is larger than the 1500 training images"),
        ("7", "--batch-size 7 must be divisible by the 2 processes"),
        ("1", "--batch-size 1 must be divisible by the 2 processes"),
      ]
      for i in ("0", "1")
    ],
    (["--bogus"], "unrecognized arguments"),
  ],
)
def test_bad_cli_input_is_one_line_and_exit_2(argv, match, capsys):
  with pytest.raises(SystemExit) as exit_info:
    example.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  assert match in err


@pytest.mark.parametrize(
  ("timeout", "join", "heartbeat", "shutdown"),
  [(1, 1, 10, 300), (5, 5, 10, 300), (120, 120, 120, 300), (600, 600, 600, 600)],
)
def test_timeout_bounds_the_join_and_never_shortens_the_heartbeat_or_the_shutdown_below_safe_values(
  timeout, join, heartbeat, shutdown
):
  # A heartbeat timeout of a few seconds can end a healthy run on a loaded machine, and processes of a healthy
  # run reach the shutdown barrier seconds apart: --timeout once set all three.
  assert example.service_timeouts(timeout) == {
    "initialization_timeout": join,
    "heartbeat_timeout_seconds": heartbeat,
    "shutdown_timeout_seconds": shutdown,
  }


# A healthy full-length run takes 20-40 s here (2 cores, three processes at once); a hung one never ends.
FULL_RUN_TIMEOUT_S = 120


def two_processes(address: str, *extra: str) -> list[list[str]]:
  return [
    ["--cpu-devices", "2", "--coordinator", address, "--num-processes", "2", "--process-id", str(i), *extra]
    for i in range(2)
  ]


def step300_loss(output: str) -> str:
  match = re.search(r"step\s+300\s+loss ([\d.]+)", output)
  assert match, output[-2000:]
  return match.group(1)


def test_two_processes_finish_the_default_run(tmp_path):
  # Beside a one-process run: the extra load is what made the hang likely, and the
  # global perturbation must give the same step-300 loss on either layout.
  local, first, second = run_processes(
    [["--cpu-devices", "4", "--num-model", "2"], *two_processes(free_address())],
    tmp_path,
    timeout_s=FULL_RUN_TIMEOUT_S,
  )
  assert "processes=2 devices=4" in first and "processes=" not in second  # process 0 prints
  assert float(re.search(r"test accuracy ([\d.]+)", first).group(1)) > 0.95
  assert step300_loss(first) == step300_loss(local)


def test_sigterm_ends_a_two_process_run_whose_logs_show_as_it_goes(tmp_path):
  # jax.distributed's preemption notifier used to catch SIGTERM, so only SIGKILL ended a stuck run.
  jobs, logs = [], [tmp_path / f"p{i}.log" for i in range(2)]
  # At INFO, jax.distributed.initialize logs on the worker's stderr, which the command once held back until
  # the worker ended.
  env = {**example_env(), "JAX_LOGGING_LEVEL": "INFO"}
  try:
    for argv, log in zip(
      two_processes(free_address(), "--steps", "100000", "--log-every", "20"), logs, strict=True
    ):
      jobs.append(start(argv, log, env))
    deadline = time.monotonic() + 90
    while not re.search(r"step\s+20 ", logs[0].read_text()):
      assert time.monotonic() < deadline and all(j.poll() is None for j in jobs), logs[0].read_text()[-2000:]
      time.sleep(0.2)
    for log in logs:
      assert "Connecting to JAX distributed service" in log.read_text(), log.read_text()[-2000:]
    for job in jobs:
      job.send_signal(signal.SIGTERM)
    for job, log in zip(jobs, logs, strict=True):
      try:
        code = job.wait(timeout=20)
      except subprocess.TimeoutExpired:
        pytest.fail(f"SIGTERM ignored for 20 s:\n{log.read_text()[-2000:]}")
      assert code != 0, "a run of 100000 steps cannot have finished"
  finally:
    for job in jobs:
      stop(job)


# What a worker wrote before JAX aborted it (the survivor of a killed peer, below), as absl logs it: an error
# line, then the fatal one and its native stack.
ABORT_REPORT = [
  "E1208 01:33:12.680833   26746 coordination_service_agent.cc:289] Polled an error\n",
  "F1208 01:33:12.680981   26746 client.h:80] Terminating process because the JAX distributed service\n",
  "*** Check failure stack trace: ***\n",
  "    @     0x7f6b5e240634  absl::lts_20260107::log_internal::LogMessage::SendToLog()\n",
]


@pytest.mark.parametrize(
  "report",
  [
    ABORT_REPORT,
    ["distributed: error: a step failed, most likely as another process stopped: Gloo\n"],
    ["Traceback (most recent call last):\n", '  File "x.py", line 1, in <module>\n', "KeyError: 'w'\n"],
  ],
  ids=["absl", "own", "traceback"],
)
def test_a_worker_stderr_passes_live_up_to_the_first_error_report(report):
  read, write = os.pipe()
  sink, held = io.StringIO(), []
  relay = threading.Thread(target=example.relay_stderr, args=(os.fdopen(read, "rb"), sink, held))
  relay.start()
  with os.fdopen(write, "wb", buffering=0) as worker:
    warning = "W1208 01:30:00.000000   26746 gloo.cc:1] a warning of a long run\n"
    worker.write(warning.encode())
    deadline = time.monotonic() + 30
    while sink.getvalue() != warning:  # shown while the worker still runs
      assert time.monotonic() < deadline, sink.getvalue()
      time.sleep(0.01)
    worker.write("".join([*report, "a line after the report\n"]).encode())
  relay.join(timeout=30)
  assert not relay.is_alive() and sink.getvalue() == warning
  # Held back: written at the end if the worker succeeds, replaced by one line if it fails.
  assert held == [*report, "a line after the report\n"]


def refused_before_joining(argv: list[str], env: dict[str, str]) -> str:
  """The stderr of one process of the example that must exit 2 with one line, before joining any other."""
  done = subprocess.run(
    [*COMMAND, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, start_new_session=True
  )
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
  return done.stderr


def test_auto_cluster_off_a_cluster_is_one_line_and_exit_2():
  env = {
    k: v
    for k, v in example_env().items()
    if not k.startswith(("SLURM_", "OMPI_", "PMI_", "KUBERNETES_", "JAX_", "TPU_"))
  }
  stderr = refused_before_joining(["--auto-cluster", "--cpu-devices", "2"], env)
  assert stderr.startswith("distributed: error: --auto-cluster found no cluster environment")
  assert "--coordinator" in stderr and "Traceback" not in stderr


def test_coordinator_port_in_use_is_one_line_and_exit_2():
  # JAX itself fails here with a gRPC log line and, now and then, a segfault: the example checks first.
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    stderr = refused_before_joining(two_processes(address)[0], example_env())
  assert stderr.startswith(f"distributed: error: --coordinator {address}: the port is in use")


def test_processes_started_with_different_flags_are_each_refused(tmp_path):
  address = free_address()
  first, second = two_processes(address, "--timeout", "60")
  jobs, logs = [], [tmp_path / f"p{i}.log" for i in range(2)]
  try:
    for argv, log in zip([first, [*second, "--rho", "0.1", "--batch-size", "64"]], logs, strict=True):
      jobs.append(start(argv, log))
    codes = wait_all(jobs, logs, time.monotonic() + TIMEOUT_S, f"after {TIMEOUT_S} s")
  finally:
    for job in jobs:
      stop(job)
  for code, log in zip(codes, logs, strict=True):
    errors = [line for line in log.read_text().splitlines() if "error" in line.lower()]
    assert code == 2 and len(errors) == 1, log.read_text()[-3000:]
    assert errors[0].startswith("distributed: error: every process must be started with process 0's flags")
    assert "--batch-size 64 on process 1 but 128 on process 0" in errors[0]
    assert "--rho 0.1 on process 1 but 0.05 on process 0" in errors[0]


def one_error_line(output: str) -> str:
  """The last line of a failed process's output, checked to be its only error and no native stack."""
  assert "Traceback" not in output and "Check failure" not in output, output[-3000:]
  lines = output.strip().splitlines()
  assert lines[-1].startswith("distributed: error: "), output[-3000:]
  assert sum("error" in line.lower() for line in lines) == 1, output[-3000:]
  return lines[-1]


def test_a_process_started_alone_gives_up_after_the_timeout(tmp_path):
  # Process 0 starts the coordinator and waits for process 1; process 1 finds no coordinator. JAX itself
  # aborted both (SIGABRT) after 300 s.
  jobs, logs = [], [tmp_path / f"p{i}.log" for i in range(2)]
  timeout = 3
  began = time.monotonic()
  try:
    for i, log in enumerate(logs):
      jobs.append(start(two_processes(free_address(), "--timeout", str(timeout))[i], log))
    codes = wait_all(
      jobs, logs, began + timeout + START_SLACK_S, f"{timeout + START_SLACK_S} s after it started"
    )
  finally:
    for job in jobs:
      stop(job)
  for i, (code, log) in enumerate(zip(codes, logs, strict=True)):
    assert code == 1, log.read_text()[-3000:]
    assert one_error_line(log.read_text()) == (
      f"distributed: error: process {i} of 2: the processes did not all join within --timeout 3 s; "
      "start every process of the run, with the same coordinator"
    )


# Whichever comes first: a step's all-reduce finds the connection reset, or JAX's distributed service (its
# coordinator runs in process 0) sees a process gone and aborts the others.
SURVIVOR_ERRORS = (
  r"distributed: error: a step failed, most likely as another process stopped: .*Gloo.*",
  r"distributed: error: process \d of 2: another process of the run stopped, and JAX's distributed service "
  "ended this one",
)


@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_process_ends_the_other_with_one_line(victim, tmp_path):
  jobs, logs = [], [tmp_path / f"p{i}.log" for i in range(2)]
  timeout = 5
  try:
    for argv, log in zip(
      two_processes(free_address(), "--steps", "100000", "--log-every", "1", "--timeout", str(timeout)),
      logs,
      strict=True,
    ):
      jobs.append(start(argv, log))
    deadline = time.monotonic() + 90
    while not re.search(r"step\s+2 ", logs[0].read_text()):
      assert time.monotonic() < deadline and all(j.poll() is None for j in jobs), logs[0].read_text()[-2000:]
      time.sleep(0.2)
    # kill -9 of the command the user started: its worker must stop with it.
    os.kill(jobs[victim].pid, signal.SIGKILL)
    # Before: SIGABRT and a native stack, at once or after JAX's 100 s heartbeat timeout. Now at once (a
    # step finds the connection reset, or the killed process hosted the coordinator) or once the killed
    # one's heartbeats are missed for --timeout seconds (10 at least).
    silence = example.service_timeouts(timeout)["heartbeat_timeout_seconds"]
    survivor, log = jobs[1 - victim], logs[1 - victim]
    (code,) = wait_all(
      [survivor], [log], time.monotonic() + silence + END_SLACK_S, "after its peer was killed"
    )
  finally:
    for job in jobs:
      stop(job)
  assert code == 1
  line = one_error_line(log.read_text())
  assert any(re.fullmatch(error, line) for error in SURVIVOR_ERRORS), line
