"""Live tracking: the records of metrics.jsonl, as they are written, also go to TensorBoard
event files in workdir/tensorboard (`train.tensorboard`, on by default) and to Weights & Biases
when `train.wandb_project` is set. Process 0 writes; metrics.jsonl stays the source of truth.

TensorBoard through tensorboardX: it writes the event-file format in pure Python (protobuf
only). `clu.metric_writers` writes its summaries with TensorFlow's `tf.summary`, which would add
TensorFlow to the requirements of a JAX project.

A resumed run must not hold a step twice. `MetricsLog` drops the records after the step a run
resumes from; the tracker does the same to its event files by writing them again from the
records that were kept (`Tracker.start`): the old files are removed and the kept records
replayed into a new one, a few thousand small events at most. So a kill at any moment, even
mid-write (a torn event file), leaves nothing behind once the run resumes, and a TensorBoard
watching the run drops the orphaned steps as well (the replay restarts at an earlier step,
which it takes for a restart). W&B keeps its own history on its server: the run id is kept in
workdir/wandb_run_id, a resumed run continues that W&B run, and steps W&B already holds are not
sent again.

What a record becomes: a training record's scalars go under train/ (loss, grad_norm,
tokens_per_sec, mfu, skipped_steps, ...); an evaluation record's under val/ (bits_per_byte,
the validation figure, with its Monte-Carlo error; bits_per_token; the training objective on
held-out data as val/objective), its CE-vs-noise curves as a figure per evaluation (TensorBoard's
image slider steps through them), its samples as text.
"""

import math
import os
import secrets
import shutil
import tempfile
import time

from dlm import sharding, storage
from dlm.errors import DlmError

TENSORBOARD_DIR = 'tensorboard'
WANDB_ID_FILE = 'wandb_run_id'
FLUSH_SECONDS = 2  # TensorBoard sees a logged step this soon (a few hundred bytes a flush)
REMOTE_SYNC_SECONDS = 60  # how often the event file of a remote workdir is uploaded


def scalars(record: dict) -> dict:
  """{tag: value} of a metrics.jsonl record's numbers: train/<name> for a training step (it
  has a loss), val/<name> for an evaluation; the held-out training objective (`val_loss`,
  proposal-weighted for the families with a noise proposal) as val/objective."""
  group = 'train' if 'loss' in record else 'val'
  out = {}
  for k, v in record.items():
    if k == 'step' or isinstance(v, bool) or not isinstance(v, (int, float)):
      continue
    if not math.isfinite(v):
      continue
    out[f'{group}/{"objective" if k == "val_loss" else k}'] = float(v)
  return out


def curves(record: dict) -> dict:
  """{name: (x label, x, y series {label: values})} of the CE-vs-noise curves a record holds:
  the running training CE (and the proposal q) vs log-SNR, the held-out CE vs corruption level."""
  out = {}
  if 'ce_vs_logsnr' in record:
    r = record['ce_vs_logsnr']
    out['ce_vs_logsnr'] = ('log-SNR', r['logsnr'], {'training CE (nats)': r['ce'],
                                                    'proposal density q': r.get('q')})
  if 'heldout_ce_vs_level' in record:
    r = record['heldout_ce_vs_level']
    out['heldout_ce_vs_level'] = (record.get('level', 'level'), r['level'],
                                  {'held-out CE (nats)': r['ce']})
  return out


