"""Train an image classifier with SGD and Unified SAM, and compare them: the main job, ``make train``.

Default (no arguments): a small CNN on scikit-learn's bundled 8x8 digits with
40% symmetric label noise, 40 epochs, comparing SGD, USAM (lambda=0), SAM
(lambda=1), lambda=0.5, '1/t' and '1-1/t' over 3 seeds; prints a table of test
accuracy and writes a PNG and a JSON under --out (default runs/<dataset>/, which git ignores; the
committed results change only through --out examples/results/<dataset>). From the repository's root::

  python -m examples.train
  python -m examples.train --methods sgd,sam --rho 0.05 --epochs 20 --seeds 5
  python -m examples.train --methods sgd,sam,vasso,momentum-sam --vasso-theta 0.2
  python -m examples.train --no-progress --out examples/results/digits   # rewrites the committed results

An option the run would ignore (a parameter of no method it runs, a CIFAR option on the digits) or two that
contradict each other (--lambd and --methods) are refused in one line naming both.

CIFAR (the paper's setting; the data must be prepared with tfds first)::

  python -m examples.train --dataset cifar10 --model wrn28-10 --methods 1-1/t --rho 0.2
  python -m examples.train --dataset cifar10 ... --resume   # continue from the last checkpoint
"""

from __future__ import annotations

import argparse
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax

from examples.train import cli, models
from examples.train import results as results_lib
from examples.train.cifar_runner import run_cifar
from examples.train.compilations import CompileCounter
from examples.train.digits_runner import run_digits
from examples.train.methods import (
  CHEAPER_VARIANTS,
  FAMILY,
  check_with_library,
  family_default,
  family_flag,
  method_options,
  method_readers,
  parse_method,
)

PROG = "train"
ROOT = Path(__file__).resolve().parents[2]
# Each dataset's job writes into a folder of its own here (ignored by git), unless --out says otherwise: the
# committed results (examples/results/<dataset>) change only through a command that names them.
RUNS = ROOT / "runs"
DATASETS = ("digits", "cifar10", "cifar100")
DEFAULT_METHODS = "sgd,usam,sam,0.5,1/t,1-1/t"
# Per-dataset defaults of the options left at None on the command line.
DEFAULTS = {
  "digits": {"model": "cnn", "epochs": 40, "batch_size": 64, "lr": 0.05, "noise": 0.4},
  "cifar10": {"model": "wrn28-10", "epochs": 200, "batch_size": 128, "lr": 0.1, "noise": 0.0},
  "cifar100": {"model": "wrn28-10", "epochs": 200, "batch_size": 128, "lr": 0.1, "noise": 0.0},
}


