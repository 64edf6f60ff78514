"""Text in, token shards out: `python -m dlm.data.prepare --input PATH|GLOB|NAME --output DIR`.

  python -m dlm.data.prepare --input stories/train.txt \\
      --val_input stories/valid.txt --output data/tinystories
  python -m dlm.data.prepare --input tinystories --output data/tinystories     # online
  python -m dlm.data.prepare --input fineweb-edu --max_files 2 --output data/fineweb-edu

Inputs: local .txt / .jsonl / .parquet files, directories or globs; `tinystories` and
`fineweb-edu` from the Hugging Face hub; `generated` (the offline story corpus) and `markov`
(the synthetic corpus of known entropy). Documents stream through in chunks of `shard_chars`
characters; each chunk is encoded in parallel (tiktoken releases the GIL, so threads scale
without pickling anything into worker processes) and written as one train and one validation
shard. The split is by document: one in every round(1 / val_fraction) documents is held out, so
the validation set is spread over the whole corpus. A re-run with the same settings skips the
chunks whose shards exist; a run with other settings in the same directory is refused. The
output may be a local directory or a gs:// (any `etils.epath`) URL; the inputs are local.
"""

import argparse
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator

import numpy as np

from dlm import corpus, storage
from dlm.data import shards, sources, synthetic
from dlm.errors import DlmError
from dlm.tokenizer import Tokenizer, gpt2_tokenizer, train_tokenizer

SETTINGS = 'prepare.json'
SHARD_CHARS = 64_000_000  # ~16M tokens, ~32 MB of uint16 per shard


def generated_documents(num: int) -> list[str]:
  return corpus.generate_stories(num or 20000, seed=0)


def markov_documents(num: int) -> list[str]:
  return synthetic.markov_chain().documents(num or 20000, num_words=64, seed=0)


_BUILTIN = {'generated': generated_documents, 'markov': markov_documents}


def describe(name: str) -> str:
  if name in sources.DATASETS:
    return f'{name} from the Hugging Face hub ({sources.DATASETS[name].repo})'
  return {'generated': 'the generated offline corpus', 'markov': 'the synthetic Markov corpus'
          }.get(name, f'text from {name}')


Stream = Callable[[sources.Problems], Iterator[str]]


def document_stream(name: str, split: str, *, text_field: str, on_error: str,
                    max_documents: int, max_files: int, cache_dir: str | None) -> Stream:
  """A function returning a fresh iterator over the documents of `name` (read twice: once to
  train the tokenizer, once to encode), noting bad input in the Problems it is given."""
  if name in _BUILTIN:
    docs = _BUILTIN[name](max_documents)
    return lambda problems: iter(docs)
  if name in sources.DATASETS:
    files = sources.hub_files(name, split, cache_dir, max_files)
    text_field = sources.DATASETS[name].text_field
  else:
    files = sources.resolve_files(name)

  def stream(problems: sources.Problems) -> Iterator[str]:
    docs = sources.read_documents(files, text_field, on_error, problems)
    for i, doc in enumerate(docs):
      if max_documents and i >= max_documents:
        return
      yield doc
  return stream


def labelled(train: Stream, val: Stream | None, val_fraction: float,
             problems: sources.Problems) -> Iterator[tuple[str, str]]:
  """(split, document) pairs: every n-th train document held out, or the val input's."""
  every = round(1 / val_fraction) if val_fraction > 0 and val is None else 0
  for i, doc in enumerate(train(problems)):
    yield ('val' if every and i % every == every - 1 else 'train'), doc
  if val is not None:
    yield from (('val', doc) for doc in val(problems))


def chunks(pairs: Iterator[tuple[str, str]], shard_chars: int) -> Iterator[dict[str, list[str]]]:
  chunk, size = {'train': [], 'val': []}, 0
  for split, doc in pairs:
    chunk[split].append(doc)
    size += len(doc)
    if size >= shard_chars:
      yield chunk
      chunk, size = {'train': [], 'val': []}, 0
  if size:
    yield chunk


def encode_chunk(tok: Tokenizer, docs: list[str], dtype: np.dtype, threads: int) -> np.ndarray:
  """<|bos|> + tokens for each document, concatenated: the bos ids mark document boundaries."""
  if not docs:
    return np.zeros(0, dtype)
  ids = tok.encoding.encode_ordinary_batch(docs, num_threads=threads)
  total = sum(map(len, ids)) + len(ids)
  with_bos = itertools.chain.from_iterable(itertools.chain.from_iterable(
      zip(itertools.repeat([tok.bos_id]), ids)))
  return np.fromiter(with_bos, dtype, total)


def _tokenizer(output: str, choice: str, vocab_size: int, docs: Iterator[str],
               max_chars: int) -> Tokenizer:
  directory = storage.join(output, shards.TOKENIZER_DIR)
  if storage.exists(storage.join(directory, 'tokenizer.json')):  # a re-run: keep the shards' one
    return Tokenizer.load(directory)
  if choice == 'gpt2':
    tok = gpt2_tokenizer()
  elif choice:
    tok = Tokenizer.load(choice)
  else:
    tok = train_tokenizer(docs, vocab_size, max_chars)
  tok.save(directory)
  return tok


def _check_settings(output: str, settings: dict) -> None:
  path = storage.join(output, SETTINGS)
  if storage.exists(path):
    saved = json.loads(storage.read_text(path))
    if saved != settings:
      diff = sorted(k for k in settings if saved.get(k) != settings[k])
      raise DlmError(f'{output} holds data prepared with other settings ({", ".join(diff)}): '
                     'use a new --output or the same settings')
    return
  storage.makedirs(output)
  storage.write_text(path, json.dumps(settings, indent=2))


