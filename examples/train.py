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
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
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


class UsageError(Exception):
  """Bad command-line input: reported as one line on stderr, exit code 2."""


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
  p.add_argument("--resume", action="store_true", help="CIFAR: continue each run from its latest checkpoint")
  p.add_argument(
    "--stop-after-steps",
    type=int,
    default=None,
    help="CIFAR: checkpoint and stop each run after this many optimizer steps (to resume later)",
  )
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
  return args


def make_tx(
  method: Method, args: argparse.Namespace, total_steps: int, axis_name: str | None = None
) -> optax.GradientTransformationExtraArgs:
  """Unified SAM (or, for SGD, a gradient average over ``axis_name``) + weight decay + momentum SGD."""
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


def progress(total: int, desc: str, disable: bool) -> Any:
  from tqdm.auto import tqdm

  return tqdm(total=total, desc=desc, disable=disable, dynamic_ncols=True, file=sys.stderr)


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
  # One data order and one initialization per seed, shared by all methods.
  init_params = [
    model.init(jax.random.key(seed), splits[0].train.x[:1], train=False)["params"] for seed in seeds
  ]

  def batches(seed: int, epoch: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(n_train)
    return order[: steps * args.batch_size].reshape(steps, args.batch_size)

  @jax.jit
  def test_accuracy(params, x, y):
    return 100.0 * jnp.mean(jnp.argmax(model.apply({"params": params}, x, train=False), -1) == y)

  results: dict[str, Any] = {}
  bar = progress(len(args.methods) * len(seeds) * args.epochs, "digits", args.no_progress)
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
    for seed, split, params in zip(seeds, splits, init_params, strict=True):
      state = SAMTrainState.create(apply_fn=model.apply, params=params, tx=tx)
      x, y = jnp.asarray(split.train.x), jnp.asarray(split.train.y)
      x_test, y_test = jnp.asarray(split.test.x), jnp.asarray(split.test.y)
      curve, loss_curve = [], []
      for epoch in range(args.epochs):
        epoch_losses = []
        for idx in batches(seed, epoch):
          state, loss = train_step(state, x, y, idx, fraction)
          epoch_losses.append(loss)
        curve.append(float(test_accuracy(state.params, x_test, y_test)))
        loss_curve.append(float(np.mean(epoch_losses)))
        bar.set_postfix_str(f"{method.name} seed {seed} test acc {curve[-1]:.1f}")
        bar.update()
      curves.append(curve)
      losses.append(loss_curve)
      finals.append(diagnostics(state))
      leaves = jax.tree.leaves(state.params)
      finite.append(bool(np.all(np.isfinite(loss_curve)) and all(jnp.isfinite(v).all() for v in leaves)))
    results[method.name] = {
      "lambda": method.lambd,
      "variant": method.variant,
      "all_finite": finite,
      "final_test_acc": [c[-1] for c in curves],
      "test_acc_curve": np.round(curves, 3).tolist(),
      "train_loss_curve": np.round(losses, 5).tolist(),
      "last_diagnostics": finals,
    }
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


def evaluate(model: Any, state: SAMTrainState, split: data_lib.Split, batch: int = 1000) -> float:
  @jax.jit
  def correct(params, batch_stats, x, y):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, data_lib.normalize(x), train=False)
    return jnp.sum(jnp.argmax(logits, -1) == y)

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


def run_cifar_one(
  args: argparse.Namespace, dataset: data_lib.Dataset, method: Method, seed: int, mesh: jax.sharding.Mesh
) -> dict[str, Any] | None:
  """One (method, seed) run with a checkpoint per epoch; None if stopped by --stop-after-steps."""
  import orbax.checkpoint as ocp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  run_dir = (
    Path(args.out).absolute()
    / "runs"
    / f"{args.dataset}-{args.model}-rho{args.rho:g}-{method.slug}-seed{seed}"
  )
  done = run_dir / "result.json"
  if args.resume and done.exists():
    return json.loads(done.read_text())
  if not args.resume and any((run_dir / "checkpoints").glob("*")):
    raise UsageError(
      f"{run_dir} holds checkpoints of an earlier run: pass --resume, or delete it to start over"
    )
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

  manager = ocp.CheckpointManager(
    run_dir / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=2)
  )
  history: dict[int, dict[str, Any]] = {}
  log_path = run_dir / "log.jsonl"
  if args.resume and manager.latest_step() is not None:
    restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(_checkpoint_tree(state)))
    state = state.replace(**restored)
    if log_path.exists():
      for line in log_path.read_text().splitlines():
        entry = json.loads(line)
        history[entry["epoch"]] = entry
    print(f"resumed {run_dir.name} at step {int(state.step)}", file=sys.stderr)
  else:
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")

  train_step = make_cifar_step(model, mesh)
  key = jax.random.key(seed)
  bar = progress(total_steps, f"{method.name} seed {seed}", args.no_progress)
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
    if i == steps - 1:
      entry = {
        "epoch": epoch + 1,
        "step": step + 1,
        "loss": float(metrics["loss"]),
        "train_acc": 100 * float(metrics["acc"]),
        "test_acc": evaluate(model, state, dataset.test),
        **diagnostics(state),
      }
      history[epoch + 1] = entry
      with log_path.open("a") as f:
        f.write(json.dumps(entry) + "\n")
      bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
    if i == steps - 1 or stop:
      manager.save(step + 1, args=ocp.args.StandardSave(_checkpoint_tree(state)))
    if stop and step + 1 < total_steps:
      manager.wait_until_finished()
      bar.close()
      print(f"stopped {run_dir.name} after step {step + 1}; continue with --resume", file=sys.stderr)
      return None
  manager.wait_until_finished()
  bar.close()
  curve = [history[e]["test_acc"] for e in sorted(history)]
  result = {
    "final_test_acc": evaluate(model, state, dataset.test),
    "test_acc_curve": curve,
    "last_diagnostics": diagnostics(state),
  }
  done.write_text(json.dumps(result))
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
  print(
    f"{args.dataset}: {len(dataset.train.y)} train / {len(dataset.test.y)} test images, "
    f"{args.model}, data parallel over {n_dev} device(s)",
    file=sys.stderr,
  )
  results: dict[str, Any] = {}
  stopped = False
  for method in args.methods:
    per_seed = [run_cifar_one(args, dataset, method, seed, mesh) for seed in range(args.seeds)]
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
    results = run_digits(args) if args.dataset == "digits" else run_cifar(args)
  except UsageError as err:
    print(f"train.py: error: {err}", file=sys.stderr)
    return 2
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
