"""examples/train/methods.py: the cheaper variants and the SAM family reduce to SAM where they should, and
the optimizer every plain Unified SAM method shares takes each one's own steps."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_usam
from examples.train import data as data_lib
from examples.train import job, models
from examples.train.digits_runner import make_train_step
from examples.train.methods import make_shared_sam_tx, make_tx, parse_method, set_lambda
from examples.train.training import make_loss_fn
from optax_usam.flax_linen import SAMTrainState


def test_cheaper_variants_reduce_to_sam_and_differ_from_it(tmp_path, capsys):
  methods = ["--methods", "sam,reuse-sam,random-sam,subbatch-sam", "--epochs", "1", "--seeds", "1"]
  as_sam = ["--reuse-every", "1", "--sam-probability", "1", "--ascent-fraction", "1", "--no-progress"]
  assert job.main([*methods, *as_sam, "--out", str(tmp_path / "a")]) == 0
  results = json.loads((tmp_path / "a" / "digits_results.json").read_text())["results"]
  for name in ("reuse-sam", "random-sam", "subbatch-sam"):
    assert results[name]["variant"] == name
    want = results["SAM"]["train_loss_curve"]
    np.testing.assert_allclose(results[name]["train_loss_curve"], want, rtol=1e-5)
  assert job.main([*methods, "--no-progress", "--out", str(tmp_path / "b")]) == 0
  results = json.loads((tmp_path / "b" / "digits_results.json").read_text())["results"]
  for name in ("reuse-sam", "random-sam", "subbatch-sam"):
    assert not np.allclose(results[name]["train_loss_curve"], results["SAM"]["train_loss_curve"], rtol=1e-4)
  capsys.readouterr()


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
    job.main(
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

  assert job.main(["--methods", f"sam,{family}", *short, "--out", str(tmp_path / "b")]) == 0
  results = json.loads((tmp_path / "b" / "digits_results.json").read_text())["results"]
  for name in family.split(","):
    assert all(results[name]["all_finite"]) and results[name]["final_test_acc"][0] > 20
    assert not np.allclose(results[name]["train_loss_curve"], results["SAM"]["train_loss_curve"], rtol=1e-4)
  capsys.readouterr()


@pytest.mark.parametrize("token", ["usam", "sam", "0.5", "1/t", "1-1/t"])
def test_the_shared_sam_step_equals_each_methods_own_optimizer(token):
  # The digits job trains every plain Unified SAM method with one optimizer whose rho and lambda's
  # coefficients are arrays in its state; it must take the steps of the method's own unified_sam chain.
  args = job.parse_args(["--no-progress"])
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
  want, got = optax_usam.get_diagnostics(own.opt_state), optax_usam.get_diagnostics(shared.opt_state)
  assert got["lambd"] == want["lambd"] and got["count"] == want["count"] == 5
