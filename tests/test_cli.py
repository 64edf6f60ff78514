"""The command line: bad input gives one line on stderr, a non-zero exit and no traceback."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_config
from dlm import train


def _main(*args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, str(ROOT / 'main.py'), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def _assert_one_line_error(proc, message):
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr, proc.stderr
  assert message in proc.stderr, proc.stderr


@pytest.fixture(scope='module')
def trained(trained_workdir):
  return trained_workdir


def test_sample_writes_jsonl_with_text_seed_and_settings(trained, tmp_path):
  out = tmp_path / 'samples.jsonl'
  proc = _main('--mode=sample', f'--workdir={trained}', '--num_samples=3', '--num_steps=5',
               '--seq_len=12', '--temperature=0.8', '--seed=7', f'--output={out}')
  assert proc.returncode == 0, proc.stderr
  records = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(records) == 3 and proc.stdout.count('--- sample') == 3
  r = records[0]
  assert (r['seed'], r['num_steps'], r['seq_len'], r['temperature']) == (7, 5, 12, 0.8)
  assert isinstance(r['text'], str) and len(r['tokens']) == 12


def test_eval_writes_val_loss_and_bits_per_byte(trained, tmp_path):
  out = tmp_path / 'eval.json'
  proc = _main('--mode=eval', f'--workdir={trained}', '--eval_tokens=128', '--batch_size=4',
               '--bound_samples=6', f'--output={out}')
  assert proc.returncode == 0, proc.stderr
  result = json.loads(out.read_text())
  assert result['eval_tokens'] == 128 and result['step'] == 6 and result['bound_samples'] == 6
  assert 'two-pass' in result['likelihood']  # says which process the bound describes
  curve = result['heldout_ce_vs_logsnr']
  assert len(curve['logsnr']) == len(curve['ce']) and any(x is not None for x in curve['ce'])
  assert 'held-out cross-entropy' in proc.stdout and proc.stdout.rstrip().endswith('}')
  assert 0 < result['bits_per_byte'] < result['bits_per_token']
  assert result['val_loss'] > 0
  assert result['discrete_bits_per_token'] > 0 and result['weights'] == 'raw'
  assert result['samples']['unigram_entropy'] > 0 and 'distinct_4' in result['held_out']


def test_eval_on_another_text_file(trained, tmp_path):
  text = tmp_path / 'other.txt'
  text.write_text('The cat sat on the mat. It was a sunny day.\n\n' * 20)
  proc = _main('--mode=eval', f'--workdir={trained}', f'--eval_data={text}', '--batch_size=2',
               '--eval_tokens=64')
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout[proc.stdout.index('{'):])['data'] == str(text)


@pytest.mark.parametrize('args, message', [
    (['--mode=sample', '--sampler=euler'], '--sampler=\'euler\''),
    (['--mode=sample', '--self_condition=twice'], '--self_condition'),
    (['--mode=sample', '--seq_len=999'], 'exceeds the model\'s sequence_len'),
    (['--mode=sample', '--checkpoint=4'], 'no checkpoint 4'),
    (['--mode=eval', '--batch_size=1000'], 'fewer than --batch_size'),
    (['--mode=eval', '--eval_data=/nonexistent.txt'], 'does not exist'),
])
def test_bad_sample_and_eval_flags(trained, args, message):
  _assert_one_line_error(_main(*args, f'--workdir={trained}'), message)


def test_sample_from_a_workdir_without_a_run(tmp_path):
  _assert_one_line_error(_main('--mode=sample', f'--workdir={tmp_path}'), 'no config.json')


def test_unknown_config_key_and_impossible_values(tmp_path):
  proc = _main('--config=configs/quickstart.py', '--config.model.nonsense=3',
               f'--workdir={tmp_path}/a')
  _assert_one_line_error(proc, 'nonsense')
  proc = _main('--config=configs/quickstart.py', '--config.diffusion.allocation=uniform',
               f'--workdir={tmp_path}/b')
  _assert_one_line_error(proc, 'diffusion.allocation')
  proc = _main('--config=configs/quickstart.py', '--config.data.path=/nope/corpus.txt',
               f'--workdir={tmp_path}/c')
  _assert_one_line_error(proc, 'does not exist')


def test_changed_model_config_does_not_overwrite_an_existing_run(trained):
  before = (trained / 'config.json').read_text()
  c = tiny_config(**{'model.n_embd': 128})
  path = trained.parent / 'changed.py'
  path.write_text('from ml_collections import ConfigDict\n'
                  f'def get_config():\n  return ConfigDict({c.to_dict()!r})\n')
  _assert_one_line_error(_main(f'--config={path}', f'--workdir={trained}'),
                         'different model settings')
  assert (trained / 'config.json').read_text() == before


@pytest.mark.parametrize('args, message', [
    (['--infill=no gap in this text'], 'the template has no placeholder'),
    (['--label=yes'], 'trained without labels'),
    (['--label=yes', '--guidance=-2'], '--guidance=-2: the guidance scale must be >= 0'),
])
def test_bad_conditions_on_the_command_line_are_one_line(trained, args, message):
  proc = _main('--mode=sample', f'--workdir={trained}', '--num_samples=1', *args)
  _assert_one_line_error(proc, message)
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
