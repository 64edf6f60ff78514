"""Where documents come from: local text, JSON lines and Parquet files, and public datasets.

Documents are streamed one at a time, so preparing a corpus larger than RAM keeps memory flat.
A `.txt` file holds documents separated by `<|endoftext|>` (TinyStories' convention) when the
separator occurs in its first megabyte, otherwise by blank lines. `.jsonl` and `.parquet` files
hold one document per record, in a text field. Bad input is counted in `Problems` and skipped
(undecodable bytes become U+FFFD, unusable JSON lines are dropped) or, with `on_error='stop'`,
stops with a one-line DlmError naming the file and place.

Public datasets are fetched from the Hugging Face hub by name when the machine is online:
`huggingface_hub` caches each file and resumes interrupted downloads. `online()` decides in a
few seconds, and at once when HF_HUB_OFFLINE=1, so the offline default never waits on a network
that is not there.
"""

import dataclasses
import fnmatch
import glob
import json
import os
import socket
import threading
from collections.abc import Iterator

from dlm.errors import DlmError

DOC_SEPARATOR = '<|endoftext|>'
TEXT_SUFFIXES = ('.txt', '.jsonl', '.parquet')
_SNIFF_BYTES = 1 << 20
_HUB_HOST = ('huggingface.co', 443)


@dataclasses.dataclass(frozen=True)
class HubDataset:
  """A dataset on the Hugging Face hub: its repository and the files of each split."""
  repo: str
  train_files: str  # fnmatch pattern over the repository's file names
  val_files: str    # '' = hold out documents of the train files
  text_field: str = 'text'


# File patterns checked against the repositories' listings (Parquet conversions of the splits).
DATASETS = {
    'tinystories': HubDataset('roneneldan/TinyStories', 'data/train-*.parquet',
                              'data/validation-*.parquet'),
    'fineweb-edu': HubDataset('HuggingFaceFW/fineweb-edu', 'sample/10BT/*.parquet', ''),
}


@dataclasses.dataclass
class Problems:
  """Bad input met while reading, reported in one line at the end."""
  replaced_bytes: int = 0   # undecodable bytes replaced by U+FFFD
  bad_lines: int = 0        # .jsonl lines that are not JSON objects with a string text field
  first: str = ''           # where the first problem was, for the report

  def note(self, where: str) -> None:
    self.first = self.first or where

  def summary(self) -> str:
    if not (self.replaced_bytes or self.bad_lines):
      return ''
    return (f'skipped bad input: {self.replaced_bytes} undecodable bytes replaced by U+FFFD, '
            f'{self.bad_lines} unusable .jsonl lines (first at {self.first}); '
            '--on_error=stop to stop instead')


def split_documents(text: str) -> list[str]:
  """Documents of one text: between `<|endoftext|>` when present, else blank-line paragraphs."""
  docs = text.split(DOC_SEPARATOR) if DOC_SEPARATOR in text else text.split('\n\n')
  return [d.strip() for d in docs if d.strip()]


def resolve_files(path: str) -> list[str]:
  """The text files behind a file, a directory (searched recursively) or a glob."""
  if os.path.isdir(path):
    files = sorted(f for f in glob.glob(os.path.join(path, '**', '*'), recursive=True)
                   if f.endswith(TEXT_SUFFIXES))
    if not files:
      raise DlmError(f'data path {path} is a directory with no {"/".join(TEXT_SUFFIXES)} files')
    return files
  files = sorted(f for f in glob.glob(path) if os.path.isfile(f))
  if not files:
    raise DlmError(f'data path {path} does not exist')
  return files


def read_documents(files: list[str], text_field: str = 'text', on_error: str = 'skip',
                   problems: Problems | None = None) -> Iterator[str]:
  """Every non-empty document of `files`, in order."""
  problems = problems if problems is not None else Problems()
  for f in files:
    if f.endswith('.parquet'):
      yield from _parquet_documents(f, text_field)
    elif f.endswith('.jsonl'):
      yield from _jsonl_documents(f, text_field, on_error, problems)
    else:
      yield from _text_documents(f, on_error, problems)


def load_documents(path: str, on_error: str = 'stop') -> list[str]:
  """All documents of a local path in memory (small inputs: a file to evaluate on)."""
  docs = list(read_documents(resolve_files(path), on_error=on_error))
  if not docs:
    raise DlmError(f'data path {path} holds no text')
  return docs


