r"""Unified SAM on many devices and many hosts: ``jit`` with shardings and ``shard_map``.

Two ways to spread the batch over a ``data`` mesh axis:

* **Global perturbation** (``per_device_perturbation=False``, the default):
  ``jax.jit`` over the sharded batch. The gradient of the mean loss is already
  the all-reduced full-batch gradient, so one perturbation
  :math:`e = \rho_t (1 - \lambda_t + \lambda_t / \|g\|) g` is shared by every
  device and the step equals single-device Unified SAM on the full batch. The
  global norm reduces each parameter shard locally and all-reduces one scalar,
  so it works with parameters sharded FSDP-style over a ``model`` axis without
  gathering them. Communication per step: two gradient all-reduces (one per
  backward pass) and a few scalars.
* **Per-device perturbation** (``per_device_perturbation=True``, m-sharpness,
  Foret et al. 2021, m = per-device batch size): ``jax.shard_map`` over the
  ``data`` axis; each device perturbs along its own gradient and only the
  gradients at the perturbed points are averaged
  (``unified_sam(..., axis_name="data", sync_perturbation=False)``). It saves
  the first gradient all-reduce (one all-reduce of gradients per step instead
  of two), but it is not the update the paper's theorems analyse: those take
  one perturbation from the gradient of the whole (global) minibatch.

Both run unchanged on several hosts after ``jax.distributed.initialize()``:
each process feeds its own slice of the global batch with :func:`shard_batch`.

Example::

  mesh = optax_usam.distributed.make_mesh(num_model=2)
  shardings = optax_usam.distributed.fsdp_shardings(params, mesh)
  tx, init, step = optax_usam.distributed.sam_train_step(
      loss_fn, optax.sgd(0.1, momentum=0.9), rho=0.05, lambd_schedule="1-1/t",
      mesh=mesh, param_shardings=shardings)
  params = jax.device_put(params, shardings)
  opt_state = init(params)
  batch = optax_usam.distributed.shard_batch(local_batch, mesh)
  params, opt_state, loss = step(params, opt_state, batch)

References:
  Foret et al., `Sharpness-Aware Minimization for Efficiently Improving
  Generalization <https://arxiv.org/abs/2010.01412>`_, ICLR 2021 (m-sharpness).
  Oikonomou & Loizou, `Sharpness-Aware Minimization: General Analysis and
  Improved Rates <https://arxiv.org/abs/2410.03345>`_, ICLR 2025.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from optax_usam._checks import check_matches_params
from optax_usam._collectives import pmean
from optax_usam.perturbation import is_float_leaf
from optax_usam.transform import unified_sam

LossFn = Callable[[optax.Params, Any], chex.Array]
Step = Callable[[optax.Params, optax.OptState, Any], tuple[optax.Params, optax.OptState, chex.Array]]

# Sharding a leaf this small saves less memory than the collective it adds costs.
DEFAULT_MIN_SHARD_SIZE = 1024

# XLA's CPU client launches each local device's part of a program on a pool of max(cores, local
# devices) threads, runs the parts on the same pool, and a launch holds its thread while its device
# already has 32 programs in flight. A host that dispatches 32 or more steps ahead of its devices can
# so leave one device's part of an older step, which the other devices wait for inside a collective,
# without a thread, and every process hangs (seen with 2 processes of 2 devices on 2 cores). The
# step returned by sam_train_step therefore waits for the step this many calls back on CPU meshes.
CPU_MAX_STEPS_AHEAD = 8


def make_mesh(
    num_model: int = 1,
    devices: Sequence[jax.Device] | None = None,
    *,
    data_axis: str = "data",
    model_axis: str = "model",
) -> Mesh:
  """A 2-D ``(data, model)`` mesh over ``devices`` (default: every device of every process).

  The ``model`` axis (parameter sharding) runs over neighbouring devices, which
  ``jax.devices()`` lists process by process: when ``num_model`` divides the
  number of devices per process, the collectives over parameter shards stay
  inside a host and only the ``data`` axis crosses hosts.

  Args:
    num_model: size of the parameter (FSDP) axis; must divide the device count.
    devices: the devices, in order; default ``jax.devices()``.
    data_axis: name of the batch axis.
    model_axis: name of the parameter axis.
  """
  devices = list(jax.devices() if devices is None else devices)
  if isinstance(num_model, bool) or not isinstance(num_model, int) or num_model < 1:
    raise ValueError(f"num_model must be a positive int; got {num_model!r}.")
  if not devices or len(devices) % num_model:
    raise ValueError(
        f"num_model={num_model} must divide the number of devices ({len(devices)})."
    )
  if data_axis == model_axis:
    raise ValueError(f"data_axis and model_axis must differ; both are {data_axis!r}.")
  grid = np.asarray(devices, dtype=object).reshape(-1, num_model)
  return Mesh(grid, (data_axis, model_axis))


def fsdp_shardings(
    params: optax.Params,
    mesh: Mesh,
    *,
    axis: str = "model",
    min_size: int = DEFAULT_MIN_SHARD_SIZE,
) -> Any:
  """FSDP-style shardings for ``params``: each leaf split along one dimension over ``axis``.

  A leaf is split along its largest dimension divisible by the axis size;
  leaves smaller than ``min_size`` elements, scalars and leaves with no such
  dimension are replicated. Every leaf is replicated over the other mesh axes.

  Returns:
    A tree of :class:`jax.sharding.NamedSharding` with the structure of
    ``params``, for ``jax.device_put`` or ``jax.jit(..., out_shardings=...)``.
  """
  if axis not in mesh.axis_names:
    raise ValueError(f"axis={axis!r} is not an axis of the mesh; its axes are {mesh.axis_names}.")
  size = mesh.shape[axis]

  def leaf_sharding(x: Any) -> NamedSharding:
    shape = tuple(np.shape(x))
    spec: list[str | None] = [None] * len(shape)
    if size > 1 and int(np.prod(shape, dtype=np.int64)) >= min_size:
      candidates = [d for d in range(len(shape)) if shape[d] % size == 0]
      if candidates:
        spec[max(candidates, key=lambda d: shape[d])] = axis
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree.map(leaf_sharding, params)


def batch_sharding(mesh: Mesh, *, data_axis: str = "data") -> NamedSharding:
  """The sharding of a batch: leading dimension split over ``data_axis``."""
  if data_axis not in mesh.axis_names:
    raise ValueError(
        f"data_axis={data_axis!r} is not an axis of the mesh; its axes are {mesh.axis_names}."
    )
  return NamedSharding(mesh, PartitionSpec(data_axis))


def shard_batch(local_batch: Any, mesh: Mesh, *, data_axis: str = "data") -> Any:
  """Assembles the global batch from each process's slice of it.

  With one process ``local_batch`` is the whole batch. With several, each
  process passes its own consecutive slice (process ``i`` holds rows
  ``i * b : (i + 1) * b`` of the global batch) and gets back global arrays.
  The leading dimension of the global batch must divide evenly over
  ``data_axis``.
  """
  sharding = batch_sharding(mesh, data_axis=data_axis)
  num_shards = mesh.shape[data_axis]
  data_dim = mesh.axis_names.index(data_axis)
  owners: dict[int, set[int]] = {}
  for index, device in np.ndenumerate(mesh.devices):
    owners.setdefault(index[data_dim], set()).add(device.process_index)
  if any(len(procs) > 1 for procs in owners.values()):
    raise ValueError(
        f"each slice of {data_axis!r} must live on one process, so that processes hold "
        "disjoint parts of the batch; make the other mesh axes fit within a process "
        "(e.g. make_mesh(num_model=k) with k dividing jax.local_device_count())."
    )

  def put(x: Any) -> jax.Array:
    x = np.asarray(x)
    global_rows = x.shape[0] * jax.process_count() if x.ndim else 0
    if x.ndim == 0 or global_rows % num_shards:
      raise ValueError(
          f"batch leaves need a leading dimension divisible over {num_shards} devices of "
          f"{data_axis!r}; got a leaf of shape {x.shape} (global rows {global_rows})."
      )
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, local_batch)


def to_host(tree: Any) -> Any:
  """Copies every array of ``tree`` to a NumPy array holding its full global value.

  Works for arrays sharded over the devices of several processes (it gathers
  them across processes, so every process must call it) as well as for local
  arrays. Use it to save or evaluate FSDP-sharded parameters.
  """
  def fetch(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(fetch, tree)


def _sharding_of(x: Any) -> Sharding | None:
  """The sharding of a placed array, or of a tracer under an explicit-axes mesh; else None."""
  if isinstance(x, jax.core.Tracer):
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    explicit = getattr(mesh, "explicit_axes", ())
    return sharding if explicit else None
  if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
    return x.sharding
  return None


def _same_sharding(a: Sharding, b: Sharding, ndim: int) -> bool:
  concrete = lambda s: not isinstance(s, NamedSharding) or isinstance(s.mesh, Mesh)
  if concrete(a) and concrete(b):
    return a.is_equivalent_to(b, ndim)
  if not (isinstance(a, NamedSharding) and isinstance(b, NamedSharding)):
    # One side is abstract (inside jit), the other a device-level sharding with no mesh: not comparable.
    return False
  # Abstract meshes (inside jit) carry no devices: compare mesh shapes and layouts.
  pad = lambda s: tuple(s.spec) + (None,) * (ndim - len(s.spec))
  return a.mesh.shape_tuple == b.mesh.shape_tuple and pad(a) == pad(b)


def check_shardings(grads: optax.Updates, params: optax.Params, *, name: str = "grads") -> None:
  """Raises ValueError unless ``grads`` are laid out over devices exactly like ``params``.

  A gradient sharded differently from its parameter is resharded silently on
  every step (under ``jit``), or fails with an opaque device-assignment error
  (eagerly, or when the device sets differ). Call it once on the first step,
  outside ``jit``, where arrays carry their shardings; inside ``jit`` it checks
  only under a mesh with explicit axes (``jax.sharding.AxisType.Explicit``),
  elsewhere tracers carry no layout to compare.

  Also checks tree structure and shapes. Non-floating parameters are skipped.

  Example::

    grads = jax.grad(loss_fn)(params, batch)
    optax_usam.distributed.check_shardings(grads, params)
  """
  _check_layout(grads, params, name, "the parameter")


def _check_layout(tree: Any, reference: Any, name: str, reference_name: str) -> None:
  check_matches_params(tree, reference, name, dtypes=False)
  paths = jax.tree_util.tree_flatten_with_path(reference)[0]
  for (path, p), g in zip(paths, jax.tree.leaves(tree), strict=True):
    if not is_float_leaf(p):
      continue
    p_sharding, g_sharding = _sharding_of(p), _sharding_of(g)
    if p_sharding is None or g_sharding is None:
      continue
    if not _same_sharding(g_sharding, p_sharding, np.ndim(p)):
      where = jax.tree_util.keystr(path) or "<root>"
      raise ValueError(
          f"{name} leaf {where} has sharding {g_sharding}, but {reference_name} has sharding "
          f"{p_sharding}; place it with jax.device_put(x, sharding) or produce it under "
          "jax.jit(..., out_shardings=...)."
      )


class SAMTrainStep(NamedTuple):
  """What :func:`sam_train_step` builds.

  Attributes:
    tx: the optimizer, ``optax.chain(unified_sam(...), base_optimizer)``.
    init: ``params -> opt_state``, with the state's parameter-shaped leaves
      (momentum, ...) sharded like the parameters.
    step: ``(params, opt_state, batch) -> (params, opt_state, loss)``, jitted
      (a :class:`ShardedStep`); it donates ``params`` and ``opt_state``.
  """

  tx: optax.GradientTransformationExtraArgs
  init: Callable[[optax.Params], optax.OptState]
  step: ShardedStep


def sam_train_step(
    loss_fn: LossFn,
    base_optimizer: optax.GradientTransformation,
    *,
    rho: float | optax.ScalarOrSchedule,
    lambd_schedule: float | str | Callable[[chex.Numeric], chex.Numeric],
    mesh: Mesh,
    data_axis: str = "data",
    per_device_perturbation: bool = False,
    param_shardings: Any = None,
    eps: float = 1e-12,
) -> SAMTrainStep:
  r"""A jitted data-parallel (and optionally FSDP) Unified SAM step over ``mesh``.

  ``step`` computes :math:`g = \nabla L_B(x)`, the ascent point :math:`x + e`
  and the gradient there on the same batch :math:`B`, and applies
  ``base_optimizer`` to it::

    tx, init, step = optax_usam.distributed.sam_train_step(
        loss_fn, optax.sgd(0.1), rho=0.05, lambd_schedule=1.0, mesh=mesh)
    opt_state = init(params)
    params, opt_state, loss = step(params, opt_state, shard_batch(batch, mesh))

  The batch's leading dimension is split over ``data_axis``; ``loss_fn(params,
  batch)`` must be a mean over the examples, so that the mean over devices is
  the full-batch loss.

  Args:
    loss_fn: ``(params, batch) -> scalar`` mean loss.
    base_optimizer: applied to the SAM gradient (put weight decay here).
    rho: perturbation radius or schedule, as in :func:`optax_usam.unified_sam`.
    lambd_schedule: :math:`\lambda` as in :func:`optax_usam.unified_sam`.
    mesh: the device mesh; must have ``data_axis``.
    data_axis: the mesh axis the batch is split over.
    per_device_perturbation: ``False``: one global perturbation from the
      full-batch gradient, identical to single-device SAM. ``True``: each
      device perturbs along its own gradient (m-sharpness) inside
      ``jax.shard_map``; ``grad_norm`` and ``perturbation_norm`` in the state
      are then averages over devices.
    param_shardings: a tree of shardings the parameters live in (e.g. from
      :func:`fsdp_shardings`); ``None``: replicated over the whole mesh.
    eps: as in :func:`optax_usam.unified_sam`.

  Returns:
    A :class:`SAMTrainStep` ``(tx, init, step)``. ``step`` raises ValueError,
    before compiling, if ``params`` are not on ``param_shardings``, and if
    ``loss_fn`` uses a collective over an axis the step does not bind. On CPU
    devices it waits for the step :data:`CPU_MAX_STEPS_AHEAD` calls back, so
    that a loop that never reads a result cannot deadlock XLA's CPU client.
  """
  if data_axis not in mesh.axis_names:
    raise ValueError(
        f"data_axis={data_axis!r} is not an axis of the mesh; its axes are {mesh.axis_names}."
    )
  if not isinstance(per_device_perturbation, bool):
    raise TypeError(f"per_device_perturbation must be a bool; got {per_device_perturbation!r}.")
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable (params, batch) -> loss; got {type(loss_fn).__name__}.")
  # With a single data shard both forms coincide; a manual axis of size 1 also
  # trips an XLA partitioner check, so that case takes the jit path.
  per_device = per_device_perturbation and mesh.shape[data_axis] > 1
  axis_name = data_axis if per_device else None
  sam_tx = unified_sam(rho, lambd_schedule, eps=eps, axis_name=axis_name, sync_perturbation=False)
  tx = optax.chain(sam_tx, base_optimizer)
  replicated = NamedSharding(mesh, PartitionSpec())
  if per_device:
    bound = (f"with per_device_perturbation=True the step binds only data_axis={data_axis!r} "
             "(jax.shard_map); the other mesh axes stay with the compiler")
  else:
    bound = ("with per_device_perturbation=False the step runs under jax.jit on the global batch and "
             "binds no axis")

  def checked_loss(p: optax.Params, batch: Any) -> chex.Array:
    try:
      return loss_fn(p, batch)
    except NameError as err:
      axis = _unbound_axis(err)
      if axis is None:
        raise
      raise ValueError(
          f"loss_fn uses axis {axis!r}, which is not bound here: {bound}. Make loss_fn a plain mean "
          "over its batch, with no collective: the step averages it over devices itself."
      ) from err

  def one_step(
      params: optax.Params, opt_state: optax.OptState, batch: Any, local: optax.Params
  ) -> Any:
    """The step, with gradients taken at ``local`` (``params`` up to the sharding type)."""
    sam_state, base_state = opt_state
    loss, grads = jax.value_and_grad(checked_loss)(local, batch)
    sam_grads, sam_state = sam_tx.update(
        grads, sam_state, local, grad_fn=lambda p: jax.grad(checked_loss)(p, batch)
    )
    updates, base_state = base_optimizer.update(sam_grads, base_state, params)
    return optax.apply_updates(params, updates), (sam_state, base_state), loss

  if per_device:

    def local_step(params: optax.Params, opt_state: optax.OptState, batch: Any) -> Any:
      # Replicated inputs differentiated against a per-device loss get their
      # gradients summed over the axis by shard_map; marking them per-device
      # keeps each device's own gradient, which m-sharpness perturbs along.
      local = jax.tree.map(lambda x: jax.lax.pcast(x, data_axis, to="varying"), params)
      params, opt_state, loss = one_step(params, opt_state, batch, local)
      return params, opt_state, pmean(loss, data_axis)

    # Only the data axis is manual: a parameter axis stays under the compiler's
    # control, so FSDP-sharded parameters keep working inside.
    body = jax.shard_map(
        local_step,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(data_axis)),
        out_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec()),
        axis_names={data_axis},
    )
  else:

    def body(params: optax.Params, opt_state: optax.OptState, batch: Any) -> Any:
      return one_step(params, opt_state, batch, params)

  def shardings_of(params: optax.Params) -> tuple[Any, Any]:
    p_sh = param_shardings
    if p_sh is None:
      p_sh = jax.tree.map(lambda _: replicated, params)
    state_shape = jax.eval_shape(tx.init, params)
    s_sh = optax.tree_map_params(
        tx, lambda _, s: s, state_shape, p_sh, transform_non_params=lambda _: replicated
    )
    return p_sh, s_sh

  def init(params: optax.Params) -> optax.OptState:
    p_sh, s_sh = shardings_of(params)
    _check_layout(params, _placeholders(params, p_sh), "params", "param_shardings")
    return jax.jit(tx.init, out_shardings=s_sh)(params)

  on_cpu = any(d.platform == "cpu" for d in mesh.devices.flat)
  step = ShardedStep(body, shardings_of, batch_sharding(mesh, data_axis=data_axis), replicated,
                     max_steps_ahead=CPU_MAX_STEPS_AHEAD if on_cpu else None)
  return SAMTrainStep(tx, init, step)


def _unbound_axis(err: NameError) -> str | None:
  """The axis name of JAX's unbound-axis NameError, or None for any other NameError."""
  match = re.search(r"unbound axis name: (\S+?)\.?(?:\s|$)", str(err))
  return match.group(1) if match else None


