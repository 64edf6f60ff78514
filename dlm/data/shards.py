"""Token shards on disk and the manifest that describes them.

A prepared directory holds `tokenizer/`, `train_NNNNN.npy` / `val_NNNNN.npy` shards and
`manifest.json` (per-shard token and document counts and SHA-256 checksums, split totals, the
tokenizer's checksum). Shards are plain `.npy` arrays of uint16 (vocabularies up to 65,536) or
uint32: half the disk and page cache of int32 for the common case, readable with
`np.load(mmap_mode='r')` and never unpickled. Every file is written to a temporary name and
renamed, so an interrupted run leaves no half-written shard or manifest; the manifest is written
last, so its presence means the directory is complete.
"""

import hashlib
import json
import os

import numpy as np

from dlm.errors import DlmError

MANIFEST = 'manifest.json'
TOKENIZER_DIR = 'tokenizer'
FORMAT_VERSION = 1
SPLITS = ('train', 'val')


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def shard_name(split: str, index: int) -> str:
  return f'{split}_{index:05d}.npy'


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      h.update(block)
  return h.hexdigest()


def write_shard(path: str, tokens: np.ndarray) -> None:
  tmp = f'{path}.tmp{os.getpid()}.npy'
  np.save(tmp, tokens, allow_pickle=False)
  os.replace(tmp, path)


def shard_record(directory: str, name: str, split: str, bos_id: int) -> dict:
  """Counts and checksum of a finished shard (also for one found by a re-run)."""
  path = os.path.join(directory, name)
  tokens = np.load(path, mmap_mode='r', allow_pickle=False)
  return {'name': name, 'split': split, 'tokens': int(len(tokens)),
          'documents': int(np.count_nonzero(tokens == bos_id)), 'sha256': sha256_file(path)}


def write_manifest(directory: str, manifest: dict) -> None:
  path = os.path.join(directory, MANIFEST)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(manifest, f, indent=2)
    f.write('\n')
  os.replace(tmp, path)


def make_manifest(source: str, tokenizer_sha256: str, vocab_size: int, dtype: np.dtype,
                  shards: list[dict], problems: str) -> dict:
  totals = {s: {k: sum(r[k] for r in shards if r['split'] == s) for k in ('tokens', 'documents')}
            for s in SPLITS}
  return {'format_version': FORMAT_VERSION, 'source': source,
          'tokenizer': {'sha256': tokenizer_sha256, 'vocab_size': vocab_size},
          'dtype': dtype.name, 'splits': totals, 'shards': shards, 'problems': problems}


def read_manifest(directory: str) -> dict:
  """The manifest of a prepared directory, checked against the shards present (shape only)."""
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise DlmError(f'{directory} is not a prepared data directory (no {MANIFEST}): '
                   'run python -m dlm.data.prepare') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DlmError(f'{path} is not valid JSON: {e}') from None
  if not isinstance(manifest, dict) or manifest.get('format_version') != FORMAT_VERSION:
    raise DlmError(f'{path} is not a format_version {FORMAT_VERSION} dlm manifest')
  for record in manifest['shards']:
    shard = os.path.join(directory, record['name'])
    try:
      tokens = np.load(shard, mmap_mode='r', allow_pickle=False)
    except (OSError, ValueError) as e:
      raise DlmError(f'shard {shard} listed in {MANIFEST} cannot be read ({e})') from None
    if tokens.shape != (record['tokens'],) or tokens.dtype.name != manifest['dtype']:
      raise DlmError(f'shard {shard} holds {tokens.shape} {tokens.dtype} tokens, the manifest '
                     f'says ({record["tokens"]},) {manifest["dtype"]}: prepare it again')
  return manifest


def verify_checksums(directory: str, manifest: dict) -> None:
  for record in manifest['shards']:
    if sha256_file(os.path.join(directory, record['name'])) != record['sha256']:
      raise DlmError(f'shard {record["name"]} in {directory} does not match its checksum')


def shard_paths(directory: str, manifest: dict, split: str) -> list[str]:
  return [os.path.join(directory, r['name']) for r in manifest['shards']
          if r['split'] == split and r['tokens']]


def read_split(directory: str, manifest: dict, split: str, max_tokens: int = 0) -> np.ndarray:
  """The tokens of a split as one array (validation: small), the first `max_tokens` if > 0."""
  parts, total = [], 0
  for path in shard_paths(directory, manifest, split):
    if max_tokens and total >= max_tokens:
      break
    part = np.load(path, mmap_mode='r', allow_pickle=False)
    parts.append(np.asarray(part[:max_tokens - total] if max_tokens else part))
    total += len(parts[-1])
  return np.concatenate(parts) if parts else np.zeros(0, np.dtype(manifest['dtype']))
