"""Orbax checkpoints of the training state, and loading a finished run for sampling / eval.

A workdir (local, or any `etils.epath` URL such as gs://) holds config.json, tokenizer/, data/
(prepared tokens) and checkpoints/<step>/. Each checkpoint holds the state and, as item
'position', the windows of the data stream consumed so far (`data.TrainBatches`), so a resumed
run continues with the exact next batch, on any number of processes or devices. Saves are
asynchronous; `close()` waits for the last one, since an unfinished async save is silently lost
when the process exits. Checkpoints of older versions hold grain's iterator state instead
(item 'data'), read when they resume with the same layout.

Damage. Orbax writes a checkpoint under a temporary name and renames it when complete, so a
process killed mid-save leaves no half checkpoint under a step's name (the temporary directory
is removed when the next run opens the directory). What it cannot see is damage after the fact:
a file truncated or deleted by a full or failing disk, a botched copy. Once a save is complete,
process 0 writes `dlm_manifest.json` into it (the size and CRC-32 of every file), and a
checkpoint whose files disagree with it, or that fails to restore, is renamed `<step>.corrupt`
(kept for inspection; Orbax ignores the name) and the one before it is used. The checksum
catches what keeps a file's size: a flipped bit would otherwise be read back as a wrong weight
without a word, or fail inside the restore with a TensorStore error. CRC-32 rather than a
cryptographic hash: it detects every burst of up to 32 flipped bits (the failure of a disk or a
copy, not of an adversary) and zlib computes it about twice as fast as hashlib's blake2b or
sha256 on this machine's CPU (docs/training.md, "Checkpoint checksums", has the measurement).
"""

import contextlib
import dataclasses
import gc
import json
import os
import sys
import zlib

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from dlm import config as config_lib
from dlm import optim, sharding, state as state_lib, storage
from dlm.errors import DlmError
from dlm.model import ModelConfig, Transformer
from dlm.tokenizer import Tokenizer


MANIFEST = 'dlm_manifest.json'


