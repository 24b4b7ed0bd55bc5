"""Unified SAM over sharded ``jit`` and ``shard_map`` (optax_usam.distributed), on 4 and 8 CPU devices."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import optax_usam
from benchmarks import hlo
from optax_usam import distributed
from tests import mlp_problem, numpy_reference

RHO, LAMBD, LR, MOMENTUM, WD = 0.2, 0.5, 0.1, 0.9, 1e-2
STEPS = 2
# (devices, size of the parameter axis): FSDP sharding on 4 and 8 devices.
MESHES = [(4, 1), (4, 2), (8, 1), (8, 4)]
# unified_sam options beyond rho and lambda, which the trainer must pass on.
OPTIONS = {
  "perturb_mask": {"perturb_mask": {"w1": True, "b1": False, "w2": True, "b2": False}},
  "adaptive": {"adaptive": True, "adaptive_eta": 0.1},
}


def loss_fn(p: dict, batch: tuple) -> jax.Array:
  return mlp_problem.jax_loss(p, *batch)


def np_sam_grad(
  p: dict, x: np.ndarray, y: np.ndarray, shards: int, options: dict | None = None
) -> tuple[dict, float]:
  """Float64 Unified SAM gradient with each of ``shards`` sub-batches perturbed along its own gradient.

  ``shards=1`` is the global perturbation; ``options`` are ``perturb_mask`` and
  ``adaptive``/``adaptive_eta`` as given to ``unified_sam``. Returns the mean
  over shards of the gradient at the perturbed points and of ``||g||``.
  """
  options = options or {}
  scales = {k: np.abs(v) + options["adaptive_eta"] for k, v in p.items()} if options.get("adaptive") else None
  g_sam = {k: np.zeros_like(v) for k, v in p.items()}
  norms = []
  for xs, ys in zip(np.split(x, shards), np.split(y, shards), strict=True):
    g = numpy_reference.mlp_grad(p, xs, ys)
    e, norm = numpy_reference.perturbation(g, RHO, LAMBD, mask=options.get("perturb_mask"), scales=scales)
    g_local = numpy_reference.mlp_grad({k: p[k] + e[k] for k in p}, xs, ys)
    g_sam = {k: g_sam[k] + g_local[k] / shards for k in p}
    norms.append(norm)
  return g_sam, float(np.mean(norms))


def np_reference(
  p: dict, x: np.ndarray, y: np.ndarray, shards: int, options: dict | None = None
) -> tuple[dict, float]:
  """STEPS of :func:`np_sam_grad` through weight decay and momentum SGD (optax's conventions).

  Returns the parameters and the last step's mean ``||g||``.
  """
  p = {k: v.astype(np.float64) for k, v in p.items()}
  trace = {k: np.zeros_like(v) for k, v in p.items()}
  for _ in range(STEPS):
    g_sam, norm = np_sam_grad(p, x, y, shards, options)
    for k in p:
      trace[k] = g_sam[k] + WD * p[k] + MOMENTUM * trace[k]
      p[k] = p[k] - LR * trace[k]
  return p, norm


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
  ref, ref_norm = np_reference(params, x, y, shards)
  one = single_device(params, x, y, shards)
  momentum = optax.tree_utils.tree_get(s, "trace")
  for k in params:
    assert p[k].sharding.is_equivalent_to(shardings[k], p[k].ndim)
    assert momentum[k].sharding.is_equivalent_to(shardings[k], p[k].ndim)
    np.testing.assert_allclose(p[k], one[k], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p[k], ref[k], rtol=1e-5, atol=1e-6)
  assert not np.allclose(ref["w1"], np_reference(params, x, y, 2 if shards == 1 else 1)[0]["w1"])
  np.testing.assert_allclose(optax_usam.get_diagnostics(s)["grad_norm"], ref_norm, rtol=1e-5)


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("per_device", [False, True], ids=["global", "per_device"])
def test_sam_options_reach_the_step(per_device, option):
  """perturb_mask and adaptive change the step as they change single-device unified_sam."""
  params, x, y = mlp_problem.float32_problem()
  mesh = distributed.make_mesh(2, jax.devices()[:8])
  options = OPTIONS[option]
  shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), params)
  p, s, _ = train_sharded(mesh, params, x, y, per_device, options, built_from=shapes)

  shards = mesh.shape["data"] if per_device else 1
  ref, ref_norm = np_reference(params, x, y, shards, options)
  one = single_device(params, x, y, shards, options)
  for k in params:
    np.testing.assert_allclose(p[k], one[k], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p[k], ref[k], rtol=1e-5, atol=1e-6)
  assert not np.allclose(ref["w1"], np_reference(params, x, y, shards)[0]["w1"])
  np.testing.assert_allclose(optax_usam.get_diagnostics(s)["grad_norm"], ref_norm, rtol=1e-5)


@pytest.mark.parametrize("sync", [True, False], ids=["global", "per_device"])
@pytest.mark.parametrize("recipe", ["pmap", "shard_map"])
def test_documented_recipes_without_the_helper(recipe, sync):
  """The pmap and shard_map snippets of docs/distributed.md, on 4 devices."""
  params, x, y = mlp_problem.float32_problem()
  tx = optax_usam.unified_sam(RHO, LAMBD, axis_name="data", sync_perturbation=sync)
  state = tx.init(params)

  def sam_grad(p: dict, state: optax_usam.UnifiedSAMState, batch: tuple) -> tuple:
    g = jax.grad(loss_fn)(p, batch)
    return tx.update(g, state, p, grad_fn=lambda q: jax.grad(loss_fn)(q, batch))

  if recipe == "pmap":
    split = lambda a: a.reshape(4, -1, a.shape[-1])
    out, state = jax.pmap(sam_grad, axis_name="data", in_axes=(None, None, 0), devices=jax.devices()[:4])(
      params, state, (split(x), split(y))
    )
    out, state = jax.tree.map(lambda a: a[0], (out, state))
  else:
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])

    def local(p: dict, state: optax_usam.UnifiedSAMState, batch: tuple) -> tuple:
      p = jax.tree.map(lambda a: jax.lax.pcast(a, "data", to="varying"), p)
      return sam_grad(p, state, batch)

    batch = jax.device_put((x, y), NamedSharding(mesh, PartitionSpec("data")))
    out, state = jax.jit(
      jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec("data")),
        out_specs=PartitionSpec(),
      )
    )(params, state, batch)
    assert int(state.count) == 1
  ref, ref_norm = np_sam_grad({k: v.astype(np.float64) for k, v in params.items()}, x, y, 1 if sync else 4)
  for k in params:
    np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.grad_norm, ref_norm, rtol=1e-5)


def collectives(hlo: str, op: str) -> list[list[tuple[int, ...]]]:
  """Result shapes of every ``op`` (e.g. ``all-gather``) instruction in compiled HLO text."""
  found = []
  for line in hlo.splitlines():
    m = re.search(rf"= (.*?) {op}(?:-start)?\(", line)
    if m:
      found.append(
        [tuple(int(d) for d in dims.split(",") if d) for dims in re.findall(r"\w+\[([\d,]*)\]", m.group(1))]
      )
  return found


@pytest.mark.parametrize(("num_devices", "num_model"), [(4, 2), (8, 4)])
def test_global_norm_needs_one_scalar_all_reduce(num_devices, num_model):
  params, _, _ = mlp_problem.float32_problem()
  mesh = distributed.make_mesh(num_model, jax.devices()[:num_devices])
  p = jax.device_put(params, distributed.fsdp_shardings(params, mesh, min_size=0))
  hlo = jax.jit(lambda p, g: optax_usam.perturb(p, g, RHO, LAMBD)).lower(p, p).compile().as_text()
  assert collectives(hlo, "all-gather") == []
  reduces = collectives(hlo, "all-reduce")
  assert reduces, "the norm of sharded leaves needs a cross-device sum"
  assert all(shape == () for shapes in reduces for shape in shapes)


def parameter_gathers(hlo: str, params: dict, shardings: dict) -> int:
  """How many all-gathers produce a full sharded parameter."""
  full = {params[k].shape for k in params if not shardings[k].is_fully_replicated}
  return sum(shape in full for shapes in collectives(hlo, "all-gather") for shape in shapes)


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


def collective_bytes(hlo: str, op: str) -> int:
  return sum(4 * int(np.prod(shape)) for shapes in collectives(hlo, op) for shape in shapes)


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
  hlo = step.lower(p, init(p), distributed.shard_batch((x, y), mesh)).compile().as_text()
  grad_bytes = sum(v.nbytes for v in params.values())
  scalars = collective_bytes(hlo, "all-reduce") - gradient_reduces * grad_bytes
  # Beyond the gradients: the loss and the norms, a few float32 scalars.
  assert 0 <= scalars <= 4 * 8
  assert collective_bytes(hlo, "all-gather") == 0


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


def test_check_shardings_accepts_matching_layouts():
  params, _, _ = mlp_problem.float32_problem()
  mesh = distributed.make_mesh(2, jax.devices()[:4])
  p = jax.device_put(params, distributed.fsdp_shardings(params, mesh, min_size=0))
  distributed.check_shardings(jax.jit(jax.grad(loss_fn))(p, (np.ones((4, 8)), np.ones((4, 4)))), p)


@pytest.mark.parametrize("which", ["spec", "devices"])
def test_check_shardings_rejects_mismatch(which):
  params, _, _ = mlp_problem.float32_problem()
  mesh = distributed.make_mesh(2, jax.devices()[:4])
  p = jax.device_put(params, distributed.fsdp_shardings(params, mesh, min_size=0))
  if which == "spec":
    g = dict(p, w2=jax.device_put(p["w2"], NamedSharding(mesh, PartitionSpec())))
  else:
    other = distributed.make_mesh(2, jax.devices()[4:8])
    g = dict(p, w2=jax.device_put(p["w2"], NamedSharding(other, p["w2"].sharding.spec)))
  with pytest.raises(ValueError, match=r"grads leaf \['w2'\] has sharding"):
    distributed.check_shardings(g, p)


def test_check_shardings_inside_jit_with_explicit_axes():
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  a = jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, PartitionSpec("model")))
  b = jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, PartitionSpec(None, "model")))

  def check(g: jax.Array, p: jax.Array) -> jax.Array:
    distributed.check_shardings({"w": g}, {"w": p})
    return g

  with jax.set_mesh(mesh):
    jax.jit(check)(a, a)
    with pytest.raises(ValueError, match=r"grads leaf \['w'\]"):
      jax.jit(check)(a, b)


def test_check_shardings_rejects_structure_mismatch():
  with pytest.raises(ValueError, match="tree structure"):
    distributed.check_shardings({"a": jnp.ones(2)}, {"b": jnp.ones(2)})


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


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_unbound_axis_name_is_a_clear_error(jit):
  tx = optax_usam.unified_sam(RHO, LAMBD, axis_name="data")
  p = {"w": jnp.ones(3)}
  update = lambda g, s, p: tx.update(g, s, p, grad_fn=lambda q: q)
  update = jax.jit(update) if jit else update
  with pytest.raises(ValueError, match="axis_name='data' is not bound"):
    update(p, tx.init(p), p)


def trainer(loss=loss_fn, **kwargs):
  kwargs = {"mesh": distributed.make_mesh(), "rho": RHO, "lambd_schedule": LAMBD, **kwargs}
  return distributed.make_sharded_trainer(loss, optax.sgd(LR), {"w": np.ones(2)}, **kwargs)


@pytest.mark.parametrize(
  ("call", "error", "match"),
  [
    (lambda: distributed.make_mesh(3), ValueError, "num_model=3 must divide"),
    (lambda: distributed.make_mesh(0), ValueError, "num_model must be a positive int"),
    (lambda: distributed.make_mesh(2, data_axis="x", model_axis="x"), ValueError, "must differ"),
    (
      lambda: distributed.fsdp_shardings({}, distributed.make_mesh(), axis="tp"),
      ValueError,
      "axis='tp' is not an axis",
    ),
    (
      lambda: distributed.shard_batch(np.ones((6, 2)), distributed.make_mesh()),
      ValueError,
      "divisible over 8 devices",
    ),
    (lambda: trainer(data_axis="batch"), ValueError, "data_axis='batch' is not an axis"),
    (lambda: trainer(per_device_perturbation=1), TypeError, "per_device_perturbation must be a bool"),
    (lambda: trainer(loss=None), TypeError, "loss_fn must be callable"),
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


def test_fsdp_shardings_split_largest_divisible_dimension():
  mesh = distributed.make_mesh(4)
  tree = {"big": np.zeros((6, 64)), "odd": np.zeros((7, 9, 5)), "small": np.zeros(8), "scalar": 0.0}
  specs = {k: s.spec for k, s in distributed.fsdp_shardings(tree, mesh, min_size=16).items()}
  assert specs == {
    "big": PartitionSpec(None, "model"),
    "odd": PartitionSpec(None, None, None),
    "small": PartitionSpec(None),
    "scalar": PartitionSpec(),
  }


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
