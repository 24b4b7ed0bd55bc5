"""The command-line helpers of this package's commands and of the benchmarks: one-line errors, type parsers,
the library's errors, the options given, the folders written.

Every failure a command reports is a :class:`CommandError`: one line on stderr, ``prog: error: ...``, and
its ``exit_code`` (2 for bad input, :class:`UsageError`). :class:`Parser` raises one for argparse's own
errors instead of printing its usage block; :func:`library_errors` turns the ``ValueError``/``TypeError``
that ``optax_usam`` raises when a transformation is built into one that names the flag, so the commands
leave those checks to the library. :func:`given_options` tells the options the user gave from those left at
their defaults (to refuse one the run would ignore); :func:`check_folder` refuses an output folder that cannot
be written before any work, and :func:`write_errors` turns a write that fails later (a full disk) into one
line naming the folder. A ``main`` that returns its exit status ends in :func:`report`; one
that exits wraps its body in :func:`exit_on_error`::

  parser = cli.Parser(prog="command")
  parser.add_argument("--epochs", type=cli.positive_int, default=10)
  parser.add_argument("--rho", type=float, default=0.05)
  with cli.exit_on_error(parser.prog):
    args = parser.parse_args(argv)
    with cli.library_errors({"rho": "--rho"}):
      tx = optax_usam.sam(args.rho)
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from optax_usam.schedules import LAMBDA_STRINGS


class CommandError(Exception):
  """A failure reported as one line on stderr, ``prog: error: ...``, with exit status ``exit_code``."""

  exit_code = 1


class UsageError(CommandError):
  """Bad command-line input, or a configuration that cannot run: exit status 2."""

  exit_code = 2


class Parser(argparse.ArgumentParser):
  """An ``ArgumentParser`` whose errors are :class:`UsageError`: one line, no usage block above it."""

  def __init__(self, *args: Any, **kwargs: Any) -> None:
    # Commands put command lines in their docstrings: keep the description's line breaks.
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    super().__init__(*args, **kwargs)

  def error(self, message: str) -> NoReturn:
    raise UsageError(message)


def report(prog: str, err: CommandError) -> int:
  """Prints ``err`` as the one line ``prog: error: ...`` on stderr and returns its exit status."""
  print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
  return err.exit_code


@contextlib.contextmanager
def exit_on_error(prog: str) -> Iterator[None]:
  """Ends the process on a :class:`CommandError` raised inside: its one line, then ``SystemExit``."""
  try:
    yield
  except CommandError as err:
    raise SystemExit(report(prog, err)) from None


@contextlib.contextmanager
def library_errors(flags: Mapping[str, str]) -> Iterator[None]:
  """Turns a ``ValueError``/``TypeError`` raised inside into a :class:`UsageError` naming its flag.

  Args:
    flags: the library's argument names to the flags that set them, e.g. ``{"rho": "--rho"}``. The
      library's messages name the argument (``rho must be ...``, ``lambd_schedule must be ...``): the
      flag of the first name found, a name or that name with a suffix (``lambd`` finds
      ``lambd_schedule``), leads the usage error, as argparse's ``argument --flag: ...`` does.
  """
  try:
    yield
  except (ValueError, TypeError) as err:
    message = " ".join(str(err).split())
    found = []
    for name, flag in flags.items():
      match = re.search(rf"\b{re.escape(name)}(?:_\w+)?\b", message)
      if match:
        found.append((match.start(), flag))
    prefix = f"argument {min(found)[1]}: " if found else ""
    raise UsageError(prefix + message) from err


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
  """The destinations (``args.<dest>``) of the options ``argv`` gives, a default value given included.

  ``argv`` is parsed again into a namespace where every destination already holds a marker: argparse fills
  in a default only where a destination is missing, so the options still holding the marker were not given
  (for options that store a value, as ``store`` and ``store_true`` do).
  """
  unset = object()
  dests = vars(parser.parse_args(argv))
  marked = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(dests, unset)))
  return {dest for dest, value in vars(marked).items() if value is not unset}


def check_folder(path: Path, flag: str) -> None:
  """Refuses ``path`` as the folder a command writes into, in one line naming ``flag``, before any work.

  ``path`` or its nearest existing parent must be a folder in which this process can create a file (tried
  with a temporary file, removed at once: permissions alone do not tell, e.g. on a read-only file system).
  """
  existing = path
  while not existing.exists() and existing.parent != existing:
    existing = existing.parent
  if not existing.is_dir():
    where = "" if existing == path else f" (on the way to {path})"
    raise UsageError(f"argument {flag}: {existing} is a file, not a folder{where}")
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as err:
    raise UsageError(f"argument {flag}: cannot write into {existing}: {err.strerror}") from err


def error_chain(err: BaseException) -> Iterator[BaseException]:
  """``err``, then each error it was raised from (or while handling), each once."""
  seen: set[int] = set()
  current: BaseException | None = err
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    yield current
    current = current.__cause__ or current.__context__


def os_error_code(err: BaseException) -> int | None:
  """The operating system's error code behind ``err``, if any: an ``OSError`` it is or was raised from, or the
  code tensorstore (orbax's writer) reports in its message as ``[os_error_code='28']``."""
  for current in error_chain(err):
    if isinstance(current, OSError) and current.errno:
      return current.errno
    match = re.search(r"os_error_code='(\d+)'", str(current))
    if match:
      return int(match[1])
  return None


@contextlib.contextmanager
def write_errors(folder: Path, advice: str = "") -> Iterator[None]:
  """Turns an error of the operating system raised inside (a full disk while writing into ``folder``) into a
  :class:`CommandError`: one line naming ``folder`` and the cause, e.g. ``No space left on device (OSError
  ENOSPC)``, followed by ``advice``; every other error passes unchanged."""
  try:
    yield
  except Exception as err:
    code = os_error_code(err)
    if code is None:
      raise
    name = errno.errorcode.get(code, str(code))
    raise CommandError(f"cannot write into {folder}: {os.strerror(code)} (OSError {name}){advice}") from err


def int_at_least(low: int) -> Callable[[str], int]:
  """``type=`` for an integer >= ``low``: :data:`positive_int` for a count, :data:`non_negative_int` for a
  seed."""
  allowed = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < low:
      raise argparse.ArgumentTypeError(f"must be {allowed}; got {value}")
    return value

  parse.__name__ = f"int_at_least_{low}"
  return parse


positive_int = int_at_least(1)
# NumPy's generators take no negative seed.
non_negative_int = int_at_least(0)


def _number(text: str) -> float:
  try:
    return float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None


def positive_float(text: str) -> float:
  """``type=`` for a learning rate and the like: a finite number > 0."""
  value = _number(text)
  if not (math.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(f"must be a positive number; got {value:g}")
  return value


def non_negative_float(text: str) -> float:
  """``type=`` for a weight decay and the like: a number >= 0 (inf included: optax accepts it)."""
  value = _number(text)
  if not value >= 0:
    raise argparse.ArgumentTypeError(f"must be non-negative; got {value:g}")
  return value


def float_in(low: float, high: float) -> Callable[[str], float]:
  """``type=`` for a rate: a number in ``[low, high)``."""

  def parse(text: str) -> float:
    value = _number(text)
    if not low <= value < high:
      raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}); got {value:g}")
    return value

  parse.__name__ = f"float_in_{low:g}_{high:g}"
  return parse


def lambda_value(text: str) -> float | str:
  """``type=`` for lambda: one of ``optax_usam.schedules.LAMBDA_STRINGS``, else a number, else the text.

  Its range, and what to make of an unknown string, are the library's to check (see :func:`library_errors`).
  """
  if text in LAMBDA_STRINGS:
    return text
  try:
    return float(text)
  except ValueError:
    return text
