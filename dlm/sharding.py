"""The device mesh and where arrays live on it.

Two axes: 'data' and 'fsdp' (`train.fsdp` devices; 1 by default). Training batches, evaluation
windows and samples are split by rows over all devices of both axes (`rows`, `global_rows`).
The training state (parameters, optimiser moments, EMA) is split over 'fsdp' by the table
`PARAM_AXES` below and replicated over 'data': with fsdp = 1 this is plain data parallelism
(each device holds everything, one all-reduce of the gradients per step), with fsdp > 1 it is
ZeRO-3 (Rajbhandari et al. 2020): every large matrix is split within each layer, and the train
step (`train.make_train_step`, under shard_map) all-gathers one layer's weights at a time
inside the layer scan (`layer_gather`, recomputed in the backward pass rather than kept), so
the gradient of each layer leaves the backward pass reduce-scattered (the transpose of the
gather) onto the same split. The weights used once per micro-batch outside the layer scan (the
embedding, the head, the input and time projections) are gathered whole for the micro-batch
(`gather`); the optimiser update runs on the shards under jit, XLA moving what Muon's
orthogonalisation of a split matrix needs (docs/fsdp.md measures what each costs). One
device is a mesh of one, so the same jitted code runs on a laptop, a GPU node or a pod.
`jax.make_mesh` defaults to Explicit axes in current JAX; Auto keeps the classic GSPMD
propagation that `jax.jit` with in/out shardings expects.
"""

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


def initialize_distributed(coordinator_address: str = '', num_processes: int = 0,
                           process_id: int = -1) -> None:
  """One process per host (or per GPU): join the others before any JAX computation.

  With no arguments JAX detects the cluster itself (Cloud TPU, SLURM, Open MPI, Kubernetes).
  On CPU the processes talk through gloo, which lets a laptop test a multi-process run.
  """
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address or None, num_processes or None,
                             None if process_id < 0 else process_id)


def is_main_process() -> bool:
  """Process 0 writes the workdir's files; the others compute the same things in memory."""
  return jax.process_index() == 0


def process_count() -> int:
  return jax.process_count()


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def gather_flags(flag: bool) -> list[bool]:
  """Every process's value of `flag`, in process order (a small collective)."""
  if jax.process_count() == 1:
    return [bool(flag)]
  from jax.experimental import multihost_utils
  return [bool(f) for f in multihost_utils.process_allgather(np.array([flag], np.int32))]


AXES = ('data', 'fsdp')
_FSDP = [1]  # set once per process by `use_fsdp` (train sets it from its config)


def use_fsdp(fsdp: int) -> None:
  """The fsdp size every later `make_mesh()` uses."""
  from dlm.errors import DlmError
  if fsdp < 1 or jax.device_count() % fsdp:
    raise DlmError(f'train.fsdp={fsdp} must divide the {jax.device_count()} devices')
  _FSDP[0] = fsdp


