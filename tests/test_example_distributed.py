"""examples/distributed.py: runs on virtual devices and on 2 processes; bad CLI input exits 2."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "distributed.py"
TIMEOUT_S = 180


def load_example():
  spec = importlib.util.spec_from_file_location("example_distributed", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def example_env() -> dict[str, str]:
  """This environment, minus XLA_FLAGS (the example sets its own) and plus the repository on PYTHONPATH."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  return env


def start(argv: list[str], log: pathlib.Path, env: dict[str, str] | None = None) -> subprocess.Popen:
  """Starts the example in a session of its own, so that :func:`stop` can kill all it started."""
  with open(log, "w") as out:
    return subprocess.Popen(
      [sys.executable, str(EXAMPLE), *argv],
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
    (["--bogus"], "unrecognized arguments"),
  ],
)
def test_bad_cli_input_is_one_line_and_exit_2(argv, match, capsys):
  with pytest.raises(SystemExit) as exit_info:
    load_example().main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  assert match in err
