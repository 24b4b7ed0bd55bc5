"""Tests of optax_usam.distributed.trainer: the sharded step on 4 and 8 CPU devices, and what it costs.

The step is checked against single-device Unified SAM and the float64 NumPy reference
(``numpy_reference.sharded_sam_sgd``), on FSDP meshes and every kind of JAX mesh; its compiled program
for the collectives and memory it takes. Faults that once hung or misled are kept from coming back: a
host running unboundedly ahead of the devices (which hung 2 processes for good), and a ``loss_fn`` over an
axis the step does not bind.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import optax_usam
from benchmarks import hlo
from optax_usam import distributed
from tests import mlp_problem
from tests import numpy_reference as ref
from tests._hlo import collective_bytes, collectives

RHO, LAMBD, LR, MOMENTUM, WD = 0.2, 0.5, 0.1, 0.9, 1e-2
STEPS = 2
# (devices, size of the parameter axis): FSDP sharding on 4 and 8 devices.
MESHES = [(4, 1), (4, 2), (8, 1), (8, 4)]
# unified_sam options beyond rho and lambda, which the trainer must pass on, and the reference's spelling.
OPTIONS = {
  "perturb_mask": (
    {"perturb_mask": {"w1": True, "b1": False, "w2": True, "b2": False}},
    {"mask": {"w1": True, "b1": False, "w2": True, "b2": False}},
  ),
  "adaptive": ({"adaptive": True, "adaptive_eta": 0.1}, {"adaptive_eta": 0.1}),
}


def loss_fn(p: dict, batch: tuple) -> jax.Array:
  return mlp_problem.jax_loss(p, *batch)


def reference(p: dict, x: np.ndarray, y: np.ndarray, shards: int, options: dict | None = None):
  """STEPS of the float64 reference, each of ``shards`` sub-batches perturbed along its own gradient."""
  return ref.sharded_sam_sgd(p, x, y, STEPS, RHO, LAMBD, LR, MOMENTUM, WD, shards, **(options or {}))


def base_optimizer() -> optax.GradientTransformation:
  return optax.chain(optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MOMENTUM))


def single_device(
  params: dict, x: np.ndarray, y: np.ndarray, shards: int, options: dict | None = None
) -> dict:
  """The same training on one device with the core transformation alone.

  ``shards > 1``: m-sharpness via ``vmap`` over sub-batches with ``axis_name``.
  """
  per_device = shards > 1
  tx = optax.chain(
    optax_usam.unified_sam(
      RHO, LAMBD, axis_name="data" if per_device else None, sync_perturbation=False, **(options or {})
    ),
    base_optimizer(),
  )

  def step(p: dict, s: optax.OptState, xb: jax.Array, yb: jax.Array) -> tuple:
    g = jax.grad(loss_fn)(p, (xb, yb))
    u, s = tx.update(g, s, p, grad_fn=lambda q: jax.grad(loss_fn)(q, (xb, yb)))
    return optax.apply_updates(p, u), s

  if per_device:
    mapped = jax.vmap(step, in_axes=(None, None, 0, 0), axis_name="data")
    first = lambda tree: jax.tree.map(lambda a: a[0], tree)
    step = lambda p, s, xb, yb: first(
      mapped(p, s, xb.reshape(shards, -1, xb.shape[-1]), yb.reshape(shards, -1, yb.shape[-1]))
    )
  device = jax.devices()[0]
  p = jax.device_put(params, device)
  s = tx.init(p)
  xb, yb = jax.device_put((x, y), device)
  step = jax.jit(step)
  for _ in range(STEPS):
    p, s = step(p, s, xb, yb)
  return p


def train_sharded(mesh, params, x, y, per_device: bool, options: dict | None = None, built_from=None):
  """STEPS of the trainer's step; ``built_from``: what the trainer is built with (default ``params``)."""
  shardings = distributed.fsdp_shardings(params, mesh, min_size=0)
  _, init, step = distributed.make_sharded_trainer(
    loss_fn,
    base_optimizer(),
    params if built_from is None else built_from,
    mesh=mesh,
    per_device_perturbation=per_device,
    param_shardings=shardings,
    rho=RHO,
    lambd_schedule=LAMBD,
    **(options or {}),
  )
  p = jax.device_put(params, shardings)
  s = init(p)
  batch = distributed.shard_batch((x, y), mesh)
  for _ in range(STEPS):
    p, s, _ = step(p, s, batch)
  return p, s, shardings


