"""benchmarks/torch_job.py: the digits job in PyTorch with the official ``unifiedsam``.

The command-line tests run without torch (CI never installs it); the others need torch and unifiedsam and
check the job against independent references: optax's schedule, flax's model and initializer, and Unified
SAM written in NumPy float64.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import optax
import pytest

from benchmarks import torch_job
from examples.train import data as data_lib
from examples.train import methods as example_methods
from examples.train import models as example_models
from tests import numpy_reference as ref

ROOT = Path(__file__).resolve().parents[1]


def _needs_torch() -> None:
  pytest.importorskip("torch")
  pytest.importorskip("unifiedsam")


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
  out, err = capsys.readouterr()
  assert out == ""
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("torch_job: error: ")
  return lines[0]


# ---- without torch ----


@pytest.mark.parametrize("missing", ["torch", "unifiedsam"])
def test_missing_dependency_exits_2_with_the_install_line(missing, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
  assert torch_job.main(["--seeds", "1", "--epochs", "1"]) == 2
  assert (
    'pip install -e ".[bench]" --extra-index-url https://download.pytorch.org/whl/cpu'
    in _one_error_line(capsys)
  )


def test_steady_state_without_torch_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ModuleNotFoundError, match=re.escape(torch_job.INSTALL)):
    torch_job.steady_state_step_ms("sgd")


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--seeds", "0"], "argument --seeds: must be a positive integer; got 0"),
    (["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["--methods", "sgd,adam"], "argument --methods: unknown method 'adam'"),
    (["--methods", "1.5"], "argument --methods: a lambda must be in [0, 1]; got 1.5"),
    (["--methods", "sam,SAM"], "argument --methods: a method is given twice: SAM, SAM"),
    (["--methods", ""], "argument --methods: unknown method ''"),
    (["--bogus"], "unrecognized arguments: --bogus"),
  ],
)
def test_argument_errors_are_one_line(argv, message, monkeypatch, capsys):
  # Arguments are checked before the dependencies: the same line whether torch is installed or not.
  monkeypatch.setitem(sys.modules, "torch", None)
  assert torch_job.main(argv) == 2
  assert message in _one_error_line(capsys)


def test_module_imports_without_torch_and_exits_2_on_bad_input():
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  code = "import sys, benchmarks.torch_job; print('torch' in sys.modules)"
  imported = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
  )
  assert imported.returncode == 0, imported.stderr
  assert imported.stdout.strip() == "False"
  done = subprocess.run(
    [sys.executable, "-m", "benchmarks.torch_job", "--epochs", "0"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert done.returncode == 2
  expected = "torch_job: error: argument --epochs: must be a positive integer; got 0"
  assert done.stderr.strip().splitlines() == [expected]


@pytest.mark.parametrize(
  ("kind", "kwargs", "error", "name"),
  [
    ("adam", {}, ValueError, "kind"),
    ("sgd", {"steps": 0}, ValueError, "steps"),
    ("sam", {"steps": 1.5}, TypeError, "steps"),
    ("sam", {"warmup": -1}, ValueError, "warmup"),
  ],
)
def test_steady_state_rejects_bad_arguments(kind, kwargs, error, name):
  with pytest.raises(error, match=name):
    torch_job.steady_state_step_ms(kind, **kwargs)


def test_method_names_are_those_of_examples_train():
  tokens = [*torch_job.DEFAULT_METHODS.split(","), "0", "0.25", "1"]
  ours = torch_job.parse_methods(",".join(tokens))
  theirs = [example_methods.parse_method(t) for t in tokens]
  assert [(m.name, m.lambd) for m in ours] == [(m.name, m.lambd) for m in theirs]


def test_cosine_lr_is_optax_cosine_decay_schedule():
  total = 19 * 40  # the default job: 19 batches of 64 per epoch, 40 epochs
  with jax.enable_x64(True):
    schedule = optax.cosine_decay_schedule(0.05, total)
    expected = np.array([float(schedule(k)) for k in range(total + 3)])  # past the end: held at 0
  got = np.array([torch_job.cosine_lr(k, total) for k in range(total + 3)])
  np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-18)


def test_truncated_std_is_jax_truncated_normal_std():
  samples = jax.random.truncated_normal(jax.random.key(0), -2.0, 2.0, (1_000_000,))
  assert abs(float(np.std(np.asarray(samples, np.float64))) / torch_job.TRUNCATED_STD - 1) < 2e-3


# ---- with torch ----


def test_lecun_normal_has_flax_distribution():
  _needs_torch()
  import flax.linen as nn
  import torch

  fan_in, fan_out = 250, 400
  torch.manual_seed(0)
  ours = torch_job.lecun_normal_(torch.empty(fan_out, fan_in)).numpy().ravel().astype(np.float64)
  flax = np.asarray(nn.initializers.lecun_normal()(jax.random.key(0), (fan_in, fan_out)), np.float64).ravel()
  std = math.sqrt(1 / fan_in)
  for sample in (ours, flax):
    assert abs(sample.std() / std - 1) < 0.01
    assert abs(sample.mean()) < 0.01 * std
  # Truncated at 2 standard deviations of the normal before truncation, as flax's.
  bound = 2 * std / torch_job.TRUNCATED_STD
  assert np.abs(ours).max() <= bound * (1 + 1e-6) and np.abs(ours).max() > 0.99 * bound
  quantiles = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
  np.testing.assert_allclose(np.quantile(ours, quantiles), np.quantile(flax, quantiles), atol=0.02 * std)


def test_digits_cnn_matches_the_flax_model():
  """Same shapes and initial ranges; with flax's weights loaded, the same logits (SAME padding, pooling,
  flattening)."""
  _needs_torch()
  import torch

  x = data_lib.load_digits(0, 0.4).test.x
  params = example_models.DigitsCNN().init(jax.random.key(0), x[:1])["params"]
  torch.manual_seed(0)
  model = torch_job.digits_cnn()
  layers = [m for m in model if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
  names = ["Conv_0", "Conv_1", "Dense_0", "Dense_1"]
  kernels = [np.asarray(params[n]["kernel"]) for n in names]
  assert sum(p.numel() for p in model.parameters()) == sum(v.size for v in jax.tree.leaves(params))
  for layer, kernel in zip(layers, kernels, strict=True):
    assert layer.weight.shape[0] == kernel.shape[-1]
    assert not layer.bias.detach().any()
    fan_in = math.prod(kernel.shape[:-1])
    assert layer.weight.abs().max().item() <= 2 * math.sqrt(1 / fan_in) / torch_job.TRUNCATED_STD * (1 + 1e-6)
  # HWIO -> OIHW; the first dense layer's rows from (row, column, channel) to (channel, row, column).
  weights = [
    kernels[0].transpose(3, 2, 0, 1),
    kernels[1].transpose(3, 2, 0, 1),
    kernels[2].reshape(4, 4, 32, 64).transpose(2, 0, 1, 3).reshape(512, 64).T,
    kernels[3].T,
  ]
  with torch.no_grad():
    for layer, weight, name in zip(layers, weights, names, strict=True):
      layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
      layer.bias.copy_(torch.from_numpy(np.array(params[name]["bias"])))
    logits = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  expected = np.asarray(example_models.DigitsCNN().apply({"params": params}, x))
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def _numpy_grad(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Gradient of the mean softmax cross-entropy of the linear model ``x @ w.T + b``."""
  logits = x @ w.T + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1
  p /= len(y)
  return p.T @ x, p.sum(0)


