"""python -m dlm.bench on a tiny config: every figure is measured and positive."""

import subprocess
import sys

from conftest import ROOT, tiny_config
from dlm import bench


def test_bench_times_train_eval_and_sampling_for_each_family():
  r = bench.bench(tiny_config(), batch=4, repeats=1, log=lambda *a, **k: None)
  assert set(r['families']) == {'gaussian', 'ar'}
  for family in ('gaussian', 'ar'):
    f = r['families'][family]
    assert f['family'] == family and f['batch'] == 4
    assert f['train']['tokens_per_sec'] > 0 and f['train']['compile_s'] > 0
    assert f['eval']['step_s'] > 0 and set(f['sample']) == {'batch_1', 'batch_4'}
    assert all(s['samples_per_sec'] > 0 for s in f['sample'].values())
  # matched twins: non-embedding parameters within a few percent
  d, a = (r['families'][f]['non_embedding_params'] for f in ('gaussian', 'ar'))
  assert abs(d - a) / d < 0.1
  ratios = r['ratios']['gaussian']
  assert ratios['train_time_per_token'] > 0 and 'sample_time_batch_4' in ratios


def test_bench_command_rejects_bad_flags_in_one_line():
  proc = subprocess.run([sys.executable, '-m', 'dlm.bench', '--config=configs/quickstart.py',
                         '--steps=0'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and proc.stderr.strip() == 'error: --steps must be >= 1'
