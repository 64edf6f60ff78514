"""Token shards -> shuffled, packed training batches, as a grain pipeline; validation windows.

Training examples are packed windows: each shard (documents already joined, each behind a
<|bos|> that marks its boundary) is cut into consecutive, non-overlapping windows of
`sequence_len` tokens, so no token is padding and every token is seen once per epoch. The
pipeline is

  windows -> shuffle(seed) -> repeat -> [from window `start`] -> micro-batches of B windows
          -> [this process's block of rows of each] -> A micro-batches per step -> int32

all as a grain MapDataset, i.e. random access by index. The stream of windows and its cut into
steps are the same for every process and device count: a step's global batch is the next A x B
windows, and process p holds its block of rows of it (the rows its devices hold, see
`sharding.process_block`). So the data position is one number, the windows consumed so far
(`TrainBatches.position`), which checkpoints save; a run resumed from it, on any number of
processes or devices, or with another batch size, continues the same stream without repeating
or skipping a window. Batches are made before `mp_prefetch`, so the worker count changes speed,
never the batches. Shuffling is reseeded every epoch (grain folds the epoch into the seed).

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


def _to_batch(rows: np.ndarray) -> np.ndarray:
  return rows.astype(np.int32)


def train_dataset(paths: list[str], sequence_len: int, batch_shape: tuple[int, int], seed: int,
                  block: int = 0, blocks: int = 1, num_workers: int = 0,
                  start: int = 0, unique_windows: int = 0) -> grain.IterDataset:
  """This process's part, of shape (A, B / blocks, sequence_len), of each step's batch.

  batch_shape is (accumulation steps A, sequences per micro-step B over all processes); this
  process holds rows block * B / blocks ... of every micro-batch. `start`: windows of the
  stream already consumed (a resumed run). unique_windows > 0: only the split's first that many
  windows, reshuffled and repeated epoch after epoch (a fixed budget of unique tokens, the
  data-constrained regime of Muennighoff et al. 2023; `data.train_windows`); 0: all of them.
  """
  A, B = batch_shape
  windows = grain.MapDataset.source(TokenWindows(paths, sequence_len))
  if unique_windows:
    if unique_windows > len(windows):
      raise DlmError(f'data.train_windows={unique_windows} exceeds the {len(windows)} windows of '
                     f'{sequence_len} tokens in the train split')
    windows = windows[:unique_windows]
  if len(windows) < A * B:
    raise DlmError(f'the train split gives {len(windows)} windows of {sequence_len} tokens, '
                   f'fewer than one step\'s {A * B}: give more text, or lower '
                   'train.device_batch_size, train.total_batch_size or model.sequence_len')
  stream = windows.shuffle(seed).repeat()[start:]
  rows = stream.batch(B // blocks, drop_remainder=True)[block::blocks]
  batches = rows.batch(A, drop_remainder=True).map(_to_batch)
  ds = batches.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS,
                                                 prefetch_buffer_size=PREFETCH_BATCHES))
  if num_workers:
    # grain's workers read absl flags; outside an absl app (tests, notebooks) nobody parsed them
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds


class TrainBatches:
  """The batches of a run, each put on the devices one step ahead (`put`, e.g.
  `sharding.to_device`: the copy of step N+1's batch overlaps step N), and the data position.

  `position` counts the windows of the stream the steps so far consumed, all processes
  together; the prefetched batch is not counted, so a checkpoint saved after step N resumes at
  step N+1's batch. `restore(position)` moves a fresh iterator there (`train_dataset(start)`).
  """

  def __init__(self, paths: list[str], sequence_len: int, batch_shape: tuple[int, int],
               seed: int, block: int = 0, blocks: int = 1, num_workers: int = 0,
               put=lambda batch: batch, unique_windows: int = 0):
    self._dataset = functools.partial(train_dataset, paths, sequence_len, batch_shape, seed,
                                      block, blocks, num_workers, unique_windows=unique_windows)
    self._dataset()  # a corpus too small for one step fails here, before any compilation
    self.windows_per_step = int(np.prod(batch_shape))
    self.position, self._put, self._iterator, self._ahead = 0, put, None, None

  def restore(self, position: int) -> None:
    self.position, self._iterator, self._ahead = int(position), None, None

  def __iter__(self):
    return self

  def __next__(self):
    if self._iterator is None:
      self._iterator = iter(self._dataset(start=self.position))
      self._ahead = self._put(next(self._iterator))
    batch, self._ahead = self._ahead, self._put(next(self._iterator))
    self.position += self.windows_per_step
    return batch


def eval_windows(stream: np.ndarray, L: int, max_tokens: int) -> np.ndarray:
  """Consecutive, non-overlapping windows from the start of the stream: every token counts once."""
  n = max(1, min(len(stream) // L, max_tokens // L))
  return np.asarray(stream[:n * L]).reshape(n, L).astype(np.int32)
