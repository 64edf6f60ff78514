"""infill on the tiny preset: each diffusion family and the AR twin fill the same windows' gaps,
the known tokens stay as they were, and the report, plot and results hold finite figures for
every gap that fits, with each family's paired difference to the twin."""

import json
import math

import numpy as np
import pytest

from conftest import tiny_config
from dlm.errors import DlmError
from dlm.experiments import infill
from dlm.tokenizer import Tokenizer

GAPS = (2, 4, 14)  # 14 does not fit 16-token windows (n < L - 2)


@pytest.fixture(scope='module')
def filled(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('infill')
  r = infill.infill(tiny_config(**{'diffusion.condition_fraction': 0.25}), str(workdir),
                    preset='tiny', names=('gaussian',), gaps=GAPS, log=lambda *a, **k: None)
  return workdir, r


def test_infill_writes_report_plot_and_finite_results(filled):
  workdir, _ = filled
  report = (workdir / 'report.md').read_text()
  assert (workdir / 'infill_vs_gap.png').stat().st_size > 1000
  assert '(infill_vs_gap.png)' in report and 'nan' not in report.lower()
  assert 'Skipped gaps [14]' in report
  r = json.loads((workdir / 'results.json').read_text())
  assert [g['gap'] for g in r['gaps']] == [2, 4] and r['gaps_skipped'] == [14]
  assert r['num_windows'] == infill.NUM_WINDOWS['tiny']
  assert (r['families'], r['twin']) == (['gaussian'], 'ar')
  assert infill.rows_of(r) == ('original', 'gaussian', 'ar')
  for g in r['gaps']:
    assert g['start'] == (16 - g['gap']) // 2
    assert g['settings']['gaussian']['known_by'] == 'trained'  # trained with known tokens
    assert g['settings']['ar']['family'] == 'ar'
    for row in infill.rows_of(r):
      for region in infill.REGIONS:
        x = g['rows'][row][region]
        assert math.isfinite(x['mean']) and x['mean'] > 0 and math.isfinite(x['se'])
    for family in ('gaussian', 'ar'):
      assert 0 <= g['rows'][family]['exact']['mean'] <= 1
    d = g['minus_ar']['gaussian']['window']
    assert d['mean'] == pytest.approx(g['rows']['gaussian']['window']['mean']
                                      - g['rows']['ar']['window']['mean'])
    assert f'| {g["gap"]} | gaussian | {d["mean"]:+.3f} ± {d["se"]:.3f}' in report
    assert d['verdict'] in ('gaussian better', 'AR better', 'no significant difference')


def test_fills_keep_the_known_tokens_and_stay_in_the_vocabulary(filled):
  workdir, r = filled
  fills = np.load(workdir / 'fills.npz')
  original = fills['original']
  assert original.shape == (infill.NUM_WINDOWS['tiny'], 16)
  tok = Tokenizer.load(str(workdir / 'gaussian' / 'tokenizer'))
  assert (original[:, 0] == tok.bos_id).all()  # every window starts a document
  for g in r['gaps']:
    a, n = g['start'], g['gap']
    gap = np.zeros(16, bool)
    gap[a:a + n] = True
    for family in ('gaussian', 'ar'):
      rows = fills[f'{family}_gap_{n}']
      assert rows.shape == original.shape
      np.testing.assert_array_equal(rows[:, ~gap], original[:, ~gap])
      assert rows.min() >= 0 and rows.max() < tok.vocab_size
      tok.decode(rows[:, gap].ravel())  # real token ids


def test_given_runs_are_reused_without_a_config(filled, tmp_path):
  """--scorer_workdir / --run_workdirs: nothing trained, and the same seed and windows give the
  same fills."""
  workdir, r = filled
  given = infill.parse_workdirs(f'gaussian={workdir / "gaussian"}, ar={workdir / "ar"}')
  again = infill.infill(None, str(tmp_path), preset='tiny', names=('gaussian',), gaps=(2,),
                        scorer_workdir=str(workdir / 'scorer'), run_workdirs=given,
                        log=lambda *a, **k: None)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'fills.npz', 'infill_vs_gap.png', 'report.md', 'results.json']
  assert again['gaps'][0]['rows'] == r['gaps'][0]['rows']


def test_gap_and_workdir_flags_are_checked():
  assert infill.parse_gaps('8, 16,32,8') == (8, 16, 32)
  for bad in ('8,x', '0,4', '-2'):
    with pytest.raises(DlmError):
      infill.parse_gaps(bad)
  assert infill.parse_workdirs('') == {}
  for bad in ('gaussian', 'nope=runs/x', 'ar='):
    with pytest.raises(DlmError):
      infill.parse_workdirs(bad)
  assert infill.fits(16, 13) and not infill.fits(16, 14)


def test_paired_differences_name_the_better_model():
  x, y = np.array([1.0, 1.1, 0.9, 1.0]), np.array([2.0, 2.1, 2.0, 1.9])
  assert infill.difference(x, y, 'masked')['verdict'] == 'masked better'
  assert infill.difference(y, x, 'masked')['verdict'] == 'AR better'
  assert infill.difference(x, x + 0.01 * np.array([1, -1, 1, -1]), 'masked')['verdict'] == (
      'no significant difference')
  same = infill.difference(np.zeros(3), np.zeros(3), 'masked', lower_is_better=False)
  assert same['verdict'] == 'no difference' and same['z'] is None
  more = infill.difference(np.ones(3), np.zeros(3), 'masked', lower_is_better=False)
  assert more['verdict'] == 'masked better'  # exact tokens: higher is better


def test_windows_start_at_document_starts_without_overlap():
  bos = 7
  val = np.array([7, 1, 2, 7, 3, 7, 4, 5, 6, 7, 8, 9, 1, 7, 2])
  w = infill.bos_windows(val, 4, bos, 10)
  np.testing.assert_array_equal(w, [[7, 1, 2, 7], [7, 4, 5, 6], [7, 8, 9, 1]])
  with pytest.raises(DlmError):
    infill.bos_windows(val, 40, bos, 10)
