"""Tests of Unified SAM on Equinox models (examples/equinox_mlp.py: tests/test_examples_equinox_mlp.py).

Equinox splits a model with ``eqx.partition``/``eqx.filter``: the parameter tree
holds None where the model has non-array fields (activation functions) or
frozen ones, and ``unified_sam`` must treat those leaves as absent, as optax does.
"""

from __future__ import annotations

from typing import Any

import pytest

eqx = pytest.importorskip("equinox")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import optax_usam  # noqa: E402
from tests import numpy_reference as ref  # noqa: E402

RHO = 0.2


def _mlp(dtype: Any = jnp.float32) -> eqx.nn.MLP:
  return eqx.nn.MLP(5, 3, width_size=8, depth=2, activation=jnp.tanh, dtype=dtype, key=jax.random.key(0))


def _data(dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  return rng.normal(size=(16, 5)).astype(dtype), rng.integers(0, 3, size=16).astype(np.int32)


def _loss(model: eqx.nn.MLP, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y).mean()


def _np_leaves(tree: Any) -> dict[int, np.ndarray]:
  """The array leaves of ``tree`` in float64, keyed by position: the form numpy_reference takes."""
  return {i: np.asarray(v, np.float64) for i, v in enumerate(jax.tree.leaves(tree))}


@pytest.mark.parametrize("lambd", [0.0, 0.5, 1.0, "1-1/t"])
def test_steps_match_numpy_reference(lambd):
  steps, lr, momentum, wd = 3, 0.5, 0.9, 5e-2
  x, y = _data(np.float64)
  with jax.enable_x64(True):
    model = _mlp(jnp.float64)
    params, static = eqx.partition(model, eqx.is_array)
    treedef = jax.tree.structure(params)
    keys = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    p0 = {k: np.asarray(v) for k, v in zip(keys, jax.tree.leaves(params), strict=True)}
    loss_grad = jax.jit(jax.grad(lambda p: _loss(eqx.combine(p, static), x, y)))

    def np_grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
      g = loss_grad(jax.tree.unflatten(treedef, [p[k] for k in keys]))
      return {k: np.asarray(v) for k, v in zip(keys, jax.tree.leaves(g), strict=True)}

    want, logs = ref.unified_sam_sgd(p0, np_grad, steps, RHO, lambd, lr, momentum, wd)
    plain, _ = ref.unified_sam_sgd(p0, np_grad, steps, 0.0, 0.0, lr, momentum, wd)

    tx = optax.chain(
      optax_usam.unified_sam(RHO, lambd), optax.add_decayed_weights(wd), optax.sgd(lr, momentum=momentum)
    )
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state):
      params, static = eqx.partition(model, eqx.is_array)
      grad_fn = lambda p: eqx.filter_grad(_loss)(eqx.combine(p, static), x, y)
      grads = eqx.filter_grad(_loss)(model, x, y)
      updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
      return eqx.apply_updates(model, updates), opt_state

    for t in range(steps):
      model, opt_state = step(model, opt_state)
      diag = optax_usam.get_diagnostics(opt_state)
      assert int(diag["count"]) == t + 1
      for key in ("grad_norm", "lambd", "rho", "perturbation_norm"):
        np.testing.assert_allclose(diag[key], logs[t][key], rtol=1e-10, atol=1e-14, err_msg=key)

    got = jax.tree.leaves(eqx.filter(model, eqx.is_array))
    assert got[0].dtype == jnp.float64
    for k, v in zip(keys, got, strict=True):
      np.testing.assert_allclose(v, want[k], rtol=1e-10, atol=1e-13, err_msg=k)
    assert model.activation is jnp.tanh
  # The perturbation mattered: plain momentum SGD from the same start ends elsewhere.
  assert max(np.max(np.abs(plain[k] - want[k])) for k in want) > 1e-4


def test_grad_fn_sees_none_for_non_array_fields():
  model = _mlp()
  x, y = _data()
  params, static = eqx.partition(model, eqx.is_array)
  tx = optax.chain(optax_usam.sam(RHO), optax.sgd(0.1))
  opt_state = tx.init(params)
  grads = eqx.filter_grad(_loss)(model, x, y)
  seen = []

  def grad_fn(p):
    seen.append(p)
    return eqx.filter_grad(_loss)(eqx.combine(p, static), x, y)

  updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)

  (ascent,) = seen
  assert jax.tree.structure(ascent) == jax.tree.structure(params)
  assert ascent.activation is None and ascent.final_activation is None
  is_none = lambda v: v is None
  assert [v is None for v in jax.tree.leaves(ascent, is_leaf=is_none)] == [
    v is None for v in jax.tree.leaves(params, is_leaf=is_none)
  ]
  perturbed = eqx.combine(ascent, static)
  assert perturbed.activation is jnp.tanh and perturbed.final_activation is model.final_activation
  assert np.isfinite(_loss(perturbed, x, y))
  # The ascent point is params + rho g / ||g||, over the array leaves only.
  e, norm = ref.perturbation(_np_leaves(grads), RHO, 1.0)
  for i, (a, p) in enumerate(zip(jax.tree.leaves(ascent), jax.tree.leaves(params), strict=True)):
    np.testing.assert_allclose(a, np.asarray(p, np.float64) + e[i], rtol=1e-5, atol=1e-7)

  diag = optax_usam.get_diagnostics(opt_state)
  np.testing.assert_allclose(diag["grad_norm"], norm, rtol=1e-6)
  np.testing.assert_allclose(diag["perturbation_norm"], RHO, rtol=1e-6)
  new_model = eqx.apply_updates(model, updates)
  assert new_model.activation is jnp.tanh
  assert not np.allclose(new_model.layers[0].weight, model.layers[0].weight)


