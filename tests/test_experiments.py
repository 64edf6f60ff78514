"""compare and ablate on a tiny preset: scorer, runs, evaluation, reports with every section;
the rules that decide when a report may print a diffusion bound as a result; and gen-PPL read
at held-out text's entropy."""

import json
import math
import os
import types

import pytest

from conftest import tiny_config
from dlm import samplers
from dlm.errors import DlmError
from dlm.experiments import ablate, common, compare, significance

FLAG = '⚠ not significant'


@pytest.fixture(scope='module')
def compared(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('compare')
  compare.compare(tiny_config(), str(workdir), preset='tiny', names=('gaussian',),
                  log=lambda *a, **k: None)
  return workdir


def _results(workdir) -> dict:
  return json.loads((workdir / 'results.json').read_text())


def test_compare_writes_a_report_with_every_section_filled(compared):
  tmp_path = compared
  report = (tmp_path / 'report.md').read_text()
  assert 'nan' not in report.lower()
  for png in ('loss_curves', 'bound_vs_tokens', 'genppl_vs_entropy', 'quality_vs_steps',
              'ce_vs_level', 'wall_time'):
    assert (tmp_path / f'{png}.png').stat().st_size > 1000
    assert f'({png}.png)' in report
  r = _results(tmp_path)
  assert list(r['families']) == ['gaussian', 'ar']  # the twin under its family's name
  d, a = r['families']['gaussian'], r['families']['ar']
  assert (d['exact'], a['exact']) == (False, True)
  assert d['final']['likelihood'].startswith('upper')
  assert a['final']['likelihood'].startswith('exact')
  assert d['final']['likelihood'] in report  # what the bound describes is printed beside it
  assert d['final']['eval_bytes'] == a['final']['eval_bytes']  # the same held-out tokens
  assert d['final']['discrete_bits_per_byte'] > 0 and len(d['checkpoints']) == 2
  assert d['final']['level'] == 'logsnr' and len(d['final']['heldout_ce_vs_level']['ce']) > 1
  for fam in (d, a):
    assert all(math.isfinite(q['gen_ppl']) for q in fam['temperature_sweep'])
    assert fam['speed']['samples_per_sec_batch_1'] > 0 and fam['tokens_per_sec'] > 0
  assert r['scorer']['non_embedding_params'] > d['non_embedding_params']
  # The samples' settings are recorded and reported.
  t1 = d['temperature_sweep'][-1]
  assert (t1['sampler'], t1['self_condition'], t1['allocation']) == ('ancestral', 'previous',
                                                                     'adaptive')
  assert '`ancestral`' in report and '`previous`' in report and '`adaptive`' in report
  # Each section holds the figures of results.json it is about, as the report rounds them.
  sizes = _section(report, '## Model sizes and speed')
  likelihood = _section(report, '## Likelihood on the same held-out tokens')
  quality = _section(report, '## Sample quality')
  for name, fam in (('gaussian', d), ('ar', a)):
    assert f'| {name} | {fam["n_layer"]} × {fam["n_embd"]} | {fam["non_embedding_params"]:,} |' \
        in sizes
    assert f'{fam["final"]["bits_per_byte"]:.3f} ± ' in likelihood
    q = fam['temperature_sweep'][-1]
    assert (f'| {name}, T={q["temperature"]} | {q["gen_ppl"]:.2f} | {q["unigram_entropy"]:.3f} |'
            in quality)
  assert f'{d["final"]["eval_tokens"]:,} tokens' in likelihood
  assert f'(T={d["final"]["discrete_steps"]})' in likelihood
  assert f'its {d["final"]["discrete_steps"]}-step sampler' in likelihood
  examples = _section(report, '## One sample each')
  assert f'```\n{d["example"]}\n```' in examples and f'```\n{a["example"]}\n```' in examples
  assert '![ce_vs_level.png](ce_vs_level.png)' in _section(report,
                                                           '## Cross-entropy vs corruption level')


def _section(report: str, title: str) -> str:
  """The text under a '## ' heading, up to the next one (its ### subsections included)."""
  assert f'\n{title}\n' in report, title
  body = report.split(f'\n{title}\n', 1)[1]
  return body.split('\n## ', 1)[0]


def _cells(section: str, first: str) -> list[str]:
  """The cells of the table row whose first cell is `first`."""
  line = next(x for x in section.splitlines() if x.startswith(f'| {first} |'))
  return [c.strip() for c in line.strip('|').split('|')]


def test_the_family_table_holds_each_familys_figures_from_results(compared):
  r = _results(compared)
  table = _section((compared / 'report.md').read_text(), '## Families side by side')
  a = r['families']['ar']
  mid = compare.CONTEXT_LEVELS[len(compare.CONTEXT_LEVELS) // 2]
  assert f'context gain at {mid:g}' in table
  for name, fam in r['families'].items():
    f, m = fam['final'], fam['matched_entropy']
    t1 = next(q for q in fam['temperature_sweep'] if q['temperature'] == 1.0)
    cells = _cells(table, name)
    assert cells[1].startswith(('= ' if fam['exact'] else '≤ ') + f'{f["bits_per_byte"]:.3f} ± ')
    assert cells[2].startswith(f'{f["bits_per_byte"] / a["final"]["bits_per_byte"]:.3f}×')
    assert cells[4] == f'{t1["gen_ppl"]:.2f}'
    assert cells[5].startswith(f'{m["gen_ppl"]:.2f} (T')
    assert f'{m["temperature"]:.2f}' in cells[5] or f'{m["temperature"]:g}' in cells[5]
    assert cells[6] == f'{t1["unigram_entropy"]:.3f}'
    assert cells[8] == f'{fam["speed"]["samples_per_sec_batch_1"]:.2f}'
    if fam['exact']:
      assert cells[2] == '1.000×' and cells[3] == '–' and cells[7] == '–'
      assert fam['context'] is None
    else:
      assert cells[3].startswith(f'≤ {f["discrete_bits_per_byte"]:.3f} ± ')
      i = fam['context']['level'].index(mid)
      assert cells[7].startswith(f'{fam["context"]["gain"][i]:.3f}')
  held = _cells(table, 'held-out text')
  assert held[4] == f'{r["held_out"]["gen_ppl"]:.2f}'


def test_compare_probes_context_on_the_held_out_windows(compared):
  """Clean context can only help a trained denoiser little at six steps, but the probe's
  figures are finite, paired, and the gain is their difference."""
  c = _results(compared)['families']['gaussian']['context']
  assert c['level'] == list(compare.CONTEXT_LEVELS)
  for clean, corrupted, gain in zip(c['clean'], c['corrupted'], c['gain']):
    assert math.isfinite(clean) and math.isfinite(corrupted) and clean > 0
    assert gain == pytest.approx(corrupted - clean, abs=1e-6)


def test_compare_sweeps_every_sampler_over_the_step_counts(compared):
  r = _results(compared)
  steps = r['families']['gaussian']['steps_sweep']
  swept = {(q['sampler'], q['num_steps']) for q in steps}
  assert swept == {(s, n) for s in samplers.SAMPLERS for n in common.PRESETS['tiny']['num_steps']}
  assert all(q['temperature'] == 1.0 and math.isfinite(q['gen_ppl']) for q in steps)
  assert r['families']['ar']['steps_sweep'] == []
  report = (compared / 'report.md').read_text()
  assert all(f'| gaussian {s} |' in report for s in samplers.SAMPLERS)  # a row per sampler
  assert 'not swept' in report  # the tiny preset has no 32- and 256-step points to divide


def test_compare_flags_the_tiny_presets_noisy_bound(compared):
  """Six training steps and two draws per sequence: the bound is noise beside the AR NLL, and
  the report must say so instead of presenting the ratio as a result."""
  r = _results(compared)
  d, a = r['families']['gaussian']['final'], r['families']['ar']['final']
  assert d['bits_per_token_mc_stderr'] > 0
  flag = significance.vs_exact(d, a)
  assert flag.startswith(FLAG)
  report = (compared / 'report.md').read_text()
  headline = next(line for line in report.splitlines() if line.startswith('**Headline.**'))
  assert FLAG in headline and 'met' not in headline.split(FLAG)[0]
  assert flag in report


def _sweep(*points):
  return [{'temperature': t, 'unigram_entropy': h, 'gen_ppl': p} for t, h, p in points]


def test_matched_entropy_interpolates_log_gen_ppl_between_bracketing_points():
  sweep = _sweep((0.6, 4.0, 10.0), (0.8, 5.0, 100.0), (1.0, 6.0, 1000.0))
  m = compare.matched_entropy(sweep, 5.5)
  assert m['bracketed'] and m['unigram_entropy'] == 5.5
  assert m['gen_ppl'] == pytest.approx(math.sqrt(100.0 * 1000.0))  # halfway in log
  assert m['temperature'] == pytest.approx(0.9)
  m = compare.matched_entropy(sweep, 4.25)
  assert m['gen_ppl'] == pytest.approx(10.0 * 10 ** 0.25)
  assert m['temperature'] == pytest.approx(0.65)
  assert compare.matched_entropy(sweep, 5.0)['gen_ppl'] == pytest.approx(100.0)  # on a point
  # Entropy that dips with temperature (sampling noise): the first segment that brackets it.
  noisy = _sweep((0.6, 4.0, 10.0), (0.8, 6.0, 100.0), (1.0, 5.0, 1000.0))
  assert compare.matched_entropy(noisy, 5.5)['temperature'] == pytest.approx(0.75)


def test_matched_entropy_flags_a_sweep_that_does_not_reach_held_out_text():
  sweep = _sweep((0.6, 4.0, 10.0), (1.0, 5.0, 100.0))
  above = compare.matched_entropy(sweep, 5.3)
  assert not above['bracketed'] and above['side'] == 'above'
  assert (above['temperature'], above['gen_ppl'], above['unigram_entropy']) == (1.0, 100.0, 5.0)
  below = compare.matched_entropy(sweep, 3.0)
  assert not below['bracketed'] and below['side'] == 'below' and below['temperature'] == 0.6


def test_family_flags_and_sample_options():
  assert common.parse_families('') == common.DIFFUSION
  assert common.parse_families('gaussian, gaussian') == ('gaussian',)
  for bad in ('ar', 'gaussian,nope'):
    with pytest.raises(DlmError):
      common.parse_families(bad)
  ar_run = types.SimpleNamespace(model_config=types.SimpleNamespace(family='ar'))
  assert common.sample_options(ar_run, {'sampler': 'ddim', 'temperature': 0.9}) == {
      'temperature': 0.9}
  assert ablate.SWEEPS['family'] == [(f, {'model.family': f}) for f in common.DIFFUSION]


def _final(bpt, se=0.01, mc=0.01):
  return {'bits_per_token': bpt, 'bits_per_token_stderr': se, 'bits_per_token_mc_stderr': mc}


def test_a_bound_is_flagged_when_its_mc_error_swamps_the_gap():
  exact = {'bits_per_token': 3.0, 'bits_per_token_stderr': 0.01}
  assert significance.vs_exact(_final(3.5, mc=0.01), exact) == ''        # a clear gap
  assert significance.vs_exact(_final(3.5, mc=0.2), exact).startswith(FLAG)  # MC > gap / 4
  assert 'raise eval.bound_samples' in significance.vs_exact(_final(3.5, mc=0.2), exact)
  # Below the exact NLL, by less than 3 combined standard errors: not a result.
  assert significance.vs_exact(_final(2.96, se=0.02, mc=0.005), exact).startswith(FLAG)
  assert significance.vs_exact(_final(2.5, se=0.02, mc=0.005), exact) == ''
  # Among ablation variants: against the nearest other bound, within 3 combined MC errors
  # (0.1 and 0.1: 0.42); alone, nothing to compare.
  others = [_final(3.9, mc=0.1), _final(5.0, mc=0.1)]
  assert significance.vs_others(_final(3.5, mc=0.1), others).startswith(FLAG)
  assert significance.vs_others(_final(3.5, mc=0.1), [_final(4.0, mc=0.1)]) == ''
  assert significance.vs_others(_final(3.5, mc=0.1), []) == ''


def test_steps_ratio_divides_32_by_256_steps_per_sampler():
  sweep = [{'sampler': s, 'num_steps': n, 'gen_ppl': p} for s, n, p in
           (('ddim', 32, 12.0), ('ddim', 256, 10.0), ('ancestral', 32, 30.0))]
  assert significance.steps_ratios(sweep) == {'ddim': pytest.approx(1.2), 'ancestral': None}


def test_sampling_only_variants_share_a_trained_run():
  names = {s: [ablate.run_name(common.split_overrides(o)[0]) for _, o in v]
           for s, v in ablate.SWEEPS.items()}
  assert names['sampler'] == names['steps'][:3] == ['base'] * 3
  assert names['self_condition'] == ['self_condition_False', 'base', 'base']
  assert len(set(names['allocation'])) == 3 and len(set(names['dim'])) == 4
  assert common.split_overrides({'sample.sampler': 'ddim', 'model.depth': 4}) == (
      {'model.depth': 4}, {'sampler': 'ddim'})


def test_ablate_a_sampling_only_sweep_trains_once_and_reports_each_variant(compared, tmp_path):
  r = ablate.ablate(tiny_config(), 'sampler', str(tmp_path), preset='tiny',
                    scorer_workdir=str(compared / 'scorer'), log=lambda *a, **k: None)
  names = [v['name'] for v in r['variants']]
  assert names == list(samplers.SAMPLERS)
  trained = [d for d in os.listdir(tmp_path) if (tmp_path / d / 'checkpoints').is_dir()]
  assert trained == ['base'] and list(r['runs']) == ['base']
  assert len({json.dumps(v['final'], sort_keys=True) for v in r['variants']}) == 1  # one bound
  assert [v['quality']['sampler'] for v in r['variants']] == names
  report = (tmp_path / 'report.md').read_text()
  assert all(f'| {name} |' in report for name in names) and 'nan' not in report.lower()
  assert '(MC ±' in report and '## Cross-entropy vs corruption level' in report
  for png in ('bits_per_byte', 'loss_curves', 'ce_vs_level'):
    assert (tmp_path / f'{png}.png').stat().st_size > 1000
  for v in r['variants']:
    assert v['final']['bits_per_byte'] > 0 and math.isfinite(v['quality']['gen_ppl'])
    assert v['samples_per_sec'] > 0


def test_ablate_groups_training_and_sampling_variants(compared, tmp_path):
  """self_condition: 'off' changes training, 'previous' / 'fresh' only sampling: two runs."""
  r = ablate.ablate(tiny_config(), 'self_condition', str(tmp_path), preset='tiny',
                    scorer_workdir=str(compared / 'scorer'), log=lambda *a, **k: None)
  off, previous, fresh = r['variants']
  assert sorted(r['runs']) == ['base', 'self_condition_False']
  assert sorted(d for d in os.listdir(tmp_path) if (tmp_path / d / 'checkpoints').is_dir()) == [
      'base', 'self_condition_False']
  assert previous['final'] == fresh['final'] != off['final']
  assert [v['quality']['self_condition'] for v in r['variants']] == ['off', 'previous', 'fresh']
  assert r['runs']['base']['variants'] == ['previous', 'fresh']
  report = (tmp_path / 'report.md').read_text()
  assert 'previous / fresh' in report and 'nan' not in report.lower()


def test_guidance_reports_success_quality_and_cost_per_scale(compared, tmp_path):
  from dlm.experiments import guidance
  r = guidance.guidance(tiny_config(), 'keyword:the', str(tmp_path), preset='tiny',
                        scorer_workdir=str(compared / 'scorer'), scales=(0.0, 2.0),
                        log=lambda *a, **k: None)
  assert [x['guidance'] for x in r['scales']] == [0.0, 2.0]
  for x in r['scales'] + [r['held_out']]:
    assert 0 <= x['success_rate'] <= 1 and math.isfinite(x['gen_ppl'])
  assert r['speed']['guided_cost_ratio'] > 0
  report = (tmp_path / 'report.md').read_text()
  assert '| 2 |' in report and 'base rate' in report and 'nan' not in report.lower()
  assert (tmp_path / 'guidance.png').stat().st_size > 1000
