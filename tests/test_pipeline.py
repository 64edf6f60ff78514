"""The grain pipeline: packed windows, seeded shuffling, resume through Orbax, one stream for
every process split."""

import jax.numpy as jnp
import numpy as np

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


def test_a_cap_on_unique_windows_repeats_only_those(tmp_path):
  """data.train_windows: the first n windows of the split, each seen once per epoch, reshuffled."""
  import pytest
  from dlm.errors import DlmError
  paths = _shards(tmp_path)
  starts = np.stack(_take(iter(data.train_dataset(paths, 8, (1, 2), seed=0, unique_windows=4)),
                          8))[..., 0].reshape(-1)  # 4 epochs of the 4 windows
  assert sorted(set(starts.tolist())) == [0, 8, 16, 24]
  for epoch in starts.reshape(4, 4):
    assert sorted(epoch.tolist()) == [0, 8, 16, 24]
  assert len({tuple(e) for e in starts.reshape(4, 4).tolist()}) > 1  # reshuffled
  with pytest.raises(DlmError, match='exceeds the 20 windows'):
    data.train_dataset(paths, 8, (1, 2), seed=0, unique_windows=21)


def test_a_restored_iterator_continues_with_the_exact_next_batch(tmp_path):
  """The checkpoint holds the windows the steps consumed, not the batch prefetched ahead."""
  paths = _shards(tmp_path)
  expected = _take(iter(data.train_dataset(paths, 8, (2, 2), seed=3)), 9)
  state = {'params': {'w': jnp.arange(3.0)}}
  ckpts = checkpoint.Checkpoints(str(tmp_path / 'run'))
  put = []
  it = data.TrainBatches(paths, 8, (2, 2), seed=3, put=lambda b: put.append(b) or b)
  got = _take(it, 4)
  assert len(put) == 5 and it.position == 4 * 4  # one batch ahead, not counted
  np.testing.assert_array_equal(np.stack(got), np.stack(expected[:4]))
  ckpts.save(4, state, it)
  _take(it, 2)  # the run goes on, then dies
  ckpts.close()
  resumed = data.TrainBatches(paths, 8, (2, 2), seed=3)
  ckpts = checkpoint.Checkpoints(str(tmp_path / 'run'))
  restored = ckpts.restore(4, checkpoint.abstract_state(lambda k: state, _mesh()), resumed)
  ckpts.close()
  np.testing.assert_array_equal(restored['params']['w'], state['params']['w'])
  np.testing.assert_array_equal(np.stack(_take(resumed, 5)), np.stack(expected[4:]))


def test_the_stream_is_one_for_every_process_split_and_batch_size(tmp_path):
  """Process p of n holds block p of each micro-batch's rows of the one global stream, and a
  run resumed at a window count with another batch shape goes on with the next windows: a
  topology change neither repeats nor skips data (across an epoch boundary too: 21 windows)."""
  paths = _shards(tmp_path)
  one = np.stack(_take(iter(data.train_dataset(paths, 8, (2, 4), seed=5)), 6))  # 48 windows
  halves = [np.stack(_take(iter(data.train_dataset(paths, 8, (2, 4), seed=5, block=p, blocks=2)),
                           6)) for p in range(2)]
  assert halves[0].shape == (6, 2, 2, 8)
  np.testing.assert_array_equal(np.concatenate(halves, axis=2), one)
  stream = one.reshape(-1, 8)  # windows in the order the steps consume them
  it = data.TrainBatches(paths, 8, (1, 2), seed=5, block=1, blocks=2)
  it.restore(3 * 8)  # after 3 steps of 8 windows, now steps of 2 on two processes
  got = np.stack(_take(it, 10))[:, 0, 0]  # this process's one row per step
  np.testing.assert_array_equal(got, stream[24 + 1:44:2])
  assert it.position == 24 + 10 * 2


def test_worker_processes_deliver_the_same_batches(tmp_path):
  paths = _shards(tmp_path)
  local = _take(iter(data.train_dataset(paths, 8, (1, 2), seed=0)), 6)
  it = iter(data.train_dataset(paths, 8, (1, 2), seed=0, num_workers=2))
  np.testing.assert_array_equal(np.stack(_take(it, 6)), np.stack(local))
  it.close()


def _mesh():
  from dlm import sharding
  return sharding.make_mesh()
