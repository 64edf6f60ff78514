"""infill on the tiny preset: both families fill the same windows' gaps, the known tokens stay
as they were, and the report, plot and results hold finite figures for every gap that fits."""

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
                    preset='tiny', gaps=GAPS,
                    log=lambda *a, **k: None)
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
  for g in r['gaps']:
    assert g['start'] == (16 - g['gap']) // 2
    assert g['settings']['diffusion']['known_by'] == 'trained'  # trained with known tokens
    for row in infill.ROWS:
      for region in infill.REGIONS:
        x = g['rows'][row][region]
        assert math.isfinite(x['mean']) and x['mean'] > 0 and math.isfinite(x['se'])
    for family in infill.FAMILIES:
      assert 0 <= g['rows'][family]['exact']['mean'] <= 1
    assert g['diffusion_minus_ar']['window']['verdict'] in report


def test_fills_keep_the_known_tokens_and_stay_in_the_vocabulary(filled):
  workdir, r = filled
  fills = np.load(workdir / 'fills.npz')
  original = fills['original']
  assert original.shape == (infill.NUM_WINDOWS['tiny'], 16)
  tok = Tokenizer.load(str(workdir / 'diffusion' / 'tokenizer'))
  assert (original[:, 0] == tok.bos_id).all()  # every window starts a document
  for g in r['gaps']:
    a, n = g['start'], g['gap']
    gap = np.zeros(16, bool)
    gap[a:a + n] = True
    for family in infill.FAMILIES:
      rows = fills[f'{family}_gap_{n}']
      assert rows.shape == original.shape
      np.testing.assert_array_equal(rows[:, ~gap], original[:, ~gap])
      assert rows.min() >= 0 and rows.max() < tok.vocab_size
      tok.decode(rows[:, gap].ravel())  # real token ids


def test_given_runs_are_reused_without_a_config(filled, tmp_path):
  """--scorer_workdir / --diffusion_workdir / --ar_workdir: nothing trained, and the same seed
  and windows give the same fills."""
  workdir, r = filled
  again = infill.infill(None, str(tmp_path), preset='tiny', gaps=(2,),
                        scorer_workdir=str(workdir / 'scorer'),
                        diffusion_workdir=str(workdir / 'diffusion'),
                        ar_workdir=str(workdir / 'autoregressive'), log=lambda *a, **k: None)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'fills.npz', 'infill_vs_gap.png', 'report.md', 'results.json']
  assert again['gaps'][0]['rows'] == r['gaps'][0]['rows']


def test_gap_flags_are_checked():
  assert infill.parse_gaps('8, 16,32,8') == (8, 16, 32)
  for bad in ('8,x', '0,4', '-2'):
    with pytest.raises(DlmError):
      infill.parse_gaps(bad)
  assert infill.fits(16, 13) and not infill.fits(16, 14)


def test_windows_start_at_document_starts_without_overlap():
  bos = 7
  val = np.array([7, 1, 2, 7, 3, 7, 4, 5, 6, 7, 8, 9, 1, 7, 2])
  w = infill.bos_windows(val, 4, bos, 10)
  np.testing.assert_array_equal(w, [[7, 1, 2, 7], [7, 4, 5, 6], [7, 8, 9, 1]])
  with pytest.raises(DlmError):
    infill.bos_windows(val, 40, bos, 10)
