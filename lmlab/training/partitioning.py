"""Device mesh, logical-axis rules and the shardings they imply.

Model code names every parameter and activation axis logically (``batch``,
``embed``, ``mlp``, ``heads``, ...; see ``lmlab.models.layers``). This module
owns the only place where those names meet hardware: a mesh with the axes
``data``, ``fsdp`` and ``tensor``, and one rules table mapping logical names
onto mesh axes. Switching strategy is a matter of mesh shape, never of model
code:

* data parallel: ``ici_shape=(-1, 1, 1)``; every device holds all parameters.
* FSDP (ZeRO-3): ``ici_shape=(1, -1, 1)``; parameters and optimizer state are
  split along ``embed`` over ``fsdp``, and gathered layer by layer by XLA.
* FSDP + tensor parallel: ``ici_shape=(1, -1, 2)``; ``mlp``, ``heads`` and
  ``vocab`` are also split over ``tensor`` (Megatron-style).

The batch is split over ``data`` and ``fsdp`` together (both are data
parallel for activations). ``dcn_shape`` multiplies the mesh across slices
or hosts (multi-slice TPU, multi-node GPU) so that only the axes named there
communicate over the slower network.

All of this is JAX's own machinery: ``jax.sharding.Mesh``, ``NamedSharding``,
flax's logical partitioning, ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import flax.linen as nn
import gin
import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = Union[None, str, tuple[str, ...]]
Rules = tuple[tuple[str, MeshAxes], ...]

# Order matters: for each array, rules are applied first to last and a mesh
# axis is used at most once, so activations ("batch", "length", "embed") take
# data+fsdp for the batch and leave "embed" whole, while parameters (which
# have no batch axis) split "embed" over fsdp.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("length", None),
    ("kv", None),
    ("positions", None),
    ("token_types", None),
    ("layers", None),
    ("relpos_buckets", None),
    ("ssm_state", None),
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """The device mesh and how logical axis names map onto it.

  Attributes:
    ici_shape: Sizes of the ``(data, fsdp, tensor)`` axes within one slice
      or host (fast interconnect). One entry may be -1: "all remaining
      devices".
    dcn_shape: Sizes of the same axes across slices or hosts (data-centre
      network). The mesh is their element-wise product with ``ici_shape``.
      Leave at ``(1, 1, 1)`` on a single slice or node.
    rules: ``(logical_name, mesh_axes)`` pairs, highest priority first;
      ``mesh_axes`` is None (replicate), one mesh axis, or a tuple of them.
      Every logical name a parameter uses must appear here.
    num_devices: Use only the first N devices (None: all). For debugging and
      tests; a run normally uses every device it is given.
  """

  ici_shape: tuple[int, ...] = (-1, 1, 1)
  dcn_shape: tuple[int, ...] = (1, 1, 1)
  rules: Rules = DEFAULT_RULES
  num_devices: Optional[int] = None


def _check_axis_sizes(name: str, shape: Sequence[int], allow_fill: bool) -> None:
  if len(shape) != len(MESH_AXES) or not all(isinstance(s, int) for s in shape):
    raise ValueError(f"MeshConfig.{name}={tuple(shape)} must be {len(MESH_AXES)} integers, one per "
                     f"mesh axis {MESH_AXES}.")
  fills = sum(s == -1 for s in shape)
  if any(s == 0 or s < -1 for s in shape) or fills > (1 if allow_fill else 0):
    allowed = "positive, with at most one -1 (all remaining devices)" if allow_fill else "positive"
    raise ValueError(f"MeshConfig.{name}={tuple(shape)}: sizes must be {allowed}.")


def resolve_mesh_shape(config: MeshConfig, num_devices: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """``(ici_shape, dcn_shape)`` with -1 filled in; errors if they do not fit the devices."""
  _check_axis_sizes("ici_shape", config.ici_shape, allow_fill=True)
  _check_axis_sizes("dcn_shape", config.dcn_shape, allow_fill=False)
  dcn_size = math.prod(config.dcn_shape)
  if num_devices % dcn_size:
    raise ValueError(f"MeshConfig.dcn_shape={tuple(config.dcn_shape)} spans {dcn_size} slices/hosts, "
                     f"which does not divide the {num_devices} devices.")
  per_slice = num_devices // dcn_size
  known = math.prod(s for s in config.ici_shape if s != -1)
  ici = list(config.ici_shape)
  if -1 in ici:
    if per_slice % known:
      raise ValueError(
          f"MeshConfig.ici_shape={tuple(config.ici_shape)} does not divide the {per_slice} devices "
          f"per slice/host ({num_devices} devices in all): the fixed axes multiply to {known}. "
          "Pick sizes whose product divides the device count.")
    ici[ici.index(-1)] = per_slice // known
  elif known != per_slice:
    raise ValueError(
        f"MeshConfig.ici_shape={tuple(config.ici_shape)} needs {known} devices per slice/host but "
        f"there are {per_slice} ({num_devices} devices in all). Use -1 for one axis to take "
        "the remaining devices.")
  return tuple(ici), tuple(config.dcn_shape)


def make_mesh(config: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all, or the first N)."""
  devices = list(jax.devices() if devices is None else devices)
  if config.num_devices is not None:
    if not 0 < config.num_devices <= len(devices):
      raise ValueError(f"MeshConfig.num_devices={config.num_devices} but {len(devices)} devices "
                       "are available.")
    devices = devices[:config.num_devices]
  ici, dcn = resolve_mesh_shape(config, len(devices))
  if math.prod(dcn) == 1:
    grid = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
  else:
    # TPU slices are granules of their own; elsewhere each process is one host.
    grid = mesh_utils.create_hybrid_device_mesh(
        ici, dcn, devices, process_is_granule=devices[0].platform != "tpu",
        allow_split_physical_axes=True)
  return Mesh(grid, MESH_AXES)


