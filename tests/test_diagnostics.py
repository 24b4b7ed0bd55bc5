"""Tests of optax_usam.diagnostics: get_diagnostics and needs_fresh_gradient, through any optimizer state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_usam


def _step(tx, params):
  loss = lambda p: jnp.sum(p["w"] ** 2)
  state = tx.init(params)
  _, state = tx.update(jax.grad(loss)(params), state, params, grad_fn=jax.grad(loss))
  return state


@pytest.mark.parametrize(
  "wrap",
  [
    lambda t: t,
    lambda t: optax.chain(optax.clip(10.0), t, optax.sgd(0.1)),
    lambda t: optax.chain(t, optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)),
    lambda t: optax.MultiSteps(optax.chain(t, optax.sgd(0.1)), every_k_schedule=1),
  ],
)
def test_diagnostics_found_in_nested_states(wrap):
  params = {"w": jnp.array([3.0, 4.0])}
  state = _step(wrap(optax_usam.unified_sam(0.5, "1-1/t")), params)
  diag = optax_usam.get_diagnostics(state)
  assert set(diag) == {"count", "grad_norm", "lambd", "rho", "perturbation_norm"}
  assert int(diag["count"]) == 1
  np.testing.assert_allclose(diag["grad_norm"], 10.0, rtol=1e-6)  # ||2w|| = 10
  np.testing.assert_allclose(diag["lambd"], 0.0)
  np.testing.assert_allclose(diag["rho"], 0.5)
  np.testing.assert_allclose(diag["perturbation_norm"], 5.0, rtol=1e-6)  # USAM: rho * ||g||


def test_diagnostics_under_jit():
  params = {"w": jnp.array([3.0, 4.0])}
  tx = optax.chain(optax_usam.sam(0.5), optax.sgd(0.1))
  state = jax.jit(lambda p: _step(tx, p))(params)
  metrics = jax.jit(optax_usam.get_diagnostics)(state)
  np.testing.assert_allclose(metrics["perturbation_norm"], 0.5, rtol=1e-6)


@pytest.mark.parametrize("count", [0, 2])
def test_diagnostics_needs_exactly_one_state(count):
  params = {"w": jnp.ones(2)}
  tx = optax.chain(*[optax_usam.sam(0.1) for _ in range(count)], optax.sgd(0.1))
  with pytest.raises(ValueError, match=f"exactly one UnifiedSAMState.*found {count}"):
    optax_usam.get_diagnostics(tx.init(params))


def test_needs_fresh_gradient_sees_through_wrappers():
  params = {"w": jnp.ones(2)}
  inner = optax_usam.momentum_sam(0.2)
  injected = optax.inject_hyperparams(optax_usam.momentum_sam)(rho=0.2)
  assert not optax_usam.needs_fresh_gradient(optax.chain(injected, optax.sgd(0.1)).init(params))
  # Wrappers that read the fresh gradient themselves need it, whatever the direction inside.
  wrappers = (
    optax.MultiSteps(inner, 2),
    optax_usam.reuse_sam(inner, 2),
    optax_usam.randomized_sam(inner, 0.5),
  )
  for wrapped in wrappers:
    assert optax_usam.needs_fresh_gradient(wrapped.init(params))
  assert optax_usam.needs_fresh_gradient(optax.sgd(0.1).init(params))  # no Unified SAM: a plain gradient