@pytest.mark.parametrize("per_device", [False, True], ids=["global", "per_device"])
@pytest.mark.parametrize(("num_devices", "num_model"), MESHES)
def test_sharded_step_matches_single_device_and_float64(num_devices, num_model, per_device):
  params, x, y = mlp_problem.float32_problem()
  mesh = distributed.make_mesh(num_model, jax.devices()[:num_devices])
  p, s, shardings = train_sharded(mesh, params, x, y, per_device)

  shards = mesh.shape["data"] if per_device else 1
  want, want_norm = reference(params, x, y, shards)
  one = single_device(params, x, y, shards)
  momentum = optax.tree_utils.tree_get(s, "trace")
  for k in params:
    assert p[k].sharding.is_equivalent_to(shardings[k], p[k].ndim)
    assert momentum[k].sharding.is_equivalent_to(shardings[k], p[k].ndim)
    np.testing.assert_allclose(p[k], one[k], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p[k], want[k], rtol=1e-5, atol=1e-6)
  assert not np.allclose(want["w1"], reference(params, x, y, 2 if shards == 1 else 1)[0]["w1"])
  np.testing.assert_allclose(optax_usam.get_diagnostics(s)["grad_norm"], want_norm, rtol=1e-5)


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("per_device", [False, True], ids=["global", "per_device"])
def test_sam_options_reach_the_step(per_device, option):
  """perturb_mask and adaptive change the step as they change single-device unified_sam."""
  params, x, y = mlp_problem.float32_problem()
  mesh = distributed.make_mesh(2, jax.devices()[:8])
  options, reference_options = OPTIONS[option]
  shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), params)
  p, s, _ = train_sharded(mesh, params, x, y, per_device, options, built_from=shapes)

  shards = mesh.shape["data"] if per_device else 1
  want, want_norm = reference(params, x, y, shards, reference_options)
  one = single_device(params, x, y, shards, options)
  for k in params:
    np.testing.assert_allclose(p[k], one[k], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p[k], want[k], rtol=1e-5, atol=1e-6)
  assert not np.allclose(want["w1"], reference(params, x, y, shards)[0]["w1"])
  np.testing.assert_allclose(optax_usam.get_diagnostics(s)["grad_norm"], want_norm, rtol=1e-5)