def _decode(raw: bytes, where: str, on_error: str, problems: Problems) -> str:
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    if on_error == 'stop':
      raise DlmError(f'{where} is not UTF-8 text ({e.reason} at byte {e.start} of the line)')
    text = raw.decode('utf-8', errors='replace')
    problems.replaced_bytes += len(raw) - len(raw.decode('utf-8', errors='ignore').encode())
    problems.note(where)
    return text


def _text_documents(f: str, on_error: str, problems: Problems) -> Iterator[str]:
  with open(f, 'rb') as fh:
    by_separator = DOC_SEPARATOR.encode() in fh.read(_SNIFF_BYTES)
    fh.seek(0)
    doc: list[str] = []
    for number, raw in enumerate(fh, 1):
      line = _decode(raw, f'{f} line {number}', on_error, problems)
      if by_separator and DOC_SEPARATOR in line:
        head, *middle, tail = line.split(DOC_SEPARATOR)
        yield from _finish(doc + [head])
        yield from (d.strip() for d in middle if d.strip())
        doc = [tail]
      elif not by_separator and not line.strip():
        yield from _finish(doc)
        doc = []
      else:
        doc.append(line)
    yield from _finish(doc)


def _finish(lines: list[str]) -> Iterator[str]:
  text = ''.join(lines).strip()
  if text:
    yield text


def _jsonl_documents(f: str, field: str, on_error: str, problems: Problems) -> Iterator[str]:
  with open(f, 'rb') as fh:
    for number, raw in enumerate(fh, 1):
      where = f'{f} line {number}'
      line = _decode(raw, where, on_error, problems)
      if not line.strip():
        continue
      try:
        text = json.loads(line).get(field)
      except (json.JSONDecodeError, AttributeError):
        text, why = None, 'is not a JSON object'
      else:
        why = f'has no string field "{field}"'
      if not isinstance(text, str):
        if on_error == 'stop':
          raise DlmError(f'{where} {why} (--text_field names the field)')
        problems.bad_lines += 1
        problems.note(where)
      elif text.strip():
        yield text.strip()


def _parquet_documents(f: str, field: str) -> Iterator[str]:
  import pyarrow.parquet as pq  # only Parquet inputs need pyarrow
  try:
    table = pq.ParquetFile(f)
  except Exception as e:  # pyarrow raises several types for a file that is not Parquet
    raise DlmError(f'{f} is not a readable Parquet file ({str(e).splitlines()[0][:120]})')
  if field not in table.schema_arrow.names:
    raise DlmError(f'{f} has no column "{field}" (columns: {", ".join(table.schema_arrow.names)})')
  for batch in table.iter_batches(batch_size=1024, columns=[field]):
    for text in batch.column(0).to_pylist():
      if text and text.strip():
        yield text.strip()


# ---- the Hugging Face hub -------------------------------------------------------------

def online(timeout: float = 3.0) -> bool:
  """Whether the hub answers within `timeout` seconds; False at once when HF_HUB_OFFLINE=1.

  The probe runs in a daemon thread because name resolution ignores socket timeouts: on a
  machine whose resolver hangs, the attempt still gives up after `timeout` seconds.
  """
  if os.environ.get('HF_HUB_OFFLINE', '').lower() in ('1', 'true', 'yes', 'on'):
    return False
  result = []

  def probe() -> None:
    try:
      socket.create_connection(_HUB_HOST, timeout=timeout).close()
      result.append(True)
    except OSError:
      pass
  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout)
  return bool(result)


def hub_files(name: str, split: str, cache_dir: str | None = None,
              max_files: int = 0) -> list[str]:
  """Local paths of a named dataset's files for `split` ('train' or 'val'), downloaded once.

  `max_files` > 0 fetches only the first files (e.g. a FineWeb-Edu sample of a few GB).
  """
  spec = DATASETS[name]
  pattern = spec.train_files if split == 'train' else spec.val_files
  import huggingface_hub  # only hub datasets need it
  try:
    names = huggingface_hub.list_repo_files(spec.repo, repo_type='dataset')
    wanted = sorted(n for n in names if fnmatch.fnmatch(n, pattern))
    if not wanted:
      raise DlmError(f'the hub dataset {spec.repo} has no files matching {pattern}')
    wanted = wanted[:max_files] if max_files > 0 else wanted
    return [huggingface_hub.hf_hub_download(spec.repo, n, repo_type='dataset', cache_dir=cache_dir)
            for n in wanted]
  except DlmError:
    raise
  except Exception as e:  # offline, a timeout, an HTTP error: one line, whatever the cause
    raise DlmError(f'cannot download {name} ({spec.repo}) from the Hugging Face hub: '
                   f'{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ""}')
