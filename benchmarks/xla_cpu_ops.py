"""The operations of the digits CNN's training step, timed alone: where XLA:CPU spends the step.

Minimal reproducers, each a few lines of JAX on the shapes of the main job (batch 64, 8x8 images), timed
in interleaved rounds (median of single calls after a warm-up), next to the same operation in PyTorch
when torch is installed:

* the 2x2 max-pool's gradient: ``flax.linen.max_pool``'s (XLA's select-and-scatter) against
  ``examples/train/pooling.py``'s ``max_pool_2x2`` (the same numbers, a one-hot select), used by the main job;
* the 3x3 convolutions (1 -> 16 and 16 -> 32 channels): forward, input gradient, kernel gradient.

  python -m benchmarks.xla_cpu_ops            # prints the table, writes xla_cpu_ops.json
  python -m benchmarks.xla_cpu_ops --quick    # fewer calls

The default run with both frameworks measured writes ``benchmarks/results/xla_cpu_ops/xla_cpu_ops.json``;
any other run writes into its ``quick/`` (ignored by git) unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from examples.train import cli

ROOT = Path(__file__).resolve().parent.parent
RESULTS = report.results_dir("xla_cpu_ops")
BATCH = 64


def median_ms(fn: Callable[[], Any], calls: int, sync: Callable[[Any], Any]) -> float:
  for _ in range(10):
    sync(fn())
  samples = []
  for _ in range(calls):
    start = time.perf_counter()
    sync(fn())
    samples.append(time.perf_counter() - start)
  return 1e3 * statistics.median(samples)


def jax_cases() -> dict[str, Callable[[], Any]]:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from jax import lax

  from examples.train.pooling import max_pool_2x2

  rng = np.random.default_rng(0)

  def conv(x: jax.Array, k: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def backward(
    fn: Callable[[jax.Array], jax.Array], primal: jax.Array, cotangent: jax.Array
  ) -> Callable[[], Any]:
    # The backward pass alone, as PyTorch's cases time it: the forward pass runs once, here.
    _, vjp_fn = jax.vjp(fn, primal)
    apply = jax.jit(lambda vjp_fn, g: vjp_fn(g)[0])
    return lambda: apply(vjp_fn, cotangent)

  cases: dict[str, Callable[[], Any]] = {}
  pooled = jnp.asarray(np.maximum(rng.normal(size=(BATCH, 8, 8, 32)), 0), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(BATCH, 4, 4, 32)), jnp.float32)
  cases["max-pool gradient, nn.max_pool"] = backward(
    lambda h: nn.max_pool(h, (2, 2), (2, 2)), pooled, cotangent
  )
  cases["max-pool gradient, max_pool_2x2"] = backward(max_pool_2x2, pooled, cotangent)
  for cin, cout in ((1, 16), (16, 32)):
    x = jnp.asarray(rng.normal(size=(BATCH, 8, 8, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(BATCH, 8, 8, cout)), jnp.float32)
    forward = jax.jit(conv)
    cases[f"conv {cin}->{cout} forward"] = lambda f=forward, x=x, k=k: f(x, k)
    cases[f"conv {cin}->{cout} input gradient"] = backward(lambda v, k=k: conv(v, k), x, dy)
    cases[f"conv {cin}->{cout} kernel gradient"] = backward(lambda w, x=x: conv(x, w), k, dy)
  return cases


def torch_cases() -> dict[str, Callable[[], Any]]:
  import torch
  import torch.nn.functional as F

  rng = np.random.default_rng(0)
  cases: dict[str, Callable[[], Any]] = {}
  pooled = torch.tensor(
    np.maximum(rng.normal(size=(BATCH, 32, 8, 8)), 0), dtype=torch.float32, requires_grad=True
  )
  out = F.max_pool2d(pooled, 2)
  cotangent = torch.tensor(rng.normal(size=(BATCH, 32, 4, 4)), dtype=torch.float32)
  cases["max-pool gradient"] = lambda: torch.autograd.grad(out, pooled, cotangent, retain_graph=True)
  for cin, cout in ((1, 16), (16, 32)):
    x = torch.tensor(rng.normal(size=(BATCH, cin, 8, 8)), dtype=torch.float32, requires_grad=True)
    k = torch.tensor(rng.normal(size=(cout, cin, 3, 3)), dtype=torch.float32, requires_grad=True)
    y = F.conv2d(x, k, padding=1)
    dy = torch.tensor(rng.normal(size=(BATCH, cout, 8, 8)), dtype=torch.float32)
    cases[f"conv {cin}->{cout} forward"] = lambda x=x, k=k: F.conv2d(x.detach(), k.detach(), padding=1)
    cases[f"conv {cin}->{cout} input gradient"] = lambda y=y, x=x, dy=dy: torch.autograd.grad(
      y, x, dy, retain_graph=True
    )
    cases[f"conv {cin}->{cout} kernel gradient"] = lambda y=y, k=k, dy=dy: torch.autograd.grad(
      y, k, dy, retain_graph=True
    )
  return cases


def torch_twin(name: str) -> str:
  return "max-pool gradient" if name.startswith("max-pool") else name


def measure(framework: str, calls: int) -> dict[str, float]:
  """Median ms per case of one framework, in this process (the parent runs each framework in its own)."""
  if framework == "jax":
    import jax

    return {name: median_ms(fn, calls, jax.block_until_ready) for name, fn in jax_cases().items()}
  return {name: median_ms(fn, calls, lambda value: value) for name, fn in torch_cases().items()}


def measure_in_child(framework: str, calls: int) -> dict[str, float]:
  # One process per framework and round: XLA's and PyTorch's thread pools in one process slow each other.
  command = [sys.executable, "-m", "benchmarks.xla_cpu_ops", "--measure", framework, "--calls", str(calls)]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    raise cli.CommandError(f"measuring {framework} failed: {done.stderr.strip()[-500:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict[str, Any]:
  frameworks = ["jax"] + (["torch"] if importlib.util.find_spec("torch") is not None else [])
  calls = 50 if args.quick else 400
  samples: dict[str, dict[str, list[float]]] = {f: {} for f in frameworks}
  for i in range(args.rounds):
    for framework in frameworks if i % 2 == 0 else frameworks[::-1]:
      for name, ms in measure_in_child(framework, calls).items():
        samples[framework].setdefault(name, []).append(ms)
  rows = {}
  for name, values in samples["jax"].items():
    twin = samples.get("torch", {}).get(torch_twin(name))
    rows[name] = {
      "jax_ms": round(statistics.median(values), 4),
      "torch_ms": None if not twin else round(statistics.median(twin), 4),
    }
  return {
    "machine": report.machine(),
    "date_utc": report.utc_now(),
    "rounds": args.rounds,
    "calls": calls,
    "rows": rows,
  }


def table(rows: dict[str, dict[str, float | None]]) -> str:
  lines = ["| operation (batch 64, 8x8) | XLA:CPU (ms) | PyTorch (ms) |", "|---|---|---|"]
  for name, row in rows.items():
    torch_ms = "n/a" if row["torch_ms"] is None else f"{row['torch_ms']:.3f}"
    lines.append(f"| {name} | {row['jax_ms']:.3f} | {torch_ms} |")
  return "\n".join(lines)


def parser() -> cli.Parser:
  p = cli.Parser(prog="xla_cpu_ops", description=__doc__.split("\n\n")[0])
  p.add_argument(
    "--quick",
    action="store_true",
    help="50 calls per measurement, into benchmarks/results/xla_cpu_ops/quick/",
  )
  p.add_argument("--rounds", type=cli.positive_int, default=3, help="interleaved rounds (default: 3)")
  p.add_argument(
    "--out",
    type=Path,
    default=None,
    help="output directory (default: benchmarks/results/xla_cpu_ops, its quick/ for short runs)",
  )
  p.add_argument(
    "--measure", choices=("jax", "torch"), default=None, help="internal: one framework, in this process"
  )
  p.add_argument(
    "--calls", type=cli.positive_int, default=400, help="timed calls per measurement (with --measure)"
  )
  return p


def main(argv: Sequence[str] | None = None) -> int:
  try:
    args = parser().parse_args(argv)
  except cli.CommandError as err:
    return cli.report("xla_cpu_ops", err)
  if args.measure is not None:
    print(json.dumps(measure(args.measure, args.calls)))
    return 0
  try:
    data = run(args)
  except cli.CommandError as err:
    return cli.report("xla_cpu_ops", err)
  # Only the default run with both frameworks measured replaces the committed results (the docs quote them).
  full = (
    not args.quick and args.rounds == 3 and all(row["torch_ms"] is not None for row in data["rows"].values())
  )
  out = args.out or (RESULTS if full else RESULTS / "quick")
  path = report.write_json(out / "xla_cpu_ops.json", data)
  print(table(data["rows"]))
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