class Checkpoints:

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = storage.join(storage.absolute(workdir), 'checkpoints')
    self.read_only = read_only
    self._pending = None  # the step of the save in flight
    if read_only and not storage.is_dir(self.directory):
      raise DlmError(f'no checkpoints in {workdir}: train first (python main.py --workdir={workdir})')
    # A read-only manager makes Orbax warn three times that it will not save; loading a run
    # in a notebook should print nothing, so those warnings are held back while it is built.
    verbosity = logging.get_verbosity()
    if read_only:
      logging.set_verbosity(logging.ERROR)
    try:
      # Reading, the state is a PyTree item (the format StandardCheckpointHandler writes), so
      # that a run can be loaded without its optimiser state (`restore_parts`).
      self.manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                               read_only=read_only,
                                               cleanup_tmp_directories=not read_only),
          item_handlers={'state': ocp.PyTreeCheckpointHandler() if read_only
                         else ocp.StandardCheckpointHandler(),
                         'data': grain.checkpoint.CheckpointHandler(),
                         'position': ocp.JsonCheckpointHandler(),
                         'layout': ocp.JsonCheckpointHandler()})
    finally:
      logging.set_verbosity(verbosity)
    if not read_only:  # a failed write is reported by `save` or `close` in one line instead
      logging.get_absl_logger().addFilter(_quiet_write_errors)

  def latest_step(self):
    return self.manager.latest_step()

  def steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None, force: bool = False,
           layout: dict | None = None) -> None:
    """data_iterator: the run's `data.TrainBatches`, whose position is saved. layout: windows
    per step and processes, for the record."""
    self._settle()
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['position'] = ocp.args.JsonSave({'windows': data_iterator.position})
    if layout is not None:
      items['layout'] = ocp.args.JsonSave(layout)
    try:
      self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # a full disk, a lost mount
      self._failed(step, e)
    self._pending = step

  def _settle(self) -> None:
    """Wait for the save in flight, then write its manifest."""
    step, self._pending = self._pending, None
    if step is None:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      self._failed(step, e)
    path = storage.join(self.directory, str(step))
    if sharding.is_main_process() and not storage.is_remote(path) and os.path.isdir(path):
      write_manifest(path)  # object stores publish whole objects: nothing to check there

  def _failed(self, step: int, e: Exception):
    """A save failed: stop with one line. Orbax deletes old checkpoints only after a new one is
    complete, so the earlier ones are as they were."""
    with contextlib.suppress(Exception):
      self.manager.close()
    logging.get_absl_logger().removeFilter(_quiet_write_errors)
    reason = e.strerror if isinstance(e, OSError) and e.strerror else _first_line(e)
    kept = sorted(int(n) for n in _names(self.directory) if n.isdigit())
    raise DlmError(f'cannot write checkpoint {step} in {self.directory}: {reason}; the earlier '
                   f'checkpoints ({", ".join(map(str, kept)) or "none"}) are untouched: make '
                   'room and run the same command to resume') from None

  def problem(self, step: int, items=('state',)) -> str | None:
    """What is wrong with checkpoint `step` on disk (a file missing, of another size or
    checksum than its manifest says, one of `items` or the state's metadata missing), or None."""
    path = storage.join(self.directory, str(step))
    for item in items:
      if not self._has(step, item):
        return f'it has no {item}'
    if not (self._has(step, 'position') or self._has(step, 'data')):
      return 'it has no data position'
    if storage.is_remote(path):
      return None  # no manifest there: a restore that fails is what finds damage
    try:
      with open(os.path.join(path, MANIFEST)) as f:
        files = json.load(f)
    except FileNotFoundError:
      files = {}  # killed before the manifest was written, or an older run: restore decides
    except (OSError, ValueError) as e:
      return f'its manifest is unreadable: {_first_line(e)}'
    # Older manifests hold the size alone. Every size before any checksum: a truncated file is
    # found without reading the others.
    files = {name: entry if isinstance(entry, dict) else {'size': entry}
             for name, entry in files.items()}
    for name, entry in sorted(files.items()):
      try:
        have = os.path.getsize(os.path.join(path, name))
      except OSError:
        return f'{name} is missing'
      if have != entry['size']:
        return f'{name} has {have} bytes, {entry["size"]} when saved'
    for name, entry in sorted(files.items()):
      if 'crc32' in entry:
        try:
          have = file_crc32(os.path.join(path, name))
        except OSError as e:
          return f'{name} cannot be read: {e.strerror}'
        if have != entry['crc32']:
          return (f'{name} does not match its checksum (CRC-32 {have}, {entry["crc32"]} when '
                  'saved): its bytes changed after the save')
    if not os.path.isfile(os.path.join(path, 'state', '_METADATA')):
      return 'state/_METADATA is missing'
    return None

  def restore_latest(self, abstract_state, data_iterator, layout: dict):
    """(step, state) from the newest usable checkpoint, (None, None) when there is none.

    Damaged ones (`problem`, or a restore that fails) are reported in one line each and renamed
    aside, and the one before is tried. A config or layout mismatch is no damage: it stops the
    run (DlmError) with nothing renamed."""
    items = ('state',)
    while True:
      step = self._newest_intact(items)
      if step is None:
        return None, None

      def read(step=step):
        self.check_layout(step, layout)
        if data_iterator is not None and not self._has(step, 'position'):  # an older run's
          # grain state: grain would call its missing file a config mismatch
          name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
          if not os.path.isfile(os.path.join(self.directory, str(step), 'data', name)):
            raise FileNotFoundError(f'data/{name} is missing')
        return self.restore(step, abstract_state, data_iterator)

      state, error = _attempt(read)
      if error is None:
        return step, state
      if jax.process_count() > 1:  # the processes could disagree on what to do next
        raise DlmError(f'checkpoint {step} in {self.directory} cannot be read ({error}): '
                       'move it aside and run the same command')
      self._set_aside(step, f'it cannot be read: {error}')

  def _newest_intact(self, items):
    """The newest checkpoint without a `problem`, after setting aside the damaged newer ones;
    None if there is none. All processes look before process 0 renames anything."""
    self.manager.reload()
    bad = []
    for step in sorted(self.steps(), reverse=True):
      problem = self.problem(step, items)
      if problem is None:
        break
      bad.append((step, problem))
    else:
      step = None
    sharding.barrier('checkpoint checks')
    for s, problem in bad:
      self._set_aside(s, problem)
    aside = sorted(n for n in _names(self.directory) if '.corrupt' in n)
    if step is None and aside:
      raise DlmError(f'no usable checkpoint in {self.directory}: {", ".join(aside)} are damaged. '
                     'Restore them, or move them away to start the run over')
    return step

  def _set_aside(self, step: int, problem: str) -> None:
    """Rename a damaged checkpoint to <step>.corrupt, which Orbax does not list: it is never
    tried again, and nothing is deleted."""
    if sharding.is_main_process():
      path = storage.join(self.directory, str(step))
      aside, n = path + '.corrupt', 1
      while storage.exists(aside):
        n += 1
        aside = f'{path}.corrupt{n}'
      storage.path(path).rename(aside)
      print(f'warning: checkpoint {step} in {self.directory} is damaged ({problem}); renamed '
            f'it {os.path.basename(aside)} and going back to the one before', file=sys.stderr)
    sharding.barrier('checkpoint set aside')
    self.manager.reload()

  def check_layout(self, step: int, layout: dict) -> None:
    """Refuse to resume an older checkpoint whose data position means other windows here.

    A checkpoint with a 'position' resumes on any layout. An older one holds grain's count of
    this process's batches, which points at the same windows only with the same windows per
    optimiser step and one process (the stream was cut per process then). Checkpoints with
    neither a position nor a layout (older still) are not checked."""
    if self._has(step, 'position') or not self._has(step, 'layout'):
      return
    saved = self.manager.restore(step, args=ocp.args.Composite(
        layout=ocp.args.JsonRestore()))['layout']
    diff = [f'{k} {saved.get(k)} there, {v} here' for k, v in layout.items()
            if saved.get(k) != v]
    if saved.get('processes', 1) != 1:
      diff.append(f'processes {saved["processes"]} there, whose data order this version '
                  'no longer reads')
    if diff:
      raise DlmError(f'checkpoint {step} in {self.directory} was written with another data '
                     f'layout ({"; ".join(diff)}): resuming would repeat or skip data. Keep '
                     'train.device_batch_size x devices x accumulation and the process count, '
                     'or use a new --workdir')

  def _has(self, step: int, item: str) -> bool:
    return storage.is_dir(storage.join(self.directory, str(step), item))

  def _position(self, step: int, windows_per_step: int) -> int:
    """Windows consumed at `step`; from an older checkpoint's grain state, its count of
    batches times the windows per step (`check_layout` made sure they match)."""
    if self._has(step, 'position'):
      return self.manager.restore(step, args=ocp.args.Composite(
          position=ocp.args.JsonRestore()))['position']['windows']
    if not self._has(step, 'data'):
      raise DlmError(f'checkpoint {step} in {self.directory} has no data position')
    grain_state = json.loads(storage.read_text(
        storage.join(self.directory, str(step), 'data', 'process_0-of-1.json')))
    layout = self.manager.restore(step, args=ocp.args.Composite(
        layout=ocp.args.JsonRestore()))['layout'] if self._has(step, 'layout') else {}
    return grain_state['next_index'] * layout.get('windows_per_step', windows_per_step)

  def _check_shapes(self, step: int, abstract_state, parts: tuple[str, ...] = ('params',)) -> None:
    """Compare the names and shapes of these parts of the state with the checkpoint's metadata
    before reading any array: a failed Orbax restore leaves its worker threads printing
    tracebacks, and a partial one would leave a missing leaf unrestored without a word."""
    stored = self.manager.item_metadata(step)['state']
    for part in parts:
      want = {optim.param_path(p): x.shape for p, x in
              jax.tree_util.tree_flatten_with_path(abstract_state[part])[0]}
      have = {optim.param_path(p): tuple(x.shape) for p, x in
              jax.tree_util.tree_flatten_with_path(stored.get(part, {}))[0]}
      for name in sorted(set(want) | set(have)):
        if want.get(name) != have.get(name):
          raise DlmError(f'checkpoint {step} in {self.directory} does not match this config: '
                         f'{part}/{name} is {have.get(name)} there and {want.get(name)} here')

  def restore(self, step: int, abstract_state, data_iterator=None):
    """The state at `step`; with `data_iterator` (a `data.TrainBatches`), also moves it to
    where the data stream was at `step`."""
    self._check_shapes(step, abstract_state)
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      data_iterator.restore(self._position(step, data_iterator.windows_per_step))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError) as e:
      raise DlmError(f'checkpoint {step} in {self.directory} does not match this config '
                     f'({str(e).splitlines()[0][:200]})')
    return restored['state']

  def restore_parts(self, step: int, abstract_state, parts: tuple[str, ...]):
    """Only the named top-level parts of the state at `step` (e.g. params, noise), whatever
    the rest holds: sampling and evaluation need no optimiser state, so a run stays loadable
    when the optimiser's layout changes. Read-only managers only."""
    self._check_shapes(step, abstract_state, parts)
    target = {p: abstract_state[p] for p in parts}
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True)))
    except (ValueError, KeyError) as e:
      raise DlmError(f'checkpoint {step} in {self.directory} does not match this config '
                     f'({" ".join(str(e).split())[:300]})')
    return {p: restored['state'][p] for p in parts}

  def close(self) -> None:
    if not self.read_only:
      self._settle()
      logging.get_absl_logger().removeFilter(_quiet_write_errors)
    self.manager.wait_until_finished()
    self.manager.close()


