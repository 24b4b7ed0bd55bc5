"""A jitted Unified SAM train step over a ``(data, model)`` mesh: :func:`make_sharded_trainer`."""

from __future__ import annotations

import collections
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from optax_usam import _validation
from optax_usam._collectives import pmean
from optax_usam._passes import sam_passes
from optax_usam.chain_order import sam_state_paths
from optax_usam.distributed.mesh import batch_sharding
from optax_usam.distributed.sharding_checks import check_placed, placed_like
from optax_usam.transform import unified_sam

__all__ = ["CPU_MAX_STEPS_AHEAD", "ShardedTrainer", "make_sharded_trainer"]

LossFn = Callable[[optax.Params, Any], chex.Array]
StepResult = tuple[optax.Params, optax.OptState, chex.Array]

# XLA's CPU client launches each local device's part of a program on a pool of max(cores, local
# devices) threads, runs the parts on the same pool, and a launch holds its thread while its device
# already has 32 programs in flight. A host that dispatches 32 or more steps ahead of its devices can
# so leave one device's part of an older step, which the other devices wait for inside a collective,
# without a thread, and every process hangs (seen with 2 processes of 2 devices on 2 cores). The
# step of make_sharded_trainer therefore waits for the step this many calls back on CPU meshes.
CPU_MAX_STEPS_AHEAD = 8

# Set by the trainer from per_device_perturbation, so a caller's value would be overridden.
_TRAINER_OWNED = ("axis_name", "sync_perturbation")


class _Step:
  """The jitted step, behind the layout check and, on CPU, a bound on the steps in flight."""

  def __init__(self, jitted: Any, wanted_params: Any, max_steps_ahead: int | None) -> None:
    self.jitted = jitted
    self._wanted_params = wanted_params
    self._max_steps_ahead = max_steps_ahead
    # The losses of the steps that may still run: a step's outputs are ready once all of it has run.
    self._in_flight: collections.deque[jax.Array] = collections.deque()

  def __call__(self, params: optax.Params, opt_state: optax.OptState, batch: Any) -> StepResult:
    check_placed(params, self._wanted_params)
    params, opt_state, loss = self.jitted(params, opt_state, batch)
    if self._max_steps_ahead is not None:
      self._in_flight.append(loss)
      if len(self._in_flight) > self._max_steps_ahead:
        self._in_flight.popleft().block_until_ready()
    return params, opt_state, loss

  def lower(self, params: optax.Params, opt_state: optax.OptState, batch: Any) -> jax.stages.Lowered:
    check_placed(params, self._wanted_params)
    return self.jitted.lower(params, opt_state, batch)


class ShardedTrainer(NamedTuple):
  """What :func:`make_sharded_trainer` builds.

  Attributes:
    tx: the optimizer, ``optax.chain(unified_sam(...), base_optimizer)``.
    init: ``params -> opt_state``, with the state's parameter-shaped leaves
      (momentum, ...) sharded like the parameters.
    step: ``(params, opt_state, batch) -> (params, opt_state, loss)``.
      ``step.jitted`` is the ``jax.jit`` of the step with the shardings in
      and out, donating ``params`` and ``opt_state``; ``step`` calls it after
      checking the layout of ``params`` and, on CPU, waits for the step
      :data:`CPU_MAX_STEPS_AHEAD` calls back. ``step.lower(params,
      opt_state, batch)`` gives the :class:`jax.stages.Lowered` program, for
      ``.compile().as_text()`` or ``.compile().memory_analysis()``.
  """

  tx: optax.GradientTransformationExtraArgs
  init: Callable[[optax.Params], optax.OptState]
  step: Callable[[optax.Params, optax.OptState, Any], StepResult]