def build_parser() -> cli.Parser:
  p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
  p.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASETS)} (default: digits)")
  p.add_argument(
    "--model",
    default=None,
    help=f"one of {', '.join(sorted(models.MODELS))} (default: cnn for digits, wrn28-10 for CIFAR)",
  )
  # --lambd runs its lambdas instead of --methods: given both, one would be dropped.
  selection = p.add_mutually_exclusive_group()
  selection.add_argument(
    "--methods",
    default=DEFAULT_METHODS,
    help=(
      "comma-separated: sgd, usam, sam, 1/t, 1-1/t, a lambda in [0, 1], the cheaper variants of SAM "
      f"{', '.join(CHEAPER_VARIANTS)} or the SAM family {', '.join(FAMILY)} (these two: digits only) "
      f"(default: {DEFAULT_METHODS})"
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
  for name, (_, parameters) in FAMILY.items():
    for parameter, meaning in parameters.items():
      default = family_default(name, parameter)
      text = f"{name}: {meaning} (default: {default:g})"
      flag = family_flag(name, parameter)
      p.add_argument(flag, type=float, default=default, metavar=parameter.upper(), help=text)
  selection.add_argument(
    "--lambd",
    default=None,
    help="comma-separated lambdas to run instead of --methods, not with it (SGD is not added)",
  )
  p.add_argument(
    "--rho", type=float, default=0.1, help="perturbation radius for every SAM method (default: 0.1)"
  )
  p.add_argument(
    "--epochs", type=cli.positive_int, default=None, help="default: 40 for digits, 200 for CIFAR"
  )
  p.add_argument("--seeds", type=cli.positive_int, default=3, help="number of seeds, 0..N-1 (default: 3)")
  p.add_argument(
    "--workers",
    type=cli.positive_int,
    default=None,
    help="digits: runs (method, seed) trained at once (default: one per core); the table is the same",
  )
  p.add_argument(
    "--noise",
    type=cli.float_in(0.0, 1.0),
    default=None,
    help="symmetric label-noise rate on the training labels (default: 0.4 digits, 0 CIFAR)",
  )
  p.add_argument(
    "--batch-size",
    type=cli.positive_int,
    default=None,
    help="global batch size (default: 64 digits, 128 CIFAR)",
  )
  p.add_argument(
    "--lr",
    type=cli.positive_float,
    default=None,
    help="peak learning rate, cosine decay (default: 0.05 / 0.1)",
  )
  p.add_argument(
    "--dtype",
    default="float32",
    choices=("float32", "bfloat16"),
    help="digits: parameter and compute dtype of the CNN (default: float32)",
  )
  p.add_argument("--momentum", type=cli.float_in(0.0, 1.0), default=0.9)
  p.add_argument("--weight-decay", type=cli.non_negative_float, default=5e-4)
  p.add_argument(
    "--out",
    default=None,
    help="folder of the PNG, the JSON and the CIFAR checkpoints (default: runs/<dataset>, ignored by git; "
    "--out examples/results/<dataset> rewrites the committed results)",
  )
  p.add_argument(
    "--name",
    default=None,
    help="stem of the results files, NAME.json and NAME.png (default: <dataset>_results); a run whose "
    "results are kept beside the main job's gets a name of its own",
  )
  p.add_argument("--data-dir", default=None, help="tfds data_dir for CIFAR (default: tfds's own)")
  p.add_argument(
    "--resume",
    action="store_true",
    help="CIFAR: continue each run from its newest intact checkpoint, under the settings it was started with",
  )
  p.add_argument(
    "--stop-after-steps",
    type=cli.positive_int,
    default=None,
    help="CIFAR: checkpoint and stop each run after this many optimizer steps (to resume later)",
  )
  p.add_argument(
    "--no-progress",
    action="store_true",
    help="no progress bar (drawn on a terminal only; elsewhere a line per digits run stands in for it)",
  )
  return p


def check_every_option_is_read(args: argparse.Namespace, given: set[str], selection: str) -> None:
  """Refuses an option given on the command line that this run would ignore, in one line naming it and the
  option that leaves it unread: a parameter of no method selected (``--methods sam --vasso-theta 5``), a
  digits option on CIFAR or a CIFAR option on the digits. ``selection`` is the option that chose the
  methods, with its value; an option left at its default is not checked.
  """
  digits = args.dataset == "digits"
  dataset = f"--dataset {args.dataset}"
  read = set().union(*map(method_options, args.methods))
  every = set().union(*(method_options(parse_method(n)) for n in ("sam", *CHEAPER_VARIANTS, *FAMILY)))
  # option: (whether this run reads it, the option that decides, who reads it)
  readers = {
    **{dest: (dest in read, selection, method_readers(dest)) for dest in every},
    "workers": (digits, dataset, "a digits run"),
    "dtype": (
      digits and args.model == "cnn",
      f"--model {args.model}" if digits else dataset,
      "the digits cnn",
    ),
    "data_dir": (not digits, dataset, "a CIFAR run"),
    "resume": (not digits, dataset, "a CIFAR run"),
    "stop_after_steps": (not digits, dataset, "a CIFAR run"),
  }
  for dest in sorted(given & set(readers)):
    reads, decider, who = readers[dest]
    if not reads:
      flag = "--" + dest.replace("_", "-")
      raise cli.UsageError(f"argument {flag}: this run ignores it ({decider}); only {who} reads it")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The parsed command line, checked for what the library does not see; then checked by the library."""
  parser = build_parser()
  args = parser.parse_args(argv)
  given = cli.given_options(parser, argv)
  if args.dataset not in DATASETS:
    raise cli.UsageError(f"unknown dataset {args.dataset!r}: use one of {', '.join(DATASETS)}")
  for key, value in DEFAULTS[args.dataset].items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.out is None:
    args.out = str(RUNS / args.dataset)
  if args.model not in models.MODELS:
    raise cli.UsageError(f"unknown model {args.model!r}: use one of {', '.join(sorted(models.MODELS))}")
  selection = f"--lambd {args.lambd}" if args.lambd is not None else f"--methods {args.methods}"
  tokens = (args.lambd if args.lambd is not None else args.methods).split(",")
  args.methods = [parse_method(t) for t in tokens if t.strip()]
  if args.lambd is not None and any(m.lambd is None for m in args.methods):
    raise cli.UsageError("--lambd takes lambda values only; put sgd in --methods")
  if not args.methods:
    raise cli.UsageError("no method given")
  names = [m.name for m in args.methods]
  if len(set(names)) < len(names):
    raise cli.UsageError(f"a method is given twice: {', '.join(names)}")
  combinations = [
    (
      args.dataset != "digits" and any(m.variant in CHEAPER_VARIANTS for m in args.methods),
      f"the cheaper variants {', '.join(CHEAPER_VARIANTS)} run on the digits only",
    ),
    (
      # A CIFAR run's checkpoints record the settings a resumed run must share; not the family's parameters.
      args.dataset != "digits" and any(m.variant in FAMILY for m in args.methods),
      f"the SAM family {', '.join(FAMILY)} runs on the digits only",
    ),
    (
      args.name is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", args.name),
      f"--name must be letters, digits, _ and - (a file stem); got {args.name!r}",
    ),
  ]
  for wrong, message in combinations:
    if wrong:
      raise cli.UsageError(message)
  check_every_option_is_read(args, given, selection)
  # Before any training: a file or a read-only folder there would fail only when the results are written.
  cli.check_folder(Path(args.out), "--out")
  check_with_library(args.methods, args, "--lambd" if args.lambd is not None else "--methods")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  try:
    with warnings.catch_warnings():
      # A setting too large for float32 (--rho 1e39) becomes inf when it is cast (the shared optimizer's
      # state, a traced step), and numpy warns about the cast in several lines; the library's check or the
      # finiteness check reports what follows in one.
      warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
      args = parse_args(argv)
      start = time.perf_counter()
      with CompileCounter() as compilations:
        results = run_digits(args) if args.dataset == "digits" else run_cifar(args)
    if results is None:
      return 0
    seconds = time.perf_counter() - start
    config = results_lib.settings(args)
    print(results_lib.title(config))
    print(results_lib.table(results))
    compiled = compilations.summary()
    print(
      f"wall time {seconds:.0f} s on {jax.local_device_count()} {jax.default_backend()} device(s), "
      f"{compiled['count']} compilations ({compiled['seconds']:.1f} s)"
    )
    with cli.write_errors(Path(args.out)):
      json_path, png_path = results_lib.write(results, config, Path(args.out), seconds, compiled, args.name)
  except cli.CommandError as err:
    return cli.report(PROG, err)
  print(f"wrote {json_path} and {png_path}")
  return 0