def _names(directory: str) -> list[str]:
  return [p.name for p in storage.path(directory).iterdir()] if storage.exists(directory) else []


def file_crc32(path: str, chunk: int = 1 << 22) -> str:
  """The CRC-32 of a file as 8 hex digits, read 4 MiB at a time (a checkpoint's files can be
  larger than the memory left beside the run)."""
  crc = 0
  with open(path, 'rb') as f:
    while block := f.read(chunk):
      crc = zlib.crc32(block, crc)
  return f'{crc:08x}'


def write_manifest(path: str) -> None:
  """The size and CRC-32 of every file of the complete checkpoint at `path`, in
  path/dlm_manifest.json, written whole or not at all (a torn manifest would condemn a good
  checkpoint)."""
  files = {}
  try:
    for root, _, names in os.walk(path):
      for name in names:
        full = os.path.join(root, name)
        rel = os.path.relpath(full, path)
        if rel not in (MANIFEST, MANIFEST + '.tmp'):
          files[rel] = {'size': os.path.getsize(full), 'crc32': file_crc32(full)}
  except OSError as e:
    print(f'warning: cannot write the manifest of {path}: {e.strerror}', file=sys.stderr)
    return
  tmp = os.path.join(path, MANIFEST + '.tmp')
  try:
    with open(tmp, 'w') as f:
      json.dump(files, f, indent=0, sort_keys=True)
    os.replace(tmp, os.path.join(path, MANIFEST))
  except OSError as e:  # the checkpoint itself is complete; it goes unchecked, that is all
    print(f'warning: cannot write the manifest of {path}: {e.strerror}', file=sys.stderr)
    with contextlib.suppress(OSError):
      os.remove(tmp)


