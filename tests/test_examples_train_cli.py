"""examples/train/cli.py: the one-line errors, the type parsers, the options given and the folders written of
the harness's commands and the benchmarks."""

from __future__ import annotations

import errno

import pytest

import optax_usam
from examples.train import cli


def _parser() -> cli.Parser:
  p = cli.Parser(prog="example.py")
  p.add_argument("--epochs", type=cli.positive_int, default=1)
  p.add_argument("--seed", type=cli.non_negative_int, default=0)
  p.add_argument("--at-least-3", type=cli.int_at_least(3), default=3)
  p.add_argument("--noise", type=cli.float_in(0.0, 1.0), default=0.0)
  p.add_argument("--lr", type=cli.positive_float, default=0.1)
  p.add_argument("--weight-decay", type=cli.non_negative_float, default=0.0)
  p.add_argument("--lambd", type=cli.lambda_value, default="1/t")
  return p


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--epochs", "0"], "argument --epochs: must be a positive integer; got 0"),
    (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
    (["--seed", "-1"], "argument --seed: must be a non-negative integer; got -1"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["--at-least-3", "2"], "argument --at-least-3: must be an integer >= 3; got 2"),
    (["--noise", "1"], "argument --noise: must be in [0, 1); got 1"),
    (["--lr", "nan"], "argument --lr: must be a positive number; got nan"),
    (["--weight-decay", "-1"], "argument --weight-decay: must be non-negative; got -1"),
    (["--bogus"], "unrecognized arguments: --bogus"),
  ],
)
def test_parse_errors_are_usage_errors_naming_the_flag(argv, message):
  with pytest.raises(cli.UsageError) as err:
    _parser().parse_args(argv)
  assert str(err.value) == message


def test_types_parse_only_types():
  args = _parser().parse_args(["--epochs", "3", "--seed", "0", "--weight-decay", "inf", "--lambd", "1-1/t"])
  assert (args.epochs, args.seed, args.weight_decay, args.lambd) == (3, 0, float("inf"), "1-1/t")
  # The range of a lambda, and what an unknown string means, are the library's to say.
  assert _parser().parse_args(["--lambd", "2"]).lambd == 2.0
  assert _parser().parse_args(["--lambd", "sam"]).lambd == "sam"


@pytest.mark.parametrize(
  ("build", "flag"),
  [
    (lambda: optax_usam.unified_sam(-1.0, 0.5), "--rho"),
    (lambda: optax_usam.unified_sam(0.1, 2.0), "--lambd"),
    (lambda: optax_usam.unified_sam(0.1, "sam"), "--lambd"),
    (lambda: optax_usam.reuse_sam(optax_usam.sam(0.1), 0), "--reuse-every"),
  ],
)
def test_library_errors_become_one_line_usage_errors_naming_the_flag(build, flag, capsys):
  flags = {"rho": "--rho", "lambd": "--lambd", "every_k": "--reuse-every"}
  with pytest.raises(SystemExit) as exit_info, cli.exit_on_error("example.py"), cli.library_errors(flags):
    build()
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"example.py: error: argument {flag}: "), err


def test_report_returns_the_exit_status_of_each_kind_of_error(capsys):
  assert cli.report("example.py", cli.UsageError("bad\n  flag")) == 2
  assert cli.report("example.py", cli.CommandError("diverged")) == 1
  assert capsys.readouterr().err == "example.py: error: bad flag\nexample.py: error: diverged\n"


def test_given_options_are_those_on_the_command_line_whatever_their_values():
  p = _parser()
  p.add_argument("--resume", action="store_true")
  assert cli.given_options(p, []) == set()
  # A default given explicitly counts: the user asked for it.
  assert cli.given_options(p, ["--epochs", "1", "--resume", "--lambd=1/t"]) == {"epochs", "resume", "lambd"}


def test_check_folder_accepts_a_folder_to_be_made_and_refuses_a_file_on_the_way(tmp_path):
  cli.check_folder(tmp_path / "new" / "deeper", "--out")
  assert not (tmp_path / "new").exists()  # checked, not made
  (tmp_path / "file").write_text("")
  for path in (tmp_path / "file", tmp_path / "file" / "sub"):
    with pytest.raises(cli.UsageError, match=f"^argument --out: {tmp_path / 'file'} is a file, not a folder"):
      cli.check_folder(path, "--out")


def test_check_folder_refuses_a_folder_it_cannot_write_into(tmp_path, monkeypatch):
  # Permissions do not stop root: the refusal of the file system is simulated.
  def refuse(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")

  monkeypatch.setattr(cli.tempfile, "TemporaryFile", refuse)
  with pytest.raises(
    cli.UsageError, match=f"^argument --out: cannot write into {tmp_path}: Permission denied$"
  ):
    cli.check_folder(tmp_path / "new", "--out")


# A full disk as Python reports it, and as tensorstore (orbax's writer) does, raised from a thread of orbax.
TENSORSTORE_ENOSPC = ValueError(
  'RESOURCE_EXHAUSTED: Error writing local file "/x/6.orbax-checkpoint-tmp/_sharding": Failed to write 366 '
  "bytes to file 17: No space left on device [os_error_code='28']"
)


@pytest.mark.parametrize(
  "error",
  [OSError(errno.ENOSPC, "No space left on device"), TENSORSTORE_ENOSPC],
  ids=["oserror", "tensorstore"],
)
def test_write_errors_name_the_folder_and_the_cause(error, tmp_path):
  with pytest.raises(cli.CommandError) as err, cli.write_errors(tmp_path, "; try again"):
    try:
      raise error
    except Exception as inner:
      raise RuntimeError("a wrapper of the library") from inner
  assert type(err.value) is cli.CommandError and err.value.exit_code == 1
  assert (
    str(err.value) == f"cannot write into {tmp_path}: No space left on device (OSError ENOSPC); try again"
  )


def test_write_errors_let_every_other_error_pass(tmp_path):
  with pytest.raises(ValueError, match="not a write"), cli.write_errors(tmp_path):
    raise ValueError("not a write")
