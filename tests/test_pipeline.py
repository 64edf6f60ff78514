"""The grain pipeline: packed windows, seeded shuffling, resume through Orbax, process shards."""

import json
import os
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np

from conftest import ROOT
from dlm import checkpoint, data
from dlm.data.pipeline import TokenWindows


def _shards(tmp_path, sizes=(100, 70)):
  paths, start = [], 0
  for i, n in enumerate(sizes):
    paths.append(str(tmp_path / f'train_{i:05d}.npy'))
    np.save(paths[-1], np.arange(start, start + n, dtype=np.uint16))
    start += n
  return paths


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_windows_are_packed_consecutive_slices_of_every_shard(tmp_path):
  w = TokenWindows(_shards(tmp_path), 8)
  assert len(w) == 100 // 8 + 70 // 8  # each shard's tail shorter than a window is dropped
  np.testing.assert_array_equal(w[0], np.arange(8))
  np.testing.assert_array_equal(w[12], np.arange(100, 108))  # first window of shard 2


def test_batches_depend_on_the_seed_and_epochs_are_reshuffled(tmp_path):
  paths = _shards(tmp_path)
  a = _take(iter(data.train_dataset(paths, 8, (1, 4), seed=0)), 10)
  b = _take(iter(data.train_dataset(paths, 8, (1, 4), seed=0)), 10)
  c = _take(iter(data.train_dataset(paths, 8, (1, 4), seed=1)), 10)
  assert a[0].shape == (1, 4, 8) and a[0].dtype == np.int32
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))
  starts = np.stack(a)[..., 0].reshape(-1)  # 21 windows per epoch, 40 drawn
  assert not np.array_equal(starts[:20], starts[21:41])


def test_a_restored_iterator_continues_with_the_exact_next_batch(tmp_path):
  paths = _shards(tmp_path)
  make = lambda: iter(data.train_dataset(paths, 8, (2, 2), seed=3))
  expected = _take(make(), 9)
  state = {'params': {'w': jnp.arange(3.0)}}
  ckpts = checkpoint.Checkpoints(str(tmp_path / 'run'))
  it = make()
  _take(it, 4)
  ckpts.save(4, state, it)
  _take(it, 2)  # the run goes on, then dies
  ckpts.close()
  resumed = make()
  ckpts = checkpoint.Checkpoints(str(tmp_path / 'run'))
  restored = ckpts.restore(4, checkpoint.abstract_state(lambda k: state, _mesh()), resumed)
  ckpts.close()
  np.testing.assert_array_equal(restored['params']['w'], state['params']['w'])
  np.testing.assert_array_equal(np.stack(_take(resumed, 5)), np.stack(expected[4:]))


def test_worker_processes_deliver_the_same_batches(tmp_path):
  paths = _shards(tmp_path)
  local = _take(iter(data.train_dataset(paths, 8, (1, 2), seed=0)), 6)
  it = iter(data.train_dataset(paths, 8, (1, 2), seed=0, num_workers=2))
  np.testing.assert_array_equal(np.stack(_take(it, 6)), np.stack(local))
  it.close()


def _mesh():
  from dlm import sharding
  return sharding.make_mesh()


_WORKER = '''
import json, sys
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from dlm import data
paths, out = json.loads(sys.argv[3]), sys.argv[4]
it = iter(data.train_dataset(paths, 8, (1, 3), seed=0, shard_index=jax.process_index(),
                             shard_count=jax.process_count()))
starts = [int(w[0]) for _ in range(4) for w in next(it)[0]]  # 12 windows: this process's epoch
json.dump(starts, open(out, 'w'))
jax.distributed.shutdown()
'''


def test_two_processes_see_disjoint_windows_that_cover_the_epoch(tmp_path):
  paths = _shards(tmp_path, sizes=(96, 96))  # 24 windows of 8: 12 per process
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='', PYTHONPATH=str(ROOT))
  procs = [subprocess.Popen([sys.executable, '-c', _WORKER, f'localhost:{port}', str(i),
                             json.dumps(paths), str(tmp_path / f'{i}.json')], env=env)
           for i in range(2)]
  assert [p.wait(timeout=120) for p in procs] == [0, 0]
  seen = [json.load(open(tmp_path / f'{i}.json')) for i in range(2)]
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(0, 192, 8))