def _first_line(e: BaseException) -> str:
  """The error in one line, from its root cause (Orbax wraps TensorStore's errors in a
  message made mostly of a TensorStore spec)."""
  while e.__cause__ is not None:
    e = e.__cause__
  text = ' '.join(str(e).split()) or type(e).__name__
  return text[:200] + ('...' if len(text) > 200 else '')


def _quiet_write_errors(record) -> bool:
  """Orbax logs a failed write with its traceback before raising it; `save` and `close`
  report it in one line."""
  return not (record.exc_info and isinstance(record.exc_info[1], OSError))


def _attempt(read):
  """(read(), None), or (None, the error's first line) if the checkpoint cannot be read. A
  DlmError (a config mismatch) or running out of memory is no damage, and is raised.

  A failed restore leaves Orbax's read coroutines behind, and each prints its exception with a
  long TensorStore spec ('Exception ignored in ...') when it is collected: they are collected
  here, with that printing off, once the error has been caught and dropped."""
  hook = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  failed = True
  try:
    try:
      result, failed = read(), False
      return result, None
    except DlmError:
      raise
    except Exception as e:
      if isinstance(e, MemoryError) or 'RESOURCE_EXHAUSTED' in str(e):
        raise
      return None, _first_line(e)
  finally:
    gc.collect()
    sys.unraisablehook = _without_closed_loop_errors(hook) if failed else hook


