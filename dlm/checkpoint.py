"""Orbax checkpoints of the training state, and loading a finished run for sampling / eval.

A workdir (local, or any `etils.epath` URL such as gs://) holds config.json, tokenizer/, data/
(prepared tokens) and checkpoints/<step>/. Each checkpoint holds the state and, as item
'position', the windows of the data stream consumed so far (`data.TrainBatches`), so a resumed
run continues with the exact next batch, on any number of processes or devices. Saves are
asynchronous; `close()` waits for the last one, since an unfinished async save is silently lost
when the process exits. Checkpoints of older versions hold grain's iterator state instead
(item 'data'), read when they resume with the same layout.
"""

import dataclasses
import json

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from dlm import config as config_lib
from dlm import optim, sharding, state as state_lib, storage
from dlm.errors import DlmError
from dlm.model import ModelConfig, Transformer
from dlm.tokenizer import Tokenizer


class Checkpoints:

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = storage.join(storage.absolute(workdir), 'checkpoints')
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
                                               read_only=read_only),
          item_handlers={'state': ocp.PyTreeCheckpointHandler() if read_only
                         else ocp.StandardCheckpointHandler(),
                         'data': grain.checkpoint.CheckpointHandler(),
                         'position': ocp.JsonCheckpointHandler(),
                         'layout': ocp.JsonCheckpointHandler()})
    finally:
      logging.set_verbosity(verbosity)

  def latest_step(self):
    return self.manager.latest_step()

  def steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None, force: bool = False,
           layout: dict | None = None) -> None:
    """data_iterator: the run's `data.TrainBatches`, whose position is saved. layout: windows
    per step and processes, for the record."""
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['position'] = ocp.args.JsonSave({'windows': data_iterator.position})
    if layout is not None:
      items['layout'] = ocp.args.JsonSave(layout)
    self.manager.save(step, args=ocp.args.Composite(**items), force=force)

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
    self.manager.wait_until_finished()
    self.manager.close()


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
    raise DlmError(f'workdir {workdir} does not exist')
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
  step = steps[-1] if checkpoint is None else checkpoint
  if step not in steps:
    raise DlmError(f'no checkpoint {step} in {workdir}; available: {sorted(steps)}')
  target = abstract_state(init_fn, sharding.make_mesh())
  parts = ('ema' if 'ema' in target else 'params',) + (('noise',) if 'noise' in target else ())
  state = ckpts.restore_parts(step, target, parts)
  ckpts.close()
  return Run(c, mcfg, model, state_lib.sampling_params(state), state_lib.proposal(state), tok,
             step, workdir)
