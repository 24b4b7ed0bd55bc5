"""Train an image classifier with SGD and Unified SAM, and compare them.

Default (no arguments): a small CNN on scikit-learn's bundled 8x8 digits with
40% symmetric label noise, 40 epochs, comparing SGD, USAM (lambda=0), SAM
(lambda=1), lambda=0.5, '1/t' and '1-1/t' over 3 seeds; prints a table of test
accuracy and writes a PNG and a JSON under --out::

  python examples/train.py
  python examples/train.py --methods sgd,sam --rho 0.05 --epochs 20 --seeds 5

CIFAR (the paper's setting; the data must be prepared with tfds first)::

  python examples/train.py --dataset cifar10 --model wrn28-10 --methods 1-1/t --rho 0.2
  python examples/train.py --dataset cifar10 ... --resume   # continue from the last checkpoint
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data as data_lib
import jax
import jax.numpy as jnp
import models
import numpy as np
import optax

import optax_usam
from optax_usam.flax_linen import SAMTrainState, sam_train_step

DATASETS = ("digits", "cifar10", "cifar100")
DEFAULT_METHODS = "sgd,usam,sam,0.5,1/t,1-1/t"
# Per-dataset defaults of the options left at None on the command line.
DEFAULTS = {
  "digits": {"model": "cnn", "epochs": 40, "batch_size": 64, "lr": 0.05, "noise": 0.4},
  "cifar10": {"model": "wrn28-10", "epochs": 200, "batch_size": 128, "lr": 0.1, "noise": 0.0},
  "cifar100": {"model": "wrn28-10", "epochs": 200, "batch_size": 128, "lr": 0.1, "noise": 0.0},
}
AXIS = "data"


class CommandError(Exception):
  """A failure reported as one line on stderr, ``train.py: error: ...``, with exit status ``exit_code``."""

  exit_code = 1


class UsageError(CommandError):
  """Bad command-line input or a configuration that cannot run: exit status 2."""

  exit_code = 2


class DivergedError(CommandError):
  """A run reached a non-finite loss or parameter: exit status 1, and no results are written."""


@dataclasses.dataclass(frozen=True)
class Method:
  """SGD (``lambd is None``) or Unified SAM with ``lambd``, possibly in a cheaper variant."""

  name: str
  lambd: float | str | None
  # One of CHEAP_VARIANTS: SAM at fewer than two gradients per step.
  variant: str | None = None

  @property
  def slug(self) -> str:
    return self.name.replace("/", "_").replace("=", "").replace(" ", "")


CHEAP_VARIANTS = ("reuse-sam", "random-sam", "subbatch-sam")


def parse_method(token: str) -> Method:
  """'sgd', 'usam', 'sam', '1/t', '1-1/t', a float lambda in [0, 1], or a cheap SAM variant."""
  token = token.strip()
  named = {"sgd": Method("SGD", None), "usam": Method("USAM", 0.0), "sam": Method("SAM", 1.0)}
  if token.lower() in named:
    return named[token.lower()]
  if token.lower() in CHEAP_VARIANTS:
    return Method(token.lower(), 1.0, token.lower())
  if token in ("1/t", "1-1/t"):
    return Method(f"lambda={token}", token)
  try:
    value = float(token)
  except ValueError:
    value = math.nan
  if not 0.0 <= value <= 1.0:
    raise UsageError(
      f"unknown method or lambda {token!r}: use sgd, usam, sam, 1/t, 1-1/t, a number in [0, 1], "
      f"or one of {', '.join(CHEAP_VARIANTS)}"
    )
  return Method(f"lambda={value:g}", value)


class _Parser(argparse.ArgumentParser):
  def error(self, message: str) -> NoReturn:
    raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASETS)} (default: digits)")
  p.add_argument(
    "--model",
    default=None,
    help=f"one of {', '.join(sorted(models.MODELS))} (default: cnn for digits, wrn28-10 for CIFAR)",
  )
  p.add_argument(
    "--methods",
    default=DEFAULT_METHODS,
    help=(
      "comma-separated: sgd, usam, sam, 1/t, 1-1/t, a lambda in [0, 1], or the cheaper SAM variants "
      f"{', '.join(CHEAP_VARIANTS)} (digits only) (default: {DEFAULT_METHODS})"
    ),
  )
  p.add_argument(
    "--reuse-every", type=int, default=4, help="reuse-sam: a SAM gradient every k steps (default: 4)"
  )
  p.add_argument(
    "--sam-probability",
    type=float,
    default=0.25,
    help="random-sam: probability of a SAM step (default: 0.25)",
  )
  p.add_argument(
    "--ascent-fraction",
    type=float,
    default=0.25,
    help="subbatch-sam: fraction of the batch for the ascent gradient (default: 0.25)",
  )
  p.add_argument(
    "--lambd", default=None, help="comma-separated lambdas to run instead of --methods (SGD is not added)"
  )
  p.add_argument(
    "--rho", type=float, default=0.1, help="perturbation radius for every SAM method (default: 0.1)"
  )
  p.add_argument("--epochs", type=int, default=None, help="default: 40 for digits, 200 for CIFAR")
  p.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default: 3)")
  p.add_argument(
    "--noise",
    type=float,
    default=None,
    help="symmetric label-noise rate on the training labels (default: 0.4 digits, 0 CIFAR)",
  )
  p.add_argument(
    "--batch-size", type=int, default=None, help="global batch size (default: 64 digits, 128 CIFAR)"
  )
  p.add_argument(
    "--lr", type=float, default=None, help="peak learning rate, cosine decay (default: 0.05 / 0.1)"
  )
  p.add_argument(
    "--dtype",
    default="float32",
    choices=("float32", "bfloat16"),
    help="digits: parameter and compute dtype of the CNN (default: float32)",
  )
  p.add_argument("--momentum", type=float, default=0.9)
  p.add_argument("--weight-decay", type=float, default=5e-4)
  p.add_argument(
    "--out",
    default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
    help="output directory for the PNG, the JSON and the CIFAR checkpoints (default: examples/results)",
  )
  p.add_argument("--data-dir", default=None, help="tfds data_dir for CIFAR (default: tfds's own)")
  p.add_argument(
    "--resume",
    action="store_true",
    help="CIFAR: continue each run from its newest intact checkpoint, under the settings it was started with",
  )
  p.add_argument(
    "--stop-after-steps",
    type=int,
    default=None,
    help="CIFAR: checkpoint and stop each run after this many optimizer steps (to resume later)",
  )
  p.add_argument(
    "--no-progress",
    action="store_true",
    help="no progress bar (drawn on a terminal only; elsewhere a line per digits run stands in for it)",
  )
  return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  args = build_parser().parse_args(argv)
  if args.dataset not in DATASETS:
    raise UsageError(f"unknown dataset {args.dataset!r}: use one of {', '.join(DATASETS)}")
  for key, value in DEFAULTS[args.dataset].items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.model not in models.MODELS:
    raise UsageError(f"unknown model {args.model!r}: use one of {', '.join(sorted(models.MODELS))}")
  tokens = (args.lambd if args.lambd is not None else args.methods).split(",")
  args.methods = [parse_method(t) for t in tokens if t.strip()]
  if args.lambd is not None and any(m.lambd is None for m in args.methods):
    raise UsageError("--lambd takes lambda values only; put sgd in --methods")
  if not args.methods:
    raise UsageError("no method given")
  names = [m.name for m in args.methods]
  if len(set(names)) < len(names):
    raise UsageError(f"a method is given twice: {', '.join(names)}")
  checks = [
    (math.isfinite(args.rho) and args.rho >= 0, f"--rho must be a non-negative number; got {args.rho}"),
    (args.epochs >= 1, f"--epochs must be a positive integer; got {args.epochs}"),
    (args.seeds >= 1, f"--seeds must be a positive integer; got {args.seeds}"),
    (0.0 <= args.noise < 1.0, f"--noise must be in [0, 1); got {args.noise}"),
    (args.batch_size >= 1, f"--batch-size must be a positive integer; got {args.batch_size}"),
    (math.isfinite(args.lr) and args.lr > 0, f"--lr must be a positive number; got {args.lr}"),
    (0.0 <= args.momentum < 1.0, f"--momentum must be in [0, 1); got {args.momentum}"),
    (args.weight_decay >= 0, f"--weight-decay must be non-negative; got {args.weight_decay}"),
    (args.reuse_every >= 1, f"--reuse-every must be a positive integer; got {args.reuse_every}"),
    (0.0 <= args.sam_probability <= 1.0, f"--sam-probability must be in [0, 1]; got {args.sam_probability}"),
    (0.0 < args.ascent_fraction <= 1.0, f"--ascent-fraction must be in (0, 1]; got {args.ascent_fraction}"),
    (
      args.stop_after_steps is None or args.stop_after_steps >= 1,
      f"--stop-after-steps must be a positive integer; got {args.stop_after_steps}",
    ),
  ]
  if args.dataset != "digits" and args.dtype != "float32":
    checks.append((False, "--dtype bfloat16 applies to the digits CNN only"))
  if args.dataset != "digits" and any(m.variant for m in args.methods):
    checks.append((False, f"{', '.join(CHEAP_VARIANTS)} run on the digits only"))
  if args.dataset == "digits" and (args.resume or args.stop_after_steps is not None):
    checks.append((False, "--resume and --stop-after-steps apply to CIFAR runs only"))
  for ok, message in checks:
    if not ok:
      raise UsageError(message)
  # Built once here so that whatever the library refuses stops the job before any training.
  for method in args.methods:
    make_tx(method, args, total_steps=1)
  return args


def make_tx(
  method: Method, args: argparse.Namespace, total_steps: int, axis_name: str | None = None
) -> optax.GradientTransformationExtraArgs:
  """Unified SAM (or, for SGD, a gradient average over ``axis_name``) + weight decay + momentum SGD.

  The library checks its own arguments (rho, lambda, the cheaper variants' parameters) when a transformation
  is built; their ValueError/TypeError becomes a usage error here instead of a traceback.
  """
  try:
    return _make_tx(method, args, total_steps, axis_name)
  except (ValueError, TypeError) as err:
    raise UsageError(f"{method.name}: {err}") from err


def _make_tx(
  method: Method, args: argparse.Namespace, total_steps: int, axis_name: str | None
) -> optax.GradientTransformationExtraArgs:
  if method.lambd is None:
    first = (
      optax.identity()
      if axis_name is None
      else optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (jax.lax.pmean(updates, axis_name), state),
      )
    )
  else:
    first = optax_usam.unified_sam(args.rho, method.lambd, axis_name=axis_name)
  if method.variant == "reuse-sam":
    first = optax_usam.reuse_sam(first, args.reuse_every)
  elif method.variant == "random-sam":
    first = optax_usam.randomized_sam(first, args.sam_probability)
  schedule = optax.cosine_decay_schedule(args.lr, total_steps)
  return optax.chain(
    first, optax.add_decayed_weights(args.weight_decay), optax.sgd(schedule, momentum=args.momentum)
  )


def make_loss_fn(model: Any) -> Callable[..., Any]:
  """``loss_fn(params, batch_stats, batch, rng)`` for :func:`sam_train_step`."""

  def loss_fn(params, batch_stats, batch, rng):
    variables = {"params": params}
    if batch_stats is not None:
      variables["batch_stats"] = batch_stats
    rngs = {"dropout": rng} if rng is not None else {}
    logits, updates = model.apply(variables, batch["x"], train=True, mutable=["batch_stats"], rngs=rngs)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, (updates.get("batch_stats", batch_stats), logits)

  return loss_fn


def diagnostics(state: SAMTrainState) -> dict[str, float]:
  try:
    d = optax_usam.get_diagnostics(state.opt_state)
  except ValueError:  # SGD has no Unified SAM state.
    return {}
  return {"lambda_t": float(d["lambd"]), "rho_t": float(d["rho"]), "grad_norm": float(d["grad_norm"])}


class Progress:
  """A tqdm bar on a terminal; in a file or a pipe (CI logs, nohup) plain lines instead.

  A bar drawn into a file is one carriage-return redraw per update, about 135 KB for the default job, so it
  is drawn only when stderr is a TTY.
  """

  def __init__(self, total: int, desc: str, disable: bool) -> None:
    from tqdm.auto import tqdm

    self.quiet = disable
    self.interactive = not disable and getattr(sys.stderr, "isatty", lambda: False)()
    self.bar = tqdm(total=total, desc=desc, disable=not self.interactive, dynamic_ncols=True, file=sys.stderr)

  def update(self, n: int = 1, status: str | None = None) -> None:
    if status is not None and self.interactive:
      self.bar.set_postfix_str(status, refresh=False)
    self.bar.update(n)

  def write(self, line: str) -> None:
    """A log line, always printed (above the bar on a terminal)."""
    if self.interactive:
      self.bar.write(line, file=sys.stderr)
    else:
      print(line, file=sys.stderr, flush=True)

  def milestone(self, line: str) -> None:
    """A line that stands in for the bar where there is none: printed only without a TTY and --no-progress."""
    if not self.interactive and not self.quiet:
      print(line, file=sys.stderr, flush=True)

  def close(self) -> None:
    self.bar.close()


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  """True if every floating leaf of ``tree`` is finite: one reduction on the device, one scalar to read."""
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def check_finite(run: str, epoch: int, loss: float, state: SAMTrainState) -> None:
  """Stops the job at the first non-finite training loss or parameter (or BatchNorm statistic).

  Called once per epoch (and before any checkpoint), on a loss the caller has already read back: a diverged
  run must end in an error, not in a table of chance-level accuracies computed from NaN parameters.
  """
  params_ok = bool(all_finite((state.params, state.batch_stats)))
  if math.isfinite(loss) and params_ok:
    return
  what = f"training loss {loss:g}" + ("" if params_ok else ", non-finite parameters")
  raise DivergedError(
    f"{run} diverged in epoch {epoch} ({what}); no results written: try a smaller --lr or --rho (a value "
    "too large for float32 is inf), or check --weight-decay"
  )


# --------------------------------------------------------------------------- digits


def run_digits(args: argparse.Namespace) -> dict[str, Any]:
  """All methods on the digits, one jitted step per method reused for every seed."""
  seeds = list(range(args.seeds))
  splits = [data_lib.load_digits(seed, args.noise) for seed in seeds]
  n_train = len(splits[0].train.y)
  steps = n_train // args.batch_size
  if steps == 0:
    raise UsageError(f"--batch-size {args.batch_size} is larger than the {n_train} training images")
  total_steps = steps * args.epochs
  if args.model != "cnn" and args.dtype != "float32":
    raise UsageError("--dtype bfloat16 applies to the cnn model only")
  model = models.get_model(args.model, 10, dtype=jnp.dtype(args.dtype))
  loss_fn = make_loss_fn(model)
  # One data order and one initialization per seed, shared by all methods. The BatchNorm models (tiny,
  # resnet18, wrn28-10) also carry running statistics; the digits CNN has none (None below).
  init_variables = [model.init(jax.random.key(seed), splits[0].train.x[:1], train=False) for seed in seeds]

  def batches(seed: int, epoch: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(n_train)
    return order[: steps * args.batch_size].reshape(steps, args.batch_size)

  @jax.jit
  def test_accuracy(params, batch_stats, x, y):
    variables = {"params": params} if batch_stats is None else {"params": params, "batch_stats": batch_stats}
    return 100.0 * jnp.mean(jnp.argmax(model.apply(variables, x, train=False), -1) == y)

  results: dict[str, Any] = {}
  bar = Progress(len(args.methods) * len(seeds) * args.epochs, "digits", args.no_progress)
  try:
    for method in args.methods:
      # A Python loop of jitted steps, not lax.scan: XLA:CPU runs convolutions inside
      # a while loop an order of magnitude slower.
      fraction = args.ascent_fraction if method.variant == "subbatch-sam" else None

      @functools.partial(jax.jit, static_argnames="fraction")
      def train_step(state, x, y, idx, fraction):
        state, out = sam_train_step(state, {"x": x[idx], "y": y[idx]}, loss_fn, ascent_fraction=fraction)
        return state, out.loss

      tx = make_tx(method, args, total_steps)
      curves, losses, finals, finite = [], [], [], []
      for seed, split, variables in zip(seeds, splits, init_variables, strict=True):
        state = SAMTrainState.create(
          apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables.get("batch_stats")
        )
        x, y = jnp.asarray(split.train.x), jnp.asarray(split.train.y)
        x_test, y_test = jnp.asarray(split.test.x), jnp.asarray(split.test.y)
        curve, loss_curve = [], []
        for epoch in range(args.epochs):
          epoch_losses = []
          for idx in batches(seed, epoch):
            state, loss = train_step(state, x, y, idx, fraction)
            epoch_losses.append(loss)
          loss_curve.append(float(np.mean(epoch_losses)))
          check_finite(f"{method.name} seed {seed}", epoch + 1, loss_curve[-1], state)
          curve.append(float(test_accuracy(state.params, state.batch_stats, x_test, y_test)))
          bar.update(status=f"{method.name} seed {seed} test acc {curve[-1]:.1f}")
        bar.milestone(f"digits: {method.name} seed {seed}: final test acc {curve[-1]:.1f}")
        curves.append(curve)
        losses.append(loss_curve)
        finals.append(diagnostics(state))
        finite.append(True)  # check_finite stopped the job otherwise
      results[method.name] = {
        "lambda": method.lambd,
        "variant": method.variant,
        "all_finite": finite,
        "final_test_acc": [c[-1] for c in curves],
        "test_acc_curve": np.round(curves, 3).tolist(),
        "train_loss_curve": np.round(losses, 5).tolist(),
        "last_diagnostics": finals,
      }
  finally:
    bar.close()
  return results


# --------------------------------------------------------------------------- CIFAR


def _mesh() -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))


def make_cifar_step(model: Any, mesh: jax.sharding.Mesh) -> Callable[..., Any]:
  """One jitted data-parallel step: augmentation, both SAM passes, averaged gradients and statistics."""
  from jax.sharding import PartitionSpec as P

  loss_fn = make_loss_fn(model)

  def step(state, images, labels, key):
    # Each device augments its own shard differently.
    key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
    batch = {"x": data_lib.normalize(data_lib.augment(key, images)), "y": labels}
    state, out = sam_train_step(state, batch, loss_fn, axis_name=AXIS)
    acc = jax.lax.pmean(jnp.mean(jnp.argmax(out.aux, -1) == labels), AXIS)
    return state, {"loss": out.loss, "acc": acc}

  # check_vma=False: per-device gradients stay local until unified_sam averages them.
  sharded = jax.shard_map(
    step, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P()), out_specs=(P(), P()), check_vma=False
  )
  return jax.jit(sharded, donate_argnums=0)


def make_evaluate(model: Any) -> Callable[[SAMTrainState, data_lib.Split], float]:
  """``evaluate(state, split)``: test accuracy in %, through a function compiled once, not at every call."""

  @jax.jit
  def correct(params, batch_stats, x, y):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, data_lib.normalize(x), train=False)
    return jnp.sum(jnp.argmax(logits, -1) == y)

  return functools.partial(_evaluate, correct)


def _evaluate(
  correct: Callable[..., Any], state: SAMTrainState, split: data_lib.Split, batch: int = 1000
) -> float:
  total = sum(
    int(correct(state.params, state.batch_stats, split.x[i : i + batch], split.y[i : i + batch]))
    for i in range(0, len(split.y), batch)
  )
  return 100.0 * total / len(split.y)


def _checkpoint_tree(state: SAMTrainState) -> dict[str, Any]:
  return {
    "step": state.step,
    "params": state.params,
    "batch_stats": state.batch_stats,
    "opt_state": state.opt_state,
  }


# How a refused --resume names each setting stored in a run's config.json.
CONFIG_NAMES = {
  "dataset": "--dataset",
  "model": "--model",
  "method": "method",
  "lambd": "lambda",
  "seed": "seed",
  "rho": "--rho",
  "epochs": "--epochs",
  "batch_size": "--batch-size",
  "lr": "--lr",
  "momentum": "--momentum",
  "weight_decay": "--weight-decay",
  "noise": "--noise",
  "devices": "local device count",
  "train_images": "training images",
}


@dataclasses.dataclass(frozen=True)
class CifarRun:
  """One (method, seed) run: its directory and the configuration it stores there as config.json."""

  method: Method
  seed: int
  dir: Path
  config: dict[str, Any]


def cifar_runs(args: argparse.Namespace, n_train: int, n_dev: int) -> list[CifarRun]:
  runs = []
  for method in args.methods:
    for seed in range(args.seeds):
      # Everything that changes the sequence of states a run goes through: the cosine schedule spans
      # epochs x (train_images // batch_size) steps, and each device augments its own shard.
      config = {
        "dataset": args.dataset,
        "model": args.model,
        "method": method.name,
        "lambd": method.lambd,
        "seed": seed,
        "rho": args.rho,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "noise": args.noise,
        "devices": n_dev,
        "train_images": n_train,
      }
      name = f"{args.dataset}-{args.model}-rho{args.rho:g}-{method.slug}-seed{seed}"
      runs.append(CifarRun(method, seed, Path(args.out).absolute() / "runs" / name, config))
  return runs


def check_run_dir(run: CifarRun, resume: bool) -> None:
  """Refuses to mix two runs in one directory: without --resume, or under settings other than its own.

  No setting may change on --resume, not even --epochs of an unfinished run: the cosine schedule is laid over
  the total number of steps, so the steps already taken followed another schedule than the new command's,
  and the run would match neither an uninterrupted run of the old settings nor one of the new.
  """
  has_checkpoints = any((run.dir / "checkpoints").glob("*"))
  if not resume:
    if has_checkpoints:
      raise UsageError(
        f"{run.dir} holds checkpoints of an earlier run: pass --resume, or delete it to start over"
      )
    return
  if not has_checkpoints and not (run.dir / "result.json").exists():
    return  # nothing to continue: the run starts afresh
  try:
    stored = json.loads((run.dir / "config.json").read_text())
  except (OSError, ValueError) as err:
    raise UsageError(
      f"cannot --resume {run.dir}: its config.json is missing or unreadable ({type(err).__name__}), so its "
      "settings cannot be checked against this command's; delete the directory to start over"
    ) from err
  changed = [key for key in run.config if not isinstance(stored, dict) or stored.get(key) != run.config[key]]
  if changed:
    old = ", ".join(f"{CONFIG_NAMES[k]} {_setting(stored, k)}" for k in changed)
    new = ", ".join(f"{CONFIG_NAMES[k]} {_setting(run.config, k)}" for k in changed)
    raise UsageError(
      f"cannot --resume {run.dir.name}: it was started with {old}, this command has {new}; a run continues "
      "only under its own settings (its schedule, batches and augmentation depend on them): repeat them, "
      "or use another --out"
    )


def _setting(config: Any, key: str) -> str:
  value = config.get(key, "(unset)") if isinstance(config, dict) else "(unreadable)"
  if not isinstance(value, float):
    return str(value)
  short = f"{value:g}"
  return short if float(short) == value else repr(value)  # 0.1 vs 0.1000001 must not both read 0.1


def _write_atomic(path: Path, text: str) -> None:
  # A kill mid-write leaves the old file or the new one, never part of one.
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
  # orbax logs its own warnings and errors about a damaged checkpoint; the one-line report below says it.
  from absl import logging as absl_logging

  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.FATAL)
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)


def _drop_orbax_teardown_reports() -> None:
  """Silences what a failed orbax restore leaves behind: its exception is handled where it is raised.

  The tensorstore reads still in flight when one read fails complete later on orbax's closed event loop and
  report "Event loop is closed" through ``sys.unraisablehook``: a multi-line traceback at a random moment.
  Only that exact report is dropped; every other one goes to the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "drops_orbax_teardown", False):
    return

  def hook(unraisable: Any) -> None:
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return
    previous(unraisable)

  hook.drops_orbax_teardown = True  # type: ignore[attr-defined]
  sys.unraisablehook = hook


