"""The command line on a tiny trained run: what sampling and evaluation write. Bad invocations
are the table in test_bad_inputs.py."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def _main(*args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, str(ROOT / 'main.py'), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


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
  curve = result['heldout_ce_vs_level']
  assert result['level'] == 'logsnr' and len(curve['level']) == len(curve['ce']) and any(x is not None for x in curve['ce'])
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