def make_mesh() -> jax.sharding.Mesh:
  f = _FSDP[0]
  return jax.make_mesh((jax.device_count() // f, f), AXES, axis_types=(AxisType.Auto,) * 2)


# Logical names of each parameter's dimensions, by its path (the first regex that matches; the
# optimiser's moments and the EMA follow their parameter, found by the same path suffix).
PARAM_AXES = (
    (r'blocks/[^/]+/kernel$', ('layers', 'embed', 'hidden')),  # stacked (layers, in, out)
    (r'(^|/)(embed|wte)$', ('vocab', 'embed')),
    (r'(^|/)head/kernel$', ('embed', 'vocab')),
    (r'(^|/)(in_proj|time_in|time_out)/kernel$', ('input', 'embed')),
    (r'(^|/)label$', ('label', 'embed')),
)
# Which logical dimension 'fsdp' splits: the first in this order whose size it divides. Never
# the stacked layer axis: the step gathers one layer at a time inside the layer scan, so each
# layer's matrices are split (input width first), and every device holds a slice of every
# layer. Then the vocabulary (the embedding, the head), then the width.
FSDP_ORDER = ('vocab', 'embed', 'hidden', 'input')


def param_spec(path: str, shape: tuple, fsdp: int) -> P:
  """The PartitionSpec of one state leaf: 'fsdp' on one dimension, or replicated."""
  import re
  if fsdp == 1:
    return P()
  names = next((n for pattern, n in PARAM_AXES if re.search(pattern, path)), None)
  if names is None or len(names) != len(shape):
    return P()  # scalars, noise state, small vectors
  for logical in FSDP_ORDER:
    if logical in names and shape[names.index(logical)] % fsdp == 0:
      spec = [None] * len(shape)
      spec[names.index(logical)] = 'fsdp'
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh):
  """NamedShardings of every leaf of the training state on this mesh (`param_spec`)."""
  def one(path, leaf):
    name = '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
    return NamedSharding(mesh, param_spec(name, leaf.shape, mesh.shape['fsdp']))
  return jax.tree_util.tree_map_with_path(one, abstract_state)


def fsdp_dim(spec: P) -> int | None:
  """The dimension a state leaf's spec splits over 'fsdp', None when it is replicated."""
  return next((i for i, a in enumerate(spec) if a == 'fsdp'), None)


def gather(x, spec: P):
  """Inside shard_map: the whole of a leaf split by `spec` (all-gather over 'fsdp'; its
  transpose, in the backward pass, is the reduce-scatter of the gradient onto the split)."""
  i = fsdp_dim(spec)
  return x if i is None else jax.lax.all_gather(x, 'fsdp', axis=i, tiled=True)


def layer_gather(block_specs: dict):
  """The function the layer scan applies to one layer's weights (`Transformer.layer_params`):
  each gathered whole for this layer only. block_specs: {'q/kernel': spec of the stacked
  (layers, in, out) leaf, ...}. Under jax.checkpoint, so the scan keeps each layer's shards
  for the backward pass and gathers again there, instead of keeping every gathered layer."""
  def one(path, x):
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    spec = next((s for suffix, s in block_specs.items() if ('/' + name).endswith('/' + suffix)),
                P())
    return gather(x, P(*tuple(spec)[1:]))  # without the layer axis the scan sliced off

  return jax.checkpoint(lambda tree: jax.tree_util.tree_map_with_path(one, tree))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh, batch_axis: int = 0) -> NamedSharding:
  spec = [None] * (batch_axis + 1)
  spec[batch_axis] = AXES
  return NamedSharding(mesh, P(*spec))


def rows(n: int, mesh=None, axis: int = 0, ndim: int = 1) -> NamedSharding:
  """Axis `axis` of an ndim-array with n rows split over every device: evaluation and sampling
  run data-parallel with a per-device batch. n must be a multiple of the device count (pad
  with `padded` / `pad_rows` and drop the padding from the results): a batch that does not
  split would run whole on every device, the work of n rows on each."""
  mesh = mesh or make_mesh()
  if n % mesh.size:
    from dlm.errors import DlmError
    raise DlmError(f'{n} rows do not split over the {mesh.size} devices: pad them to '
                   f'{padded(n, mesh)} (sharding.padded) and drop the padding from the results')
  spec = [None] * ndim
  spec[axis] = AXES
  return NamedSharding(mesh, P(*spec))


def padded(n: int, mesh=None) -> int:
  """n rounded up to a multiple of the mesh's devices: the rows a batch of n runs as."""
  size = (mesh or make_mesh()).size
  return -(-n // size) * size


def pad_rows(x: np.ndarray, n: int) -> np.ndarray:
  """x with its last row repeated up to n rows: real tokens, so the padding computes what a
  real row does (no NaN from an empty window) and is dropped afterwards."""
  x = np.asarray(x)
  return x if len(x) == n else np.concatenate([x, np.repeat(x[-1:], n - len(x), 0)])


def global_rows(x: np.ndarray, mesh=None) -> jax.Array:
  """A batch every process holds in full (evaluation windows, sampling prompts) as one global
  array split by rows over the mesh; its row count must split (`padded`)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, rows(len(x), mesh, 0, x.ndim),
                                      lambda index: x[index])


def fetch(tree):
  """Host copies of (possibly row-sharded) arrays, gathered from every process if need be."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(one, tree)


def process_block(sharding: NamedSharding, shape: tuple[int, ...], axis: int) -> tuple[int, int]:
  """(k, n): this process holds block k of the n equal blocks of `axis` of a global array of
  `shape` (`to_device` fills them from its local rows), so a pipeline can give each process
  its rows of one global batch, whatever the topology."""
  rows = {index[axis].indices(shape[axis])[:2]
          for index in sharding.addressable_devices_indices_map(shape).values()}
  start, size = min(a for a, _ in rows), max(b for _, b in rows) - min(a for a, _ in rows)
  if sum(b - a for a, b in rows) != size or shape[axis] % size or start % size:
    raise ValueError(f'this process holds rows {start}:{start + size} of {shape[axis]}: not one '
                     'of equal blocks')
  return start // size, shape[axis] // size


def to_device(local: np.ndarray, sharding: NamedSharding):
  """This process's rows of a global batch -> one global jax.Array sharded over the mesh."""
  return jax.make_array_from_process_local_data(sharding, local)