def _one_line(err: BaseException, limit: int = 160) -> str:
  text = " ".join(str(err).split()) or "no message"
  text = f"{type(err).__name__}: {text}"
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _save_args(state: SAMTrainState, history: dict[int, dict[str, Any]]) -> Any:
  import orbax.checkpoint as ocp

  # The epoch log travels inside the checkpoint, so a resumed run's log is exactly that of its checkpoint.
  epochs = [history[e] for e in sorted(history)]
  return ocp.args.Composite(
    state=ocp.args.StandardSave(_checkpoint_tree(state)), history=ocp.args.JsonSave({"epochs": epochs})
  )


def restore_newest_intact(
  manager: Any, state: SAMTrainState, run: CifarRun, steps_per_epoch: int
) -> tuple[SAMTrainState, dict[int, dict[str, Any]]] | None:
  """The newest checkpoint that restores completely, or None if there is none to restore.

  A damaged newer checkpoint (a truncated file, flipped bytes, an emptied directory) is moved to
  ``corrupt-checkpoints/`` so that the run can write that step again, and the fallback is reported in one
  line. If every checkpoint is damaged, a usage error says so.
  """
  import orbax.checkpoint as ocp

  _drop_orbax_teardown_reports()  # before the first attempt: the reports may come as soon as one fails
  target = _checkpoint_tree(state)
  failed: list[tuple[int, str]] = []
  with _quiet_absl():
    steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      with _quiet_absl():
        restored = manager.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore()),
        )
      tree, epochs = restored["state"], restored["history"]["epochs"]
      # What orbax cannot tell: a checkpoint is whole only if it holds the step it is named after, one log
      # entry per finished epoch, and (being written only after the finiteness check) finite numbers.
      history = {int(entry["epoch"]): entry for entry in epochs}
      if int(tree["step"]) != step or sorted(history) != list(range(1, step // steps_per_epoch + 1)):
        raise ValueError(f"holds step {int(tree['step'])} and epochs {sorted(history)}")
      if not bool(all_finite(tree)):
        raise ValueError("holds non-finite numbers")
    except Exception as err:  # orbax and tensorstore raise many types for damage; all mean "unusable"
      failed.append((step, _one_line(err)))
      continue
    note = ""
    if failed:
      aside = run.dir / "corrupt-checkpoints"
      aside.mkdir(exist_ok=True)
      for bad, _ in failed:
        dest = aside / f"{bad}-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(run.dir / "checkpoints" / str(bad), dest)
      manager.reload()
      bad_steps = ", ".join(str(bad) for bad, _ in failed)
      note = (
        f", the newest intact checkpoint (step {bad_steps} unreadable: {failed[0][1]}; moved to "
        f"{aside.name}/)"
      )
    print(f"resumed {run.dir.name} at step {step}{note}", file=sys.stderr)
    return state.replace(**tree), history
  if failed:
    steps = ", ".join(str(bad) for bad, _ in failed)
    raise UsageError(
      f"cannot --resume {run.dir.name}: no intact checkpoint (step {steps}: {failed[0][1]}); "
      f"delete {run.dir} to start over"
    )
  return None


def run_cifar_one(
  args: argparse.Namespace, dataset: data_lib.Dataset, run: CifarRun, mesh: jax.sharding.Mesh
) -> dict[str, Any] | None:
  """One (method, seed) run with a checkpoint per epoch; None if stopped by --stop-after-steps."""
  import orbax.checkpoint as ocp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  done = run.dir / "result.json"
  if args.resume and done.exists():
    try:
      return json.loads(done.read_text())
    except ValueError:
      pass  # unreadable: evaluated again from the final checkpoint below
  method, seed = run.method, run.seed
  n_train = len(dataset.train.y)
  steps = n_train // args.batch_size
  total_steps = steps * args.epochs
  train_labels = dataset.train.y
  if args.noise > 0:
    rng = np.random.default_rng([seed, len(train_labels)])
    train_labels = data_lib.symmetric_noise(train_labels, args.noise, dataset.num_classes, rng)
  model = models.get_model(args.model, dataset.num_classes)
  variables = model.init(jax.random.key(seed), jnp.zeros((1, *dataset.train.x.shape[1:])), train=False)
  tx = make_tx(method, args, total_steps, axis_name=AXIS)
  state = SAMTrainState.create(
    apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables["batch_stats"]
  )
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  state = jax.device_put(state, replicated)

  # cleanup_tmp_directories: a write cut short by a kill leaves a temporary directory, never a step. Quiet:
  # orbax warns about damaged steps as it lists them; restore_newest_intact reports them in one line.
  with _quiet_absl():
    manager = ocp.CheckpointManager(
      run.dir / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=2, cleanup_tmp_directories=True),
    )
  bar = None
  try:
    history: dict[int, dict[str, Any]] = {}
    restored = restore_newest_intact(manager, state, run, steps) if args.resume else None
    if restored is not None:
      state, history = restored
    else:
      run.dir.mkdir(parents=True, exist_ok=True)
      _write_atomic(run.dir / "config.json", json.dumps(run.config, indent=1) + "\n")
    # Rewritten from the checkpoint: epochs logged after it (killed between the log line and the
    # checkpoint) are trained again and must not appear twice.
    log_path = run.dir / "log.jsonl"
    _write_atomic(log_path, "".join(json.dumps(history[e]) + "\n" for e in sorted(history)))

    train_step, evaluate = make_cifar_step(model, mesh), make_evaluate(model)
    key = jax.random.key(seed)
    bar = Progress(total_steps, f"{method.name} seed {seed}", args.no_progress)
    bar.update(int(state.step))
    epoch_order = None
    while int(state.step) < total_steps:
      step = int(state.step)
      epoch, i = divmod(step, steps)
      if i == 0 or epoch_order is None:
        # The data order depends on (seed, epoch) only, so a resumed run sees the same batches.
        epoch_order = np.random.default_rng([seed, epoch]).permutation(n_train)[: steps * args.batch_size]
        epoch_order = epoch_order.reshape(steps, args.batch_size)
      idx = epoch_order[i]
      images = jax.device_put(dataset.train.x[idx], sharded)
      labels = jax.device_put(train_labels[idx], sharded)
      state, metrics = train_step(state, images, labels, jax.random.fold_in(key, step))
      bar.update()
      stop = args.stop_after_steps is not None and step + 1 >= args.stop_after_steps
      end_of_epoch = i == steps - 1
      if not (end_of_epoch or stop):
        continue
      # Once per epoch, and before every checkpoint: a diverged state is never saved.
      loss = float(metrics["loss"])
      check_finite(run.dir.name, epoch + 1, loss, state)
      if end_of_epoch:
        entry = {
          "epoch": epoch + 1,
          "step": step + 1,
          "loss": loss,
          "train_acc": 100 * float(metrics["acc"]),
          "test_acc": evaluate(state, dataset.test),
          **diagnostics(state),
        }
        history[epoch + 1] = entry
        with log_path.open("a") as f:
          f.write(json.dumps(entry) + "\n")
        bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
      manager.save(step + 1, args=_save_args(state, history))
      if stop and step + 1 < total_steps:
        bar.close()
        print(f"stopped {run.dir.name} after step {step + 1}; continue with --resume", file=sys.stderr)
        return None
  finally:
    if bar is not None:
      bar.close()
    # An error above must not cut short the write of the last good checkpoint.
    manager.wait_until_finished()
    manager.close()
  curve = [history[e]["test_acc"] for e in sorted(history)]
  result = {
    "final_test_acc": evaluate(state, dataset.test),
    "test_acc_curve": curve,
    "last_diagnostics": diagnostics(state),
  }
  _write_atomic(done, json.dumps(result))
  return result


def run_cifar(args: argparse.Namespace) -> dict[str, Any] | None:
  try:
    dataset = data_lib.load_tfds(args.dataset, args.data_dir)
  except data_lib.DataMissingError as err:
    raise UsageError(str(err)) from err
  mesh = _mesh()
  n_dev = mesh.devices.size
  if args.batch_size % n_dev:
    raise UsageError(f"--batch-size {args.batch_size} must be a multiple of the {n_dev} local devices")
  if len(dataset.train.y) < args.batch_size:
    raise UsageError(
      f"--batch-size {args.batch_size} is larger than the {len(dataset.train.y)} training images"
    )
  runs = cifar_runs(args, len(dataset.train.y), n_dev)
  # Every run directory is checked before the first step, not after hours of the runs before it.
  for run in runs:
    check_run_dir(run, args.resume)
  print(
    f"{args.dataset}: {len(dataset.train.y)} train / {len(dataset.test.y)} test images, "
    f"{args.model}, data parallel over {n_dev} device(s)",
    file=sys.stderr,
  )
  results: dict[str, Any] = {}
  stopped = False
  for method in args.methods:
    per_seed = [run_cifar_one(args, dataset, run, mesh) for run in runs if run.method == method]
    if any(r is None for r in per_seed):
      stopped = True
      continue
    results[method.name] = {
      "lambda": method.lambd,
      "final_test_acc": [r["final_test_acc"] for r in per_seed],
      "test_acc_curve": [r["test_acc_curve"] for r in per_seed],
      "last_diagnostics_seed0": per_seed[0]["last_diagnostics"],
    }
  return None if stopped else results


# --------------------------------------------------------------------------- report


def table(results: dict[str, Any]) -> str:
  rows = [f"{'method':<16} {'test acc (%)':>16}   per seed"]
  for name, r in results.items():
    acc = np.asarray(r["final_test_acc"])
    per_seed = " ".join(f"{a:.1f}" for a in acc)
    rows.append(f"{name:<16} {acc.mean():>8.2f} +- {acc.std():<5.2f}   {per_seed}")
  return "\n".join(rows)


def plot(results: dict[str, Any], path: Path, title: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(11, 4))
  names = list(results)
  accs = [np.asarray(results[n]["final_test_acc"]) for n in names]
  ax_bar.bar(
    range(len(names)),
    [a.mean() for a in accs],
    yerr=[a.std() for a in accs],
    capsize=4,
    color=[f"C{i}" for i in range(len(names))],
  )
  ax_bar.set_xticks(range(len(names)), names, rotation=20)
  low = min(a.min() for a in accs)
  ax_bar.set_ylim(max(0.0, low - 5), min(100.0, max(a.max() for a in accs) + 2))
  ax_bar.set_ylabel("final test accuracy (%)")
  for i, name in enumerate(names):
    curves = np.asarray(results[name]["test_acc_curve"], dtype=float)
    epochs = np.arange(1, curves.shape[1] + 1)
    ax_curve.plot(epochs, curves.mean(0), color=f"C{i}", label=name)
    ax_curve.fill_between(epochs, curves.min(0), curves.max(0), color=f"C{i}", alpha=0.15)
  ax_curve.set_xlabel("epoch")
  ax_curve.set_ylabel("test accuracy (%)")
  ax_curve.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  try:
    args = parse_args(argv)
    start = time.perf_counter()
    with warnings.catch_warnings():
      # A setting too large for float32 (--rho 1e39) becomes inf when a step is traced, and numpy warns
      # about the cast in several lines; the finiteness check reports what follows in one.
      warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
      results = run_digits(args) if args.dataset == "digits" else run_cifar(args)
  except CommandError as err:
    print(f"train.py: error: {err}", file=sys.stderr)
    return err.exit_code
  if results is None:
    return 0
  seconds = time.perf_counter() - start
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  title = (
    f"{args.dataset} ({args.model}), noise {args.noise:g}, rho {args.rho:g}, "
    f"{args.epochs} epochs, {args.seeds} seeds" + (f", {args.dtype}" if args.dtype != "float32" else "")
  )
  print(title)
  print(table(results))
  print(f"wall time {seconds:.0f} s on {jax.local_device_count()} {jax.default_backend()} device(s)")
  config = {k: v for k, v in vars(args).items() if k not in ("methods", "out", "no_progress")}
  config["methods"] = [m.name for m in args.methods]
  stem = f"{args.dataset}_results"
  (out / f"{stem}.json").write_text(
    json.dumps({"config": config, "seconds": seconds, "results": results}, indent=1)
  )
  plot(results, out / f"{stem}.png", title)
  print(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