def validate_rules(rules: Rules) -> Rules:
  """Checks that each rule maps a logical name to known mesh axes."""
  checked = []
  for rule in rules:
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
      raise ValueError(f"Partitioning rule {rule!r} must be a (logical_name, mesh_axes) pair.")
    name, axes = rule
    for axis in (() if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)):
      if axis not in MESH_AXES:
        raise ValueError(f"Partitioning rule {tuple(rule)!r} names mesh axis {axis!r}, which is not "
                         f"one of the mesh axes {MESH_AXES}.")
    checked.append((name, tuple(axes) if isinstance(axes, list) else axes))
  return tuple(checked)


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


class Partitioner:
  """Turns logical axis names into shardings on one mesh, and places data on it.

  Attributes:
    mesh: The ``(data, fsdp, tensor)`` device mesh.
    rules: The validated logical-axis rules.
  """

  def __init__(self, config: Optional[MeshConfig] = None,
               devices: Optional[Sequence[jax.Device]] = None):
    config = config or MeshConfig()
    self.rules = validate_rules(config.rules)
    self.mesh = make_mesh(config, devices)
    self._rule_names = {name for name, _ in self.rules}

  def __repr__(self) -> str:
    return f"Partitioner(mesh={dict(self.mesh.shape)})"

  @property
  def batch_axes(self) -> MeshAxes:
    """Mesh axes the batch dimension is split over."""
    return nn.logical_to_mesh_axes(("batch",), self.rules)[0]

  @property
  def data_parallel_size(self) -> int:
    """How many ways the batch is split."""
    axes = self.batch_axes
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(self.mesh.shape[a] for a in axes)

  @contextlib.contextmanager
  def context(self) -> Iterator[None]:
    """Mesh and rules in scope, so the model's logical constraints apply when traced."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def check_batch_size(self, batch_size: int, what: str = "TrainConfig.batch_size") -> None:
    """Refuses a batch that cannot be split evenly over the data-parallel devices."""
    if batch_size % self.data_parallel_size:
      raise ValueError(
          f"{what}={batch_size} is not divisible by the data-parallel size "
          f"{self.data_parallel_size} (mesh {dict(self.mesh.shape)}, batch split over "
          f"{self.batch_axes}). Use a multiple of {self.data_parallel_size}.")

  def sharding(self, logical_axes: Sequence[Optional[str]], shape: Sequence[int],
               name: str = "array") -> NamedSharding:
    """Sharding of one array from its logical axis names.

    A dimension that its mesh axes do not divide is left whole (with a
    warning) rather than failing: e.g. a 30,522-entry vocabulary on 4-way
    tensor parallelism.
    """
    unknown = [a for a in logical_axes if a is not None and a not in self._rule_names]
    if unknown:
      raise ValueError(
          f"{name} has logical axis {unknown[0]!r} with no partitioning rule. Add a rule such as "
          f"({unknown[0]!r}, None) (replicate) or ({unknown[0]!r}, 'fsdp') to MeshConfig.rules.")
    spec = list(nn.logical_to_mesh_axes(tuple(logical_axes), self.rules))
    for dim, axes in enumerate(spec):
      if axes is None:
        continue
      size = math.prod(self.mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
      if shape[dim] % size:
        logger.warning("%s: dimension %d (%s, size %d) is not divisible by mesh axes %s (%d "
                       "devices); it is replicated instead.", name, dim, logical_axes[dim],
                       shape[dim], axes, size)
        spec[dim] = None
    return NamedSharding(self.mesh, PartitionSpec(*spec))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def param_shardings(self, boxed_params: Any) -> Any:
    """Shardings for (abstract) parameters boxed with logical axis metadata."""
    logical = nn.get_partition_spec(boxed_params)
    shapes = nn.meta.unbox(boxed_params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    specs = treedef.flatten_up_to(logical)
    shardings = []
    for (path, leaf), spec in zip(flat, specs):
      name = _path_name(path)
      if len(spec) != len(leaf.shape):
        raise ValueError(
            f"Parameter {name} (shape {tuple(leaf.shape)}) has no logical axis names, so no "
            "partitioning rule applies to it. Create it with nn.with_logical_partitioning(...) "
            "in the model code.")
      shardings.append(self.sharding(tuple(spec), leaf.shape, f"Parameter {name}"))
    return treedef.unflatten(shardings)

  def optimizer_state_shardings(self, optimizer: optax.GradientTransformation,
                                abstract_opt_state: Any, param_shardings: Any,
                                abstract_params: Any = None) -> Any:
    """Parameter-shaped optimizer state shards like its parameter; the rest is replicated.

    With ``abstract_params``, per-parameter state of another shape (Adafactor's
    factored row/column statistics) is replicated too: it is small, and the
    parameter's axis names do not describe it.
    """
    if abstract_params is None:
      return optax.tree_map_params(
          optimizer, lambda _, sharding: sharding, abstract_opt_state, param_shardings,
          transform_non_params=lambda _: self.replicated())

    def shard_like_param(leaf, sharding, param):
      return sharding if tuple(leaf.shape) == tuple(param.shape) else self.replicated()
    return optax.tree_map_params(
        optimizer, shard_like_param, abstract_opt_state, param_shardings, abstract_params,
        transform_non_params=lambda _: self.replicated())

  def batch_sharding(self, ndim: int) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec(self.batch_axes, *([None] * (ndim - 1))))

  def shard_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """A global batch assembled from this process's rows (its slice of the global batch)."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding(np.ndim(v)), np.asarray(v))
            for k, v in local_batch.items()}

  def jit(self, fn: Callable, *, in_shardings: Any = None, out_shardings: Any = None,
          donate_argnums: Sequence[int] = ()) -> Callable:
    """``jax.jit`` that traces (and runs) with this mesh and rules in scope."""
    kwargs = {"donate_argnums": tuple(donate_argnums)}
    if in_shardings is not None:
      kwargs["in_shardings"] = in_shardings
    if out_shardings is not None:
      kwargs["out_shardings"] = out_shardings
    jitted = jax.jit(fn, **kwargs)

    def run(*args):
      with self.context():
        return jitted(*args)

    def lower(*args):
      with self.context():
        return jitted.lower(*args)
    run.lower = lower
    return run


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """``ShapeDtypeStruct``s of ``abstract`` carrying the matching ``shardings``.

  What orbax restores into (resharding as needed) and what ``lower`` compiles for.
  """
  return jax.tree_util.tree_map(
      lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
      abstract, shardings)


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds for a tree of sharded (or abstract, with sharding) arrays."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total
