"""Shared machinery of the Hugging Face <-> lmlab checkpoint converters.

A converter is described by a *plan*: one ``Entry`` per lmlab parameter,
naming the Hugging Face tensor it comes from and the ``Layout`` that relates
the two shapes (a transpose, a head split, ...). The plan is checked against
the parameter shapes of the lmlab network (from ``jax.eval_shape`` of its
``init``, so nothing is allocated), and then every tensor is moved across.
Both directions walk the same plan, so import and export cannot drift apart.

Hugging Face folders are read and written with ``safetensors.numpy``:
conversion needs neither torch nor a network connection.

Parameter files on the lmlab side are either ``.npz`` (keys are the
``/``-joined paths of the parameter tree) or ``.msgpack``
(``flax.serialization`` of the nested dict).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np

Params = dict[str, Any]
StateDict = dict[str, np.ndarray]
Shape = tuple[int, ...]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"


class ConversionError(ValueError):
  """A checkpoint does not fit the architecture the converter was asked for."""


# ----------------------------------------------------------------------------
# Layouts: how one lmlab array is stored as one Hugging Face tensor.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
  """A reversible relation between an lmlab array and a Hugging Face tensor.

  Attributes:
    name: Short label used in error messages.
    hf_shape: Hugging Face shape for a given lmlab shape.
    to_lmlab: Hugging Face tensor -> lmlab array (given the lmlab shape).
    to_hf: lmlab array -> Hugging Face tensor.
  """

  name: str
  hf_shape: Callable[[Shape], Shape]
  to_lmlab: Callable[[np.ndarray, Shape], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


# Same array on both sides (norm scales, embeddings, biases of plain width).
COPY = Layout("copy", lambda s: s, lambda x, s: x, lambda x: x)

# torch ``nn.Linear`` stores ``[out, in]``; lmlab kernels are ``[in, out]``.
LINEAR = Layout("linear", lambda s: (s[1], s[0]), lambda x, s: x.T, lambda x: x.T)

# Query/key/value projection: ``[heads*head_dim, embed]`` <-> ``[embed, heads, head_dim]``.
HEADS_IN = Layout(
    "heads_in", lambda s: (s[1] * s[2], s[0]),
    lambda x, s: x.T.reshape(s), lambda x: x.reshape(x.shape[0], -1).T)

# Attention output projection: ``[embed, heads*head_dim]`` <-> ``[heads, head_dim, embed]``.
HEADS_OUT = Layout(
    "heads_out", lambda s: (s[2], s[0] * s[1]),
    lambda x, s: x.T.reshape(s), lambda x: x.reshape(-1, x.shape[-1]).T)

# Bias of a query/key/value projection: ``[heads*head_dim]`` <-> ``[heads, head_dim]``.
HEADS_BIAS = Layout(
    "heads_bias", lambda s: (s[0] * s[1],), lambda x, s: x.reshape(s), lambda x: x.reshape(-1))


def leading_rows_dropped(rows: int) -> Layout:
  """A table whose first ``rows`` Hugging Face rows have no lmlab counterpart.

  Used for RoBERTa's position table, whose first ``padding_idx + 1`` rows are
  never looked up for real tokens. On export those rows are written as zeros.
  """

  def to_hf(x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros((rows,) + x.shape[1:], x.dtype), x], axis=0)

  return Layout(f"drop_first_{rows}_rows", lambda s: (s[0] + rows,) + tuple(s[1:]),
                lambda x, s: x[rows:], to_hf)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One lmlab parameter and the Hugging Face tensor that holds it.

  Attributes:
    path: Path of the parameter in the lmlab tree, e.g.
      ``("encoder", "layers_0", "mlp", "wo", "kernel")``.
    hf_name: Name of the tensor in the Hugging Face state dict.
    layout: How the two are related.
    fallback: Another Hugging Face tensor to read when ``hf_name`` is absent
      (e.g. ``shared.weight`` for an omitted, tied ``lm_head.weight``).
  """

  path: tuple[str, ...]
  hf_name: str
  layout: Layout = COPY
  fallback: Optional[str] = None


