"""Meshes, parameter and batch shardings, and moving sharded arrays in and out of the devices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

__all__ = [
  "DEFAULT_MIN_SHARD_SIZE",
  "batch_sharding",
  "fsdp_shardings",
  "make_mesh",
  "shard_batch",
  "to_host",
]

# Sharding a leaf this small saves less memory than the collective it adds costs.
DEFAULT_MIN_SHARD_SIZE = 1024


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

  Returns:
    A :class:`jax.sharding.Mesh` of shape ``(len(devices) // num_model, num_model)``.

  Raises:
    ValueError: ``num_model`` is not a positive int dividing the device count,
      or the two axis names are equal.

  Examples:
    >>> from optax_usam import distributed
    >>> mesh = distributed.make_mesh()  # every device on "data"
    >>> mesh.axis_names, mesh.shape["model"], mesh.shape["data"] == jax.device_count()
    (('data', 'model'), 1, True)
  """
  devices = list(jax.devices() if devices is None else devices)
  if isinstance(num_model, bool) or not isinstance(num_model, int) or num_model < 1:
    raise ValueError(f"num_model must be a positive int; got {num_model!r}.")
  if not devices or len(devices) % num_model:
    raise ValueError(f"num_model={num_model} must divide the number of devices ({len(devices)}).")
  if data_axis == model_axis:
    raise ValueError(f"data_axis and model_axis must differ; both are {data_axis!r}.")
  grid = np.asarray(devices, dtype=object).reshape(-1, num_model)
  return Mesh(grid, (data_axis, model_axis))


def fsdp_shardings(
  params: optax.Params,
  mesh: Mesh | AbstractMesh,
  *,
  axis: str = "model",
  min_size: int = DEFAULT_MIN_SHARD_SIZE,
) -> Any:
  """FSDP-style shardings for ``params``: each leaf split along one dimension over ``axis``.

  A leaf is split along its largest dimension divisible by the axis size;
  leaves smaller than ``min_size`` elements, scalars and leaves with no such
  dimension are replicated. Every leaf is replicated over the other mesh axes.

  Args:
    params: the parameters, as arrays or :class:`jax.ShapeDtypeStruct`.
    mesh: the device mesh; an :class:`jax.sharding.AbstractMesh` plans the
      layout without devices.
    axis: the mesh axis the parameters are split over.
    min_size: leaves with fewer elements stay replicated.

  Returns:
    A tree of :class:`jax.sharding.NamedSharding` with the structure of
    ``params``, for ``jax.device_put`` or ``jax.jit(..., out_shardings=...)``.

  Raises:
    ValueError: ``axis`` is not an axis of ``mesh``.

  Examples:
    >>> from jax.sharding import AbstractMesh
    >>> from optax_usam import distributed
    >>> mesh = AbstractMesh((4, 2), ("data", "model"))
    >>> params = {"w": np.zeros((16, 256)), "b": np.zeros(256)}
    >>> shardings = distributed.fsdp_shardings(params, mesh)
    >>> {k: s.spec for k, s in shardings.items()}
    {'b': P(None,), 'w': P(None, 'model')}
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


def batch_sharding(mesh: Mesh | AbstractMesh, *, data_axis: str = "data") -> NamedSharding:
  """The sharding of a batch: leading dimension split over ``data_axis``.

  Raises:
    ValueError: ``data_axis`` is not an axis of ``mesh``.

  Examples:
    >>> from jax.sharding import AbstractMesh
    >>> from optax_usam import distributed
    >>> distributed.batch_sharding(AbstractMesh((4, 2), ("data", "model"))).spec
    P('data',)
  """
  if data_axis not in mesh.axis_names:
    raise ValueError(f"data_axis={data_axis!r} is not an axis of the mesh; its axes are {mesh.axis_names}.")
  return NamedSharding(mesh, PartitionSpec(data_axis))


def shard_batch(local_batch: Any, mesh: Mesh, *, data_axis: str = "data") -> Any:
  """Assembles the global batch from each process's slice of it.

  With one process ``local_batch`` is the whole batch. With several, each
  process passes its own consecutive slice (process ``i`` holds rows
  ``i * b : (i + 1) * b`` of the global batch) and gets back global arrays.

  Args:
    local_batch: a tree of arrays (NumPy or JAX) with a leading batch dimension.
    mesh: the device mesh.
    data_axis: the mesh axis the batch is split over.

  Returns:
    The tree of global :class:`jax.Array`, split over ``data_axis`` as
    :func:`batch_sharding` says.

  Raises:
    ValueError: the global batch does not divide evenly over ``data_axis``, or
      a slice of ``data_axis`` spans several processes.

  Examples:
    >>> from optax_usam import distributed
    >>> mesh = distributed.make_mesh()
    >>> x = distributed.shard_batch(np.ones((16, 3)), mesh)
    >>> x.shape, x.sharding.spec
    ((16, 3), P('data',))
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

  Examples:
    >>> from optax_usam import distributed
    >>> x = distributed.shard_batch(np.arange(16.0), distributed.make_mesh())
    >>> host = distributed.to_host({"x": x})
    >>> type(host["x"]).__name__, float(host["x"].sum())
    ('ndarray', 120.0)
  """

  def fetch(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(fetch, tree)