def _numpy_run(w, b, batches, lambd, total_steps):
  """Unified SAM (or SGD, ``lambd`` None) + weight decay + momentum SGD in float64, the reference's steps on
  one batch each, with the learning rates of optax's cosine schedule."""
  with jax.enable_x64(True):
    schedule = optax.cosine_decay_schedule(torch_job.LR, total_steps)
    lrs = [float(schedule(k)) for k in range(len(batches))]
  p = {"w": w.astype(np.float64), "b": b.astype(np.float64)}
  trace = {k: np.zeros_like(v) for k, v in p.items()}
  for count, (x, y) in enumerate(batches):
    grad = lambda q, x=x, y=y: dict(zip(("w", "b"), _numpy_grad(q["w"], q["b"], x, y), strict=True))
    g = grad(p)
    if lambd is not None:
      e, _ = ref.perturbation(g, torch_job.RHO, ref.lambda_at(lambd, count))
      g = grad({k: p[k] + e[k] for k in p})
    p, trace = ref.momentum_sgd(p, trace, g, lrs[count], torch_job.MOMENTUM, torch_job.WEIGHT_DECAY)
  return p["w"], p["b"]


LAMBDAS = (None, 0.0, 1.0, 0.5, "1/t", "1-1/t")


@pytest.mark.parametrize("lambd", LAMBDAS)
def test_steps_equal_numpy_unified_sam(lambd):
  """Four steps of make_step (the official unifiedSAM, or torch SGD) on a linear softmax model, against
  NumPy float64: the perturbation, weight decay, momentum and the cosine learning rate."""
  _needs_torch()
  import torch

  rng = np.random.default_rng(0)
  w0, b0 = rng.normal(size=(3, 5)), rng.normal(size=3)
  batches = [(rng.normal(size=(8, 5)), rng.integers(0, 3, 8)) for _ in range(4)]
  model = torch.nn.Linear(5, 3)
  with torch.no_grad():
    model.weight.copy_(torch.from_numpy(w0))
    model.bias.copy_(torch.from_numpy(b0))
  step = torch_job.make_step(model, lambd, total_steps=len(batches))
  for x, y in batches:
    step(torch.from_numpy(x).float(), torch.from_numpy(y))
  expected = _numpy_run(w0, b0, batches, lambd, len(batches))
  np.testing.assert_allclose(model.weight.detach().numpy(), expected[0], rtol=0, atol=1e-6)
  np.testing.assert_allclose(model.bias.detach().numpy(), expected[1], rtol=0, atol=1e-6)
  # Every other method ends well beyond the tolerance: the comparison tells them apart.
  for other in LAMBDAS:
    if other != lambd:
      assert np.abs(_numpy_run(w0, b0, batches, other, len(batches))[0] - expected[0]).max() > 1e-5


