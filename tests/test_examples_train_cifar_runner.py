"""examples/train/cifar_runner.py: the CIFAR job on tfds's mock data, with every model; stopped and resumed,
it ends where an uninterrupted run ends; diverged, it writes no checkpoint."""

import json

import jax
import numpy as np
import pytest

from examples.train import models
from tests import numpy_reference as ref
from tests.train_helpers import cifar, final_checkpoint, last_line, only_line, run_dir, small_models


# Every model on CIFAR-10; CIFAR-100 differs only in its 100-class head, which every model builds alike.
@pytest.mark.parametrize(
  ("dataset", "model"), [("cifar10", model) for model in sorted(models.MODELS)] + [("cifar100", "tiny")]
)
def test_every_model_trains_on_cifar(dataset, model, tmp_path, capsys, monkeypatch):
  # The digits CNN has no BatchNorm statistics (it failed here with KeyError: 'batch_stats'); the others do.
  small_models(monkeypatch)
  argv = ["--dataset", dataset, "--model", model, "--methods", "sam", "--epochs", "1"]
  assert cifar(argv, tmp_path, num_examples=16) == 0
  assert f"{dataset} ({model})" in capsys.readouterr().out
  results = json.loads((tmp_path / f"{dataset}_results.json").read_text())["results"]
  assert np.shape(results["SAM"]["test_acc_curve"]) == (1, 1)


# With and without BatchNorm statistics in the checkpoint.
@pytest.mark.parametrize("model", ["tiny", "cnn"])
def test_cifar_stop_resume_equals_uninterrupted_run(model, tmp_path):
  n_dev = jax.local_device_count()
  assert 16 % n_dev == 0
  # Mock images are random: resume equality is the point here, not accuracy.
  methods = ["--model", model, "--methods", "1-1/t"]
  assert cifar(methods, tmp_path / "straight") == 0
  assert cifar([*methods, "--stop-after-steps", "4"], tmp_path / "resumed") == 0
  step, stopped = final_checkpoint(tmp_path / "resumed")
  assert step == 4 and int(stopped["opt_state"][0]["count"]) == 4
  assert not (tmp_path / "resumed" / "cifar10_results.json").exists()
  # Restarting without --resume would mix two runs' checkpoints: refused.
  assert cifar(methods, tmp_path / "resumed") == 2
  assert cifar([*methods, "--resume"], tmp_path / "resumed") == 0

  step_a, a = final_checkpoint(tmp_path / "straight")
  step_b, b = final_checkpoint(tmp_path / "resumed")
  assert step_a == step_b == 6  # 48 // 16 = 3 steps per epoch, 2 epochs
  # The lambda schedule's count survived the checkpoint: the last step had count 5 (t = 6).
  assert int(b["opt_state"][0]["count"]) == 6
  assert float(b["opt_state"][0]["lambd"]) == pytest.approx(ref.lambda_at("1-1/t", 5))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  logs = [json.loads(line) for line in (tmp_path / "resumed" / "runs").glob("*/log.jsonl").__next__().open()]
  assert [entry["epoch"] for entry in logs] == [1, 2]
  assert {"lambda_t", "rho_t", "grad_norm"} <= set(logs[-1])
  result = json.loads((tmp_path / "resumed" / "cifar10_results.json").read_text())
  straight = json.loads((tmp_path / "straight" / "cifar10_results.json").read_text())
  assert result["results"] == straight["results"]


def test_a_diverged_cifar_run_stops_before_it_checkpoints(tmp_path, capsys):
  assert cifar(["--methods", "sgd", "--lr", "1e39"], tmp_path) == 1
  last_line(capsys.readouterr().err, "diverged in epoch 1")
  # A diverged state is never checkpointed (--resume would carry on from NaN), nor reported as a result.
  assert not any((run_dir(tmp_path) / "checkpoints").glob("*"))
  assert not (run_dir(tmp_path) / "result.json").exists() and not (tmp_path / "cifar10_results.json").exists()


def test_a_stop_at_or_after_the_last_step_is_refused(tmp_path, capsys):
  # It would stop nothing: the runs end at step 6 whatever it says.
  assert cifar(["--methods", "sgd", "--stop-after-steps", "6"], tmp_path) == 2
  only_line(
    capsys.readouterr().err,
    "--stop-after-steps 6 stops nothing: the runs end at step 6 (--epochs 2 x 3 steps of --batch-size 16)",
  )
  assert not tmp_path.exists() or not any(tmp_path.iterdir())
