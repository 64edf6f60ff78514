"""The device mesh and where arrays live on it.

One axis, 'data': training batches, evaluation windows and samples are split by rows across
every device of every process (`rows`, `global_rows`), and the training state is replicated.
One device is a mesh of one, so the same jitted code runs on a laptop, a GPU node or a pod.
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


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def make_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh, batch_axis: int = 0) -> NamedSharding:
  spec = [None] * (batch_axis + 1)
  spec[batch_axis] = 'data'
  return NamedSharding(mesh, P(*spec))


def rows(n: int, mesh=None, axis: int = 0, ndim: int = 1) -> NamedSharding:
  """Axis `axis` of an ndim-array with n rows split over the data axis: evaluation and sampling
  run data-parallel with a per-device batch. Replicated when n does not divide (batch 1)."""
  mesh = mesh or make_mesh()
  spec = [None] * ndim
  if n % mesh.shape['data'] == 0:
    spec[axis] = 'data'
  return NamedSharding(mesh, P(*spec))


def global_rows(x: np.ndarray, mesh=None) -> jax.Array:
  """A batch every process holds in full (evaluation windows, sampling prompts) as one global
  array split by rows over the mesh."""
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


def to_device(local: np.ndarray, sharding: NamedSharding):
  """This process's rows of a global batch -> one global jax.Array sharded over the mesh."""
  return jax.make_array_from_process_local_data(sharding, local)