@pytest.mark.parametrize("per_device", [False, True], ids=["global", "per_device"])
def test_sharded_trainer_gives_one_result_on_every_mesh_kind(per_device):
  params, x, y = mlp_problem.float32_problem(d=16, h=128)
  meshes = {
    "make_mesh": distributed.make_mesh(2, jax.devices()[:8]),
    "explicit": jax.make_mesh((4, 2), ("data", "model"), devices=jax.devices()[:8]),  # JAX's default
    "auto": jax.make_mesh(
      (4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2, devices=jax.devices()[:8]
    ),
  }
  results = {}
  for name, mesh in meshes.items():
    shardings = distributed.fsdp_shardings(params, mesh)
    _, init, step = distributed.make_sharded_trainer(
      loss_fn,
      optax.sgd(0.1, momentum=0.9),
      params,
      mesh=mesh,
      per_device_perturbation=per_device,
      param_shardings=shardings,
      rho=0.05,
      lambd_schedule="1-1/t",
    )
    p = jax.device_put(params, shardings)
    s = init(p)
    for _ in range(2):
      p, s, _ = step(p, s, distributed.shard_batch((x, y), mesh))
    assert p["w1"].sharding.spec == PartitionSpec(None, "model"), name
    results[name] = distributed.to_host(p)
  for name in ("explicit", "auto"):
    for k in params:
      np.testing.assert_allclose(
        results[name][k], results["make_mesh"][k], rtol=1e-6, atol=1e-7, err_msg=f"{name} {k}"
      )


@pytest.mark.parametrize("per_device", [False, True], ids=["global", "per_device"])
def test_one_gradient_direction_takes_one_pass(per_device):
  """momentum_sam's direction through the trainer: single-device momentum_sam's steps, one pass each."""
  params, x, y = mlp_problem.float32_problem()
  mesh = distributed.make_mesh(1, jax.devices()[:4])
  momentum = optax_usam.AscentDirection(
    optax.chain(optax.trace(decay=MOMENTUM), optax.scale(-1.0)), "previous_sam_gradient"
  )
  base = optax.sgd(LR, momentum=MOMENTUM)
  _, init, step = distributed.make_sharded_trainer(
    loss_fn,
    base,
    params,
    mesh=mesh,
    per_device_perturbation=per_device,
    rho=RHO,
    lambd_schedule=LAMBD,
    direction=momentum,
  )
  p = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  s = init(p)
  batch = distributed.shard_batch((x, y), mesh)
  sam_hlo = step.lower(p, s, batch).compile().as_text()
  for _ in range(3):
    p, s, _ = step(p, s, batch)

  # The direction is built from the averaged SAM gradients, so both modes take single-device steps.
  tx = optax.chain(optax_usam.momentum_sam(RHO, MOMENTUM, LAMBD), base)
  one, state = params, tx.init(params)
  for _ in range(3):
    updates, state = tx.update(None, state, one, grad_fn=lambda q: jax.grad(loss_fn)(q, (x, y)))
    one = optax.apply_updates(one, updates)
  for k in params:
    np.testing.assert_allclose(p[k], one[k], rtol=1e-5, atol=1e-6)
  plain_hlo = jax.jit(lambda p, b: jax.grad(loss_fn)(p, b)).lower(params, (x, y)).compile().as_text()
  assert hlo.products(sam_hlo) == hlo.products(plain_hlo)


# -- the compiled step: collectives and memory --------------------------------------------------------


def parameter_gathers(text: str, params: dict, shardings: dict) -> int:
  """How many all-gathers produce a full sharded parameter."""
  full = {params[k].shape for k in params if not shardings[k].is_fully_replicated}
  return sum(shape in full for shapes in collectives(text, "all-gather") for shape in shapes)


@pytest.mark.parametrize("per_device", [False, True], ids=["global", "per_device"])
@pytest.mark.parametrize(("num_devices", "num_model"), [(4, 2), (8, 4)])
def test_sam_step_gathers_parameters_no_more_than_two_plain_steps(num_devices, num_model, per_device):
  params, x, y = mlp_problem.float32_problem()
  mesh = distributed.make_mesh(num_model, jax.devices()[:num_devices])
  shardings = distributed.fsdp_shardings(params, mesh, min_size=0)
  p = jax.device_put(params, shardings)
  batch = distributed.shard_batch((x, y), mesh)
  _, init, step = distributed.make_sharded_trainer(
    loss_fn,
    optax.sgd(LR),
    params,
    mesh=mesh,
    per_device_perturbation=per_device,
    param_shardings=shardings,
    rho=RHO,
    lambd_schedule=LAMBD,
  )
  sam_hlo = step.lower(p, init(p), batch).compile().as_text()
  plain = jax.jit(
    lambda p, b: jax.tree.map(lambda w, g: w - LR * g, p, jax.grad(loss_fn)(p, b)),
    out_shardings=shardings,
  )
  plain_hlo = plain.lower(p, batch).compile().as_text()
  # SAM runs the model's forward and backward passes twice, nothing more.
  assert parameter_gathers(sam_hlo, params, shardings) <= 2 * parameter_gathers(plain_hlo, params, shardings)


@pytest.mark.parametrize(
  ("per_device", "gradient_reduces"), [(False, 2), (True, 1)], ids=["global", "per_device"]
)
def test_all_reduced_bytes_per_step(per_device, gradient_reduces):
  """Data parallel: global SAM all-reduces both gradients, m-sharpness only the second."""
  params, x, y = mlp_problem.float32_problem(d=64, h=256, o=64, n=16)
  mesh = distributed.make_mesh(1)
  p = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  _, init, step = distributed.make_sharded_trainer(
    loss_fn,
    optax.sgd(LR),
    params,
    mesh=mesh,
    per_device_perturbation=per_device,
    rho=RHO,
    lambd_schedule=LAMBD,
  )
  text = step.lower(p, init(p), distributed.shard_batch((x, y), mesh)).compile().as_text()
  grad_bytes = sum(v.nbytes for v in params.values())
  scalars = collective_bytes(text, "all-reduce") - gradient_reduces * grad_bytes
  # Beyond the gradients: the loss and the norms, a few float32 scalars.
  assert 0 <= scalars <= 4 * 8
  assert collective_bytes(text, "all-gather") == 0


@pytest.mark.parametrize("per_device", [False, True], ids=["global", "per_device"])
def test_per_device_memory_shrinks_as_parameter_axis_grows(per_device):
  params, x, y = mlp_problem.float32_problem(d=64, h=256, o=64, n=16)
  totals = []
  for num_model in (1, 2, 4):
    mesh = distributed.make_mesh(num_model)
    shardings = distributed.fsdp_shardings(params, mesh)
    p = jax.device_put(params, shardings)
    _, init, step = distributed.make_sharded_trainer(
      loss_fn,
      optax.sgd(LR, momentum=MOMENTUM),
      params,
      mesh=mesh,
      per_device_perturbation=per_device,
      param_shardings=shardings,
      rho=RHO,
      lambd_schedule=LAMBD,
    )
    mem = step.lower(p, init(p), distributed.shard_batch((x, y), mesh)).compile().memory_analysis()
    totals.append(
      mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    )
  param_bytes = sum(v.nbytes for v in params.values())
  assert totals[0] > totals[1] > totals[2]
  # Parameters and momentum are split four ways; what is left is batch and activations.
  assert totals[0] - totals[2] > 0.75 * 2 * param_bytes * (1 - 1 / 4)


def test_step_keeps_at_most_a_few_steps_in_flight_on_cpu():
  # The hang: XLA's CPU client deadlocks once a device has 32 programs in flight, so the step
  # must wait for older steps long before that, however fast the host dispatches.
  mesh = distributed.make_mesh(1, jax.devices()[:4])
  width = 256

  def slow_loss(p: dict, batch: jax.Array) -> jax.Array:
    h = batch
    for _ in range(8):  # slow enough on a device that an unbounded host runs far ahead
      h = jnp.tanh(h @ p["w"])
    return jnp.mean(h**2)

  params = {"w": np.eye(width, dtype=np.float32)}
  _, init, step = distributed.make_sharded_trainer(
    slow_loss, optax.sgd(1e-3), params, mesh=mesh, rho=0.05, lambd_schedule=1.0
  )
  params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  opt_state = init(params)
  batch = distributed.shard_batch(np.ones((256, width), np.float32), mesh)
  bound = distributed.CPU_MAX_STEPS_AHEAD
  assert 1 <= bound < 32
  losses = []
  for _ in range(3 * bound):
    params, opt_state, loss = step(params, opt_state, batch)
    losses.append(loss)
    if len(losses) > bound:
      assert losses[-bound - 1].is_ready(), f"step {len(losses) - bound} still running at step {len(losses)}"
  jax.block_until_ready(losses)


# -- refusals -----------------------------------------------------------------------------------------


def test_step_rejects_params_off_their_shardings():
  params, x, y = mlp_problem.float32_problem()
  mesh = distributed.make_mesh(2, jax.devices()[:4])
  shardings = distributed.fsdp_shardings(params, mesh, min_size=0)
  _, init, step = distributed.make_sharded_trainer(
    loss_fn, optax.sgd(LR), params, mesh=mesh, param_shardings=shardings, rho=RHO, lambd_schedule=LAMBD
  )
  p = jax.device_put(params, shardings)
  s = init(p)
  batch = distributed.shard_batch((x, y), mesh)
  replicated = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  with pytest.raises(ValueError, match=r"params leaf \['b1'\] has sharding .* but param_shardings"):
    step(replicated, s, batch)
  with pytest.raises(ValueError, match=r"params leaf \['b1'\] has sharding .* but param_shardings"):
    init(replicated)
  # The trainer is compiled for the tree it was built with.
  with pytest.raises(ValueError, match="params must have the tree structure"):
    step({**p, "extra": p["b1"]}, s, batch)


def pmean_loss(axis: str):
  def loss(p: dict, batch: tuple) -> jax.Array:
    x, y = batch
    return jax.lax.pmean(jnp.mean((x @ p["w"] - y) ** 2), axis)

  return loss


@pytest.mark.parametrize(
  ("per_device", "axis"),
  [(False, "data"), (True, "model")],
  ids=["jit-path-data-axis", "shard_map-path-model-axis"],
)
def test_loss_over_an_unbound_axis_is_a_value_error(per_device, axis):
  mesh = distributed.make_mesh(2, jax.devices()[:4])
  params = {"w": np.ones((3, 2), np.float32)}
  _, init, step = distributed.make_sharded_trainer(
    pmean_loss(axis),
    optax.sgd(0.1),
    params,
    mesh=mesh,
    per_device_perturbation=per_device,
    rho=0.05,
    lambd_schedule=1.0,
  )
  params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  batch = distributed.shard_batch((np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32)), mesh)
  with pytest.raises(ValueError, match=rf"loss_fn uses axis {axis!r}, which is not bound") as info:
    step(params, init(params), batch)
  assert "per_device_perturbation" in str(info.value)


