"""Bad invocations of main.py, one row each. Every row must exit non-zero with one line naming
the problem, print no traceback, leave every file of its workdir as it was (sizes, times and
contents) and write nothing in its working directory.

The rows run as subprocesses, a few at a time, in one module fixture; each test then reads
its row's result.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_config

# Where each row runs: a copy of the tiny trained run, a path that does not exist yet, an
# empty directory, a regular file, a path below a regular file, or a trained copy with its
# config.json garbled or its checkpoints gone.
WORKDIRS = ('trained', 'new', 'empty', 'file', 'below_file', 'bad_json', 'no_checkpoints')


@dataclasses.dataclass(frozen=True)
class Row:
  id: str
  workdir: str     # one of WORKDIRS
  args: tuple      # {wd}: the row's workdir; {inputs}: the prepared files below
  message: str     # must appear in stderr


TRAIN = ('--config={inputs}/tiny.py', '--workdir={wd}')
SAMPLE = ('--mode=sample', '--workdir={wd}', '--num_samples=1')
EVAL = ('--mode=eval', '--workdir={wd}')

ROWS = [
    # flags
    Row('unknown_flag', 'new', (*TRAIN, '--bogus=1'), "Unknown command line flag 'bogus'"),
    Row('stray_argument', 'new', (*TRAIN, 'extra'), "unexpected arguments ['extra']"),
    Row('bad_mode', 'new', (*TRAIN, '--mode=fly'), '--mode'),
    Row('seed_flag_in_train_mode', 'new', (*TRAIN, '--seed=3'),
        '--seed does not apply to --mode=train (a flag of --mode=sample|eval); the training '
        'seed is --config.seed'),
    Row('config_override_in_sample_mode', 'trained', (*SAMPLE, '--config.sample.num_steps=3'),
        "--config and --config.* apply to --mode=train: --mode=sample reads the run's own"),
    Row('prompt_in_eval_mode', 'trained', (*EVAL, '--prompt=Once'),
        '--prompt does not apply to --mode=eval (a flag of --mode=sample)'),
    # config overrides
    Row('unknown_key', 'new', (*TRAIN, '--config.train.log_evry=3'),
        'unknown config key train.log_evry; did you mean train.log_every?'),
    Row('unknown_section', 'new', (*TRAIN, '--config.trian.log_every=3'),
        'unknown config key trian.log_every; did you mean train.log_every?'),
    Row('wrong_type', 'new', (*TRAIN, '--config.train.log_every=ten'),
        '--config.train.log_every=ten'),
    Row('unknown_family', 'new', (*TRAIN, '--config.model.family=gpt'),
        'model.family=\'gpt\' must be one of ar, gaussian, masked, hybrid'),
    Row('causal_became_family', 'new', (*TRAIN, '--config.model.causal=True'),
        'model.causal: it became model.family (model.causal=True is model.family=ar'),
    Row('mse_loss_on_masked', 'new', (*TRAIN, '--config.model.family=masked',
                                     '--config.diffusion.loss=mse'),
        "diffusion.loss=mse is the Gaussian family's"),
    Row('zero_log_every', 'new', (*TRAIN, '--config.train.log_every=0'),
        'train.log_every=0 must be a positive integer'),
    Row('zero_checkpoint_every', 'new', (*TRAIN, '--config.train.checkpoint_every=0'),
        'train.checkpoint_every=0 must be a positive integer'),
    Row('zero_eval_batches', 'new', (*TRAIN, '--config.train.eval_batches=0'),
        'train.eval_batches=0 must be a positive integer'),
    Row('negative_lr', 'new', (*TRAIN, '--config.train.matrix_lr=-0.1'),
        'train.matrix_lr=-0.1 must be a finite number > 0'),
    Row('nan_lr', 'new', (*TRAIN, '--config.train.other_lr=nan'), 'train.other_lr=nan'),
    Row('bad_enum', 'new', (*TRAIN, '--config.diffusion.allocation=uniform'),
        "diffusion.allocation='uniform' must be one of schedule, gumbel, adaptive"),
    Row('dropout_of_one', 'new', (*TRAIN, '--config.diffusion.label_dropout=1.0'),
        'diffusion.label_dropout=1.0 must be a number in (0, 1)'),
    Row('seq_len_over_model', 'new', (*TRAIN, '--config.sample.seq_len=17'),
        'sample.seq_len=17 exceeds model.sequence_len=16'),
    # config files
    Row('missing_config', 'new', ('--config={inputs}/nope.py', '--workdir={wd}'),
        'nope.py does not exist'),
    Row('config_raises', 'new', ('--config={inputs}/raises.py', '--workdir={wd}'),
        'Error whilst parsing config file: ValueError: no config here'),
    Row('config_without_get_config', 'new', ('--config={inputs}/no_function.py', '--workdir={wd}'),
        "cannot load the config: module 'config_config' has no attribute 'get_config'"),
    Row('config_typo', 'new', ('--config={inputs}/typo.py', '--workdir={wd}'),
        'unknown config key train.log_evry; did you mean train.log_every?'),
    Row('config_wrong_type', 'new', ('--config={inputs}/wrong_type.py', '--workdir={wd}'),
        "train.log_every='10' must be a positive integer"),
    # data
    Row('missing_data', 'new', (*TRAIN, '--config.data.path={inputs}/absent.txt'),
        'does not exist'),
    Row('empty_data', 'new', (*TRAIN, '--config.data.path={inputs}/empty.txt'),
        'holds no text'),
    # workdirs
    Row('workdir_is_a_file', 'file', TRAIN, 'is a file, not a directory'),
    Row('workdir_below_a_file', 'below_file', TRAIN, 'cannot create the workdir'),
    Row('unreachable_remote_workdir', 'new', ('--config={inputs}/tiny.py',
                                              '--workdir=gs://bucket/run'),
        '--workdir=gs://bucket/run needs a package'),  # without gcsfs; and no local 'gs:'
    Row('sample_empty_workdir', 'empty', SAMPLE, 'no config.json'),
    Row('sample_missing_workdir', 'new', SAMPLE, 'does not exist'),
    Row('eval_workdir_is_a_file', 'file', EVAL, 'is a file, not a directory'),
    Row('garbled_config_json', 'bad_json', SAMPLE, 'is not valid JSON'),
    # resuming with a setting that changes the run
    Row('resume_other_lr', 'trained', (*TRAIN, '--config.train.matrix_lr=0.03'),
        'train.matrix_lr 0.02 there, 0.03 here'),
    Row('resume_other_seed', 'trained', (*TRAIN, '--config.seed=1'), 'seed 0 there, 1 here'),
    Row('resume_other_width', 'trained', (*TRAIN, '--config.model.n_embd=128'),
        'model.n_embd 64 there, 128 here'),
    # checkpoints
    Row('no_such_checkpoint', 'trained', (*SAMPLE, '--checkpoint=4'),
        'no checkpoint 4 in'),
    Row('no_checkpoints', 'no_checkpoints', SAMPLE, 'no checkpoints in'),
    # sampling flags
    Row('seq_len_too_long', 'trained', (*SAMPLE, '--seq_len=999'),
        "--seq_len=999 exceeds the model's sequence_len=16"),
    Row('bad_sampler', 'trained', (*SAMPLE, '--sampler=euler'), "--sampler='euler'"),
    Row('order_on_gaussian', 'trained', (*SAMPLE, '--order=confidence'),
        '--order does not apply to a gaussian run (model.family=gaussian takes --num_steps'),
    Row('top_p_on_gaussian', 'trained', (*SAMPLE, '--top_p=0.9'),
        '--top_p does not apply to a gaussian run'),
    Row('infill_without_mask', 'trained', (*SAMPLE, '--infill=no gap here'),
        'the template has no placeholder'),
    Row('guidance_without_label', 'trained', (*SAMPLE, '--guidance=2'),
        '--guidance steers towards a --label'),
    Row('label_on_unlabelled_run', 'trained', (*SAMPLE, '--label=yes'), 'trained without labels'),
    Row('negative_guidance', 'trained', (*SAMPLE, '--label=yes', '--guidance=-2'),
        '--guidance=-2: the guidance scale must be >= 0'),
    Row('output_is_run_file', 'trained', (*SAMPLE, '--output={wd}/config.json'),
        "would overwrite the run's own config.json"),
    Row('output_unwritable', 'trained', (*SAMPLE, '--output={inputs}/empty.txt/out.jsonl'),
        'cannot be written'),
    # evaluation flags
    Row('eval_data_missing', 'trained', (*EVAL, '--eval_data={inputs}/absent.txt'),
        'does not exist'),
    Row('eval_data_empty', 'trained', (*EVAL, '--eval_data={inputs}/empty.txt'), 'holds no text'),
    Row('eval_batch_too_large', 'trained', (*EVAL, '--batch_size=1000'),
        'fewer than --batch_size=1000'),
    Row('eval_one_bound_sample', 'trained', (*EVAL, '--bound_samples=1'),
        '--bound_samples must be >= 2'),
    Row('scorer_not_autoregressive', 'trained', (*EVAL, '--scorer={wd}'),
        'is not an autoregressive run'),
    Row('scorer_gpt2_offline', 'trained', (*EVAL, '--scorer=gpt2-large'),
        "scorer 'gpt2-large': openai-community/gpt2-large is not in the Hugging Face cache"),
    Row('eval_bad_self_condition', 'trained', (*EVAL, '--self_condition=twice'),
        "--self_condition='twice': expected one of"),
]


def _config_file(d: dict) -> str:
  return ('from ml_collections import ConfigDict\n'
          f'def get_config():\n  return ConfigDict({d!r})\n')


def _write_inputs(inputs):
  inputs.mkdir()
  d = tiny_config().to_dict()
  (inputs / 'tiny.py').write_text(_config_file(d))
  d['train']['log_every'] = '10'  # a plain ConfigDict takes any type; validate must not
  (inputs / 'wrong_type.py').write_text(_config_file(d))
  (inputs / 'raises.py').write_text('def get_config():\n  raise ValueError("no config here")\n')
  (inputs / 'typo.py').write_text('from dlm.config import base_config\n'
                                  'def get_config():\n  c = base_config()\n'
                                  '  c.train.log_evry = 5\n  return c\n')
  (inputs / 'no_function.py').write_text('config = None\n')
  (inputs / 'empty.txt').write_text('')


def _make_workdir(kind, path, trained):
  if kind in ('trained', 'bad_json', 'no_checkpoints'):
    shutil.copytree(trained, path)
    if kind == 'bad_json':
      (path / 'config.json').write_text('{"model": ')
    if kind == 'no_checkpoints':
      shutil.rmtree(path / 'checkpoints')
  elif kind == 'empty':
    path.mkdir()
  elif kind == 'file':
    path.write_text('not a workdir\n')
  elif kind == 'below_file':
    path.mkdir()
    (path / 'a_file').write_text('x\n')
    return path / 'a_file' / 'run'
  return path


def snapshot(path) -> dict:
  """{relative path: (size, mtime, sha256)} of every file and directory at or below path."""
  if not os.path.lexists(path):
    return {}
  if not os.path.isdir(path):
    return {'.': _stat(path)}
  out = {}
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      full = os.path.join(root, name)
      out[os.path.relpath(full, path)] = 'dir' if name in dirs else _stat(full)
  return out


def _stat(path):
  st = os.stat(path)
  with open(path, 'rb') as f:
    return st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest()


def _run(row, base, trained, inputs):
  area = base / row.id  # the workdir, or for below_file the folder that holds the file
  path = _make_workdir(row.workdir, area, trained)
  args = [a.format(wd=path, inputs=inputs) for a in row.args]
  before = snapshot(area)
  cwd = base / f'{row.id}.cwd'  # empty, and must stay so: nothing is written beside the workdir
  cwd.mkdir()
  env = dict(os.environ, JAX_PLATFORMS='cpu', HF_HUB_OFFLINE='1',
             JAX_COMPILATION_CACHE_DIR=str(ROOT / '.jax_cache'))
  proc = subprocess.run([sys.executable, str(ROOT / 'main.py'), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)
  return proc, before, snapshot(area), os.listdir(cwd)


@pytest.fixture(scope='module')
def results(trained_workdir, tmp_path_factory):
  base = tmp_path_factory.mktemp('bad_inputs')
  inputs = base / 'inputs'
  _write_inputs(inputs)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = {r.id: pool.submit(_run, r, base, trained_workdir, inputs) for r in ROWS}
    return {i: f.result() for i, f in futures.items()}


def test_the_table_covers_enough_and_names_rows_once():
  assert len(ROWS) >= 25 and len({r.id for r in ROWS}) == len(ROWS)
  assert {r.workdir for r in ROWS} == set(WORKDIRS)


@pytest.mark.parametrize('row', ROWS, ids=[r.id for r in ROWS])
def test_bad_invocation(results, row):
  proc, before, after, beside = results[row.id]
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: ') and row.message in lines[0], proc.stderr
  assert after == before, 'the workdir changed'
  assert beside == [], 'files written in the working directory'
