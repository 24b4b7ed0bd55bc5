"""The default digits job of ``python -m examples.train``, in PyTorch with the official ``unifiedsam``.

The same job as ``examples/train/digits_runner.py`` runs with ``optax_usam``: scikit-learn's digits with 40%
label noise (``examples/train/data.py``'s split and noise per seed), the digits CNN of
``examples/train/models.py``
(same layers, flax's default initializer distributions, NCHW), 40 epochs of batches of 64 in the same order,
mean softmax cross-entropy, and per method the official ``unifiedsam.unifiedSAM`` (rho 0.1) over
``torch.optim.SGD`` (momentum 0.9, weight decay 5e-4: torch adds it to the gradient before the momentum,
as ``optax.add_decayed_weights`` before ``optax.sgd``) with the cosine learning rate of
``optax.cosine_decay_schedule(0.05, total_steps)`` set per step. SGD is plain ``torch.optim.SGD``. The
initial weights follow the same distributions as flax's, drawn by torch's generator seeded with the seed:
not the same numbers, so single runs differ from the JAX job's as two seeds do.

Prints the table of final test accuracy (mean +- std over seeds, then per seed) and the median time of one
training step after warm-up (:func:`steady_state_step_ms`); ``--json`` also writes them. Needs ``torch``
(the CPU wheel) and ``unifiedsam``, the ``bench`` extra::

  pip install -e ".[bench]" --extra-index-url https://download.pytorch.org/whl/cpu
  python -m benchmarks.torch_job
  python -m benchmarks.torch_job --methods sgd,sam --seeds 1 --epochs 5 --json /tmp/torch_job.json
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks import report
from examples.train import cli
from examples.train import data as data_lib
from optax_usam._validation.scalars import check_int
from optax_usam.schedules import LAMBDA_STRINGS

if TYPE_CHECKING:
  import torch

PROG = "torch_job"
INSTALL = 'pip install -e ".[bench]" --extra-index-url https://download.pytorch.org/whl/cpu'
DEFAULT_METHODS = "sgd,usam,sam,0.5,1/t,1-1/t"
# The settings of python -m examples.train's default digits job.
NOISE = 0.4
BATCH_SIZE = 64
LR = 0.05
RHO = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
TIMED_KINDS = ("sgd", "sam")


def _truncated_normal_std(bound: float) -> float:
  """Standard deviation of the standard normal truncated to ``[-bound, bound]``."""
  density = math.exp(-bound * bound / 2) / math.sqrt(2 * math.pi)
  return math.sqrt(1 - 2 * bound * density / math.erf(bound / math.sqrt(2)))


# flax's lecun_normal is variance_scaling(1, "fan_in", "truncated_normal"): a standard normal truncated to
# [-2, 2], divided by this standard deviation so that the weights have variance 1 / fan_in.
TRUNCATED_STD = _truncated_normal_std(2.0)


@dataclass(frozen=True)
class Method:
  """SGD (``lambd is None``) or Unified SAM with ``lambd``: a number in [0, 1], ``'1/t'`` or ``'1-1/t'``.

  ``name`` is the one ``python -m examples.train`` gives the method, so that the two jobs' results match.
  """

  name: str
  lambd: float | str | None


def parse_methods(text: str) -> list[Method]:
  """``type=`` of ``--methods``: comma-separated sgd, usam, sam, '1/t', '1-1/t' or a lambda in [0, 1]."""
  named = {"sgd": Method("SGD", None), "usam": Method("USAM", 0.0), "sam": Method("SAM", 1.0)}
  methods = []
  for token in (t.strip() for t in text.split(",")):
    if token.lower() in named:
      methods.append(named[token.lower()])
    elif token in LAMBDA_STRINGS:
      methods.append(Method(f"lambda={token}", token))
    else:
      try:
        value = float(token)
      except ValueError:
        raise argparse.ArgumentTypeError(
          f"unknown method {token!r}: use sgd, usam, sam, {', '.join(LAMBDA_STRINGS)} or a lambda in [0, 1]"
        ) from None
      if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a lambda must be in [0, 1]; got {token}")
      methods.append(Method(f"lambda={value:g}", value))
  names = [m.name for m in methods]
  if len(set(names)) < len(names):
    raise argparse.ArgumentTypeError(f"a method is given twice: {', '.join(names)}")
  return methods


def _modules() -> tuple[Any, Any]:
  """``torch`` and ``unifiedsam.unifiedSAM``, imported here so that importing this module needs neither.

  Raises:
    ModuleNotFoundError: either is missing; the message says how to install them.
  """
  try:
    import torch
    from unifiedsam import unifiedSAM
  except ImportError as err:
    raise ModuleNotFoundError(f"this job needs torch and unifiedsam: {INSTALL}") from err
  return torch, unifiedSAM


def cosine_lr(step: int, total_steps: int, peak: float = LR) -> float:
  """``optax.cosine_decay_schedule(peak, total_steps)`` at ``step`` (0 on the first step), in float64."""
  return peak * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
  """flax's default kernel initializer on a torch weight, in place: truncated normal, variance 1 / fan_in.

  ``weight[0]`` holds one output unit's inputs: ``in * kh * kw`` of a convolution, ``in`` of a linear layer,
  the fan-in flax computes from its ``(kh, kw, in, out)`` and ``(in, out)`` kernels.
  """
  torch, _ = _modules()
  std = math.sqrt(1.0 / weight[0].numel()) / TRUNCATED_STD
  return torch.nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)


def digits_cnn(num_classes: int = 10) -> torch.nn.Module:
  """``examples/train/models.py``'s DigitsCNN for ``[n, 1, 8, 8]`` images, drawn from torch's generator."""
  torch, _ = _modules()
  nn = torch.nn
  model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding="same"),
    nn.ReLU(),
    nn.Conv2d(16, 32, 3, padding="same"),
    nn.ReLU(),
    nn.MaxPool2d(2),
    # (channel, row, column) order where flax flattens (row, column, channel): a fixed permutation of the
    # next layer's inputs, under which its i.i.d. initial weights have the same distribution.
    nn.Flatten(),
    nn.Linear(32 * 4 * 4, 64),
    nn.ReLU(),
    nn.Linear(64, num_classes),
  )
  for layer in model:
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
      lecun_normal_(layer.weight)
      nn.init.zeros_(layer.bias)
  return model


def make_step(
  model: torch.nn.Module, lambd: float | str | None, total_steps: int
) -> Callable[[torch.Tensor, torch.Tensor], None]:
  """One training step ``step(x, y)`` of ``model`` on a batch: SGD (``lambd`` None) or the official
  Unified SAM, each over momentum SGD with weight decay and the cosine learning rate of ``total_steps``."""
  torch, unifiedSAM = _modules()
  hyper = {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY}
  if lambd is None:
    optimizer = stepped = torch.optim.SGD(model.parameters(), **hyper)
  else:
    optimizer = unifiedSAM(model.parameters(), torch.optim.SGD, rho=RHO, lambd=lambd, **hyper)
    # second_step calls the base optimizer's step: the scheduler watches that one (they share param_groups).
    stepped = optimizer.base_optimizer
  scheduler = torch.optim.lr_scheduler.LambdaLR(stepped, lambda k: cosine_lr(k, total_steps, 1.0))
  loss_fn = torch.nn.functional.cross_entropy

  def step(x: torch.Tensor, y: torch.Tensor) -> None:
    loss_fn(model(x), y).backward()
    if lambd is None:
      optimizer.step()
    else:
      optimizer.first_step(zero_grad=True)
      loss_fn(model(x), y).backward()
      optimizer.second_step()
    optimizer.zero_grad()
    scheduler.step()

  return step


def batch_indices(seed: int, epoch: int, n_train: int, steps: int) -> np.ndarray:
  """The ``[steps, BATCH_SIZE]`` training indices of an epoch, in ``examples/train/digits_runner.py``'s
  order."""
  order = np.random.default_rng([seed, epoch]).permutation(n_train)
  return order[: steps * BATCH_SIZE].reshape(steps, BATCH_SIZE)


def _tensors(split: data_lib.Split) -> tuple[torch.Tensor, torch.Tensor]:
  """NHWC float32 images and int32 labels as NCHW images and the int64 labels torch's loss takes."""
  torch, _ = _modules()
  return torch.from_numpy(split.x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(split.y).long()


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
  """Accuracy (%) of ``model`` on the whole test split, in one pass."""
  torch, _ = _modules()
  model.eval()
  with torch.no_grad():
    accuracy = 100.0 * (model(x).argmax(1) == y).float().mean().item()
  model.train()
  return accuracy


def run_job(methods: Sequence[Method], seeds: int, epochs: int) -> dict[str, dict[str, Any]]:
  """Every method on seeds ``0 .. seeds - 1``: final test accuracy and the curve (one point per epoch).

  Each seed's initial model is the same for every method (torch seeded with the seed), as in the JAX job.
  """
  torch, _ = _modules()
  splits = [data_lib.load_digits(seed, NOISE) for seed in range(seeds)]
  n_train = len(splits[0].train.y)
  steps = n_train // BATCH_SIZE
  results: dict[str, dict[str, Any]] = {}
  for method in methods:
    curves = []
    for seed, split in enumerate(splits):
      start = time.perf_counter()
      x, y = _tensors(split.train)
      x_test, y_test = _tensors(split.test)
      torch.manual_seed(seed)
      model = digits_cnn()
      step = make_step(model, method.lambd, steps * epochs)
      curve = []
      for epoch in range(epochs):
        for idx in torch.from_numpy(batch_indices(seed, epoch, n_train, steps)):
          step(x[idx], y[idx])
        curve.append(accuracy(model, x_test, y_test))
      curves.append(curve)
      seconds = time.perf_counter() - start
      print(
        f"{PROG}: {method.name} seed {seed}: final test acc {curve[-1]:.1f} ({seconds:.1f} s)",
        file=sys.stderr,
        flush=True,
      )
    results[method.name] = {
      "lambda": method.lambd,
      "final_test_acc": [c[-1] for c in curves],
      "test_acc_curve": np.round(curves, 3).tolist(),
    }
  return results


def steady_state_step_ms(kind: str, steps: int = 200, warmup: int = 20) -> float:
  """Median time (ms) of one training step of the job, after ``warmup`` steps.

  One step is the forward pass, the backward pass(es) and the optimizer step on a batch of 64 digits (seed 0,
  the job's batch order), as :func:`make_step` runs it; gathering the batch is not timed. Each step is timed
  on its own, so that the median ignores the steps another process preempted.

  Args:
    kind: ``"sgd"`` (torch SGD) or ``"sam"`` (the official Unified SAM, lambda 1).
    steps: the number of timed steps, >= 1.
    warmup: the number of steps run before, untimed, >= 0.

  Raises:
    ModuleNotFoundError: torch or unifiedsam is not installed.
  """
  if kind not in TIMED_KINDS:
    raise ValueError(f"kind must be one of {TIMED_KINDS}; got {kind!r}.")
  check_int(steps, "steps", 1, bounds="an int >= 1")
  check_int(warmup, "warmup", 0, bounds="an int >= 0")
  torch, _ = _modules()
  split = data_lib.load_digits(0, NOISE).train
  x, y = _tensors(split)
  n_train = len(split.y)
  per_epoch = n_train // BATCH_SIZE
  total = warmup + steps
  epochs = math.ceil(total / per_epoch)
  order = np.concatenate([batch_indices(0, epoch, n_train, per_epoch) for epoch in range(epochs)])
  batches = [(x[idx], y[idx]) for idx in torch.from_numpy(order[:total])]
  torch.manual_seed(0)
  step = make_step(digits_cnn(), None if kind == "sgd" else 1.0, total)
  times = []
  for xb, yb in batches:
    start = time.perf_counter()
    step(xb, yb)
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times[warmup:])


