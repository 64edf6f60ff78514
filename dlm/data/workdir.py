"""The data of a training run: found, linked or prepared in its workdir.

`data.path` may be
  ''                  the default: TinyStories from the hub when the machine is online, else the
                      generated offline corpus (both `data.num_generated_stories` stories);
  a name              tinystories, fineweb-edu (hub), generated, markov;
  a prepared dir      the output of `python -m dlm.data.prepare` (used in place: a link in
                      workdir/data/prepared.json);
  a file, dir, glob   .txt / .jsonl / .parquet text, prepared on the fly into workdir/data.
A multi-process run never tokenizes: training a tokenizer and encoding a corpus can take hours,
which the other processes would spend waiting inside a collective. When no process finds
prepared data it stops at once, on every process, naming the one-process command that prepares
it (`NotPrepared`; `python main.py --mode=prepare`). Then every process reads the same
manifest. The workdir may be local or remote (gs://, `dlm.storage`). The tokenizer is copied to
workdir/tokenizer (sampling and eval load it from there) and must match the one the shards were
written with.
"""

import json

import numpy as np

from dlm import sharding, storage
from dlm.data import shards, sources
from dlm.errors import DlmError
from dlm.tokenizer import Tokenizer

LINK = 'prepared.json'
SETTINGS_FILE = 'settings.json'  # the data settings the tokens were prepared with
# The data fields that decide which tokens are prepared (not how they are loaded).
SETTINGS = ('path', 'val_path', 'val_fraction', 'tokenizer', 'tokenizer_vocab_size',
            'num_generated_stories', 'max_documents', 'on_error')


class NotPrepared(DlmError):
  """A multi-process run found no prepared data; main.py names the exact command to run."""

  def __init__(self, reason: str):
    super().__init__(f'{reason}: run the same command in one process with --mode=prepare '
                     '(python main.py --mode=prepare --config ... --workdir ...)')
    self.reason = reason


def prepared_dir(workdir: str) -> str:
  """The prepared data directory a run in `workdir` trains on."""
  local = storage.join(workdir, 'data')
  if storage.exists(storage.join(local, shards.MANIFEST)):
    return local
  try:
    return json.loads(storage.read_text(storage.join(local, LINK)))['path']
  except FileNotFoundError:
    raise DlmError(f'no prepared data in {workdir}: was training started there?') from None


def val_tokens(workdir: str, max_tokens: int = 0) -> np.ndarray:
  """The validation split of the run in `workdir` (its first `max_tokens` if > 0)."""
  directory = prepared_dir(workdir)
  return shards.read_split(directory, shards.read_manifest(directory), 'val', max_tokens)


def for_training(c, workdir: str, log=print) -> tuple[Tokenizer, str, dict]:
  """(tokenizer, prepared directory, its manifest) for a run, preparing the data if needed
  (in a one-process run only: `_check_prepared_everywhere`)."""
  _check_prepared_everywhere(c.data, workdir)
  if sharding.is_main_process():
    _ensure_prepared(c.data, workdir, log)
  sharding.barrier('data-prepared')
  directory = prepared_dir(workdir)
  manifest = shards.read_manifest(directory)
  tok = _matching_tokenizer(storage.join(directory, shards.TOKENIZER_DIR), manifest, directory)
  run_tok = storage.join(workdir, 'tokenizer')
  if storage.exists(storage.join(run_tok, 'tokenizer.json')):
    _matching_tokenizer(run_tok, manifest, directory)
  elif sharding.is_main_process():
    tok.save(run_tok)
  sharding.barrier('data-tokenizer')
  return tok, directory, manifest


def _matching_tokenizer(path: str, manifest: dict, directory: str) -> Tokenizer:
  tok = Tokenizer.load(path)
  if tok.fingerprint() != manifest['tokenizer']['sha256']:
    raise DlmError(f'the tokenizer in {path} does not match the one the shards in {directory} '
                   'were prepared with: use a new --workdir or prepare the data again')
  return tok