def test_one_epoch_job_writes_accuracies_of_the_test_split(tmp_path, monkeypatch, capsys):
  _needs_torch()
  quick = functools.partial(torch_job.steady_state_step_ms, steps=2, warmup=1)
  monkeypatch.setattr(torch_job, "steady_state_step_ms", quick)
  path = tmp_path / "torch_job.json"
  assert torch_job.main(["--methods", "sgd,1-1/t", "--seeds", "2", "--epochs", "1", "--json", str(path)]) == 0
  out = capsys.readouterr().out
  assert "SGD" in out and "lambda=1-1/t" in out
  result = json.loads(path.read_text())
  assert list(result["results"]) == ["SGD", "lambda=1-1/t"]
  for seed, acc in enumerate(result["results"]["SGD"]["final_test_acc"]):
    assert 0 <= acc <= 100
    # A share of the seed's test images (the whole split, in one pass).
    n_test = len(data_lib.load_digits(seed, 0.4).test.y)
    assert abs(acc * n_test / 100 - round(acc * n_test / 100)) < 1e-3
  for r in result["results"].values():
    assert len(r["final_test_acc"]) == 2 and [len(c) for c in r["test_acc_curve"]] == [1, 1]
  assert set(result["steady_state_ms"]) == {"sgd", "sam"}
  # The JSON's step times are the ones the job printed.
  assert ", ".join(f"{kind} {ms:.2f} ms" for kind, ms in result["steady_state_ms"].items()) in out
  # The job's clock holds at least one measured step of each kind.
  assert result["wall_s"] >= sum(result["steady_state_ms"].values()) / 1000


@pytest.mark.parametrize("kind", ["sgd", "sam"])
def test_steady_state_step_ms_is_the_median_of_the_steps_after_the_warmup(kind, monkeypatch):
  """On a clock that only the steps advance: the warm-up steps are left out, the median is taken, in ms."""
  _needs_torch()
  clock, durations = [0.0], iter([5.0, 0.004, 0.001, 0.002])  # one warm-up step, then three timed ones
  make_step = torch_job.make_step

  def make_timed_step(*args, **kwargs):
    step = make_step(*args, **kwargs)

    def timed_step(*batch):
      out = step(*batch)
      clock[0] += next(durations)
      return out

    return timed_step

  monkeypatch.setattr(torch_job, "make_step", make_timed_step)
  monkeypatch.setattr(torch_job, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
  assert torch_job.steady_state_step_ms(kind, steps=3, warmup=1) == pytest.approx(2.0)
