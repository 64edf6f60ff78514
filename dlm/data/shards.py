"""Token shards on disk and the manifest that describes them.

A prepared directory holds `tokenizer/`, `train_NNNNN.npy` / `val_NNNNN.npy` shards and
`manifest.json` (per-shard token and document counts and SHA-256 checksums, split totals, the
tokenizer's checksum). Shards are plain `.npy` arrays of uint16 (vocabularies up to 65,536) or
uint32: half the disk and page cache of int32 for the common case, readable with
`np.load(mmap_mode='r')` and never unpickled. Every file is written to a temporary name and
renamed, so an interrupted run leaves no half-written shard or manifest; the manifest is written
last, so its presence means the directory is complete. The directory may be remote (gs://, any
`etils.epath` URL, `dlm.storage`): training reads local copies of its shards (`shard_paths`).
"""

import json

import numpy as np

from dlm import storage
from dlm.errors import DlmError

MANIFEST = 'manifest.json'
TOKENIZER_DIR = 'tokenizer'
FORMAT_VERSION = 1
SPLITS = ('train', 'val')


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def shard_name(split: str, index: int) -> str:
  return f'{split}_{index:05d}.npy'


sha256_file = storage.sha256


def write_shard(path: str, tokens: np.ndarray) -> None:
  storage.save_npy(path, tokens)


def shard_record(directory: str, name: str, split: str, bos_id: int) -> dict:
  """Counts and checksum of a finished shard (also for one found by a re-run)."""
  path = storage.join(directory, name)
  tokens = storage.load_npy(path)
  return {'name': name, 'split': split, 'tokens': int(len(tokens)),
          'documents': int(np.count_nonzero(tokens == bos_id)), 'sha256': sha256_file(path)}


def write_manifest(directory: str, manifest: dict) -> None:
  storage.write_text(storage.join(directory, MANIFEST), json.dumps(manifest, indent=2) + '\n')


def make_manifest(source: str, tokenizer_sha256: str, vocab_size: int, dtype: np.dtype,
                  shards: list[dict], problems: str) -> dict:
  totals = {s: {k: sum(r[k] for r in shards if r['split'] == s) for k in ('tokens', 'documents')}
            for s in SPLITS}
  return {'format_version': FORMAT_VERSION, 'source': source,
          'tokenizer': {'sha256': tokenizer_sha256, 'vocab_size': vocab_size},
          'dtype': dtype.name, 'splits': totals, 'shards': shards, 'problems': problems}


def read_manifest(directory: str) -> dict:
  """The manifest of a prepared directory, checked against the shards present (shape only)."""
  path = storage.join(directory, MANIFEST)
  try:
    manifest = json.loads(storage.read_text(path))
  except FileNotFoundError:
    raise DlmError(f'{directory} is not a prepared data directory (no {MANIFEST}): '
                   'run python -m dlm.data.prepare') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DlmError(f'{path} is not valid JSON: {e}') from None
  if not isinstance(manifest, dict) or manifest.get('format_version') != FORMAT_VERSION:
    raise DlmError(f'{path} is not a format_version {FORMAT_VERSION} dlm manifest')
  for record in manifest['shards']:
    shard = storage.join(directory, record['name'])
    try:
      shape, dtype = storage.npy_header(shard)
    except (OSError, ValueError) as e:
      raise DlmError(f'shard {shard} listed in {MANIFEST} cannot be read ({e})') from None
    if shape != (record['tokens'],) or dtype.name != manifest['dtype']:
      raise DlmError(f'shard {shard} holds {shape} {dtype} tokens, the manifest '
                     f'says ({record["tokens"]},) {manifest["dtype"]}: prepare it again')
  return manifest


def verify_checksums(directory: str, manifest: dict) -> None:
  for record in manifest['shards']:
    if sha256_file(storage.join(directory, record['name'])) != record['sha256']:
      raise DlmError(f'shard {record["name"]} in {directory} does not match its checksum')


def shard_paths(directory: str, manifest: dict, split: str) -> list[str]:
  """Local paths of a split's shards, ready to memory-map: the shards themselves, or for a
  remote directory their copies in this host's cache (`storage.local_copy`)."""
  return [storage.local_copy(storage.join(directory, r['name']), r['sha256'])
          for r in manifest['shards'] if r['split'] == split and r['tokens']]


def read_split(directory: str, manifest: dict, split: str, max_tokens: int = 0) -> np.ndarray:
  """The tokens of a split as one array (validation: small), the first `max_tokens` if > 0."""
  parts, total = [], 0
  for r in manifest['shards']:
    if max_tokens and total >= max_tokens:
      break
    if r['split'] != split or not r['tokens']:
      continue
    part = np.load(storage.local_copy(storage.join(directory, r['name']), r['sha256']),
                   mmap_mode='r', allow_pickle=False)
    parts.append(np.asarray(part[:max_tokens - total] if max_tokens else part))
    total += len(parts[-1])
  return np.concatenate(parts) if parts else np.zeros(0, np.dtype(manifest['dtype']))
