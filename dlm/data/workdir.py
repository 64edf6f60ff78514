"""The data of a training run: found, linked or prepared in its workdir.

`data.path` may be
  ''                  the default: TinyStories from the hub when the machine is online, else the
                      generated offline corpus (both `data.num_generated_stories` stories);
  a name              tinystories, fineweb-edu (hub), generated, markov;
  a prepared dir      the output of `python -m dlm.data.prepare` (used in place: a link in
                      workdir/data/prepared.json);
  a file, dir, glob   .txt / .jsonl / .parquet text, prepared on the fly into workdir/data.
Process 0 prepares while the others wait; then every process reads the same manifest. The
tokenizer is copied to workdir/tokenizer (sampling and eval load it from there) and must match
the one the shards were written with.
"""

import json
import os

import numpy as np

from dlm import sharding
from dlm.data import shards, sources
from dlm.errors import DlmError
from dlm.tokenizer import Tokenizer

LINK = 'prepared.json'


def prepared_dir(workdir: str) -> str:
  """The prepared data directory a run in `workdir` trains on."""
  local = os.path.join(workdir, 'data')
  if os.path.exists(os.path.join(local, shards.MANIFEST)):
    return local
  try:
    with open(os.path.join(local, LINK)) as f:
      return json.load(f)['path']
  except FileNotFoundError:
    raise DlmError(f'no prepared data in {workdir}: was training started there?') from None


def val_tokens(workdir: str, max_tokens: int = 0) -> np.ndarray:
  """The validation split of the run in `workdir` (its first `max_tokens` if > 0)."""
  directory = prepared_dir(workdir)
  return shards.read_split(directory, shards.read_manifest(directory), 'val', max_tokens)


def for_training(c, workdir: str, log=print) -> tuple[Tokenizer, str, dict]:
  """(tokenizer, prepared directory, its manifest) for a run, preparing the data if needed."""
  sharding.barrier('data-check')
  if sharding.is_main_process():
    _ensure_prepared(c.data, workdir, log)
  sharding.barrier('data-prepared')
  directory = prepared_dir(workdir)
  manifest = shards.read_manifest(directory)
  tok = _matching_tokenizer(os.path.join(directory, shards.TOKENIZER_DIR), manifest, directory)
  run_tok = os.path.join(workdir, 'tokenizer')
  if os.path.exists(os.path.join(run_tok, 'tokenizer.json')):
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


def _ensure_prepared(dc, workdir: str, log) -> None:
  # imported here, not at the top, so that `python -m dlm.data.prepare` does not find its own
  # module already imported by the package (runpy warns about that)
  from dlm.data import prepare
  local = os.path.join(workdir, 'data')
  if os.path.exists(os.path.join(local, shards.MANIFEST)) or os.path.exists(
      os.path.join(local, LINK)):
    log(f'data: prepared tokens in {prepared_dir(workdir)}')
    return
  if dc.path and os.path.exists(os.path.join(dc.path, shards.MANIFEST)):
    os.makedirs(local, exist_ok=True)
    with open(os.path.join(local, LINK), 'w') as f:
      json.dump({'path': os.path.abspath(dc.path)}, f)
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