def figure(x_label: str, x, series: dict):
  """A matplotlib figure of one CE curve; a second series (q) on its own axis."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.2))
  axes = [ax]
  for i, (label, ys) in enumerate((k, v) for k, v in series.items() if v is not None):
    a = ax if i == 0 else ax.twinx()
    if a is not ax:
      axes.append(a)
    pts = [(a_, b) for a_, b in zip(x, ys) if b is not None]
    if pts:
      a.plot(*zip(*pts), color=f'C{i}', marker='.')
    a.set_ylabel(label, color=f'C{i}')
  ax.set_xlabel(x_label)
  fig.tight_layout()
  return fig


def _text(sample: str) -> str:
  """A sample as TensorBoard text (Markdown): indented, so its line breaks and spaces stay."""
  return '\n'.join('    ' + line for line in sample.splitlines()) or '    (empty)'


class _TensorBoard:
  """Event files in workdir/tensorboard, written again from the kept records at each start.
  A remote workdir's file is written locally and uploaded whole (`flush`)."""

  def __init__(self, workdir: str):
    try:
      from tensorboardX import SummaryWriter
    except ImportError:
      raise DlmError('train.tensorboard needs the tensorboardX package: pip install tensorboardX '
                     '(or --config.train.tensorboard=False)') from None
    self.target = storage.join(workdir, TENSORBOARD_DIR)
    self.remote = storage.is_remote(workdir)
    storage.makedirs(self.target)
    for old in list(storage.path(self.target).glob('events.out.tfevents.*')):
      old.unlink()  # replayed below: a step once, whatever the files held before
    self.local = tempfile.mkdtemp(prefix='dlm-tb-') if self.remote else self.target
    self.writer = SummaryWriter(self.local, flush_secs=FLUSH_SECONDS)
    self.synced = time.monotonic()

  def write(self, record: dict) -> None:
    step = int(record['step'])
    for tag, v in scalars(record).items():
      self.writer.add_scalar(tag, v, step)
    for name, (x_label, x, series) in curves(record).items():
      self.writer.add_figure(f'curves/{name}', figure(x_label, x, series), step, close=True)
    for i, sample in enumerate(record.get('samples', ())):
      self.writer.add_text(f'samples/{i}', _text(sample), step)
    # tensorboardX's thread writes the events to the local file within FLUSH_SECONDS; a remote
    # workdir's file is uploaded whole, so at each evaluation and once a minute.
    if self.remote and ('loss' not in record or
                        time.monotonic() - self.synced > REMOTE_SYNC_SECONDS):
      self.flush()

  def flush(self) -> None:
    self.writer.flush()
    if self.remote:
      for name in os.listdir(self.local):
        with open(os.path.join(self.local, name), 'rb') as f:
          storage.write_bytes(storage.join(self.target, name), f.read())
      self.synced = time.monotonic()

  def close(self) -> None:
    self.writer.close()
    self.flush()
    if self.remote:
      shutil.rmtree(self.local, ignore_errors=True)


class _WandB:
  """One W&B run per workdir: its id in workdir/wandb_run_id, continued on resume. WANDB_MODE=
  offline writes it under the workdir (or, for a remote workdir, ~/.cache/dlm/wandb) for a later
  `wandb sync`."""

  def __init__(self, c, workdir: str):
    try:
      import wandb  # only runs that log to W&B pay for importing it
    except ImportError:
      raise DlmError(f'train.wandb_project={c.train.wandb_project!r} needs the wandb package: '
                     'pip install wandb') from None
    id_path = storage.join(workdir, WANDB_ID_FILE)
    run_id = storage.read_text(id_path).strip() if storage.exists(id_path) else None
    if not run_id:
      run_id = secrets.token_hex(4)  # W&B's own ids are 8 characters of [0-9a-z] as well
      storage.write_text(id_path, run_id + '\n')  # before the run exists: a resume finds it
    local = (os.path.join(os.path.expanduser('~/.cache/dlm/wandb'), run_id)
             if storage.is_remote(workdir) else workdir)
    os.makedirs(local, exist_ok=True)
    self.wandb = wandb
    self.run = wandb.init(project=c.train.wandb_project, id=run_id, resume='allow', dir=local,
                          name=os.path.basename(os.path.normpath(workdir)),
                          config=c.to_dict())
    self.first = int(self.run.step or 0)  # steps below it are on W&B already (a resumed run)

  def write(self, record: dict) -> None:
    step = int(record['step'])
    if step < self.first:
      return
    data = dict(scalars(record))
    for name, (x_label, x, series) in curves(record).items():
      fig = figure(x_label, x, series)
      data[f'curves/{name}'] = self.wandb.Image(fig)
      import matplotlib.pyplot as plt
      plt.close(fig)
    if record.get('samples'):
      data['samples'] = self.wandb.Table(columns=['step', 'index', 'text'],
                                         data=[[step, i, s] for i, s in
                                               enumerate(record['samples'])])
    self.run.log(data, step=step)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    self.run.finish()


class Tracker:
  """The live trackers `c.train` asks for, fed the records of metrics.jsonl (`MetricsLog`):
  `start(kept)` with the records kept from before a resume, then `write` for each new one."""

  def __init__(self, c, workdir: str):
    self.c, self.workdir = c, workdir
    self.enabled = sharding.is_main_process() and bool(c.train.tensorboard or
                                                       c.train.wandb_project)
    self.sinks = []

  def start(self, kept: list[dict]) -> None:
    if not self.enabled:
      return
    if self.c.train.tensorboard:
      tb = _TensorBoard(self.workdir)
      for record in kept:
        tb.write(record)
      tb.flush()
      self.sinks.append(tb)
    if self.c.train.wandb_project:
      self.sinks.append(_WandB(self.c, self.workdir))

  def write(self, record: dict) -> None:
    for sink in self.sinks:
      sink.write(record)

  def close(self) -> None:
    sinks, self.sinks = self.sinks, []
    for sink in sinks:
      sink.close()
