"""The family interface: every family trains, resumes exactly, keeps known tokens and refuses
options it does not take; old workdirs (before model.family) still load."""

import json
import shutil

import numpy as np
import pytest

from conftest import tiny_config
from dlm import checkpoint, families, sampling, train
from dlm.errors import DlmError

INTERFACE = ('NAME', 'SUMMARY', 'EXACT', 'INFILL', 'SAMPLE_OPTIONS', 'model_fields',
             'prepare', 'at_budget', 'stage_steps', 'train_flops', 'init_noise',
             'update_noise', 'draw', 'scored_positions', 'loss', 'param_metrics',
             'bound', 'context_probe', 'sample_tokens')
DIFFUSION_ONLY = ('LEVEL', 'describe_bound', 'level_edges')


@pytest.mark.parametrize('name', families.FAMILIES)
def test_every_family_is_a_module_with_the_whole_interface(name):
  family = families.get(name)
  assert family.NAME == name and set(family.SAMPLE_OPTIONS) <= set(sampling.OPTIONS)
  missing = [a for a in INTERFACE + (() if family.EXACT else DIFFUSION_ONLY)
             if not hasattr(family, a)]
  assert not missing
  assert family.context_probe is None if family.EXACT else callable(family.context_probe)


def test_an_unknown_family_is_one_error():
  with pytest.raises(ValueError, match="unknown model family 'gpt'; expected one of ar, "):
    families.get('gpt')


def _losses(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


@pytest.mark.parametrize('name', ['masked', 'hybrid', 'ar'])
def test_a_family_resumes_on_the_same_curve_and_keeps_known_tokens(tmp_path, quiet, name):
  family = families.get(name)
  c = tiny_config(**{'model.family': name, 'diffusion.condition_fraction': 0.25})
  train.train(c, str(tmp_path / 'full'), log=quiet)
  assert train.train(c, str(tmp_path / 'cut'), log=quiet, stop_after=5) is None
  train.train(c, str(tmp_path / 'cut'), log=quiet)
  a, b = _losses(tmp_path / 'full'), _losses(tmp_path / 'cut')
  assert sorted(a) == sorted(b) == list(range(1, 7))
  np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=1e-5)

  run = checkpoint.load_run(str(tmp_path / 'cut'))
  assert run.model_config.family == name
  steps = {'num_steps': 4} if 'num_steps' in family.SAMPLE_OPTIONS else {}
  if family.INFILL:
    for r in sampling.generate(run, num_samples=2, seq_len=16, infill='Once [MASK:6] the end.',
                               **steps):
      assert r['text'].startswith('Once') and 'the end.' in r['text']
      assert len(r['fills']) == 1
  for r in sampling.generate(run, num_samples=2, seq_len=16, prompt='Once upon', **steps):
    assert r['text'].strip().startswith('Once upon') and r['family'] == name
  if 'self_condition' in family.SAMPLE_OPTIONS:  # every update rule, both feedback modes
    for sampler in family.SAMPLERS:
      (r,) = sampling.generate(run, num_samples=1, seq_len=16, num_steps=3, sampler=sampler,
                               self_condition='fresh', clamp=sampler == 'ddim',
                               prompt='Once upon')
      assert r['text'].startswith('Once upon') and r['sampler'] == sampler
  wrong = 'top_p' if 'top_p' not in family.SAMPLE_OPTIONS else 'order'
  with pytest.raises(DlmError, match=f'--{wrong} does not apply to a {name} run'):
    sampling.generate(run, num_samples=1, **{wrong: 0.9 if wrong == 'top_p' else 'confidence'})


def test_masked_runs_refuse_the_gaussian_samplers_knobs(trained_masked):
  for option, value in (('score_temperature', 0.9), ('sampler', 'ddim'),
                        ('self_condition', 'fresh'), ('clamp', True)):
    with pytest.raises(DlmError, match=f'^--{option} does not apply to a masked run '
                       r'\(model.family=masked takes --num_steps, --temperature, --order, '
                       r'--cache\)$'):
      sampling.generate(trained_masked, num_samples=1, **{option: value})


@pytest.fixture(scope='module')
def trained_masked(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('masked')
  train.train(tiny_config(**{'model.family': 'masked', 'train.num_iterations': 2}),
              str(workdir), log=lambda *a, **k: None)
  return checkpoint.load_run(str(workdir))


def test_cached_and_uncached_masked_sampling_agree_on_a_trained_run(trained_masked):
  kw = dict(num_samples=3, seq_len=16, num_steps=40, seed=4)
  cached, _ = sampling.sample_array(trained_masked, cache=True, **kw)
  uncached, _ = sampling.sample_array(trained_masked, cache=False, **kw)
  np.testing.assert_array_equal(cached, uncached)


def _as_before_model_family(workdir, causal: bool) -> None:
  """Rewrite a workdir's config.json the way dlm saved it before model.family existed."""
  saved = json.loads((workdir / 'config.json').read_text())
  del saved['model']['family'], saved['sample']['order'], saved['sample']['cache']
  saved['model']['causal'] = causal
  (workdir / 'config.json').write_text(json.dumps(saved))


def test_a_gaussian_workdir_written_before_model_family_still_samples(trained_workdir, tmp_path):
  workdir = tmp_path / 'old'
  shutil.copytree(trained_workdir, workdir)
  _as_before_model_family(workdir, causal=False)
  run = checkpoint.load_run(str(workdir))
  assert run.model_config.family == 'gaussian' and not run.model_config.causal
  (record,) = sampling.generate(run, num_samples=1, seq_len=8, num_steps=3)
  assert record['family'] == 'gaussian' and len(record['tokens']) == 8


def test_an_ar_workdir_written_before_model_family_still_samples(tmp_path, quiet):
  workdir = tmp_path / 'old_ar'
  train.train(tiny_config(**{'model.family': 'ar', 'train.num_iterations': 1}), str(workdir),
              log=quiet)
  _as_before_model_family(workdir, causal=True)
  run = checkpoint.load_run(str(workdir))
  assert run.model_config.family == 'ar' and run.model_config.causal
  (record,) = sampling.generate(run, num_samples=1, seq_len=8)
  assert record['family'] == 'ar' and len(record['tokens']) == 8