def prepare(input: str, output: str, *, val_input: str = '', val_fraction: float = 0.05,
            vocab_size: int = 4096, tokenizer: str = '', text_field: str = 'text',
            on_error: str = 'skip', max_documents: int = 0, max_files: int = 0,
            shard_chars: int = SHARD_CHARS, tokenizer_chars: int = 5_000_000,
            threads: int = 0, cache_dir: str | None = None, log=print,
            progress: bool = True) -> dict:
  """Prepare `input` into `output` (see the module docstring); returns the manifest."""
  settings = dict(input=input, val_input=val_input, val_fraction=val_fraction,
                  vocab_size=vocab_size, tokenizer=tokenizer, text_field=text_field,
                  max_documents=max_documents, max_files=max_files, shard_chars=shard_chars)
  if not 0 <= val_fraction < 1:
    raise DlmError(f'val_fraction={val_fraction} must be in [0, 1)')
  if on_error not in ('skip', 'stop'):
    raise DlmError(f'on_error={on_error!r}: expected skip or stop')
  if storage.exists(storage.join(output, shards.MANIFEST)):
    _check_settings(output, settings)
    return shards.read_manifest(output)
  kw = dict(text_field=text_field, on_error=on_error, max_documents=max_documents,
            max_files=max_files, cache_dir=cache_dir)
  train = document_stream(input, 'train', **kw)
  val = document_stream(val_input, 'val', **kw) if val_input else None
  if val is None and input in sources.DATASETS and sources.DATASETS[input].val_files:
    val = document_stream(input, 'val', **kw)
  if next(train(sources.Problems()), None) is None:
    raise DlmError(f'{describe(input)} holds no text')
  _check_settings(output, settings)
  train_docs = (d for s, d in labelled(train, None, val_fraction, sources.Problems())
                if s == 'train')
  tok = _tokenizer(output, tokenizer, vocab_size, train_docs, tokenizer_chars)
  dtype = shards.token_dtype(tok.vocab_size)
  problems = sources.Problems()  # counted once, on the pass that writes the shards
  records = _write_shards(output, tok, chunks(labelled(train, val, val_fraction, problems),
                                              shard_chars),
                          dtype, threads or os.cpu_count() or 1, progress)
  manifest = shards.make_manifest(describe(input), tok.fingerprint(), tok.vocab_size, dtype,
                                  records, problems.summary())
  for split in shards.SPLITS:
    if not manifest['splits'][split]['documents']:
      raise DlmError(f'{describe(input)} gives no {split} documents (1 in {round(1 / val_fraction) if val_fraction else "no"} '
                     'documents is held out): give more text or --val_input')
  if problems.summary():
    log(f'warning: {problems.summary()}')
  shards.write_manifest(output, manifest)
  t, v = manifest['splits']['train'], manifest['splits']['val']
  log(f'data: {describe(input)}: {t["documents"]:,} train / {v["documents"]:,} val documents, '
      f'{t["tokens"]:,} / {v["tokens"]:,} tokens, vocab {tok.vocab_size}, in {output}')
  return manifest


def _write_shards(output: str, tok: Tokenizer, parts: Iterator[dict[str, list[str]]],
                  dtype: np.dtype, threads: int, progress: bool) -> list[dict]:
  from tqdm import tqdm
  records = []
  with tqdm(unit='B', unit_scale=True, desc='tokenize', disable=not progress) as bar:
    for index, chunk in enumerate(parts):
      names = {s: shards.shard_name(s, index) for s in shards.SPLITS}
      # each shard appears whole or not at all, so a chunk with both shards is finished
      if not all(storage.exists(storage.join(output, n)) for n in names.values()):
        for split in shards.SPLITS:
          tokens = encode_chunk(tok, chunk[split], dtype, threads)
          shards.write_shard(storage.join(output, names[split]), tokens)
      records += [shards.shard_record(output, names[s], s, tok.bos_id) for s in shards.SPLITS]
      bar.update(sum(len(d) for docs in chunk.values() for d in docs))
  return [r for r in records if r['tokens']]


def _parse(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m dlm.data.prepare', description=__doc__.split('\n')[0])
  p.add_argument('--input', required=True, help='file, directory, glob, or a name: '
                 + ', '.join([*sources.DATASETS, *_BUILTIN]))
  p.add_argument('--output', required=True, help='directory for shards, manifest and tokenizer')
  p.add_argument('--val_input', default='', help='validation text (default: hold out documents)')
  p.add_argument('--val_fraction', type=float, default=0.05)
  p.add_argument('--vocab_size', type=int, default=4096, help='BPE vocabulary incl. specials')
  p.add_argument('--tokenizer', default='', help='gpt2, or a tokenizer directory to reuse')
  p.add_argument('--text_field', default='text', help='field of .jsonl / .parquet records')
  p.add_argument('--on_error', choices=('skip', 'stop'), default='skip',
                 help='undecodable bytes and bad .jsonl lines: count and skip, or stop')
  p.add_argument('--max_documents', type=int, default=0, help='0: all')
  p.add_argument('--max_files', type=int, default=0, help='hub datasets: first files only')
  p.add_argument('--shard_chars', type=int, default=SHARD_CHARS)
  p.add_argument('--threads', type=int, default=0, help='encoding threads (0: all cores)')
  return p.parse_args(argv)


def main(argv: list[str]) -> int:
  args = vars(_parse(argv))
  try:
    prepare(args.pop('input'), args.pop('output'), **args)
  except DlmError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:  # finished shards stay; a re-run continues from them
    print('error: interrupted; run the same command again to continue', file=sys.stderr)
    return 130
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
