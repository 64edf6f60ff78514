"""Orbax checkpoints of the training state, and loading a finished run for sampling / eval.

A workdir holds config.json, tokenizer/, data/ (prepared tokens) and checkpoints/<step>/.
Each checkpoint holds the state and, as item 'data', every process's grain iterator state (one
JSON file per process, grain's own Orbax handler), so a resumed run continues with the exact
next batch. Saves are asynchronous; `close()` waits for the last one, since an unfinished async
save is silently lost when the process exits. The iterator item is written synchronously,
inside `save`, before the training loop draws the next batch.
"""

import dataclasses
import os

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from dlm import config as config_lib
from dlm import optim, sharding, state as state_lib
from dlm.errors import DlmError
from dlm.model import ModelConfig, Transformer
from dlm.tokenizer import Tokenizer


class Checkpoints:

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    if read_only and not os.path.isdir(self.directory):
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
                         'layout': ocp.JsonCheckpointHandler()})
    finally:
      logging.set_verbosity(verbosity)

  def latest_step(self):
    return self.manager.latest_step()

  def steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None, force: bool = False,
           layout: dict | None = None) -> None:
    """layout: how the data iterator's position reads (windows per step, processes), which a
    resumed run must match to continue the same data (`check_layout`)."""
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    if layout is not None:
      items['layout'] = ocp.args.JsonSave(layout)
    self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def check_layout(self, step: int, layout: dict) -> None:
    """Refuse to resume when the data position of checkpoint `step` means other windows here.

    The iterator's state counts this process's batches, so it points at the same windows only
    with the same windows per optimiser step and the same number of processes; the device
    count and the split into micro-batches may change. Checkpoints without a layout (older
    runs) are not checked."""
    if not os.path.isdir(os.path.join(self.directory, str(step), 'layout')):
      return
    saved = self.manager.restore(step, args=ocp.args.Composite(
        layout=ocp.args.JsonRestore()))['layout']
    diff = [f'{k} {saved.get(k)} there, {v} here' for k, v in layout.items()
            if saved.get(k) != v]
    if diff:
      raise DlmError(f'checkpoint {step} in {self.directory} was written with another data '
                     f'layout ({"; ".join(diff)}): resuming would repeat or skip data. Keep '
                     'train.device_batch_size x devices x accumulation and the process count, '
                     'or use a new --workdir')

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
    """The state at `step`; with `data_iterator`, also moves it to where it was at `step`."""
    self._check_shapes(step, abstract_state)
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      if not os.path.isdir(os.path.join(self.directory, str(step), 'data')):
        raise DlmError(f'checkpoint {step} in {self.directory} has no data iterator state')
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
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
  if not os.path.isdir(workdir):
    raise DlmError(f'workdir {workdir} ' + ('is a file, not a directory' if os.path.exists(workdir)
                                            else 'does not exist'))
  c = config_lib.load_json(os.path.join(workdir, 'config.json'))
  tok_dir = os.path.join(workdir, 'tokenizer')
  if not os.path.exists(os.path.join(tok_dir, 'tokenizer.json')):
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
