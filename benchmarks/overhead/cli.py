"""The command line: ``python -m benchmarks.overhead [--quick] [--models ...] [--name N] [--replot] ...``."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import models, overhead, report
from benchmarks.overhead import measure, results, steps
from examples.train import cli

DEFAULT_MODELS = ("tiny_mlp", "mlp", "wide_mlp", "resnet8", "wrn16_4")
QUICK_MODELS = ("tiny_mlp", "mlp", "wide_mlp", "resnet8")
RESULTS = report.results_dir("overhead")
# The stem of the full run's files; a run with other settings whose results are kept gets a --name of its own.
NAME = "overhead"
# Options that choose where a run writes or what it reads back, not what it measures.
_WHERE = ("out", "name", "replot")


def _rate(text: str) -> float:
  """``type=`` for a probability or a fraction of the batch: a number in (0, 1]."""
  value = cli.positive_float(text)
  if value > 1:
    raise argparse.ArgumentTypeError(f"must be in (0, 1]; got {value:g}")
  return value


def parser() -> cli.Parser:
  p = cli.Parser(prog="overhead", description=overhead.__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="MLPs and ResNet-8 only, fewer rounds")
  p.add_argument("--models", default=None, help=f"comma-separated, from {sorted(models.zoo())}")
  p.add_argument(
    "--rounds", type=cli.positive_int, default=None, help="rounds per model (at most; see --budget-s)"
  )
  p.add_argument("--min-rounds", type=cli.positive_int, default=3)
  p.add_argument("--budget-s", type=cli.positive_float, default=None, help="timing seconds per model")
  p.add_argument("--target-s", type=cli.positive_float, default=None, help="seconds per measurement")
  p.add_argument(
    "--threads", type=cli.positive_int, default=None, help="CPU threads for XLA and torch (default: all)"
  )
  p.add_argument("--wrn-batch", type=cli.positive_int, default=32, help="batch size of WRN-16-4 (default 32)")
  p.add_argument("--no-torch", dest="torch", action="store_false", help="skip the PyTorch rows (e)")
  p.add_argument(
    "--rows",
    default=",".join(steps.ROW_GROUPS),
    help=f"comma-separated groups of JAX rows timed beside sgd and limit, from "
    f"{', '.join(steps.ROW_GROUPS)} (default: all)",
  )
  p.add_argument(
    "--reuse-every",
    type=cli.positive_int,
    default=4,
    help="k of the reuse_sam row, a cheaper variant (default 4)",
  )
  p.add_argument(
    "--sam-probability",
    type=_rate,
    default=0.25,
    help="p of the randomized_sam row, a cheaper variant (default 0.25)",
  )
  p.add_argument(
    "--ascent-fraction",
    type=_rate,
    default=0.25,
    help="f of the sub-batch ascent row, a cheaper variant (default 0.25)",
  )
  p.add_argument(
    "--name",
    default=NAME,
    help=f"stem of the results files, NAME.json and NAME.png (default {NAME}); a run named otherwise "
    "writes into benchmarks/results/overhead/ whatever its settings",
  )
  p.add_argument(
    "--out",
    type=Path,
    default=None,
    help="folder for NAME.json and NAME.png (default: benchmarks/results/overhead for the full run and "
    "a named one, its quick/ for any other)",
  )
  p.add_argument(
    "--replot",
    action="store_true",
    help="time nothing: print the table and draw NAME.png again from NAME.json in the same folder",
  )
  return p


def output_dir(args: argparse.Namespace) -> Path:
  """``--out`` if given, else ``benchmarks/results/overhead/`` for the full run (every option at its
  default) and for a run with a ``--name`` of its own, and its ``quick/`` for any other run."""
  defaults = vars(parser().parse_args([]))
  full_run = {} if args.name != NAME else {k: v for k, v in defaults.items() if k not in _WHERE}
  return report.output_dir(args, full_run, RESULTS)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = parser()
  args = p.parse_args(argv)
  if not re.fullmatch(r"[A-Za-z0-9_-]+", args.name):
    p.error(f"--name must be letters, digits, _ and - (a file stem); got {args.name!r}")
  args.out = output_dir(args)  # before the defaults below are filled in
  zoo = models.zoo(wrn_batch=args.wrn_batch)
  names = args.models.split(",") if args.models else list(QUICK_MODELS if args.quick else DEFAULT_MODELS)
  unknown = [n for n in names if n not in zoo]
  if unknown:
    p.error(f"--models: unknown {unknown}; allowed: {sorted(zoo)}")
  args.rows = tuple(g for g in args.rows.split(",") if g)
  unknown = [g for g in args.rows if g not in steps.ROW_GROUPS]
  if unknown:
    p.error(f"--rows: unknown {unknown}; allowed: {list(steps.ROW_GROUPS)}")
  available = len(os.sched_getaffinity(0))
  args.threads = args.threads or available
  if args.threads > available:
    p.error(f"--threads must be at most the {available} CPUs this process may use; got {args.threads}")
  args.specs = [zoo[n] for n in names]
  args.rounds = args.rounds or (7 if args.quick else 25)
  args.budget_s = args.budget_s or (15.0 if args.quick else 45.0)
  args.target_s = args.target_s or (0.1 if args.quick else 0.2)
  return args


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
  """Measures every model of ``args.specs``: the content of ``NAME.json``."""
  # OpenMP threads that spin while waiting starve each other on a shared machine
  # (a 2-thread PyTorch MLP step went from 2 ms to 15-200 ms under load).
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  # XLA sizes its CPU thread pool from the affinity mask when the backend starts.
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  info = report.machine(args.threads)
  log(f"{info['cpu']}, {args.threads} threads, jax {info['jax']}, torch {info.get('torch', '-')}")
  per_model: dict[str, dict] = {}
  start = time.perf_counter()
  for spec in args.specs:
    log(f"{spec.name} (batch {spec.batch})")
    per_model[spec.name] = measure.measure_model(spec, args, log)
  info["loadavg_end"] = os.getloadavg()
  return {
    "machine": info,
    "date_utc": report.utc_now(),
    "command": command,
    "wall_s": time.perf_counter() - start,
    "settings": {
      "lr": steps.LR,
      "momentum": steps.MOMENTUM,
      "rho": steps.RHO,
      "eps": steps.EPS,
      "rsam_noise_std": steps.RSAM_NOISE_STD,
      "gsam_alpha": steps.GSAM_ALPHA,
      "rounds_max": args.rounds,
      "budget_s": args.budget_s,
      "target_s": args.target_s,
    },
    "models": per_model,
    "targets": results.targets(per_model),
  }


def main(argv: Sequence[str] | None = None) -> None:
  with cli.exit_on_error("overhead"):
    args = parse_args(argv)
    json_path = args.out / f"{args.name}.json"
    if args.replot and not json_path.is_file():
      raise cli.UsageError(f"--replot: no {json_path} to draw from")
  if args.replot:
    out = report.read_json(json_path)
  else:
    command = "python -m benchmarks.overhead " + " ".join(sys.argv[1:] if argv is None else argv)
    out = run(args, command.strip())
    report.write_json(json_path, out)
  results.chart(out["models"], args.out / f"{args.name}.png")
  print(results.table(out["models"]))
  print()
  print(results.verdicts(out["targets"]))