class ShardedStep:
  """The jitted step of :func:`sam_train_step`, compiled once per tree structure.

  Call it as ``step(params, opt_state, batch)``; ``step.lower(params,
  opt_state, batch)`` gives the :class:`jax.stages.Lowered` program, for
  ``.compile().as_text()`` or ``.compile().memory_analysis()``.

  Dispatch stays asynchronous, but with ``max_steps_ahead`` (set to
  :data:`CPU_MAX_STEPS_AHEAD` on CPU meshes) a call, once it has dispatched
  its step, waits until the step that many calls back has finished: the host
  never runs far enough ahead to deadlock XLA's CPU client.
  """

  def __init__(
      self,
      body: Step,
      shardings_of: Callable[[optax.Params], tuple[Any, Any]],
      batch_sharding: NamedSharding,
      replicated: NamedSharding,
      *,
      max_steps_ahead: int | None = None,
  ) -> None:
    self._body = body
    self._shardings_of = shardings_of
    self._batch_sharding = batch_sharding
    self._replicated = replicated
    self._cache: dict[Any, tuple[Any, Callable[..., Any]]] = {}
    self._max_steps_ahead = max_steps_ahead
    # The losses of the steps that may still run: a step's outputs are ready once all of it has run.
    self._in_flight: collections.deque[jax.Array] = collections.deque()

  def _jitted(self, params: optax.Params, opt_state: optax.OptState, batch: Any) -> Any:
    key = jax.tree.structure((params, opt_state, batch))
    if key not in self._cache:
      p_sh, s_sh = self._shardings_of(params)
      self._cache[key] = (
          p_sh,
          jax.jit(
              self._body,
              in_shardings=(p_sh, s_sh, self._batch_sharding),
              out_shardings=(p_sh, s_sh, self._replicated),
              donate_argnums=(0, 1),
          ),
      )
    p_sh, jitted = self._cache[key]
    _check_layout(params, _placeholders(params, p_sh), "params", "param_shardings")
    return jitted

  def __call__(
      self, params: optax.Params, opt_state: optax.OptState, batch: Any
  ) -> tuple[optax.Params, optax.OptState, chex.Array]:
    params, opt_state, loss = self._jitted(params, opt_state, batch)(params, opt_state, batch)
    if self._max_steps_ahead is not None:
      self._in_flight.append(loss)
      if len(self._in_flight) > self._max_steps_ahead:
        self._in_flight.popleft().block_until_ready()
    return params, opt_state, loss

  def lower(self, params: optax.Params, opt_state: optax.OptState, batch: Any) -> jax.stages.Lowered:
    return self._jitted(params, opt_state, batch).lower(params, opt_state, batch)


def _placeholders(params: optax.Params, shardings: Any) -> Any:
  """Stand-ins for ``params`` that carry the wanted shardings, for :func:`check_shardings`."""
  return jax.tree.map(
      lambda p, s: jax.ShapeDtypeStruct(np.shape(p), jax.numpy.result_type(p), sharding=s),
      params,
      shardings,
  )
