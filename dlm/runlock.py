"""One training run per workdir. Two runs on one workdir would write the same checkpoints and
metrics.jsonl and spoil both, so training holds an exclusive lock on workdir/.lock while it
runs. It is an flock: the kernel drops it when its holder dies, `kill -9` included, so the file a
killed run leaves behind never blocks the next run. The file names its holder for the message.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys

from dlm.errors import DlmError

NAME = '.lock'


@contextlib.contextmanager
def hold(workdir: str):
  """Hold the lock of `workdir` (created if needed) for the duration of the `with` block."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, NAME)
  fd = _acquire(path, workdir)
  try:
    yield
  finally:
    _release(path, fd)


def _acquire(path: str, workdir: str) -> int:
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _holder(fd)
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
        raise DlmError(f'{workdir} is in use by another training run ({holder}): wait for it '
                       'to finish or stop it, or use another --workdir') from None
      # Some network filesystems have no flock; training goes on without the guard.
      print(f'warning: cannot lock {path} ({e.strerror}): nothing stops a second run on this '
            'workdir', file=sys.stderr)
      return -1
    # A holder removes the file when it is done; if that happened between our open and our
    # flock, we hold a lock on a file nobody else can see: start again on the current one.
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        break
    except FileNotFoundError:
      pass
    os.close(fd)
  record = {'host': socket.gethostname(), 'pid': os.getpid(),
            'since': datetime.datetime.now().isoformat(sep=' ', timespec='seconds')}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(record) + '\n').encode(), 0)
  return fd


def _release(path: str, fd: int) -> None:
  if fd < 0:
    return
  with contextlib.suppress(FileNotFoundError):
    os.unlink(path)  # before unlocking, so that nobody locks a file that is about to vanish
  os.close(fd)


def _holder(fd: int) -> str:
  """'host H, pid P, since T' from the lock file, for the refusal message."""
  try:
    record = json.loads(os.pread(fd, 4096, 0).decode())
    host, pid, since = record['host'], int(record['pid']), record['since']
  except (ValueError, KeyError, TypeError, OSError):
    return 'it has not written its name yet'
  note = ''
  if host == socket.gethostname() and not _alive(pid):
    note = '; that process has exited, so a process it started still holds the lock'
  return f'host {host}, pid {pid}, since {since}{note}'


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True