def make_sharded_trainer(
  loss_fn: LossFn,
  base_optimizer: optax.GradientTransformation,
  params: optax.Params,
  *,
  mesh: Mesh,
  data_axis: str = "data",
  per_device_perturbation: bool = False,
  param_shardings: Any = None,
  **sam_kwargs: Any,
) -> ShardedTrainer:
  r"""A jitted data-parallel (and optionally FSDP) Unified SAM step over ``mesh``.

  ``step`` computes :math:`g = \nabla L_B(x)`, the ascent point :math:`x + e`
  and the gradient there on the same batch :math:`B`, and applies
  ``base_optimizer`` to it. The batch's leading dimension is split over
  ``data_axis``; ``loss_fn(params, batch)`` must be a mean over the examples,
  so that the mean over devices is the full-batch loss.

  Args:
    loss_fn: ``(params, batch) -> scalar`` mean loss, with no collective.
    base_optimizer: applied to the SAM gradient (put weight decay here).
    params: the parameters, as arrays or :class:`jax.ShapeDtypeStruct`: their
      tree, shapes and dtypes fix the shardings the step is compiled for.
    mesh: the device mesh; must have ``data_axis``.
    data_axis: the mesh axis the batch is split over.
    per_device_perturbation: ``False``: one global perturbation from the
      full-batch gradient, identical to single-device SAM. ``True``: each
      device perturbs along its own gradient (m-sharpness) inside
      ``jax.shard_map``; ``grad_norm`` and ``perturbation_norm`` in the state
      are then averages over devices.
    param_shardings: a tree of shardings the parameters live in (e.g. from
      :func:`~optax_usam.distributed.fsdp_shardings`); ``None``: replicated
      over the whole mesh.
    **sam_kwargs: the keyword arguments of :func:`optax_usam.unified_sam`
      (``rho``, ``lambd_schedule``, ``eps``, ``adaptive``, ``perturb_mask``,
      ...), passed on unchanged; ``axis_name`` and ``sync_perturbation``
      follow from ``per_device_perturbation``. With a ``direction`` that
      does not read the fresh gradient (Momentum-SAM's), the step takes one
      forward/backward pass, and the loss it returns is the one at the
      ascent point.

  Returns:
    A :class:`ShardedTrainer` ``(tx, init, step)``. ``step`` raises
    ValueError, before compiling, if ``params`` are not on
    ``param_shardings``, and if ``loss_fn`` uses a collective over an axis the
    step does not bind. On CPU devices it waits for the step
    :data:`CPU_MAX_STEPS_AHEAD` calls back, so that a loop that never reads a
    result cannot deadlock XLA's CPU client.

  Raises:
    ValueError: ``data_axis`` is not an axis of ``mesh``, ``base_optimizer``
      holds a Unified SAM transformation (the trainer puts one first itself,
      from ``sam_kwargs``), or ``sam_kwargs`` holds ``axis_name`` or
      ``sync_perturbation``; and what :func:`optax_usam.unified_sam` raises
      for its arguments.
    TypeError: ``loss_fn`` is not callable, ``base_optimizer`` is not an
      ``optax.GradientTransformation``, ``mesh`` is not a
      :class:`jax.sharding.Mesh`, or ``per_device_perturbation`` is not a
      bool; and what :func:`optax_usam.unified_sam` raises.

  Examples:
    On every device (one or many), parameters split FSDP-style where they are
    large enough:
    >>> from optax_usam import distributed
    >>> loss_fn = lambda p, batch: jnp.mean((batch["x"] @ p["w"] - batch["y"]) ** 2)
    >>> params = {"w": np.zeros((4, 2), np.float32)}
    >>> mesh = distributed.make_mesh()
    >>> shardings = distributed.fsdp_shardings(params, mesh)
    >>> tx, init, step = distributed.make_sharded_trainer(
    ...     loss_fn, optax.sgd(0.1), params, mesh=mesh, param_shardings=shardings,
    ...     rho=0.05, lambd_schedule="1-1/t", adaptive=True)
    >>> params = jax.device_put(params, shardings)
    >>> opt_state = init(params)
    >>> batch = {"x": np.ones((16, 4), np.float32), "y": np.ones((16, 2), np.float32)}
    >>> for _ in range(3):
    ...   params, opt_state, loss = step(params, opt_state, distributed.shard_batch(batch, mesh))
    >>> print(f"{float(loss):.4f}")
    0.1283
  """
  _validation.check_callable(loss_fn, "loss_fn", "(params, batch) -> loss")
  _validation.check_transformation(base_optimizer, "base_optimizer", "optax.sgd(0.1)")
  if not isinstance(mesh, Mesh):
    raise TypeError(
      f"mesh must be a jax.sharding.Mesh, e.g. optax_usam.distributed.make_mesh(); got {type(mesh).__name__}."
    )
  if data_axis not in mesh.axis_names:
    raise ValueError(f"data_axis={data_axis!r} is not an axis of the mesh; its axes are {mesh.axis_names}.")
  if not isinstance(per_device_perturbation, bool):
    raise TypeError(f"per_device_perturbation must be a bool; got {per_device_perturbation!r}.")
  _check_no_sam(base_optimizer, params)
  for name in _TRAINER_OWNED:
    if name in sam_kwargs:
      raise ValueError(
        f"make_sharded_trainer sets unified_sam's {name} itself (from per_device_perturbation "
        f"and data_axis); remove {name}={sam_kwargs[name]!r}."
      )
  # With a single data shard both forms coincide; a manual axis of size 1 also
  # trips an XLA partitioner check, so that case takes the jit path.
  per_device = per_device_perturbation and mesh.shape[data_axis] > 1
  sam_tx = unified_sam(**sam_kwargs, axis_name=data_axis if per_device else None, sync_perturbation=False)
  tx = optax.chain(sam_tx, base_optimizer)
  one_step = _one_step(_bound_loss(loss_fn, per_device, data_axis), sam_tx, base_optimizer)
  if per_device:
    # Only the data axis is manual: a parameter axis stays under the compiler's
    # control, so FSDP-sharded parameters keep working inside.
    body = jax.shard_map(
      _per_device(one_step, data_axis),
      mesh=mesh,
      in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(data_axis)),
      out_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec()),
      axis_names={data_axis},
    )
  else:
    body = lambda params, opt_state, batch: one_step(params, opt_state, batch, params)

  replicated = NamedSharding(mesh, PartitionSpec())
  p_sh = jax.tree.map(lambda _: replicated, params) if param_shardings is None else param_shardings
  s_sh = optax.tree_map_params(
    tx, lambda _, s: s, jax.eval_shape(tx.init, params), p_sh, transform_non_params=lambda _: replicated
  )
  jitted_init = jax.jit(tx.init, in_shardings=(p_sh,), out_shardings=s_sh)
  jitted_step = jax.jit(
    body,
    in_shardings=(p_sh, s_sh, batch_sharding(mesh, data_axis=data_axis)),
    out_shardings=(p_sh, s_sh, replicated),
    donate_argnums=(0, 1),
  )

  wanted = placed_like(params, p_sh)

  def init(params: optax.Params) -> optax.OptState:
    check_placed(params, wanted)
    return jitted_init(params)

  on_cpu = any(d.platform == "cpu" for d in mesh.devices.flat)
  return ShardedTrainer(tx, init, _Step(jitted_step, wanted, CPU_MAX_STEPS_AHEAD if on_cpu else None))


