"""The main job (``make train``) against the same job in PyTorch with the official optimizer.

Runs ``examples.train``'s default digits job and ``benchmarks/torch_job.py`` (the same CNN, split, label
noise, batches and initializers in PyTorch with ``unifiedsam`` 1.0.0) in interleaved rounds, each as its own
process, and records per job: wall, user and system time and peak resident memory (from the process's own
``wait4`` accounting), the XLA compilations (count and seconds, from the job's JSON), the steady-state time
of one SGD and one Unified SAM training step (median of single steps after a warm-up, in a fresh process
after each job of each round), and the accuracy tables side by side. Once per benchmark our job also runs
with ``--workers 1``: its time, and the check that running several runs at once leaves every number of the
table unchanged.

  python -m benchmarks.main_job                 # 3 rounds of the default job (about 9 minutes on 2 cores)
  python -m benchmarks.main_job --quick         # 2 epochs, 1 seed, SGD and SAM, 1 round
  python -m benchmarks.main_job --skip-torch    # our job only

The PyTorch side needs the ``bench`` extra, with the CPU wheel of torch
(``pip install -e ".[bench]" --extra-index-url https://download.pytorch.org/whl/cpu``); without them it
is reported as not installed. A full run writes ``benchmarks/results/main_job/main_job.json``; any other
run writes under ``benchmarks/results/main_job/quick/`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import report
from examples.train import cli

ROOT = Path(__file__).resolve().parent.parent
RESULTS = report.results_dir("main_job")
FULL = {"epochs": 40, "seeds": 3, "methods": "sgd,usam,sam,0.5,1/t,1-1/t", "rounds": 3, "steps": 300}
QUICK = {"epochs": 2, "seeds": 1, "methods": "sgd,sam", "rounds": 1, "steps": 40}
WARMUP_STEPS = 20


def torch_available() -> bool:
  return all(importlib.util.find_spec(name) is not None for name in ("torch", "unifiedsam"))


def timed(command: list[str]) -> dict[str, Any]:
  """Runs ``command`` to its end: wall, user and system seconds and peak memory of that process alone
  (``os.wait4`` reports the child's own usage)."""
  # Output into files, not pipes: a child that fills a pipe nobody reads would block for ever.
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, text=True)
    try:
      _, status, usage = os.wait4(process.pid, 0)
    except BaseException:  # Ctrl-C: do not leave the child running
      process.kill()
      os.wait4(process.pid, 0)
      raise
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
  if process.returncode != 0:
    raise cli.CommandError(f"{' '.join(command[1:3])} failed ({process.returncode}): {stderr.strip()[-500:]}")
  return {
    "wall_s": round(wall, 2),
    "user_s": round(usage.ru_utime, 2),
    "sys_s": round(usage.ru_stime, 2),
    "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is in KiB on Linux
    "stdout": stdout,
  }


def job_arguments(settings: dict[str, Any]) -> list[str]:
  return [
    "--methods",
    settings["methods"],
    "--seeds",
    str(settings["seeds"]),
    "--epochs",
    str(settings["epochs"]),
  ]


def run_ours(settings: dict[str, Any], workdir: Path, workers: int | None = None) -> dict[str, Any]:
  out = workdir / f"ours_{time.monotonic_ns()}"
  command = [
    sys.executable,
    "-m",
    "examples.train",
    "--no-progress",
    "--out",
    str(out),
    *job_arguments(settings),
  ]
  if workers is not None:
    command += ["--workers", str(workers)]
  record = timed(command)
  data = json.loads((out / "digits_results.json").read_text())
  record.pop("stdout")
  record["compilations"] = data["compilations"]
  record["results"] = {name: r["final_test_acc"] for name, r in data["results"].items()}
  record["curves"] = {name: r["test_acc_curve"] for name, r in data["results"].items()}
  return record


