"""compare and ablate on a tiny preset: scorer, runs, evaluation, reports with every section."""

import json
import math

import pytest

from conftest import tiny_config
from dlm.experiments import ablate, compare


@pytest.fixture(scope='module')
def compared(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('compare')
  compare.compare(tiny_config(), str(workdir), preset='tiny', log=lambda *a, **k: None)
  return workdir


def test_compare_writes_a_report_with_every_section_filled(compared):
  tmp_path = compared
  report = (tmp_path / 'report.md').read_text()
  for section in ('## Model sizes and speed', '## Likelihood on the same held-out tokens',
                  '## Sample quality', '### Diffusion: quality vs sampling steps',
                  '## One sample each'):
    assert section in report
  assert 'nan' not in report.lower()
  for png in ('loss_curves', 'bound_vs_tokens', 'genppl_vs_entropy', 'quality_vs_steps',
              'wall_time'):
    assert (tmp_path / f'{png}.png').stat().st_size > 1000
    assert f'({png}.png)' in report
  r = json.loads((tmp_path / 'results.json').read_text())
  d, a = r['families']['diffusion'], r['families']['autoregressive']
  assert d['final']['likelihood'].startswith('upper') and a['final']['likelihood'].startswith('exact')
  assert d['final']['eval_bytes'] == a['final']['eval_bytes']  # the same held-out tokens
  assert d['final']['discrete_bits_per_byte'] > 0 and len(d['checkpoints']) == 2
  for fam in (d, a):
    assert all(math.isfinite(q['gen_ppl']) for q in fam['temperature_sweep'])
    assert fam['speed']['samples_per_sec_batch_1'] > 0 and fam['tokens_per_sec'] > 0
  assert r['scorer']['non_embedding_params'] > d['non_embedding_params']


def test_ablate_trains_each_variant_and_reports_them_side_by_side(compared, tmp_path):
  r = ablate.ablate(tiny_config(), 'embed_norm', str(tmp_path), preset='tiny',
                    scorer_workdir=str(compared / 'scorer'), log=lambda *a, **k: None)
  names = [v['name'] for v in r['variants']]
  assert names == ['normalize=True', 'normalize=False']
  report = (tmp_path / 'report.md').read_text()
  assert all(name in report for name in names) and 'nan' not in report.lower()
  for v in r['variants']:
    assert v['final']['bits_per_byte'] > 0 and math.isfinite(v['quality']['gen_ppl'])
