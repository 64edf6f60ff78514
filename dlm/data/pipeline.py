"""Token shards -> shuffled, packed training batches, as a grain pipeline; validation windows.

Training examples are packed windows: each shard (documents already joined, each behind a
<|bos|> that marks its boundary) is cut into consecutive, non-overlapping windows of
`sequence_len` tokens, so no token is padding and every token is seen once per epoch. The
pipeline is

  windows -> [process i of n: every n-th window] -> shuffle(seed) -> repeat -> batch -> int32

all as a grain MapDataset, i.e. random access by index: batch k of process i is a pure function
of (seed, i, n, k), the iterator's state is one integer, and a run resumed from an Orbax
checkpoint (which stores that state for every process) sees exactly the batches the
uninterrupted run would have. Batches are made before `mp_prefetch`, so the worker count
changes speed, never the batches. Shuffling is reseeded every epoch (grain folds the epoch into
the seed).

Memory stays flat however large the corpus: `TokenWindows` holds shard paths and opens them as
memory maps on first use in each worker (an np.memmap attribute would pickle its whole contents
into every spawned worker).
"""

import functools

import grain
import numpy as np
from absl import flags

from dlm.errors import DlmError

# Threads that read windows ahead in each process, and batches they keep ready. Slicing a
# memory map is ~microseconds per window, so a few threads keep any accelerator fed; the
# buffer covers a page-cache miss on a cold shard.
READ_THREADS, PREFETCH_BATCHES = 2, 16


class TokenWindows:
  """Random access to the packed windows of a list of token shards (a grain data source)."""

  def __init__(self, paths: list[str], sequence_len: int):
    self.paths, self.sequence_len = list(paths), sequence_len
    counts = [len(np.load(p, mmap_mode='r', allow_pickle=False)) // sequence_len for p in paths]
    self.ends = np.cumsum(counts)
    self._shards = None

  def __len__(self) -> int:
    return int(self.ends[-1]) if len(self.ends) else 0

  def __getitem__(self, index: int) -> np.ndarray:
    if self._shards is None:  # first use in this process
      self._shards = [np.load(p, mmap_mode='r', allow_pickle=False) for p in self.paths]
    shard = int(np.searchsorted(self.ends, index, side='right'))
    start = (index - (int(self.ends[shard - 1]) if shard else 0)) * self.sequence_len
    return np.array(self._shards[shard][start:start + self.sequence_len])

  def __getstate__(self) -> dict:
    return dict(self.__dict__, _shards=None)

  def __repr__(self) -> str:  # grain prints sources in its debug output
    return f'TokenWindows({len(self.paths)} shards, {len(self)} windows of {self.sequence_len})'


def _to_batch(windows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return windows.reshape(shape).astype(np.int32)


def train_dataset(paths: list[str], sequence_len: int, batch_shape: tuple[int, int], seed: int,
                  shard_index: int = 0, shard_count: int = 1,
                  num_workers: int = 0) -> grain.IterDataset:
  """Batches of shape batch_shape + (sequence_len,) for process `shard_index` of `shard_count`.

  batch_shape is (accumulation steps, this process's sequences per micro-step).
  """
  windows = grain.MapDataset.source(TokenWindows(paths, sequence_len))
  windows = windows[shard_index::shard_count]  # disjoint; together they cover every window
  per_batch = int(np.prod(batch_shape))
  if len(windows) < per_batch:
    raise DlmError(f'the train split gives {len(windows)} windows of {sequence_len} tokens per '
                   f'process, fewer than one batch of {per_batch}: give more text, or lower '
                   'train.device_batch_size or model.sequence_len')
  batches = (windows.shuffle(seed).repeat().batch(per_batch, drop_remainder=True)
             .map(functools.partial(_to_batch, shape=(*batch_shape, sequence_len))))
  ds = batches.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS,
                                                 prefetch_buffer_size=PREFETCH_BATCHES))
  if num_workers:
    # grain's workers read absl flags; outside an absl app (tests, notebooks) nobody parsed them
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds


def eval_windows(stream: np.ndarray, L: int, max_tokens: int) -> np.ndarray:
  """Consecutive, non-overlapping windows from the start of the stream: every token counts once."""
  n = max(1, min(len(stream) // L, max_tokens // L))
  return np.asarray(stream[:n * L]).reshape(n, L).astype(np.int32)
