"""Multi-host data-parallel Unified SAM on JAX's multi-controller runtime.

Two JAX processes on this machine (CPU, gloo collectives, coordinator on
127.0.0.1) with 2 virtual devices each must train to the same parameters as one
process with 4 devices, in both perturbation modes.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "_multihost_worker.py"
TIMEOUT_S = 180


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(args: list[str], devices: int, log: pathlib.Path) -> subprocess.Popen:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  with open(log, "w") as out:
    # A session of its own, so that a timeout can kill the process and all it started.
    return subprocess.Popen(
      [sys.executable, str(WORKER), *args],
      env=env,
      stdout=out,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )


def test_two_processes_match_one_process_with_four_devices(tmp_path):
  port = free_port()
  single, multi = tmp_path / "single.npz", tmp_path / "multi.npz"
  jobs = {}
  try:
    jobs["single"] = launch(["--out", str(single)], 4, tmp_path / "single.log")
    for i in range(2):
      jobs[f"process {i}"] = launch(
        [
          "--coordinator",
          f"127.0.0.1:{port}",
          "--num-processes",
          "2",
          "--process-id",
          str(i),
          "--out",
          str(multi),
        ],
        2,
        tmp_path / f"process{i}.log",
      )
    deadline = time.monotonic() + TIMEOUT_S
    for name, job in jobs.items():
      log = tmp_path / f"{name.replace(' ', '')}.log"
      try:
        code = job.wait(timeout=max(1.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        pytest.fail(f"{name} not finished after {TIMEOUT_S} s; killed all:\n{log.read_text()[-3000:]}")
      assert code == 0, f"{name} exited with {code}:\n{log.read_text()[-3000:]}"
  finally:
    for job in jobs.values():
      if job.poll() is None:
        os.killpg(job.pid, signal.SIGKILL)  # SIGTERM may not end a process stuck in a collective
        job.wait()

  a, b = np.load(single), np.load(multi)
  assert "must live on one process" in str(b["cross_process_error"])
  assert sorted(a.files) == sorted(set(b.files) - {"cross_process_error"})
  assert {f.split("/")[0] for f in a.files} == {"global", "per_device"}
  for key in a.files:
    np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-6, err_msg=key)
  # The two modes train differently, so matching both is two checks, not one.
  assert not np.allclose(a["global/w1"], a["per_device/w1"], atol=1e-4)