def _without_closed_loop_errors(hook):
  """`hook`, silent about the abandoned reads of a failed restore that call back into their
  event loop after it has closed (RuntimeError: Event loop is closed), which can happen later."""
  def filtered(unraisable):
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and 'Event loop is closed' in str(e)):
      hook(unraisable)
  return filtered


def abstract_state(init_fn, mesh):
  """Shapes and dtypes of the state, each leaf carrying its sharding on this mesh
  (`sharding.state_shardings`): a checkpoint restores onto whatever layout the run has now."""
  shapes = jax.eval_shape(init_fn, jax.random.key(0))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                      sharding.state_shardings(shapes, mesh))


@dataclasses.dataclass
class Run:
  """A trained run, ready for sampling and evaluation (from a notebook or main.py)."""
  config: object
  model_config: ModelConfig
  model: Transformer
  params: object
  proposal: object  # the noise proposal q of a diffusion run (`dlm.noise`); None for AR
  tokenizer: Tokenizer
  step: int
  workdir: str


def load_run(workdir: str, checkpoint: int | None = None) -> Run:
  """The run in `workdir` at its latest (or the given) checkpoint, EMA weights if kept."""
  if not storage.is_dir(workdir):
    raise DlmError(f'workdir {workdir} ' + ('is a file, not a directory' if storage.exists(workdir)
                                            else 'does not exist'))
  c = config_lib.load_json(storage.join(workdir, 'config.json'))
  tok_dir = storage.join(workdir, 'tokenizer')
  if not storage.exists(storage.join(tok_dir, 'tokenizer.json')):
    raise DlmError(f'no tokenizer in {workdir}: was training started there?')
  tok = Tokenizer.load(tok_dir)
  mcfg = config_lib.model_config(c, tok.vocab_size)
  model, _, init_fn = state_lib.create(mcfg, c)
  ckpts = Checkpoints(workdir, read_only=True)
  steps = ckpts.steps()
  if not steps:
    raise DlmError(f'no checkpoint in {workdir}: train first')
  if checkpoint is not None and checkpoint not in steps:
    raise DlmError(f'no checkpoint {checkpoint} in {workdir}; available: {sorted(steps)}')
  target = abstract_state(init_fn, sharding.make_mesh())
  parts = ('ema' if 'ema' in target else 'params',) + (('noise',) if 'noise' in target else ())
  # The latest usable checkpoint: a damaged one is skipped with a warning (training, which may
  # write here, is what renames it aside). A checkpoint asked for by number is that one or none.
  for step in sorted(steps, reverse=True) if checkpoint is None else [checkpoint]:
    problem = ckpts.problem(step)
    if problem is None:
      state, error = _attempt(lambda: ckpts.restore_parts(step, target, parts))
      if error is None:
        break
      problem = f'it cannot be read: {error}'
    if checkpoint is not None:
      raise DlmError(f'checkpoint {step} in {ckpts.directory} is damaged ({problem})')
    print(f'warning: checkpoint {step} in {ckpts.directory} is damaged ({problem}); trying '
          'the one before', file=sys.stderr)
  else:
    raise DlmError(f'no usable checkpoint in {ckpts.directory}: all {len(steps)} are damaged')
  ckpts.close()
  return Run(c, mcfg, model, state_lib.sampling_params(state), state_lib.proposal(state), tok,
             step, workdir)