def parser() -> cli.Parser:
  p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
  p.add_argument(
    "--methods",
    type=parse_methods,
    default=DEFAULT_METHODS,
    help=f"comma-separated: sgd, usam, sam, 1/t, 1-1/t or a lambda in [0, 1] (default: {DEFAULT_METHODS})",
  )
  p.add_argument("--seeds", type=cli.positive_int, default=3, help="number of seeds, 0..N-1 (default: 3)")
  p.add_argument("--epochs", type=cli.positive_int, default=40, help="default: 40")
  p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
  p.add_argument(
    "--no-step-times", action="store_true", help="skip the steady-state step timing after the job"
  )
  return p


def main(argv: Sequence[str] | None = None) -> int:
  try:
    args = parser().parse_args(argv)
    try:
      torch, _ = _modules()
    except ModuleNotFoundError as err:
      raise cli.UsageError(str(err)) from None
    machine = report.machine(torch.get_num_threads())
    start = time.perf_counter()
    results = run_job(args.methods, args.seeds, args.epochs)
    wall_s = time.perf_counter() - start
    step_ms = {} if args.no_step_times else {kind: steady_state_step_ms(kind) for kind in TIMED_KINDS}
  except cli.CommandError as err:
    return cli.report(PROG, err)
  print(
    f"digits (cnn), PyTorch + unifiedsam, noise {NOISE:g}, rho {RHO:g}, {args.epochs} epochs, "
    f"{args.seeds} seeds"
  )
  from examples.train import results as jax_job_results  # the JAX job's table, so both print alike

  print(jax_job_results.table(results))
  timings = ", ".join(f"{kind} {ms:.2f} ms" for kind, ms in step_ms.items())
  print(
    f"wall time {wall_s:.0f} s on {machine['threads']} torch CPU thread(s)"
    + (f"; one step after warm-up (median of 200): {timings}" if step_ms else "")
  )
  if args.json is not None:
    config = {
      "methods": [m.name for m in args.methods],
      "seeds": args.seeds,
      "epochs": args.epochs,
      "noise": NOISE,
      "batch_size": BATCH_SIZE,
      "lr": LR,
      "rho": RHO,
      "momentum": MOMENTUM,
      "weight_decay": WEIGHT_DECAY,
    }
    data = {
      "config": config,
      "results": results,
      "wall_s": wall_s,
      "steady_state_ms": step_ms,
      "date_utc": report.utc_now(),
      "machine": machine,
      "loadavg_end": os.getloadavg(),
    }
    print(f"wrote {report.write_json(args.json, data)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