def test_frozen_layer_is_left_out():
  # Freezing the Equinox way: a filter spec with False on the first layer, then eqx.partition.
  model = _mlp()
  x, y = _data()
  filter_spec = jax.tree.map(eqx.is_array, model)
  first_layer = lambda m: (m.layers[0].weight, m.layers[0].bias)
  filter_spec = eqx.tree_at(first_layer, filter_spec, replace=(False, False))
  trainable, frozen = eqx.partition(model, filter_spec)
  assert trainable.layers[0].weight is None

  def loss(trainable, x, y):
    return _loss(eqx.combine(trainable, frozen), x, y)

  tx = optax.chain(optax_usam.sam(RHO), optax.sgd(0.1, momentum=0.9))
  opt_state = tx.init(trainable)
  seen = []

  def grad_fn(p):
    seen.append(p)
    return eqx.filter_grad(loss)(p, x, y)

  first_grads = []
  for _ in range(3):
    grads = eqx.filter_grad(loss)(trainable, x, y)
    first_grads.append(grads)
    updates, opt_state = tx.update(grads, opt_state, trainable, grad_fn=grad_fn)
    trainable = eqx.apply_updates(trainable, updates)
    assert seen[-1].layers[0].weight is None and seen[-1].layers[0].bias is None

    diag = optax_usam.get_diagnostics(opt_state)
    np.testing.assert_allclose(diag["perturbation_norm"], RHO, rtol=1e-6)
    np.testing.assert_allclose(diag["grad_norm"], ref.global_norm(jax.tree.leaves(grads)), rtol=1e-6)

  # The norm counted only the trainable leaves: the whole model's gradient is larger.
  full = eqx.filter_grad(_loss)(model, x, y)
  trainable_norm = ref.global_norm(jax.tree.leaves(eqx.filter(full, filter_spec)))
  assert ref.global_norm(jax.tree.leaves(full)) > trainable_norm * (1 + 1e-3)
  np.testing.assert_allclose(trainable_norm, ref.global_norm(jax.tree.leaves(first_grads[0])), rtol=1e-6)

  trained = eqx.combine(trainable, frozen)
  np.testing.assert_array_equal(trained.layers[0].weight, model.layers[0].weight)
  np.testing.assert_array_equal(trained.layers[0].bias, model.layers[0].bias)
  assert not np.allclose(trained.layers[1].weight, model.layers[1].weight)
  assert not np.allclose(trained.layers[2].bias, model.layers[2].bias)


WEIGHTS = lambda p: jax.tree.map(lambda v: v.ndim > 1, p)


@pytest.mark.parametrize("as_tree", [False, True], ids=["callable", "tree"])
def test_perturb_mask_over_an_equinox_module(as_tree):
  """An eqx.Module of bools is callable; it must still be read as a mask tree, not called."""
  model = _mlp()
  x, y = _data()
  params, static = eqx.partition(model, eqx.is_array)
  grads = eqx.filter_grad(_loss)(model, x, y)
  mask = WEIGHTS(params) if as_tree else WEIGHTS
  seen = []

  def grad_fn(p):
    seen.append(p)
    return eqx.filter_grad(_loss)(eqx.combine(p, static), x, y)

  tx = optax_usam.sam(RHO, perturb_mask=mask)
  tx.update(grads, tx.init(params), params, grad_fn=grad_fn)
  e, _ = ref.perturbation(_np_leaves(grads), RHO, 1.0, mask=dict(enumerate(jax.tree.leaves(WEIGHTS(params)))))
  for i, (a, p) in enumerate(zip(jax.tree.leaves(seen[0]), jax.tree.leaves(params), strict=True)):
    np.testing.assert_allclose(a, np.asarray(p, np.float64) + e[i], rtol=1e-5, atol=1e-7)


def test_adaptive_mask_over_an_equinox_module():
  model = _mlp()
  x, y = _data()
  params, _ = eqx.partition(model, eqx.is_array)
  grads = eqx.filter_grad(_loss)(model, x, y)
  outs = []
  for mask in (WEIGHTS, WEIGHTS(params)):
    tx = optax_usam.sam(RHO, adaptive=True, adaptive_mask=mask)
    _, state = tx.update(grads, tx.init(params), params, grad_fn=lambda p: (outs.append(p), p)[1])
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
    np.testing.assert_array_equal(a, b)
  # The adapted norm ||T g|| with T = |w| + 0.01 on the weights, 1 on the biases, in NumPy.
  flags = jax.tree.leaves(WEIGHTS(params))
  scales = {
    i: np.abs(v) + 0.01 if f else None for (i, v), f in zip(_np_leaves(params).items(), flags, strict=True)
  }
  _, norm = ref.perturbation(_np_leaves(grads), RHO, 1.0, scales=scales)
  np.testing.assert_allclose(optax_usam.get_diagnostics(state)["grad_norm"], norm, rtol=1e-5)


def test_a_whole_model_is_refused_with_what_to_pass():
  """Its activation functions are leaves: one TypeError naming the first, saying what to pass instead."""
  model = _mlp()
  tx = optax.chain(optax_usam.sam(RHO), optax.sgd(0.1))
  with pytest.raises(
    TypeError, match=r"params leaf \.activation is a function.*eqx\.filter\(model, eqx\.is_array\)"
  ):
    tx.init(model)
  params = eqx.filter(model, eqx.is_array)
  grads = eqx.filter_grad(_loss)(model, *map(jnp.asarray, _data()))
  with pytest.raises(TypeError, match=r"unified_sam\.update: params leaf \.activation is a function"):
    tx.update(grads, tx.init(params), model, grad_fn=lambda p: grads)
