"""examples/train/job.py: the main job's command line. Each bad input ends in one line on stderr,
``train: error: ...``, and exit status 2 (usage and configuration errors) or 1 (a run that diverged); the
results go to the dataset's folder unless --out and --name say otherwise."""

import json
from pathlib import Path

import pytest

from examples.train import job
from tests.train_helpers import DIGITS_1_EPOCH, only_line, run_job


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
    (["--resume"], "--resume and --stop-after-steps apply to CIFAR runs only"),
    (["--methods", "reuse-sam", "--reuse-every", "0"], "argument --reuse-every: every_k must be a positive"),
    (["--methods", "random-sam", "--sam-probability", "1.5"], "argument --sam-probability: probability must"),
    (
      ["--methods", "subbatch-sam", "--ascent-fraction", "0"],
      "argument --ascent-fraction: ascent_fraction must be",
    ),
    (["--dataset", "cifar10", "--methods", "reuse-sam"], "run on the digits only"),
    (["--dataset", "cifar10", "--dtype", "bfloat16"], "--dtype bfloat16 applies to the digits CNN only"),
    (["--model", "tiny", "--dtype", "bfloat16"], "--dtype bfloat16 applies to the cnn model only"),
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


def test_results_go_to_the_datasets_folder_unless_out_and_name_say_otherwise(tmp_path, capsys):
  # The committed results of the main job (make train) are those of its default folder.
  results = Path(__file__).resolve().parent.parent / "examples" / "results"
  assert job.parse_args([]).out == str(results / "digits")
  assert job.parse_args(["--dataset", "cifar10"]).out == str(results / "cifar10")
  assert job.main(["--methods", "sgd", *DIGITS_1_EPOCH, "--out", str(tmp_path), "--name", "mine"]) == 0
  assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "mine.png"]
  assert f"wrote {tmp_path / 'mine.json'} and {tmp_path / 'mine.png'}" in capsys.readouterr().out
  config = json.loads((tmp_path / "mine.json").read_text())["config"]
  assert not {"out", "name", "no_progress"} & set(config)  # where the files go is not what they hold