# ----------------------------------------------------------------------------
# Trees.
# ----------------------------------------------------------------------------


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  """``{path tuple: leaf}`` of a nested dict, in insertion order."""
  flat: dict[tuple[str, ...], Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def unflatten(flat: Mapping[Sequence[str], Any]) -> Params:
  """Nested dict from ``{path: leaf}``."""
  tree: Params = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def bert_layout_problems(config: Any) -> list[str]:
  """What keeps an ``EncoderConfig`` from the BERT embedding layout that HF BERT and BiGS share.

  Both store word + learned position + token-type embeddings, a LayerNorm with
  bias after them, and biased dense layers; each converter adds its own checks.
  """
  problems = []
  if config.vocab_size is None:
    problems.append("vocab_size is None")
  if config.position_scheme != "learned":
    problems.append(f"position_scheme={config.position_scheme!r} (needs learned)")
  if not config.use_bias:
    problems.append("use_bias=False")
  if not config.embedding_norm:
    problems.append("embedding_norm=False")
  if config.num_token_types < 1:
    problems.append("num_token_types=0")
  return problems


def path_str(path: Sequence[str]) -> str:
  return "/".join(path)


def stack_layers(params: Params, num_layers: int) -> Params:
  """``encoder/layers_<i>/...`` -> ``encoder/layers/...`` with a leading layer axis.

  Converters work on the unrolled tree; this gives the layout of an encoder
  built with ``scan_layers=True``.
  """
  encoder = dict(params["encoder"])
  layers = [encoder.pop(f"layers_{i}") for i in range(num_layers)]
  flat = [flatten(layer) for layer in layers]
  encoder["layers"] = unflatten({k: np.stack([f[k] for f in flat]) for k in flat[0]})
  return dict(params, encoder=encoder)


def unstack_layers(params: Params, num_layers: int) -> Params:
  """Inverse of ``stack_layers``: ``encoder/layers/...`` -> ``encoder/layers_<i>/...``."""
  encoder = dict(params["encoder"])
  stacked = flatten(encoder.pop("layers"))
  for i in range(num_layers):
    encoder[f"layers_{i}"] = unflatten({k: np.asarray(v)[i] for k, v in stacked.items()})
  return dict(params, encoder=encoder)


def abstract_params(module: nn.Module, *init_args: Any, **init_kwargs: Any) -> Params:
  """Shapes (``jax.ShapeDtypeStruct`` leaves) of ``module.init(...)["params"]``, unboxed.

  Runs under ``jax.eval_shape``, so no parameter memory is allocated even for
  large models.
  """

  def init():
    variables = module.init(jax.random.PRNGKey(0), *init_args, **init_kwargs)
    return nn.meta.unbox(variables["params"])

  return jax.eval_shape(init)


# ----------------------------------------------------------------------------
# Moving tensors along a plan.
# ----------------------------------------------------------------------------


def _check_plan_covers(plan: Sequence[Entry], expected: Mapping[tuple[str, ...], Any]) -> None:
  planned = [entry.path for entry in plan]
  if len(set(planned)) != len(planned) or set(planned) != set(expected):
    missing = sorted(path_str(p) for p in set(expected) - set(planned))
    extra = sorted(path_str(p) for p in set(planned) - set(expected))
    raise AssertionError(f"Converter plan does not match the lmlab tree (a converter bug): "
                         f"unplanned {missing}, not in the network {extra}.")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
  return a.shape == b.shape and np.array_equal(a, b)


def import_state(state: Mapping[str, np.ndarray], plan: Sequence[Entry], expected: Params, *,
                 duplicates: Optional[Mapping[str, str]] = None,
                 ignorable: Iterable[str] = (), what: str = "model") -> Params:
  """lmlab parameters (float32 numpy) from a Hugging Face state dict.

  Args:
    state: Hugging Face tensors by name.
    plan: One entry per lmlab parameter, in the order errors should be found.
    expected: Abstract lmlab parameter tree (``abstract_params``).
    duplicates: Tensors that Hugging Face may store as copies of another one
      (``{name: name_it_duplicates}``, e.g. tied embeddings); if present they
      must equal their original, since lmlab keeps only one array.
    ignorable: Tensors that may be present and carry nothing lmlab needs.
    what: Architecture named in error messages.

  Raises:
    ConversionError: At the first Hugging Face tensor (in plan order) that is
      missing or has the wrong shape, at the first duplicate that differs from
      its original, or at the first tensor that the plan does not use.
  """
  duplicates = duplicates or {}
  expected_flat = flatten(expected)
  _check_plan_covers(plan, expected_flat)
  flat: dict[tuple[str, ...], np.ndarray] = {}
  used = set()
  for entry in plan:
    lm_shape = tuple(expected_flat[entry.path].shape)
    hf_shape = tuple(entry.layout.hf_shape(lm_shape))
    name = entry.hf_name
    if name not in state and entry.fallback is not None and entry.fallback in state:
      name = entry.fallback
    if name not in state:
      raise ConversionError(
          f"Not a checkpoint of this {what}: tensor {entry.hf_name!r} (shape {hf_shape}, for lmlab "
          f"{path_str(entry.path)}) is missing.")
    tensor = np.asarray(state[name])
    if tuple(tensor.shape) != hf_shape:
      raise ConversionError(
          f"Not a checkpoint of this {what}: tensor {name!r} has shape {tuple(tensor.shape)}, "
          f"expected {hf_shape} (for lmlab {path_str(entry.path)} {lm_shape}).")
    used.add(name)
    value = entry.layout.to_lmlab(tensor.astype(np.float32), lm_shape)
    flat[entry.path] = np.ascontiguousarray(value, dtype=np.float32)
  ignorable = set(ignorable)
  for name in state:
    if name in used or name in ignorable:
      continue
    original = duplicates.get(name)
    if original is not None and original in state:
      if not _same(np.asarray(state[name]), np.asarray(state[original])):
        raise ConversionError(
            f"Tensor {name!r} differs from {original!r}; this {what} keeps them as one array, "
            "so the checkpoint cannot be represented.")
      continue
    raise ConversionError(
        f"Not a checkpoint of this {what}: unexpected tensor {name!r} with shape "
        f"{tuple(np.shape(state[name]))}.")
  return unflatten({path: flat[path] for path in expected_flat})


def export_state(params: Params, plan: Sequence[Entry], expected: Params, *,
                 duplicates: Optional[Mapping[str, str]] = None) -> StateDict:
  """Hugging Face state dict (float32 numpy, plan order) from lmlab parameters.

  Args:
    params: lmlab parameter tree (numpy or jax arrays, possibly boxed).
    plan: As for ``import_state``.
    expected: Abstract lmlab parameter tree the params must match.
    duplicates: Extra names to emit as copies of another emitted tensor.

  Raises:
    ConversionError: If ``params`` lacks a parameter or one has the wrong shape.
  """
  params_flat = flatten(nn.meta.unbox(params))
  expected_flat = flatten(expected)
  _check_plan_covers(plan, expected_flat)
  for path, spec in expected_flat.items():
    if path not in params_flat:
      raise ConversionError(f"lmlab parameter {path_str(path)} is missing.")
    if tuple(np.shape(params_flat[path])) != tuple(spec.shape):
      raise ConversionError(f"lmlab parameter {path_str(path)} has shape "
                            f"{tuple(np.shape(params_flat[path]))}, expected {tuple(spec.shape)}.")
  extra = [path_str(p) for p in params_flat if p not in expected_flat]
  if extra:
    raise ConversionError(f"lmlab parameters not in this network: {extra[:5]}.")
  state: StateDict = {}
  for entry in plan:
    value = np.asarray(jax.device_get(params_flat[entry.path]), dtype=np.float32)
    state[entry.hf_name] = np.ascontiguousarray(entry.layout.to_hf(value))
  for name, original in (duplicates or {}).items():
    state[name] = state[original].copy()
  return state


# ----------------------------------------------------------------------------
# Hugging Face folders.
# ----------------------------------------------------------------------------


def read_hf_config(folder: str | os.PathLike) -> dict[str, Any]:
  """The ``config.json`` of a Hugging Face model folder."""
  config_path = os.path.join(os.fspath(folder), CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"No {CONFIG_FILE} in {os.fspath(folder)}.")
  with open(config_path) as f:
    return json.load(f)


def read_hf_folder(folder: str | os.PathLike) -> tuple[dict[str, Any], StateDict]:
  """``config.json`` and all safetensors weights (single file or sharded) of a folder."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  folder = os.fspath(folder)
  config = read_hf_config(folder)
  single = os.path.join(folder, WEIGHTS_FILE)
  index = os.path.join(folder, WEIGHTS_INDEX_FILE)
  if os.path.exists(single):
    files = [single]
  elif os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    files = [os.path.join(folder, shard) for shard in shards]
  else:
    raise FileNotFoundError(
        f"No {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE}) in {folder}; only safetensors weights are "
        "read (re-save a pytorch_model.bin with save_pretrained to get them).")
  state: StateDict = {}
  for path in files:
    state.update(load_file(path))
  return config, state


def write_hf_folder(folder: str | os.PathLike, config: Mapping[str, Any],
                    state: Mapping[str, np.ndarray]) -> None:
  """Writes ``config.json`` and a single ``model.safetensors`` (marked as PyTorch format)."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  folder = os.fspath(folder)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, CONFIG_FILE), "w") as f:
    json.dump(dict(config), f, indent=2, sort_keys=True)
    f.write("\n")
  tensors = {name: np.ascontiguousarray(value) for name, value in state.items()}
  save_file(tensors, os.path.join(folder, WEIGHTS_FILE), metadata={"format": "pt"})


def require_model_type(hf_config: Mapping[str, Any], allowed: Sequence[str], what: str) -> str:
  """``hf_config["model_type"]`` if it is one of ``allowed`` (or absent: first allowed)."""
  model_type = hf_config.get("model_type", allowed[0])
  if model_type not in allowed:
    raise ConversionError(f"config.json has model_type={model_type!r}; the {what} converter "
                          f"handles {list(allowed)}.")
  return model_type


# ----------------------------------------------------------------------------
# lmlab parameter files.
# ----------------------------------------------------------------------------


def save_params(path: str | os.PathLike, params: Params) -> None:
  """Writes a parameter tree as ``.npz`` (``/``-joined keys) or ``.msgpack``."""
  path = os.fspath(path)
  params = jax.device_get(nn.meta.unbox(params))
  if path.endswith(".npz"):
    flat = {path_str(p): np.asarray(v) for p, v in flatten(params).items()}
    with open(path, "wb") as f:
      np.savez(f, **flat)
  elif path.endswith(".msgpack"):
    from flax import serialization  # pylint: disable=import-outside-toplevel
    with open(path, "wb") as f:
      f.write(serialization.msgpack_serialize(params))
  else:
    raise ValueError(f"Unknown parameter file type {path!r}: use .npz or .msgpack.")


def load_params(path: str | os.PathLike) -> Params:
  """Reads a tree written by ``save_params`` as nested dicts of numpy arrays."""
  path = os.fspath(path)
  if path.endswith(".npz"):
    with np.load(path) as data:
      return unflatten({tuple(key.split("/")): data[key] for key in data.files})
  if path.endswith(".msgpack"):
    from flax import serialization  # pylint: disable=import-outside-toplevel
    with open(path, "rb") as f:
      restored = serialization.msgpack_restore(f.read())
    return jax.tree_util.tree_map(np.asarray, restored)
  raise ValueError(f"Unknown parameter file type {path!r}: use .npz or .msgpack.")