def _ready(dc, workdir: str) -> bool:
  """Whether the run's tokens are prepared (in the workdir, or data.path is a prepared dir)."""
  local = storage.join(workdir, 'data')
  return (storage.exists(storage.join(local, shards.MANIFEST))
          or storage.exists(storage.join(local, LINK))
          or bool(dc.path) and storage.exists(storage.join(dc.path, shards.MANIFEST)))


def _check_prepared_everywhere(dc, workdir: str) -> None:
  """In a multi-process run, stop every process at once unless every one sees prepared data.

  The processes compare what they see (one small collective), so they all stop together: a
  process that stopped alone would leave the others waiting for it in the next collective."""
  if sharding.process_count() == 1:
    return
  seen = sharding.gather_flags(_ready(dc, workdir))
  if all(seen):
    return
  if any(seen):
    missing = ', '.join(str(i) for i, ok in enumerate(seen) if not ok)
    raise DlmError(f'processes {missing} do not see the prepared data in {workdir} that process '
                   f'{seen.index(True)} sees: the workdir must be storage every host shares')
  raise NotPrepared(f'no prepared data in {workdir}, and a {len(seen)}-process run does not '
                    'tokenize (the other processes would wait for hours inside a collective); '
                    'prepare it first in one process')


def _ensure_prepared(dc, workdir: str, log) -> None:
  """Prepare (or link) the run's data unless done before, with the same data settings: the
  workdir's config.json is written after the checkpoint checks, so a first run that failed
  after preparing leaves data/ without one, and a rerun with another `data.path` would
  otherwise train on the old tokens without a word."""
  local = storage.join(workdir, 'data')
  settings = {f'data.{k}': dc[k] for k in SETTINGS}
  recorded = storage.join(local, SETTINGS_FILE)
  if storage.exists(recorded):
    saved = json.loads(storage.read_text(recorded))
    diff = [f'{k} {saved.get(k)!r} there, {v!r} here' for k, v in settings.items()
            if saved.get(k) != v]
    if diff:
      raise DlmError(f'{local} holds data prepared with other settings ({"; ".join(diff)}): use '
                     'a new --workdir or the original data settings')
  _prepare_once(dc, workdir, log)
  if not storage.exists(recorded):
    storage.write_text(recorded, json.dumps(settings, indent=2, sort_keys=True))


def _prepare_once(dc, workdir: str, log) -> None:
  # imported here, not at the top, so that `python -m dlm.data.prepare` does not find its own
  # module already imported by the package (runpy warns about that)
  from dlm.data import prepare
  local = storage.join(workdir, 'data')
  if storage.exists(storage.join(local, shards.MANIFEST)) or storage.exists(
      storage.join(local, LINK)):
    log(f'data: prepared tokens in {prepared_dir(workdir)}')
    return
  if dc.path and storage.exists(storage.join(dc.path, shards.MANIFEST)):
    storage.makedirs(local)
    storage.write_text(storage.join(local, LINK), json.dumps({'path': storage.absolute(dc.path)}))
    log(f'data: prepared shards in {dc.path}')
    return
  kw = dict(val_input=dc.val_path, val_fraction=dc.val_fraction,
            vocab_size=dc.tokenizer_vocab_size, tokenizer=dc.tokenizer, on_error=dc.on_error,
            log=log, progress=False)
  if dc.path:
    prepare.prepare(dc.path, local, max_documents=dc.max_documents, **kw)
    return
  if sources.online():
    log('data: the machine is online: TinyStories from the Hugging Face hub '
        '(HF_HUB_OFFLINE=1 for the generated offline corpus)')
    try:
      prepare.prepare('tinystories', local, max_documents=dc.num_generated_stories,
                      max_files=1, **kw)
      return
    except DlmError as e:
      log(f'data: {e}; falling back to the generated offline corpus')
  else:
    log('data: offline: the generated offline corpus; set --config.data.path to train on '
        'your own text')
  prepare.prepare('generated', local, max_documents=dc.num_generated_stories, **kw)
