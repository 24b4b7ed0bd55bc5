"""Measuring one model: every step compiled once, then timed in interleaved rounds.

A round runs each variant once (A B C ... A B C ..., the starting variant rotating each round), so
that the load other processes put on the machine hits every variant alike; ratios are taken within a
round and summarised by their median. A measurement is ``k`` back-to-back steps, ``k`` set so that it
lasts about ``target_s``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import hlo, models
from benchmarks.overhead import steps

# The rows (e) need the bench extra, with torch as the CPU wheel (docs/benchmarks.md).
INSTALL = 'pip install -e ".[bench]" --extra-index-url https://download.pytorch.org/whl/cpu'


@dataclass
class Runner:
  """Runs ``k`` steps of one variant back to back and returns the seconds per step."""

  name: str
  run: Callable[[int], None]
  k: int = 1
  times: list[float] = field(default_factory=list)

  def measure(self) -> float:
    start = time.perf_counter()
    self.run(self.k)
    return (time.perf_counter() - start) / self.k


def jax_runner(name: str, compiled: Any, params: Any, state: Any, batch: tuple[jax.Array, ...]) -> Runner:
  carry = [params, state, None]

  def run(k: int) -> None:
    for _ in range(k):
      carry[0], carry[1], carry[2] = compiled(carry[0], carry[1], *batch)
    jax.block_until_ready(carry[2])

  return Runner(name, run)


def torch_runners(spec: models.ModelSpec, threads: int) -> tuple[list[Runner], str | None]:
  """(e) PyTorch SGD and the official ``unifiedsam.unifiedSAM`` (lambda = 1), or fewer and the reason."""
  try:
    import torch
  except ImportError:
    return [], f"torch is not installed ({INSTALL}): rows (e) skipped"
  try:
    from unifiedsam import unifiedSAM
  except ImportError:
    unifiedSAM = None
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  shape = (spec.input_shape[2], *spec.input_shape[:2]) if spec.kind == "resnet" else spec.input_shape
  x = torch.randn(spec.batch, *shape)
  y = torch.randint(0, spec.num_classes, (spec.batch,))
  base = models.build_torch(spec)
  loss = lambda net: torch.nn.functional.cross_entropy(net(x), y)

  sgd_net = base
  sgd_opt = torch.optim.SGD(sgd_net.parameters(), lr=steps.LR, momentum=steps.MOMENTUM)

  def run_sgd(k: int) -> None:
    for _ in range(k):
      sgd_opt.zero_grad()
      loss(sgd_net).backward()
      sgd_opt.step()

  runners = [Runner("torch_sgd", run_sgd)]
  if unifiedSAM is None:
    return runners, f"unifiedsam is not installed ({INSTALL}): no torch_usam"
  sam_net = models.build_torch(spec)
  sam_net.load_state_dict(base.state_dict())
  sam_opt = unifiedSAM(
    sam_net.parameters(),
    base_optimizer=torch.optim.SGD,
    rho=steps.RHO,
    lambd=1.0,
    lr=steps.LR,
    momentum=steps.MOMENTUM,
  )

  def run_sam(k: int) -> None:
    for _ in range(k):
      sam_opt.zero_grad()
      loss(sam_net).backward()
      sam_opt.first_step(zero_grad=True)
      loss(sam_net).backward()
      sam_opt.second_step(zero_grad=True)

  runners.append(Runner("torch_usam", run_sam))
  return runners, None


def calibrate(runner: Runner, target_s: float) -> float:
  """Warms ``runner`` up, sets its repeat count so one measurement lasts ``target_s``; returns s/step."""
  runner.run(1)
  runner.k = 1
  # Doubling until a measurement lasts a while keeps one preempted step from setting the count.
  while True:
    per_step = runner.measure()
    if per_step * runner.k >= target_s / 4:
      break
    runner.k *= 2
  runner.k = max(1, round(target_s / per_step))
  return per_step


def summary(values: list[float]) -> dict[str, float]:
  q25, q50, q75 = np.percentile(values, [25, 50, 75])
  return {"median": float(q50), "q25": float(q25), "q75": float(q75), "min": float(min(values))}


def compile_step(variant: steps.Variant, params: Any, batch: tuple[jax.Array, ...]) -> tuple[Any, dict]:
  """The compiled step (parameters and state donated) and what compiling it reports."""
  step, init = variant
  start = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, init(params), *batch)
  traced = time.perf_counter()
  compiled = lowered.compile()
  done = time.perf_counter()
  return compiled, {
    "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
    "trace_lower_s": traced - start,
    "compile_s": done - traced,
    "hlo": hlo.summary(compiled.as_text()),
  }


def measure_model(spec: models.ModelSpec, args: argparse.Namespace, log: Callable[[str], None]) -> dict:
  """One model's entry of ``overhead.json``: compile reports, times and the ratios between them."""
  loss = models.loss_jax(spec)
  params = models.init_jax(spec, jax.random.key(0))
  batch = models.batch_jax(spec, jax.random.key(1))
  result: dict[str, Any] = {
    "batch": spec.batch,
    "params": models.count_params(params),
    "compiled": {},
    "time": {},
    "skipped": [],
  }
  runners: list[Runner] = []
  cheaper = (args.reuse_every, args.sam_probability, args.ascent_fraction)
  for name, variant in steps.jax_steps(loss, *cheaper, groups=args.rows).items():
    own = jax.tree.map(jnp.copy, params)
    compiled, result["compiled"][name] = compile_step(variant, own, batch)
    runners.append(jax_runner(name, compiled, own, variant[1](own), batch))
  if args.torch:
    extra, why = torch_runners(spec, args.threads)
    runners += extra
    if why:
      result["skipped"].append(why)
      log(f"  note: {why}")

  per_step = {r.name: calibrate(r, args.target_s) for r in runners}
  round_s = sum(per_step[r.name] * r.k for r in runners)
  rounds = max(args.min_rounds, min(args.rounds, int(args.budget_s / round_s)))
  log(f"  limit step ~{per_step['limit'] * 1e3:.3g} ms; {rounds} rounds of ~{round_s:.1f} s")
  for i in range(rounds):
    # Rotating the start spreads any cost of running right after a given variant.
    for r in runners[i % len(runners) :] + runners[: i % len(runners)]:
      r.times.append(r.measure())
  for r in runners:
    result["time"][r.name] = {**summary(r.times), "repeats": r.k, "rounds": len(r.times)}
  times = {r.name: np.array(r.times) for r in runners}
  result["time_ratio_to_limit"] = {
    name: {**summary(list(t / times["limit"])), "of_minima": float(t.min() / times["limit"].min())}
    for name, t in times.items()
  }
  result["time_ratio_to_sgd"] = {name: summary(list(t / times["sgd"])) for name, t in times.items()}
  for peer in ("optax_sam", "torch_usam"):
    if peer in times and "usam[1]" in times:
      result[f"usam[1]_over_{peer}"] = summary(list(times["usam[1]"] / times[peer]))
  return result
