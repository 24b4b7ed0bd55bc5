"""examples/train/digits_runner.py: the digits job, its files, its compiled steps and its threads."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import hlo
from examples.train import data as data_lib
from examples.train import job, models
from examples.train.compilations import CompileCounter
from examples.train.digits_runner import make_train_step
from examples.train.methods import make_tx, parse_method
from examples.train.training import make_loss_fn
from optax_usam.flax_linen import SAMTrainState
from tests import numpy_reference as ref
from tests.train_helpers import DIGITS_1_EPOCH, small_models


def test_digits_job_writes_table_png_json_and_shares_order_and_init(tmp_path, capsys):
  # With rho = 0 every SAM variant takes the SGD step, so equal curves show that
  # all methods of a seed see the same initialization and the same batches.
  argv = ["--methods", "sgd,sam,1-1/t", "--rho", "0", "--epochs", "1", "--seeds", "2", "--no-progress"]
  assert job.main([*argv, "--out", str(tmp_path)]) == 0
  printed = capsys.readouterr().out
  for name in ("SGD", "SAM", "lambda=1-1/t", "test acc (%)"):
    assert name in printed
  saved = json.loads((tmp_path / "digits_results.json").read_text())
  assert (tmp_path / "digits_results.png").stat().st_size > 0
  results = saved["results"]
  assert saved["config"]["methods"] == ["SGD", "SAM", "lambda=1-1/t"]
  sgd = np.asarray(results["SGD"]["test_acc_curve"])
  assert sgd.shape == (2, 1) and sgd[:, -1].min() > 20  # learned something in 1 epoch
  for name in ("SAM", "lambda=1-1/t"):
    np.testing.assert_allclose(results[name]["test_acc_curve"], sgd, atol=0.2)
    np.testing.assert_allclose(
      results[name]["train_loss_curve"], results["SGD"]["train_loss_curve"], rtol=1e-4
    )
  # The epoch's last step has count = steps - 1 (lambda_t's t = steps), whatever the number of images.
  args = job.parse_args(argv)
  steps = len(data_lib.load_digits(0, args.noise).train.y) // args.batch_size
  lambda_t = results["lambda=1-1/t"]["last_diagnostics"][0]["lambda_t"]
  assert lambda_t == pytest.approx(ref.lambda_at("1-1/t", steps - 1))
  assert not np.allclose(sgd[0], sgd[1])


def test_bfloat16_digits_run_tracks_float32(tmp_path, capsys):
  # bfloat16 starts slower (small SGD steps round away in 8-bit mantissas) and catches up within a few epochs.
  argv = ["--methods", "sam,1-1/t", "--epochs", "6", "--seeds", "1", "--noise", "0", "--no-progress"]
  accuracy = {}
  for dtype in ("float32", "bfloat16"):
    assert job.main([*argv, "--dtype", dtype, "--out", str(tmp_path / dtype)]) == 0
    saved = json.loads((tmp_path / dtype / "digits_results.json").read_text())
    assert saved["config"]["dtype"] == dtype
    results = saved["results"]
    assert all(all(r["all_finite"]) for r in results.values())
    accuracy[dtype] = np.array([r["final_test_acc"][0] for r in results.values()])
  assert accuracy["float32"].min() > 90
  np.testing.assert_allclose(accuracy["bfloat16"], accuracy["float32"], atol=3)
  assert "bfloat16" in capsys.readouterr().out


def test_one_gradient_members_skip_the_first_pass_in_the_digits_step():
  # The compiled digits step, counted in convolutions (two per pass of the CNN, and their gradients):
  # momentum SAM's is SGD's, RSAM's two gradients (at x + delta and x + e) are SAM's, not three.

  args = job.parse_args(["--no-progress"])
  model = models.get_model(args.model, 10)
  x, y = jnp.zeros((64, 8, 8, 1)), jnp.zeros(64, jnp.int32)
  params = model.init(jax.random.key(0), x[:1], train=False)["params"]
  step = make_train_step(make_loss_fn(model))

  def convolutions(token: str) -> int:
    tx = make_tx(parse_method(token), args, total_steps=10)
    state = SAMTrainState.create(apply_fn=model.apply, params=params, tx=tx)
    return hlo.products(step.lower(state, x, y, jnp.arange(64), None).compile().as_text())[1]

  sgd = convolutions("sgd")
  assert sgd > 0
  assert convolutions("momentum-sam") == sgd
  assert convolutions("random-smoothing-sam") == convolutions("sam") == 2 * sgd


def test_digits_job_compiles_each_step_kind_once_and_the_same_table_with_any_workers(tmp_path, capsys):
  argv = ["--methods", "sgd,usam,0.5,1/t,1-1/t", "--epochs", "2", "--seeds", "2", "--no-progress"]
  with CompileCounter() as counter:
    assert job.main([*argv, "--workers", "1", "--out", str(tmp_path / "serial")]) == 0
  printed = capsys.readouterr().out
  # One SGD step and one Unified SAM step for all four lambdas, whatever the seed.
  assert counter.by_function["jit(train_step)"] == 2
  assert job.main([*argv, "--workers", "3", "--out", str(tmp_path / "threads")]) == 0
  serial, threads = (
    json.loads((tmp_path / d / "digits_results.json").read_text()) for d in ("serial", "threads")
  )
  assert threads["results"] == serial["results"]  # every accuracy, loss and diagnostic, to the last bit
  # The job's line, its JSON and this test's counter (open around the job: it sees as many or more) agree.
  line = re.search(r"(\d+) compilations \(([\d.]+) s\)", printed)
  compiled = serial["compilations"]
  assert int(line[1]) == compiled["count"] <= counter.count
  assert abs(float(line[2]) - compiled["seconds"]) <= 0.051  # printed to 0.1 s, stored to 1 ms
  assert compiled["seconds"] <= min(counter.seconds + 1e-3, serial["seconds"])


@pytest.mark.parametrize("model", sorted(models.MODELS))
def test_every_model_trains_on_the_digits(model, tmp_path, capsys, monkeypatch):
  # The whole digits set takes a minute or more for ResNet-18 on 2 CPU cores: 128 images, SAM only (SGD takes
  # the same path with another optimizer) and narrow CIFAR models. What used to fail (no BatchNorm statistics
  # were created) fails on any number of images and at any width.
  small_models(monkeypatch)
  load = data_lib.load_digits

  def few_digits(seed, noise):
    full = load(seed, noise)
    train_split = data_lib.Split(full.train.x[:128], full.train.y[:128])
    return data_lib.Dataset(train_split, data_lib.Split(full.test.x[:64], full.test.y[:64]), 10)

  monkeypatch.setattr(data_lib, "load_digits", few_digits)
  argv = ["--model", model, "--methods", "sam", *DIGITS_1_EPOCH, "--out", str(tmp_path)]
  assert job.main(argv) == 0
  assert f"digits ({model})" in capsys.readouterr().out
  results = json.loads((tmp_path / "digits_results.json").read_text())["results"]
  assert set(results) == {"SAM"}
  assert all(0 <= r["final_test_acc"][0] <= 100 for r in results.values())
