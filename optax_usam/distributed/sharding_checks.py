"""Checks that arrays are laid out over the devices the way their parameters are."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, Sharding

from optax_usam._trees import is_float_leaf
from optax_usam._validation import check_matches_params

__all__ = ["check_shardings"]


def check_shardings(grads: optax.Updates, params: optax.Params, *, name: str = "grads") -> None:
  """Raises ValueError unless ``grads`` are laid out over devices exactly like ``params``.

  A gradient sharded differently from its parameter is resharded silently on
  every step (under ``jit``), or fails with an opaque device-assignment error
  (eagerly, or when the device sets differ). Call it once on the first step,
  outside ``jit``, where arrays carry their shardings; inside ``jit`` it checks
  only under a mesh with explicit axes (``jax.sharding.AxisType.Explicit``),
  elsewhere tracers carry no layout to compare.

  Also checks tree structure and shapes. Non-floating parameters are skipped.

  Args:
    grads: a tree like ``params`` (gradients, updates, optimizer moments).
    params: the parameters, as placed arrays or :class:`jax.ShapeDtypeStruct`
      with shardings.
    name: what ``grads`` is called in the error message.

  Raises:
    ValueError: the trees differ in structure or shapes, or a leaf of
      ``grads`` has another sharding (another spec or other devices) than its
      parameter; the message names the first such leaf.

  Examples:
    Arrays produced by ``jax.jit`` from the parameters keep their layout:

    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> from optax_usam import distributed
    >>> mesh = distributed.make_mesh()
    >>> params = jax.device_put({"w": np.ones((8, 4), np.float32)}, NamedSharding(mesh, P()))
    >>> grads = jax.jit(jax.grad(lambda p: (p["w"] ** 2).sum()))(params)
    >>> distributed.check_shardings(grads, params)

    Shapes with shardings compare the same way, without devices:

    >>> from jax.sharding import AbstractMesh
    >>> plan = AbstractMesh((4, 2), ("data", "model"))
    >>> shape = lambda spec: jax.ShapeDtypeStruct((8, 4), np.float32, sharding=NamedSharding(plan, spec))
    >>> distributed.check_shardings({"w": shape(P())}, {"w": shape(P("model"))})
    Traceback (most recent call last):
    ...
    ValueError: grads leaf ['w'] has sharding NamedSharding(...), but the parameter has sharding ...
  """
  check_layout(grads, params, name, "the parameter")


def placed_like(params: optax.Params, shardings: Any) -> Any:
  """:class:`jax.ShapeDtypeStruct` of ``params`` on ``shardings``: the layout :func:`check_placed` wants."""
  return jax.tree.map(
    lambda p, s: jax.ShapeDtypeStruct(np.shape(p), jax.numpy.result_type(p), sharding=s),
    params,
    shardings,
  )


def check_placed(params: optax.Params, wanted: Any) -> None:
  """Raises the ValueError of :func:`check_shardings` unless ``params`` are laid out as ``wanted``.

  ``wanted`` comes from :func:`placed_like`: the parameters a step was compiled for.
  """
  got, expected = jax.tree.structure(params), jax.tree.structure(wanted)
  if got != expected:
    raise ValueError(
      f"params must have the tree structure the step was built for; got {got}, expected {expected}."
    )
  check_layout(params, wanted, "params", "param_shardings")


def check_layout(tree: Any, reference: Any, name: str, reference_name: str) -> None:
  """:func:`check_shardings` of ``tree`` against ``reference``, with both names for the message."""
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
