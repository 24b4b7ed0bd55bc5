"""The command line: ``python -m benchmarks.seed_claims [--quick] [--claims ...] [--seed S] [--out DIR]``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import jax

from benchmarks import report, seed_claims
from benchmarks.seed_claims import almost_constant, common, neighbourhood, nonconvex, quadratic
from examples.train import cli

CLAIMS: dict[str, ModuleType] = {m.NAME: m for m in (quadratic, almost_constant, neighbourhood, nonconvex)}
RESULTS = report.results_dir("seed_claims")
# The run whose outputs are committed under RESULTS (and quoted in docs/seed_claims.md).
FULL_RUN = {"seed": 0, "claims": list(CLAIMS)}


def parser() -> cli.Parser:
  p = cli.Parser(prog="seed_claims", description=seed_claims.__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="short runs of every claim (about 20 s in all)")
  p.add_argument(
    "--claims",
    nargs="+",
    choices=list(CLAIMS),
    default=list(CLAIMS),
    metavar="CLAIM",
    help=f"the claims to run, from {', '.join(CLAIMS)} (default: all four)",
  )
  p.add_argument("--seed", type=int, default=0, help="seed of the problems and the sampled batches (>= 0)")
  p.add_argument(
    "--out",
    type=Path,
    default=None,
    help="default: benchmarks/results/seed_claims for the full run, its quick/ otherwise",
  )
  p.add_argument("--no-plots", action="store_true")
  return p


def output_dir(args: argparse.Namespace) -> Path:
  return report.output_dir(args, FULL_RUN, RESULTS)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[common.ClaimResult]]:
  start = time.perf_counter()
  results = []
  for name in args.claims:
    result = CLAIMS[name].run(args.quick, args.seed)
    print(f"{name:16s}{result.record['verdict']:15s}{result.record['wall_time_s']:7.1f} s", flush=True)
    results.append(result)
  records = [r.record for r in results]
  data = {
    "config": {"quick": args.quick, "seed": args.seed, "claims": args.claims},
    "date_utc": report.utc_now(),
    "machine": report.machine(),
    "timing": {
      **{r.name: r.record["wall_time_s"] for r in results},
      "claims_s": round(time.perf_counter() - start, 2),
    },
    "claims": {r.name: r.record for r in results},
    "verdict_table": common.table(records),
  }
  return data, results


def main(argv: Sequence[str] | None = None) -> None:
  p = parser()
  with cli.exit_on_error(p.prog):
    args = p.parse_args(argv)
    if args.seed < 0:
      p.error(f"argument --seed: must be >= 0, got {args.seed}")
  args.claims = [name for name in CLAIMS if name in args.claims]  # in the order of the table
  args.out = output_dir(args)
  start = time.perf_counter()
  with jax.enable_x64(True):
    data, results = run(args)
  if not args.no_plots:
    for result in results:
      CLAIMS[result.name].plot(result, args.out / f"seed_claims_{result.name}.png")
  data["timing"]["script_wall_s"] = round(time.perf_counter() - start, 2)
  path = report.write_json(args.out / "seed_claims.json", data)
  print()
  print(data["verdict_table"])
  print(f"\nwrote {path}")
