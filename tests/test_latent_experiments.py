"""The latent family in the experiments, on the tiny preset: every family at equal total training
tokens (the latent run splits them between its autoencoder and its diffusion stage), compare's
report without a bound for it but with its reconstruction and a score-temperature sweep,
infill through known latent chunks, and `ablate --sweep=latent`."""

import json
import math

import numpy as np
import pytest

from conftest import tiny_config
from dlm import families
from dlm.errors import DlmError
from dlm.experiments import ablate, common, compare, infill, report


@pytest.fixture(scope='module')
def compared(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('compare_latent')
  compare.compare(tiny_config(), str(workdir), preset='tiny', names=('latent',),
                  log=lambda *a, **k: None)
  return workdir


def _section(text: str, title: str) -> str:
  assert f'\n{title}\n' in text, title
  return text.split(f'\n{title}\n', 1)[1].split('\n## ', 1)[0]


def _cells(section: str, first: str) -> list[str]:
  line = next(x for x in section.splitlines() if x.startswith(f'| {first} |'))
  return [c.strip() for c in line.strip('|').split('|')]


def test_every_family_gets_the_same_total_steps():
  c = common.diffusion_config(tiny_config(**{'latent.fraction': 0.25}), 'tiny')
  c.train.num_iterations = 40
  configs = common.family_configs(c, common.DIFFUSION)
  for name, fc in configs.items():
    steps = families.of(fc.model).stage_steps(fc)
    assert sum(steps.values()) == 40, name
    assert common.whole_budget(fc).train.num_iterations == 40
  assert families.get('latent').stage_steps(configs['latent']) == {'autoencoder': 10,
                                                                   'diffusion': 30}
  assert configs['gaussian'].train.num_iterations == 40  # one stage: the whole budget
  # Each stage keeps at least one step; a budget of one step cannot be split.
  c.train.num_iterations, c.latent.fraction = 3, 0.9
  assert families.get('latent').at_budget(c).train.num_iterations == 1
  c.train.num_iterations = 1
  with pytest.raises(DlmError, match='at least 2 steps'):
    families.get('latent').at_budget(c)


def test_compare_reports_latent_at_equal_tokens_without_a_bound(compared):
  r = json.loads((compared / 'results.json').read_text())
  lat, a = r['families']['latent'], r['families']['ar']
  per_step = lat['tokens_per_step']
  assert lat['stage_tokens'] == {'autoencoder': 3 * per_step, 'diffusion': 3 * per_step}
  assert lat['train_tokens'] == a['train_tokens'] == 6 * per_step
  f = lat['final']
  assert 'bits_per_byte' not in f and f['likelihood'].startswith('none')
  rec = f['reconstruction_accuracy']
  assert 0 <= rec['clean'] <= 1 and 0 <= rec['noisy'] <= 1 and rec['sigma'] > 0
  # No temperature for latent: the sweep turns its score temperature, every point scored.
  sweep = lat['temperature_sweep']
  assert [q['temperature'] for q in sweep] == list(common.PRESETS['tiny']['temperatures'])
  assert all(q['knob'] == 'score_temperature' and q['score_temperature'] == q['temperature']
             and math.isfinite(q['gen_ppl']) for q in sweep)
  assert all(q['knob'] == 'temperature' for q in a['temperature_sweep'])
  assert lat['steps_sweep'] and all(math.isfinite(q['gen_ppl']) for q in lat['steps_sweep'])
  assert lat['speed']['samples_per_sec_batch_1'] > 0 and lat['context'] is not None

  text = (compared / 'report.md').read_text()
  assert 'nan' not in text.lower()
  row = _cells(_section(text, '## Families side by side'), 'latent')
  assert row[1:4] == ['no bound (the autoencoder is deterministic)', '—', '—']
  assert row[4] == f'{sweep[-1]["gen_ppl"]:.2f}' and '(score T' in row[5]
  likelihood = _section(text, '## Likelihood on the same held-out tokens')
  assert _cells(likelihood, 'latent')[1:] == ['—', '—', '—', f'{f["val_loss"]:.3f}',
                                              report.no_bound(f)]
  assert _cells(likelihood, 'ar')[2].startswith(f'= {a["final"]["bits_per_byte"]:.3f}')
  rec_row = _cells(likelihood.split('### Reconstruction', 1)[1], 'latent')
  assert rec_row[1:] == [f'{100 * rec["clean"]:.2f} %', f'{100 * rec["noisy"]:.2f} %',
                         f'{rec["sigma"]:.3f}']
  sizes = _cells(_section(text, '## Model sizes and speed'), 'latent')
  assert sizes[-1] == f'autoencoder {3 * per_step:,} + diffusion {3 * per_step:,}'
  assert '`score_temperature` over the same values' in text
  assert _cells(_section(text, '## Sample quality'), 'latent')[-1] == 'score_temperature'
  assert f'| latent, score T={sweep[0]["temperature"]} |' in text
  for png in ('bound_vs_tokens', 'genppl_vs_entropy', 'quality_vs_steps', 'ce_vs_level'):
    assert (compared / f'{png}.png').stat().st_size > 1000


def test_infill_through_known_latent_chunks(compared, tmp_path):
  """The compared runs fill gaps: every known token stays, the fill is scored like the
  twin's, and the latent run draws with its score temperature."""
  given = {'latent': str(compared / 'latent'), 'ar': str(compared / 'ar')}
  r = infill.infill(None, str(tmp_path), preset='tiny', names=('latent',), gaps=(4,),
                    scorer_workdir=str(compared / 'scorer'), run_workdirs=given,
                    log=lambda *a, **k: None)
  g = r['gaps'][0]
  assert g['settings']['latent']['known_by'] == 'replace'
  assert g['settings']['latent']['score_temperature'] == 1.0
  assert math.isfinite(g['rows']['latent']['window']['mean'])
  fills = np.load(tmp_path / 'fills.npz')
  a, n = g['start'], g['gap']
  gap = np.zeros(16, bool)
  gap[a:a + n] = True
  np.testing.assert_array_equal(fills['latent_gap_4'][:, ~gap], fills['original'][:, ~gap])
  assert '| 4 | latent |' in (tmp_path / 'report.md').read_text()


def test_ablate_latent_sweep_reports_reconstruction_per_variant(compared, tmp_path):
  """One variant (--variants; each costs a two-stage run and its compilations): its own chunk
  and width, its budget split, and its figures in the report in place of a bound."""
  r = ablate.ablate(tiny_config(), 'latent', str(tmp_path), preset='tiny',
                    scorer_workdir=str(compared / 'scorer'), log=lambda *a, **k: None,
                    variants=('chunk=2 dim=32',))
  [v] = r['variants']
  assert v['name'] == 'chunk=2 dim=32' and r['variant_names'] == [v['name']]
  assert list(r['runs']) == ['chunk_2-dim_32-family_latent']
  config = json.loads((tmp_path / v['run'] / 'config.json').read_text())
  assert (config['latent']['chunk'], config['latent']['dim']) == (2, 32)
  assert (config['latent']['iterations'], config['train']['num_iterations']) == (3, 3)
  assert v['stage_tokens'] == {'autoencoder': 3 * v['tokens_per_step'],
                               'diffusion': 3 * v['tokens_per_step']}
  f, q = v['final'], v['quality']
  assert 'bits_per_byte' not in f and q['family'] == 'latent'
  assert r['runs'][v['run']]['diffusion_dim'] == 32  # the denoiser works at the latent width
  rec = f['reconstruction_accuracy']
  text = (tmp_path / 'report.md').read_text()
  assert 'nan' not in text.lower()
  cells = _cells(text, v['name'])
  assert cells[4:8] == ['—', '—', '—', report.no_bound(f)]
  assert cells[8:11] == [f'{100 * rec["clean"]:.2f} %', f'{100 * rec["noisy"]:.2f} %',
                         f'{rec["sigma"]:.3f}']
  assert cells[11] == f'{q["gen_ppl"]:.2f}' and cells[12] == f'{q["unigram_entropy"]:.3f}'
  assert cells[16] == f'{v["samples_per_sec"]:.2f}' and v['samples_per_sec'] > 0
  assert (tmp_path / 'bits_per_byte.png').stat().st_size > 1000


def test_the_latent_sweep_and_its_variant_filter():
  assert [n for n, _ in ablate.chosen('latent')] == [
      'chunk=2 dim=32', 'chunk=4 dim=32', 'chunk=8 dim=32', 'chunk=4 dim=16', 'chunk=4 dim=64']
  assert all(o['model.family'] == 'latent' for _, o in ablate.SWEEPS['latent'])
  assert ablate.parse_variants(' chunk=2 dim=32, chunk=4 dim=16 ,') == ('chunk=2 dim=32',
                                                                          'chunk=4 dim=16')
  assert [n for n, _ in ablate.chosen('latent', ('chunk=4 dim=16', 'chunk=2 dim=32'))] == [
      'chunk=2 dim=32', 'chunk=4 dim=16']  # the sweep's order
  with pytest.raises(DlmError, match='not a variant of the latent sweep'):
    ablate.chosen('latent', ('chunk=3 dim=32',))
  with pytest.raises(DlmError, match='unknown sweep'):
    ablate.chosen('nope')