def test_the_tx_of_a_per_device_step_outside_shard_map_is_a_value_error():
  mesh = distributed.make_mesh(1, jax.devices()[:4])
  loss = lambda p, b: jnp.mean((b @ p["w"]) ** 2)
  params, batch = {"w": jnp.ones((3, 2))}, jnp.ones((4, 3))
  tx, _, _ = distributed.make_sharded_trainer(
    loss, optax.sgd(0.1), params, mesh=mesh, per_device_perturbation=True, rho=0.05, lambd_schedule=1.0
  )
  grad_fn = lambda p: jax.grad(loss)(p, batch)
  with pytest.raises(ValueError, match="axis_name='data' is not bound here"):
    jax.jit(lambda p, s: tx.update(grad_fn(p), s, p, grad_fn=grad_fn))(params, tx.init(params))


def trainer(loss=loss_fn, base=None, **kwargs):
  kwargs = {"mesh": distributed.make_mesh(), "rho": RHO, "lambd_schedule": LAMBD, **kwargs}
  return distributed.make_sharded_trainer(loss, base or optax.sgd(LR), {"w": np.ones(2)}, **kwargs)


@pytest.mark.parametrize(
  ("call", "error", "match"),
  [
    (lambda: trainer(data_axis="batch"), ValueError, "data_axis='batch' is not an axis"),
    (lambda: trainer(per_device_perturbation=1), TypeError, "per_device_perturbation must be a bool"),
    (
      lambda: trainer(loss=None),
      TypeError,
      r"loss_fn must be callable \(\(params, batch\) -> loss\); got NoneType",
    ),
    (
      lambda: distributed.make_sharded_trainer(
        loss_fn, None, {"w": np.ones(2)}, mesh=distributed.make_mesh()
      ),
      TypeError,
      r"base_optimizer must be an optax.GradientTransformation, e.g. optax.sgd\(0.1\); got None",
    ),
    (
      lambda: trainer(base="sgd"),
      TypeError,
      r"base_optimizer must be an optax.GradientTransformation, .*; got 'sgd'",
    ),
    (lambda: trainer(mesh=None), TypeError, "mesh must be a jax.sharding.Mesh, .* got NoneType"),
    (lambda: trainer(mesh="data"), TypeError, "mesh must be a jax.sharding.Mesh, .* got str"),
    # Unified SAM inside base_optimizer would come after the trainer's own, and after the base's own steps.
    (
      lambda: trainer(base=optax.chain(optax.adamw(1e-3), optax_usam.sam(0.05))),
      ValueError,
      r"base_optimizer holds a Unified SAM transformation \(base_optimizer.init\(params\)\[1\]\)",
    ),
    (lambda: trainer(base=optax_usam.sam(0.05)), ValueError, "base_optimizer holds a Unified SAM"),
    (
      lambda: trainer(axis_name="data"),
      ValueError,
      r"sets unified_sam's axis_name itself .* remove axis_name='data'",
    ),
    (lambda: trainer(sync_perturbation=True), ValueError, "sets unified_sam's sync_perturbation itself"),
    # unified_sam checks its own arguments: none is dropped on the way.
    (lambda: trainer(adaptive_mask={"w": True}), ValueError, "adaptive_mask only applies with adaptive"),
    (lambda: trainer(eps=-1.0), ValueError, "eps must be a positive"),
    (lambda: trainer(rho_typo=0.1), TypeError, "unexpected keyword argument 'rho_typo'"),
  ],
)
def test_bad_arguments(call, error, match):
  with pytest.raises(error, match=match):
    call()
