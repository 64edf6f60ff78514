"""The scaling experiment (`dlm.experiments.scaling`) at --preset=tiny: the grid of cool-down
branches, the points' FLOPs, resuming without retraining finished points, the report."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from dlm import checkpoint, train
from dlm.errors import DlmError
from dlm.experiments import scaling


class Interrupted(Exception):
  pass


@pytest.fixture(scope='session')
def scaling_run(tmp_path_factory):
  """A tiny scaling run of AR and masked, interrupted after its second finished point and run
  again to the end; the second run's calls to train and measure are recorded."""
  workdir = str(tmp_path_factory.mktemp('scaling'))
  quiet = lambda *a, **k: None
  measure, train_fn = scaling.Grid.measure, train.train
  calls = {'measure': 0}

  def interrupting(self, *a, **k):
    if calls['measure'] == 2:
      raise Interrupted()
    calls['measure'] += 1
    return measure(self, *a, **k)

  scaling.Grid.measure = interrupting
  try:
    with pytest.raises(Interrupted):
      scaling.scaling(tiny_config(), workdir, 'tiny', ('masked',), log=quiet)
  finally:
    scaling.Grid.measure = measure
  points = os.path.join(workdir, 'points')
  before = {n: os.path.getmtime(os.path.join(points, n)) for n in os.listdir(points)}
  second = {'measure': [], 'train': []}

  def recording_measure(self, c, workdir_, T, extra):
    second['measure'].append((workdir_, T))
    return measure(self, c, workdir_, T, extra)

  def recording_train(c, workdir_, *a, **k):
    second['train'].append(workdir_)
    return train_fn(c, workdir_, *a, **k)

  scaling.Grid.measure, train.train = recording_measure, recording_train
  try:
    results = scaling.scaling(tiny_config(), workdir, 'tiny', ('masked',), log=quiet)
  finally:
    scaling.Grid.measure, train.train = measure, train_fn
  return {'workdir': workdir, 'results': results, 'before': before, 'second': second}


def test_resume_keeps_finished_points(scaling_run):
  before, second = scaling_run['before'], scaling_run['second']
  assert len(before) == 2
  points = os.path.join(scaling_run['workdir'], 'points')
  for name, mtime in before.items():  # read back, not rewritten
    assert os.path.getmtime(os.path.join(points, name)) == mtime
  # 16 points in all (2 families x 3 sizes x 2 budgets, and 2 x 2 on the epochs axis): the
  # second run measured the other 14, and never trained the finished points' runs again
  assert len(second['measure']) == 14
  finished = {json.load(open(os.path.join(points, n)))['workdir'] for n in before}
  assert finished.isdisjoint(second['train'])
  assert len(os.listdir(points)) == 16


def test_points_and_flops(scaling_run):
  r = scaling_run['results']
  pts = [p for p in r['points'] if p['axis'] == 'compute']
  assert {p['family'] for p in pts} == {'ar', 'masked'} and len(pts) == 12
  for fam in ('ar', 'masked'):
    for size in r['sizes']:
      own = sorted((p for p in pts if p['family'] == fam and p['size'] == size),
                   key=lambda p: p['steps'])
      assert [p['steps'] for p in own] == [5, 10]
      # compute is linear in the steps of a one-stage family
      assert own[1]['flops'] == pytest.approx(2 * own[0]['flops'], rel=1e-9)
      for p in own:
        assert 0 < p['bits_per_byte'] < 20 and np.isfinite(p['mc_stderr'])
    at10 = [next(p['flops'] for p in pts if p['family'] == fam and p['size'] == s
                 and p['steps'] == 10) for s in r['sizes']]
    assert at10 == sorted(at10) and at10[0] < at10[-1]
  assert r['families']['masked'].keys() >= {'fit', 'multiplier'}
  assert r['epochs']['family'] == 'masked' and [p['epochs'] for p in r['epochs']['ar']] == [1, 2]


def test_cooldown_branch_equals_a_run_of_its_budget(scaling_run, tmp_path):
  """A cool-down branch off the stable run is the run a 5-step schedule would have trained."""
  branch = next(p for p in scaling_run['results']['points']
                if p['family'] == 'ar' and p['size'] == '1x32' and p['steps'] == 5)
  assert branch['workdir'].endswith('cooldown5')
  c = checkpoint.load_run(branch['workdir'], 5).config
  c.train.checkpoint_every, c.train.keep_checkpoints = 5, 2
  fresh = str(tmp_path / 'fresh')
  train.train(c, fresh, log=lambda *a, **k: None, final_eval=False)
  a = checkpoint.load_run(branch['workdir'], 5).params
  b = checkpoint.load_run(fresh, 5).params
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_report(scaling_run):
  w = scaling_run['workdir']
  text = open(os.path.join(w, 'report.md')).read()
  assert 'Headline' in text and '| masked |' in text and 'Repeated data' in text
  for name in ('loss_vs_flops.png', 'loss_vs_epochs.png'):
    assert os.path.getsize(os.path.join(w, name)) > 1000
  saved = json.load(open(os.path.join(w, 'results.json')))
  assert 'multiplier' in saved['families']['masked'] and 'interval' in saved['families']['masked']


def test_refusals():
  with pytest.raises(DlmError, match='no likelihood'):
    scaling.parse_families('masked,latent')
  with pytest.raises(DlmError, match='budgets of 3 steps or more'):
    scaling.branches((2, 10))
  assert scaling.branches((10, 5)) == [(5, 4), (10, 8)]
  with pytest.raises(DlmError, match='unknown preset'):
    scaling.preset('huge')
