"""Tests of the training example: examples/train.py and the modules it runs (data.py, models.py, ...)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.train_helpers import EXAMPLES, cifar, data_lib, final_checkpoint, models, train


def test_digits_split_and_symmetric_noise():
  noisy, clean = data_lib.load_digits(0, 0.4), data_lib.load_digits(0, 0.0)
  assert noisy.train.x.shape == (1258, 8, 8, 1) and noisy.test.x.shape == (539, 8, 8, 1)
  assert 0.0 <= noisy.train.x.min() and noisy.train.x.max() <= 1.0
  np.testing.assert_array_equal(noisy.train.x, clean.train.x)
  np.testing.assert_array_equal(noisy.test.y, clean.test.y)  # the test labels stay clean
  changed = noisy.train.y != clean.train.y
  assert changed.sum() == round(0.4 * 1258)
  assert set(np.unique(noisy.train.y[changed])) == set(range(10))
  assert not np.array_equal(data_lib.load_digits(1, 0.4).test.y, noisy.test.y)


def test_augment_is_a_padded_crop_or_its_mirror():
  images = jnp.arange(3 * 6 * 6 * 2, dtype=jnp.float32).reshape(3, 6, 6, 2) + 1
  out = np.asarray(data_lib.augment(jax.random.key(0), images, pad=2))
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for n in range(3):
    candidates = [padded[n, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
    candidates += [c[:, ::-1] for c in candidates]
    assert any(np.array_equal(out[n], c) for c in candidates)


@pytest.mark.parametrize(("name", "expected"), [("resnet18", 11_173_962), ("wrn28-10", 36_479_194)])
def test_cifar_models_have_the_published_parameter_counts(name, expected):
  # Counts of the reference PyTorch CIFAR implementations (kuangliu/pytorch-cifar, WRN authors).
  model = models.get_model(name, 10)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"])) == expected


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
    (["--methods", "subbatch-sam", "--ascent-fraction", "0"], "argument --ascent-fraction: fraction must be"),
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
  ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
  assert train.main([*argv, "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("train.py: error: ") and message in err


@pytest.mark.parametrize(
  ("argv", "expected"),
  [
    (["--rho", "-1"], "train.py: error: argument --rho: rho must be "),
    (
      ["--dataset", "cifar10", "--data-dir", "/nonexistent"],
      "train.py: error: dataset 'cifar10' is not prepared",
    ),
  ],
)
def test_bad_input_from_the_command_line_is_one_line_no_traceback(argv, expected):
  script = os.path.join(EXAMPLES, "train.py")
  proc = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(expected), proc.stderr


def test_missing_cifar_says_what_and_where(tmp_path, capsys):
  data_dir = str(tmp_path / "tfds")
  assert train.main(["--dataset", "cifar100", "--data-dir", data_dir, "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert "'cifar100'" in err and data_dir in err and "tfds build cifar100" in err


def test_digits_job_writes_table_png_json_and_shares_order_and_init(tmp_path, capsys):
  # With rho = 0 every SAM variant takes the SGD step, so equal curves show that
  # all methods of a seed see the same initialization and the same batches.
  argv = ["--methods", "sgd,sam,1-1/t", "--rho", "0", "--epochs", "1", "--seeds", "2", "--no-progress"]
  assert train.main([*argv, "--out", str(tmp_path)]) == 0
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
  assert results["lambda=1-1/t"]["last_diagnostics"][0]["lambda_t"] == pytest.approx(1 - 1 / 19)
  assert not np.allclose(sgd[0], sgd[1])


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
  # The lambda schedule's count survived the checkpoint: t = 6 at the last step.
  assert int(b["opt_state"][0]["count"]) == 6
  assert float(b["opt_state"][0]["lambd"]) == pytest.approx(1 - 1 / 6)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  logs = [json.loads(line) for line in (tmp_path / "resumed" / "runs").glob("*/log.jsonl").__next__().open()]
  assert [entry["epoch"] for entry in logs] == [1, 2]
  assert {"lambda_t", "rho_t", "grad_norm"} <= set(logs[-1])
  result = json.loads((tmp_path / "resumed" / "cifar10_results.json").read_text())
  straight = json.loads((tmp_path / "straight" / "cifar10_results.json").read_text())
  assert result["results"] == straight["results"]


def test_cheaper_variants_reduce_to_sam_and_differ_from_it(tmp_path, capsys):
  methods = ["--methods", "sam,reuse-sam,random-sam,subbatch-sam", "--epochs", "1", "--seeds", "1"]
  as_sam = ["--reuse-every", "1", "--sam-probability", "1", "--ascent-fraction", "1", "--no-progress"]
  assert train.main([*methods, *as_sam, "--out", str(tmp_path / "a")]) == 0
  results = json.loads((tmp_path / "a" / "digits_results.json").read_text())["results"]
  for name in ("reuse-sam", "random-sam", "subbatch-sam"):
    assert results[name]["variant"] == name
    want = results["SAM"]["train_loss_curve"]
    np.testing.assert_allclose(results[name]["train_loss_curve"], want, rtol=1e-5)
  assert train.main([*methods, "--no-progress", "--out", str(tmp_path / "b")]) == 0
  results = json.loads((tmp_path / "b" / "digits_results.json").read_text())["results"]
  for name in ("reuse-sam", "random-sam", "subbatch-sam"):
    assert not np.allclose(results[name]["train_loss_curve"], results["SAM"]["train_loss_curve"], rtol=1e-4)
  capsys.readouterr()


def test_bfloat16_digits_run_tracks_float32(tmp_path, capsys):
  # bfloat16 starts slower (small SGD steps round away in 8-bit mantissas) and catches up within a few epochs.
  argv = ["--methods", "sam,1-1/t", "--epochs", "6", "--seeds", "1", "--noise", "0", "--no-progress"]
  accuracy = {}
  for dtype in ("float32", "bfloat16"):
    assert train.main([*argv, "--dtype", dtype, "--out", str(tmp_path / dtype)]) == 0
    saved = json.loads((tmp_path / dtype / "digits_results.json").read_text())
    assert saved["config"]["dtype"] == dtype
    results = saved["results"]
    assert all(all(r["all_finite"]) for r in results.values())
    accuracy[dtype] = np.array([r["final_test_acc"][0] for r in results.values()])
  assert accuracy["float32"].min() > 90
  np.testing.assert_allclose(accuracy["bfloat16"], accuracy["float32"], atol=3)
  assert "bfloat16" in capsys.readouterr().out


def test_sam_family_reduces_to_sam_and_differs_from_it(tmp_path, capsys):
  family = "vasso,friendly-sam,momentum-sam,random-smoothing-sam,gsam"
  short = ["--epochs", "1", "--seeds", "1", "--no-progress"]
  # theta = 1, sigma = 0, zero noise and alpha = 0 are SAM; momentum SAM has no such setting.
  as_sam = [
    "--vasso-theta",
    "1",
    "--friendly-sam-sigma",
    "0",
    "--random-smoothing-sam-noise-std",
    "0",
    "--gsam-alpha",
    "0",
  ]
  assert (
    train.main(
      [
        "--methods",
        f"sam,{family.replace('momentum-sam,', '')}",
        *short,
        *as_sam,
        "--out",
        str(tmp_path / "a"),
      ]
    )
    == 0
  )
  assert "vasso theta = 1, friendly-sam sigma = 0 and momentum = 0.9" in capsys.readouterr().out
  results = json.loads((tmp_path / "a" / "digits_results.json").read_text())["results"]
  sam = results["SAM"]
  for name in ("vasso", "friendly-sam", "random-smoothing-sam", "gsam"):
    assert results[name]["variant"] == name
    np.testing.assert_allclose(results[name]["test_acc_curve"], sam["test_acc_curve"], atol=0.2)
    diagnostics = results[name]["last_diagnostics"][0]
    np.testing.assert_allclose(diagnostics["grad_norm"], sam["last_diagnostics"][0]["grad_norm"], rtol=1e-4)
    if name != "random-smoothing-sam":  # RSAM reports the loss at the ascent point: it skips the first pass
      np.testing.assert_allclose(results[name]["train_loss_curve"], sam["train_loss_curve"], rtol=1e-5)

  assert train.main(["--methods", f"sam,{family}", *short, "--out", str(tmp_path / "b")]) == 0
  results = json.loads((tmp_path / "b" / "digits_results.json").read_text())["results"]
  for name in family.split(","):
    assert all(results[name]["all_finite"]) and results[name]["final_test_acc"][0] > 20
    assert not np.allclose(results[name]["train_loss_curve"], results["SAM"]["train_loss_curve"], rtol=1e-4)
  capsys.readouterr()


def test_one_gradient_members_skip_the_first_pass_in_the_digits_step():
  # The compiled digits step, counted in convolutions (two per pass of the CNN, and their gradients):
  # momentum SAM's is SGD's, RSAM's two gradients (at x + delta and x + e) are SAM's, not three.
  from digits_runner import make_train_step
  from methods import make_tx, parse_method
  from training import make_loss_fn

  from benchmarks import hlo
  from optax_usam.flax_linen import SAMTrainState

  args = train.parse_args(["--no-progress"])
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


@pytest.mark.parametrize("token", ["usam", "sam", "0.5", "1/t", "1-1/t"])
def test_the_shared_sam_step_equals_each_methods_own_optimizer(token):
  # The digits job trains every plain Unified SAM method with one optimizer whose rho and lambda's
  # coefficients are arrays in its state; it must take the steps of the method's own unified_sam chain.
  from digits_runner import make_train_step
  from methods import make_shared_sam_tx, make_tx, parse_method, set_lambda
  from training import make_loss_fn

  from optax_usam.flax_linen import SAMTrainState

  args = train.parse_args(["--no-progress"])
  model = models.get_model(args.model, 10)
  split = data_lib.load_digits(0, args.noise)
  x, y = jnp.asarray(split.train.x), jnp.asarray(split.train.y)
  params = model.init(jax.random.key(0), x[:1], train=False)["params"]
  step = make_train_step(make_loss_fn(model))
  method = parse_method(token)
  own = SAMTrainState.create(apply_fn=model.apply, params=params, tx=make_tx(method, args, 50))
  shared = SAMTrainState.create(apply_fn=model.apply, params=params, tx=make_shared_sam_tx(args, 50))
  shared = shared.replace(opt_state=set_lambda(shared.opt_state, method))
  for i in range(5):
    idx = np.arange(64 * i, 64 * (i + 1))
    own, own_loss = step(own, x, y, idx, None)
    shared, shared_loss = step(shared, x, y, idx, None)
    np.testing.assert_allclose(shared_loss, own_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(shared.params), jax.tree.leaves(own.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  import optax_usam

  want, got = optax_usam.get_diagnostics(own.opt_state), optax_usam.get_diagnostics(shared.opt_state)
  assert got["lambd"] == want["lambd"] and got["count"] == want["count"] == 5


def test_digits_job_compiles_each_step_kind_once_and_the_same_table_with_any_workers(tmp_path, capsys):
  from compilations import CompileCounter

  argv = ["--methods", "sgd,usam,0.5,1/t,1-1/t", "--epochs", "2", "--seeds", "2", "--no-progress"]
  with CompileCounter() as counter:
    assert train.main([*argv, "--workers", "1", "--out", str(tmp_path / "serial")]) == 0
  # One SGD step and one Unified SAM step for all four lambdas, whatever the seed.
  assert counter.by_function["jit(train_step)"] == 2
  assert train.main([*argv, "--workers", "3", "--out", str(tmp_path / "threads")]) == 0
  assert "compilations" in capsys.readouterr().out
  serial, threads = (
    json.loads((tmp_path / d / "digits_results.json").read_text()) for d in ("serial", "threads")
  )
  assert threads["results"] == serial["results"]  # every accuracy, loss and diagnostic, to the last bit
  assert serial["compilations"]["count"] >= 2 and serial["compilations"]["seconds"] > 0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_max_pool_2x2_is_nn_max_pool_to_the_last_bit(dtype):
  # Values and gradients, with ties (ReLU zeros), -0.0, +-inf and NaN in the windows: the gradient goes
  # where XLA's select-and-scatter puts it.
  import flax.linen as nn
  from pooling import max_pool_2x2

  rng = np.random.default_rng(0)
  x = np.maximum(rng.normal(size=(4, 8, 8, 3)), 0).astype(np.float32)
  u = rng.random(x.shape)
  x[u < 0.05], x[(u > 0.05) & (u < 0.1)], x[(u > 0.1) & (u < 0.13)], x[(u > 0.13) & (u < 0.16)] = (
    np.nan,
    -0.0,
    np.inf,
    -np.inf,
  )
  x, g = jnp.asarray(x, dtype), jnp.asarray(rng.normal(size=(4, 4, 4, 3)), dtype)
  bits = np.uint16 if dtype == jnp.bfloat16 else np.uint32
  want, want_vjp = jax.vjp(lambda z: nn.max_pool(z, (2, 2), (2, 2)), x)
  got, got_vjp = jax.jit(lambda z: jax.vjp(max_pool_2x2, z))(x)
  np.testing.assert_array_equal(np.asarray(got).view(bits), np.asarray(want).view(bits))
  np.testing.assert_array_equal(np.asarray(got_vjp(g)[0]).view(bits), np.asarray(want_vjp(g)[0]).view(bits))
  with pytest.raises(ValueError, match="even height and width"):
    max_pool_2x2(jnp.zeros((1, 5, 4, 1)))