def _check_no_sam(base_optimizer: optax.GradientTransformation, params: optax.Params) -> None:
  """Refuses a ``base_optimizer`` holding Unified SAM: it would come after the trainer's own, not first."""
  paths = sam_state_paths(jax.eval_shape(base_optimizer.init, params))
  if paths:
    raise ValueError(
      f"base_optimizer holds a Unified SAM transformation (base_optimizer.init(params)"
      f"{jax.tree_util.keystr(paths[0])}): "
      "make_sharded_trainer puts unified_sam first itself, from its keyword arguments (rho=..., "
      "lambd_schedule=...), and base_optimizer is applied to the gradient it returns; in base_optimizer "
      "it would come after another transformation and train, but not as SAM. Pass the base optimizer alone."
    )


def _bound_loss(loss_fn: LossFn, per_device: bool, data_axis: str) -> LossFn:
  """``loss_fn``, with JAX's NameError for an axis the step does not bind turned into a ValueError."""
  if per_device:
    bound = (
      f"with per_device_perturbation=True the step binds only data_axis={data_axis!r} "
      "(jax.shard_map); the other mesh axes stay with the compiler"
    )
  else:
    bound = (
      "with per_device_perturbation=False the step runs under jax.jit on the global batch and binds no axis"
    )

  def checked_loss(p: optax.Params, batch: Any) -> chex.Array:
    try:
      return loss_fn(p, batch)
    except NameError as err:
      match = re.search(r"unbound axis name: (\S+?)\.?(?:\s|$)", str(err))
      if match is None:
        raise
      raise ValueError(
        f"loss_fn uses axis {match.group(1)!r}, which is not bound here: {bound}. Make loss_fn a plain "
        "mean over its batch, with no collective: the step averages it over devices itself."
      ) from err

  return checked_loss


def _one_step(
  loss_fn: LossFn,
  sam_tx: optax.GradientTransformationExtraArgs,
  base_optimizer: optax.GradientTransformation,
) -> Callable[..., StepResult]:
  """The step, with the gradients taken at ``local`` (``params`` up to the sharding type)."""

  def one_step(
    params: optax.Params, opt_state: optax.OptState, batch: Any, local: optax.Params
  ) -> StepResult:
    sam_state, base_state = opt_state
    value_and_grad = lambda p: jax.value_and_grad(loss_fn)(p, batch)
    (sam_grads, sam_state), loss = sam_passes(
      sam_state,
      lambda: value_and_grad(local),
      value_and_grad,
      lambda grads, grad_fn: sam_tx.update(grads, sam_state, local, grad_fn=grad_fn),
    )
    updates, base_state = base_optimizer.update(sam_grads, base_state, params)
    return optax.apply_updates(params, updates), (sam_state, base_state), loss

  return one_step


def _per_device(one_step: Callable[..., StepResult], data_axis: str) -> Callable[..., StepResult]:
  """The body of the ``shard_map`` over ``data_axis``: each device steps along its own gradient."""

  def local_step(params: optax.Params, opt_state: optax.OptState, batch: Any) -> StepResult:
    # Replicated inputs differentiated against a per-device loss get their
    # gradients summed over the axis by shard_map; marking them per-device
    # keeps each device's own gradient, which m-sharpness perturbs along.
    local = jax.tree.map(lambda x: jax.lax.pcast(x, data_axis, to="varying"), params)
    params, opt_state, loss = one_step(params, opt_state, batch, local)
    return params, opt_state, pmean(loss, data_axis)

  return local_step
