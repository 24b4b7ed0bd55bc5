"""examples/train/cifar_runner.py: the CIFAR job on tfds's mock data; stopped and resumed, it ends where an
uninterrupted run ends; diverged, it writes no checkpoint."""

import json

import jax
import numpy as np
import pytest

from tests import numpy_reference as ref
from tests.train_helpers import cifar, final_checkpoint, last_line, run_dir


def test_cifar_stop_resume_equals_uninterrupted_run(tmp_path):
  n_dev = jax.local_device_count()
  assert 16 % n_dev == 0
  # Mock images are random: resume equality is the point here, not accuracy.
  assert cifar(["--methods", "1-1/t"], tmp_path / "straight") == 0
  assert cifar(["--methods", "1-1/t", "--stop-after-steps", "4"], tmp_path / "resumed") == 0
  step, stopped = final_checkpoint(tmp_path / "resumed")
  assert step == 4 and int(stopped["opt_state"][0]["count"]) == 4
  assert not (tmp_path / "resumed" / "cifar10_results.json").exists()
  # Restarting without --resume would mix two runs' checkpoints: refused.
  assert cifar(["--methods", "1-1/t"], tmp_path / "resumed") == 2
  assert cifar(["--methods", "1-1/t", "--resume"], tmp_path / "resumed") == 0

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
