"""Text in, token windows out: the minimal data path.

Documents come from text files (`data.path`: a file, a directory of .txt files or a glob) or,
with no path, from the project's own generated stories, so a fresh offline machine can train.
A document is the text between `<|endoftext|>` lines when the file has them (TinyStories),
otherwise a blank-line separated paragraph. Each document is prefixed with `<|bos|>` and all of
them are concatenated into one token stream per split.

Batches are random windows of the training stream chosen by a generator seeded with
(seed, step): the batch of step N is a pure function of the config, so a resumed run sees
exactly the batches the uninterrupted run would have, with no iterator state to save.
"""

import glob
import os

import numpy as np

from dlm import corpus, sharding
from dlm.errors import DlmError
from dlm.tokenizer import Tokenizer, train_tokenizer

DOC_SEPARATOR = '<|endoftext|>'


def split_documents(text: str) -> list[str]:
  if DOC_SEPARATOR in text:
    docs = text.split(DOC_SEPARATOR)
  else:
    docs = text.split('\n\n')
  return [d.strip() for d in docs if d.strip()]


def _files(path: str) -> list[str]:
  if os.path.isdir(path):
    files = sorted(glob.glob(os.path.join(path, '**', '*.txt'), recursive=True))
    if not files:
      raise DlmError(f'data path {path} is a directory with no .txt files')
    return files
  files = sorted(glob.glob(path))
  if not files:
    raise DlmError(f'data path {path} does not exist')
  return files


def read_documents(path: str) -> list[str]:
  docs = []
  for f in _files(path):
    try:
      with open(f, encoding='utf-8') as fh:
        docs.extend(split_documents(fh.read()))
    except UnicodeDecodeError as e:
      raise DlmError(f'{f} is not UTF-8 text ({e.reason} at byte {e.start})')
  if not docs:
    raise DlmError(f'data path {path} holds no text')
  return docs


def load_splits(dc) -> tuple[list[str], list[str], str]:
  """(train documents, validation documents, a one-line description of the source)."""
  if dc.path:
    docs, source = read_documents(dc.path), f'text from {dc.path}'
  else:
    docs = corpus.generate_stories(dc.num_generated_stories, seed=0)
    source = (f'the generated offline corpus ({len(docs)} stories); '
              'set --config.data.path to train on your own text')
  if dc.val_path:
    return docs, read_documents(dc.val_path), source
  n_val = max(1, int(len(docs) * dc.val_fraction))
  if len(docs) < 2:
    raise DlmError(f'{source} has a single document: give data.val_path for validation')
  return docs[:-n_val], docs[-n_val:], source


def prepare(c, workdir: str, log=print):
  """Tokenizer and token streams for a run, trained / encoded once and cached in the workdir."""
  tok_dir = os.path.join(workdir, 'tokenizer')
  cache = {s: os.path.join(workdir, 'data', f'{s}.npy') for s in ('train', 'val')}
  sharding.barrier('data-check')  # every process decides on the cache before process 0 writes
  if os.path.exists(os.path.join(tok_dir, 'tokenizer.json')) and all(map(os.path.exists,
                                                                         cache.values())):
    tok = Tokenizer.load(tok_dir)
    streams = {s: np.load(p, allow_pickle=False) for s, p in cache.items()}
    log(f'data: cached tokens in {workdir} ({len(streams["train"]):,} train, '
        f'{len(streams["val"]):,} val)')
    return tok, streams['train'], streams['val']
  train_docs, val_docs, source = load_splits(c.data)
  log(f'data: {source}')
  tok = train_tokenizer(train_docs, c.data.tokenizer_vocab_size)
  streams = {'train': tok.encode_documents(train_docs), 'val': tok.encode_documents(val_docs)}
  L = c.model.sequence_len
  for split, stream in streams.items():
    if len(stream) < L + 1:
      raise DlmError(f'the {split} split has {len(stream)} tokens, fewer than one window of '
                     f'sequence_len={L}: give more text or a shorter model.sequence_len')
  if sharding.is_main_process():
    os.makedirs(os.path.dirname(cache['train']), exist_ok=True)
    tok.save(tok_dir)
    for split, path in cache.items():
      np.save(path + '.tmp.npy', streams[split], allow_pickle=False)
      os.replace(path + '.tmp.npy', path)  # never a half-written cache
  sharding.barrier('data-written')
  log(f'data: {len(train_docs):,} train / {len(val_docs):,} val documents, '
      f'{len(streams["train"]):,} / {len(streams["val"]):,} tokens, vocab {tok.vocab_size}')
  return tok, streams['train'], streams['val']


def train_batch(stream: np.ndarray, seed: int, step: int, shape: tuple[int, ...]) -> np.ndarray:
  """Windows of length shape[-1] at random offsets; identical for identical (seed, step)."""
  L = shape[-1]
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, len(stream) - L + 1, size=shape[:-1])
  return stream[starts[..., None] + np.arange(L)].astype(np.int32)


def eval_windows(stream: np.ndarray, L: int, max_tokens: int) -> np.ndarray:
  """Consecutive, non-overlapping windows from the start of the stream: every token counts once."""
  n = max(1, min(len(stream) // L, max_tokens // L))
  return stream[:n * L].reshape(n, L).astype(np.int32)
