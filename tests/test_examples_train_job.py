"""examples/train/job.py: the main job's command line. Each bad input ends in one line on stderr,
``train: error: ...``, and exit status 2 (usage and configuration errors, an option the run would ignore, an
output folder it cannot write) or 1 (a run that diverged, a full disk); the results go to the dataset's folder
under the ignored runs/ unless --out and --name say otherwise."""

import errno
import json
from pathlib import Path

import pytest

from benchmarks import report
from examples.train import cli, job
from tests.train_helpers import DIGITS_1_EPOCH, last_line, only_line, run_job


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--methods", "sgd,adam"], "unknown method or lambda 'adam'"),
    (["--lambd", "1/t2"], "unknown method or lambda '1/t2'"),
    (["--lambd", "1.5"], "argument --lambd: lambd"),
    (["--methods", "sgd,sam,-0.5"], "argument --methods: lambd"),
    (["--rho", "-0.1"], "argument --rho: rho must be"),
    (["--epochs", "-3"], "argument --epochs: must be a positive integer"),
    (["--epochs", "two"], "invalid int value"),
    (["--noise", "1.0"], "argument --noise: must be in [0, 1)"),
    (["--methods", "sam,1/t,SAM"], "a method is given twice"),
    (["--resume"], "argument --resume: this run ignores it (--dataset digits); only a CIFAR run reads it"),
    (["--methods", "reuse-sam", "--reuse-every", "0"], "argument --reuse-every: every_k must be a positive"),
    (["--methods", "random-sam", "--sam-probability", "1.5"], "argument --sam-probability: probability must"),
    (
      ["--methods", "subbatch-sam", "--ascent-fraction", "0"],
      "argument --ascent-fraction: ascent_fraction must be",
    ),
    (["--dataset", "cifar10", "--methods", "reuse-sam"], "run on the digits only"),
    (
      ["--dataset", "cifar10", "--dtype", "bfloat16"],
      "argument --dtype: this run ignores it (--dataset cifar10)",
    ),
    (["--model", "tiny", "--dtype", "bfloat16"], "argument --dtype: this run ignores it (--model tiny)"),
    (["--dtype", "float16"], "invalid choice"),
    (["--methods", "sgd,msam"], "unknown method or lambda 'msam'"),
    (["--methods", "vasso", "--vasso-theta", "1.5"], "argument --vasso-theta: theta must be"),
    (["--methods", "friendly-sam", "--friendly-sam-sigma", "-1"], "argument --friendly-sam-sigma: sigma"),
    (["--methods", "friendly-sam", "--friendly-sam-momentum", "1"], "argument --friendly-sam-momentum: mom"),
    # Two members name a parameter "momentum": the error names the flag of the member that refused it.
    (
      ["--methods", "friendly-sam,momentum-sam", "--momentum-sam-momentum", "-2"],
      "argument --momentum-sam-momentum: momentum must",
    ),
    (["--methods", "random-smoothing-sam", "--random-smoothing-sam-noise-std", "-1"], "-std: noise_std must"),
    (["--methods", "gsam", "--gsam-alpha", "nan"], "argument --gsam-alpha: alpha must be"),
    (["--gsam-alpha", "x"], "argument --gsam-alpha: invalid float value: 'x'"),
    (["--dataset", "cifar10", "--methods", "momentum-sam"], "the SAM family"),
    (["--name", "runs/k6"], "--name must be letters, digits, _ and - (a file stem); got 'runs/k6'"),
    # A parameter of a method the run does not select: each method declares the options it reads.
    (
      ["--methods", "sam", "--vasso-theta", "5"],
      "argument --vasso-theta: this run ignores it (--methods sam); only vasso reads it",
    ),
    (
      ["--methods", "sam", "--ascent-fraction", "7"],
      "argument --ascent-fraction: this run ignores it (--methods sam); only subbatch-sam",
    ),
    # Its default given explicitly is refused as well: the user meant it to matter.
    (
      ["--ascent-fraction", "0.25"],
      "argument --ascent-fraction: this run ignores it (--methods sgd,usam,sam,0.5,1/t,1-1/t)",
    ),
    (["--methods", "vasso", "--friendly-sam-momentum", "0.5"], "only friendly-sam reads it"),
    (["--methods", "friendly-sam", "--momentum-sam-momentum", "0.5"], "only momentum-sam reads it"),
    (
      ["--lambd", "0.5", "--reuse-every", "2"],
      "argument --reuse-every: this run ignores it (--lambd 0.5); only reuse-sam",
    ),
    (
      ["--methods", "sgd", "--rho", "0.2"],
      "argument --rho: this run ignores it (--methods sgd); only a method other than sgd",
    ),
    # An option of the other dataset's runner.
    (
      ["--dataset", "cifar10", "--workers", "2"],
      "argument --workers: this run ignores it (--dataset cifar10); only a digits run",
    ),
    (
      ["--data-dir", "/data"],
      "argument --data-dir: this run ignores it (--dataset digits); only a CIFAR run reads it",
    ),
    (["--stop-after-steps", "5"], "argument --stop-after-steps: this run ignores it (--dataset digits)"),
    (
      ["--dataset", "cifar10", "--dtype", "float32"],
      "argument --dtype: this run ignores it (--dataset cifar10)",
    ),
    # Two options that contradict each other: --lambd runs instead of --methods.
    (["--lambd", "0.5", "--methods", "sgd,sam"], "argument --methods: not allowed with argument --lambd"),
    (["--methods", "sgd", "--lambd", "0.5"], "argument --lambd: not allowed with argument --methods"),
  ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
  assert job.main([*argv, "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("train: error: ") and message in err


@pytest.mark.parametrize(
  ("argv", "expected"),
  [
    (["--rho", "-1"], "train: error: argument --rho: rho must be "),
    (
      ["--dataset", "cifar10", "--data-dir", "/nonexistent"],
      "train: error: dataset 'cifar10' is not prepared",
    ),
  ],
)
def test_bad_input_from_the_command_line_is_one_line_no_traceback(argv, expected):
  proc = run_job(argv, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(expected), proc.stderr


@pytest.mark.parametrize(
  ("method", "status", "message"),
  [
    # The shared Unified SAM optimizer keeps rho in float32, where 1e39 is inf: refused before training.
    ("sam", 2, "argument --rho: rho must be a finite float"),
    # VaSSO's own optimizer takes 1e39 as a Python float: the library refuses it in the float32 step, which
    # the job traces once before training.
    ("vasso", 2, "argument --rho: rho=1e+39 is beyond the largest float32"),
  ],
)
def test_a_rho_beyond_float32_from_the_command_line_is_one_line(tmp_path, method, status, message):
  # numpy's overflow warnings about the cast stay quiet.
  proc = run_job(["--methods", method, "--rho", "1e39", *DIGITS_1_EPOCH, "--out", str(tmp_path)])
  assert proc.returncode == status and proc.stdout == ""
  only_line(proc.stderr, message)
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
  "argv",
  [
    [],
    # Every option a method of the run reads, its default given explicitly included.
    [
      "--methods",
      "vasso,friendly-sam",
      "--vasso-theta",
      "0.9",
      "--friendly-sam-momentum",
      "0.9",
      "--rho",
      "0.1",
    ],
    ["--methods", "sgd,reuse-sam", "--reuse-every", "4"],
    ["--lambd", "0.5,1/t", "--rho", "0.05"],
    ["--workers", "2", "--dtype", "bfloat16"],
    ["--dataset", "cifar10", "--data-dir", "/data", "--resume", "--stop-after-steps", "3"],
  ],
)
def test_every_option_the_run_reads_is_accepted(argv, tmp_path):
  assert job.parse_args([*argv, "--out", str(tmp_path)]).out == str(tmp_path)


def test_an_out_folder_that_cannot_be_written_is_refused_before_training(tmp_path, capsys, monkeypatch):
  (tmp_path / "file").write_text("")
  for out, message in [
    (tmp_path / "file", f"argument --out: {tmp_path / 'file'} is a file, not a folder"),
    (
      tmp_path / "file" / "sub",
      f"argument --out: {tmp_path / 'file'} is a file, not a folder (on the way to ",
    ),
  ]:
    assert job.main(["--out", str(out)]) == 2
    only_line(capsys.readouterr().err, message)

  # Permissions do not stop root: the refusal of the file system is simulated.
  def refuse(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")

  monkeypatch.setattr(cli.tempfile, "TemporaryFile", refuse)
  assert job.main(["--out", str(tmp_path / "new")]) == 2
  only_line(capsys.readouterr().err, f"argument --out: cannot write into {tmp_path}: Permission denied")


def test_a_full_disk_when_the_results_are_written_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
  def full(path, data):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))

  monkeypatch.setattr(report, "write_json", full)
  assert job.main(["--methods", "sgd", *DIGITS_1_EPOCH, "--out", str(tmp_path)]) == 1
  last_line(
    capsys.readouterr().err, f"cannot write into {tmp_path}: No space left on device (OSError ENOSPC)"
  )


def test_results_go_to_an_ignored_folder_unless_out_and_name_say_otherwise(tmp_path, capsys):
  # make train must not rewrite the committed results (examples/results/<dataset>): git ignores /runs/.
  runs = Path(__file__).resolve().parent.parent / "runs"
  assert job.parse_args([]).out == str(runs / "digits")
  assert job.parse_args(["--dataset", "cifar10"]).out == str(runs / "cifar10")
  assert "/runs/" in (runs.parent / ".gitignore").read_text().splitlines()
  assert job.main(["--methods", "sgd", *DIGITS_1_EPOCH, "--out", str(tmp_path), "--name", "mine"]) == 0
  assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "mine.png"]
  assert f"wrote {tmp_path / 'mine.json'} and {tmp_path / 'mine.png'}" in capsys.readouterr().out
  config = json.loads((tmp_path / "mine.json").read_text())["config"]
  assert not {"out", "name", "no_progress"} & set(config)  # where the files go is not what they hold