def run_torch(settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
  path = workdir / f"torch_{time.monotonic_ns()}.json"
  record = timed(
    [
      sys.executable,
      "-m",
      "benchmarks.torch_job",
      "--no-step-times",
      "--json",
      str(path),
      *job_arguments(settings),
    ]
  )
  record.pop("stdout")
  data = json.loads(path.read_text())
  record["results"] = {name: r["final_test_acc"] for name, r in data["results"].items()}
  return record


def step_times(framework: str, steps: int) -> dict[str, float]:
  """Median milliseconds of one SGD and one Unified SAM step, measured in a fresh process."""
  record = timed(
    [sys.executable, "-m", "benchmarks.main_job", "--step-times", framework, "--steps", str(steps)]
  )
  return json.loads(record["stdout"].strip().splitlines()[-1])


def jax_step_times(steps: int) -> dict[str, float]:
  """Our digits step (SGD, and the shared Unified SAM step at lambda = 1) on one batch: median ms per step."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from examples.train import data as data_lib
  from examples.train import digits_runner, job, models
  from examples.train.methods import make_shared_sam_tx, make_tx, parse_method, set_lambda
  from examples.train.training import make_loss_fn
  from optax_usam.flax_linen import SAMTrainState

  args = job.parse_args([])
  split = data_lib.load_digits(0, args.noise)
  model = models.get_model(args.model, 10)
  variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), split.train.x[:1], train=False)
  step = digits_runner.make_train_step(make_loss_fn(model))
  x, y = jnp.asarray(split.train.x), jnp.asarray(split.train.y)
  idx = np.arange(args.batch_size)
  sam = parse_method("sam")
  txs = {"sgd": make_tx(parse_method("sgd"), args, 10_000), "sam": make_shared_sam_tx(args, 10_000)}
  times = {}
  for kind, tx in txs.items():
    state = SAMTrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)
    if kind == "sam":
      state = state.replace(opt_state=set_lambda(state.opt_state, sam))
    samples = []
    for i in range(WARMUP_STEPS + steps):
      start = time.perf_counter()
      state, loss = step(state, x, y, idx, None)
      loss.block_until_ready()
      if i >= WARMUP_STEPS:
        samples.append(time.perf_counter() - start)
    times[kind] = round(1e3 * statistics.median(samples), 3)
  return times


def torch_step_times(steps: int) -> dict[str, float]:
  from benchmarks import torch_job

  return {
    kind: round(torch_job.steady_state_step_ms(kind, steps, WARMUP_STEPS), 3) for kind in ("sgd", "sam")
  }


def accuracy_table(ours: dict[str, list[float]], theirs: dict[str, list[float]] | None) -> str:
  """Final test accuracy, mean +- std over seeds, ours next to PyTorch's (markdown)."""
  import numpy as np

  def cell(values: list[float] | None) -> str:
    return "n/a" if values is None else f"{np.mean(values):.2f} +- {np.std(values):.2f}"

  rows = ["| method | optax_usam (JAX) | PyTorch + unifiedsam |", "|---|---|---|"]
  for name, values in ours.items():
    rows.append(f"| {name} | {cell(values)} | {cell(None if theirs is None else theirs.get(name))} |")
  return "\n".join(rows)


def cost_table(summary: dict[str, Any]) -> str:
  """The two jobs' costs (medians over rounds) and their ratio (markdown)."""
  ours, theirs = summary["ours"], summary.get("torch")
  rows = [
    "| | optax_usam (JAX) | PyTorch + unifiedsam | PyTorch / ours |",
    "|---|---|---|---|",
  ]

  def row(label: str, key: str, unit: str, digits: int = 1) -> None:
    a = ours[key]
    b = None if theirs is None else theirs[key]
    ratio = "n/a" if b is None else f"{b / a:.2f}x"
    theirs_cell = "n/a" if b is None else f"{b:.{digits}f} {unit}"
    rows.append(f"| {label} | {a:.{digits}f} {unit} | {theirs_cell} | {ratio} |")

  row("wall time (median of rounds)", "wall_s", "s")
  rows.append(f"| our job one run at a time (`--workers 1`, once) | {ours['serial_wall_s']:.1f} s | | |")
  row("user + system CPU time", "cpu_s", "s")
  row("peak resident memory", "peak_rss_mib", "MiB", 0)
  row("SGD step, steady state", "sgd_step_ms", "ms", 2)
  row("Unified SAM step, steady state", "sam_step_ms", "ms", 2)
  compiled = ours["compilations"]
  rows.append(f"| XLA compilations | {compiled['count']} ({compiled['seconds']:.1f} s) | none (eager) | |")
  return "\n".join(rows)


def summarize(rounds: list[dict[str, Any]], serial: dict[str, Any]) -> dict[str, Any]:
  """Medians over rounds of each job's costs; our job's compilations; PyTorch's wall time over ours."""
  summary: dict[str, Any] = {}
  for framework in ("ours", "torch"):
    records = [r[framework] for r in rounds if r.get(framework) is not None]
    if not records:
      continue
    summary[framework] = {
      "wall_s": statistics.median(r["wall_s"] for r in records),
      "cpu_s": statistics.median(r["user_s"] + r["sys_s"] for r in records),
      "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in records),
      "sgd_step_ms": statistics.median(r["step_ms"]["sgd"] for r in records),
      "sam_step_ms": statistics.median(r["step_ms"]["sam"] for r in records),
    }
  summary["ours"]["compilations"] = rounds[0]["ours"]["compilations"]
  summary["ours"]["serial_wall_s"] = serial["wall_s"]
  if "torch" in summary:
    summary["speedup"] = round(summary["torch"]["wall_s"] / summary["ours"]["wall_s"], 3)
  return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
  settings = dict(QUICK if args.quick else FULL)
  if args.rounds is not None:
    settings["rounds"] = args.rounds
  with_torch = not args.skip_torch and torch_available()
  torch_status = "measured" if with_torch else ("skipped" if args.skip_torch else "not installed")
  rounds: list[dict[str, Any]] = []
  with tempfile.TemporaryDirectory() as tmp:
    workdir = Path(tmp)
    serial = run_ours(settings, workdir, workers=1)
    for i in range(settings["rounds"]):
      # Alternate which job goes first, so that neither always runs on a cooler or warmer machine.
      order = ["ours", "torch"] if i % 2 == 0 else ["torch", "ours"]
      record: dict[str, Any] = {}
      for framework in order:
        if framework == "ours":
          record["ours"] = run_ours(settings, workdir)
          record["ours"]["step_ms"] = step_times("jax", settings["steps"])
        elif with_torch:
          record["torch"] = run_torch(settings, workdir)
          record["torch"]["step_ms"] = step_times("torch", settings["steps"])
      rounds.append(record)
      done = ", ".join(f"{k} {v['wall_s']:.1f} s" for k, v in record.items())
      print(f"round {i + 1}: {done}", file=sys.stderr)
  identical = all(
    r["ours"]["results"] == serial["results"] and r["ours"]["curves"] == serial["curves"] for r in rounds
  )
  for record in [serial, *(r["ours"] for r in rounds)]:
    record.pop("curves")
  return {
    "settings": settings,
    "torch": torch_status,
    "machine": report.machine(),
    "date_utc": report.utc_now(),
    "identical_to_serial": identical,
    "serial_run": serial,
    "rounds": rounds,
    "summary": summarize(rounds, serial),
  }


def parser() -> cli.Parser:
  p = cli.Parser(prog="main_job", description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="2 epochs, 1 seed, SGD and SAM, 1 round")
  p.add_argument("--rounds", type=cli.positive_int, default=None, help="interleaved rounds (default: 3)")
  p.add_argument("--skip-torch", action="store_true", help="our job only")
  p.add_argument(
    "--out",
    type=Path,
    default=None,
    help="output directory (default: benchmarks/results/main_job, its quick/ for short runs)",
  )
  p.add_argument(
    "--step-times", choices=("jax", "torch"), default=None, help="internal: one framework's step times"
  )
  p.add_argument("--steps", type=cli.positive_int, default=FULL["steps"], help="timed steps per step kind")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  try:
    args = parser().parse_args(argv)
    if args.step_times is not None:
      times = jax_step_times(args.steps) if args.step_times == "jax" else torch_step_times(args.steps)
      print(json.dumps(times))
      return 0
    data = run(args)
  except cli.CommandError as err:
    return cli.report("main_job", err)
  # Only a full run with both jobs measured replaces the committed results (the docs quote them).
  full = not args.quick and args.rounds in (None, FULL["rounds"]) and data["torch"] == "measured"
  out = args.out or (RESULTS if full else RESULTS / "quick")
  path = report.write_json(out / "main_job.json", data)
  print(cost_table(data["summary"]))
  print()
  print(
    accuracy_table(data["rounds"][0]["ours"]["results"], data["rounds"][0].get("torch", {}).get("results"))
  )
  print(f"\nidentical to a serial run: {data['identical_to_serial']}; torch: {data['torch']}; wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
