"""A run's files on any storage `etils.epath` reaches: local paths, gs://, s3:// ...

Local paths behave exactly as before (epath's os backend: same files, same atomic renames).
Object stores differ in three ways this module absorbs: nothing there can be memory-mapped
(token shards are copied once into a local cache, checked against their SHA-256, `local_copy`),
nothing can be appended to (`append_lines` rewrites the object), and an object appears whole
when its upload finishes, so no temporary name is needed (`write_bytes`). gs:// needs `gcsfs`
(or TensorFlow) installed; Orbax writes the checkpoint arrays there itself (TensorStore).
"""

import hashlib
import io
import os

import numpy as np
from etils import epath

from dlm.errors import DlmError

# Where copies of remote token shards live on each host (named by their SHA-256).
CACHE = os.environ.get('DLM_CACHE', os.path.join(os.path.expanduser('~'), '.cache', 'dlm'))


def path(p) -> epath.Path:
  return epath.Path(p)


def is_remote(p) -> bool:
  return '://' in os.fspath(p)


def join(*parts) -> str:
  return os.fspath(epath.Path(*parts))


def absolute(p) -> str:
  """An absolute local path, or the URL unchanged (Orbax wants absolute paths)."""
  return os.fspath(p) if is_remote(p) else os.path.abspath(p)


def exists(p) -> bool:
  return epath.Path(p).exists()


def is_dir(p) -> bool:
  return epath.Path(p).is_dir()


def makedirs(p) -> None:
  epath.Path(p).mkdir(parents=True, exist_ok=True)


def read_text(p) -> str:
  return epath.Path(p).read_text()


def read_bytes(p) -> bytes:
  return epath.Path(p).read_bytes()


def write_bytes(p, data: bytes) -> None:
  """Whole or not at all: a local file is written under a temporary name and renamed (a
  reader on a shared workdir never sees half of it); an object store publishes it whole."""
  p = epath.Path(p)
  if is_remote(p):
    p.write_bytes(data)
    return
  tmp = p.with_name(f'{p.name}.tmp{os.getpid()}')
  tmp.write_bytes(data)
  os.replace(tmp, p)


def write_text(p, text: str) -> None:
  write_bytes(p, text.encode())


def save_npy(p, array: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
  write_bytes(p, buffer.getvalue())


def npy_header(p) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of a .npy file from its header alone (a remote shard is not downloaded)."""
  with epath.Path(p).open('rb') as f:
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(f)
  return shape, dtype


def load_npy(p) -> np.ndarray:
  """A .npy array: memory-mapped when local, read whole when remote."""
  if not is_remote(p):
    return np.load(p, mmap_mode='r', allow_pickle=False)
  return np.load(io.BytesIO(read_bytes(p)), allow_pickle=False)


def sha256(p) -> str:
  h = hashlib.sha256()
  with epath.Path(p).open('rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      h.update(block)
  return h.hexdigest()


def local_copy(p, digest: str) -> str:
  """A local path with the contents of `p`: `p` itself when local, else a copy in the cache,
  downloaded once per host and checked against its SHA-256 (grain memory-maps the shards)."""
  if not is_remote(p):
    return os.fspath(p)
  target = os.path.join(CACHE, 'shards', f'{digest}{os.path.splitext(os.fspath(p))[1]}')
  if os.path.exists(target):
    return target
  os.makedirs(os.path.dirname(target), exist_ok=True)
  data = read_bytes(p)
  if hashlib.sha256(data).hexdigest() != digest:
    raise DlmError(f'{p} does not match the checksum its manifest gives: prepare it again')
  tmp = f'{target}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, target)  # several processes on a host may fetch the same shard at once
  return target


def append_lines(p, lines: list[str]) -> None:
  """Append text lines: in place locally; an object store cannot append, so the object is
  read and written again (metrics.jsonl: a few hundred KB at most)."""
  p = epath.Path(p)
  if not is_remote(p):
    with p.open('a') as f:
      f.writelines(lines)
    return
  before = p.read_text() if p.exists() else ''
  p.write_text(before + ''.join(lines))


def check_reachable(p) -> None:
  """One line instead of a traceback when a remote workdir cannot be used from here."""
  if not is_remote(p):
    return
  try:
    epath.Path(p).exists()
  except ImportError as e:  # fsspec names the package it lacks (gcsfs, s3fs, ...)
    raise DlmError(f'--workdir={p} needs a package this machine lacks: {e}') from None
  except Exception as e:  # credentials, network, an unknown scheme: whatever the backend says
    raise DlmError(f'--workdir={p} is not reachable: {type(e).__name__}: '
                   f'{" ".join(str(e).split())[:200]}') from None
