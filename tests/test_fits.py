"""dlm.experiments.fits on synthetic sweeps whose frontier, exponents and compute multiplier are
known: the fit, its bootstrap, the multiplier and its flags recover them."""

import functools
import json
import math

import numpy as np
import pytest
from scipy import optimize

from dlm.errors import DlmError
from dlm.experiments import fits

E, ALPHA = 1.0, 0.3
A = 1e12 ** ALPHA  # the reducible loss is 1 bit/byte at 1e12 FLOPs
K = 8.0            # family B needs K times family A's compute for every loss
BUDGETS = np.logspace(12, 15, 13)  # 4 per decade
OPTIMA = BUDGETS[::2]              # 7 model sizes, each best at one budget


def frontier(C):
  return E + A * np.asarray(C) ** -ALPHA


def sweep(k=1.0, noise=0.003, seed=0):
  """Every size trained at every budget: a family needing k times the compute for each loss
  (its frontier at C / k), plus a penalty growing with the distance in decades from the size's
  optimum, so that only one size per budget lies near the frontier; multiplicative noise of
  `noise`."""
  C = np.tile(BUDGETS, OPTIMA.size)
  size_optimum = np.repeat(OPTIMA, BUDGETS.size)
  L = frontier(C / k) + 0.15 * np.log10(C / size_optimum) ** 2
  return C, L * np.exp(noise * np.random.default_rng(seed).standard_normal(L.size))


@functools.cache
def family(k, seed):
  C, L = sweep(k=k, seed=seed)
  return fits.fit(C, L), fits.bootstrap(C, L, n=300, seed=seed)


def test_envelope_keeps_each_point_below_all_of_smaller_compute():
  C = [4, 1, 2, 2, 3, 3, 5, 1]
  L = [1.5, 3.0, 2.0, 2.5, 2.2, 1.8, 1.6, 3.0]
  # by C: 1 (3.0, its copy dropped), 2 (2.0 kept, 2.5 not), 3 (1.8 kept, 2.2 not),
  # 4 (1.5 kept), 5 (1.6 > 1.5: not)
  assert fits.envelope(C, L).tolist() == [1, 2, 5, 0]
  # noise-free sweep: exactly the best size at each budget, one point per budget
  C, L = sweep(noise=0.0)
  kept = fits.envelope(C, L)
  assert C[kept].tolist() == BUDGETS.tolist()
  np.testing.assert_allclose(L[kept], [min(L[C == c]) for c in BUDGETS])
  assert np.sum(L[kept] > frontier(BUDGETS) + 1e-12) == 6  # the sizes between two optima


def test_fit_recovers_the_frontier_through_off_frontier_sizes():
  p, _ = family(1.0, 0)
  assert abs(p['E'] - E) < 0.02
  assert abs(p['alpha'] - ALPHA) < 0.02
  assert abs(math.log(p['A'] / A)) < 0.2
  assert p['n'] == 13 and p['at_bound'] == [] and p['rms'] < 0.01
  C = np.array([1e12, 1e15])
  np.testing.assert_allclose(p['E'] + p['A'] * C ** -p['alpha'], frontier(C), rtol=0.005)
  C, L = sweep()
  assert p['loss_range'] == [min(L), max(L[fits.envelope(C, L)])]


def test_profile_fit_is_no_worse_than_multistart_least_squares():
  """The grid-and-polish minimum against scipy's bounded least squares from several starts."""
  C, L = sweep(seed=3)
  keep = fits.envelope(C, L)
  C, L = C[keep], L[keep]
  p = fits.fit(C, L)
  ref = np.exp(np.mean(np.log(C)))

  def residual(q):
    return q[0] + q[1] * (C / ref) ** -q[2] - L

  best = min((optimize.least_squares(residual, start, bounds=([0, 1e-9, 1e-3], [np.inf, np.inf, 3]))
              for start in ([0.5, 0.5, 0.1], [1.0, 0.3, 0.5], [0.0, 1.0, 1.0], [1.5, 0.1, 2.0])),
             key=lambda r: r.cost)
  ours = np.sum((p['E'] + p['A'] * C ** -p['alpha'] - L) ** 2)
  assert ours <= 2 * best.cost * (1 + 1e-6)
  assert abs(p['alpha'] - best.x[2]) < 1e-3


def test_bootstrap_interval_contains_the_truth():
  _, boot = family(1.0, 0)
  assert boot['used'] + boot['skipped'] == boot['n'] == 300
  assert len(boot['E']) == len(boot['alpha']) == boot['used'] > 250
  iv = fits.intervals(boot)
  assert iv['E'][0] <= E <= iv['E'][1] and iv['E'][1] - iv['E'][0] < 0.5
  assert iv['alpha'][0] <= ALPHA <= iv['alpha'][1] and iv['alpha'][1] - iv['alpha'][0] < 0.4
  assert iv['A'][0] <= A <= iv['A'][1]


def test_bootstrap_counts_resamples_with_too_few_envelope_points():
  C, L = [1e12, 1e13, 1e14], [2.0, 1.5, 1.2]  # only the whole set has 3 envelope points
  boot = fits.bootstrap(C, L, n=50, seed=0)
  # a resample keeps all three with probability 3!/27
  assert boot['skipped_few_points'] > 30 and boot['skipped_failed'] == 0
  assert boot['used'] + boot['skipped'] == 50 and len(boot['alpha']) == boot['used']


def test_fewer_than_three_envelope_points_is_a_one_line_error():
  with pytest.raises(DlmError, match=r'^scaling fit: 2 point\(s\) on the compute-optimal '
                                     r'envelope \(of 2 runs\), 3 needed'):
    fits.fit([1e12, 1e13], [2.0, 1.5])
  with pytest.raises(DlmError, match=r'2 point\(s\) .* \(of 4 runs\)'):
    fits.fit([1e12, 1e13, 1e14, 1e15], [2.0, 1.5, 1.6, 1.7])  # rising after the second
  with pytest.raises(DlmError, match='finite positive'):
    fits.fit([0, 1e13, 1e14], [2.0, 1.5, 1.2])


def test_compute_for_inverts_the_curve():
  p = {'E': E, 'A': A, 'alpha': ALPHA}
  C = np.array([1e11, 1e13, 1e16])
  np.testing.assert_allclose(fits.compute_for(p, frontier(C)), C, rtol=1e-9)
  assert fits.compute_for(p, E) == math.inf and fits.compute_for(p, 0.5) == math.inf
  assert isinstance(fits.compute_for(p, 1.5), float)


def test_headline_recovers_a_known_multiplier():
  fa, ba = family(1.0, 0)
  fb, bb = family(K, 1)
  h = fits.headline(fb, fa, bb, ba)
  assert set(h) >= {'multiplier', 'interval', 'loss', 'extrapolated', 'overlap'}
  assert abs(math.log(h['multiplier'] / K)) < math.log(1.1)
  assert h['interval'][0] <= K <= h['interval'][1] and h['interval'][1] / h['interval'][0] < 3
  assert h['extrapolated'] is False
  lo, hi = h['overlap']
  assert lo == fb['loss_range'][0] and hi == fa['loss_range'][1]  # B reaches less far down
  assert h['loss'] == pytest.approx(math.sqrt(lo * hi))
  json.dumps([h, fa, ba], allow_nan=False)  # plain floats, lists and None only
  # read across the range: inside the overlap unflagged, beyond it flagged
  reads = fits.multiplier(fb, fa, bb, ba, [1.05, 1.5, 1.9, 2.5])
  assert [r['extrapolated'] for r in reads] == [True, False, False, True]
  for r in reads[1:3]:
    assert r['interval'][0] <= K <= r['interval'][1]


def test_bootstraps_run_with_one_seed_are_still_paired_independently():
  """B's runs are A's at K times the compute: with one seed both bootstraps pick the same runs
  in the same order, so pairing draw i with draw i would make every ratio exactly K."""
  C, L = sweep()
  fa, ba = family(1.0, 0)
  fb, bb = fits.fit(C * K, L), fits.bootstrap(C * K, L, n=300, seed=0)
  np.testing.assert_allclose(bb['alpha'], ba['alpha'], rtol=1e-6)  # the same resamples
  h = fits.headline(fb, fa, bb, ba)
  assert h['multiplier'] == pytest.approx(K, rel=1e-6)
  assert h['interval'][0] < K / 1.1 and h['interval'][1] > K * 1.1


def test_no_overlap_is_read_at_the_nearest_edge_and_flagged():
  fa, ba = family(1.0, 0)
  far = 1e4  # B's losses all above A's
  fb, bb = family(far, 2)
  assert fits.overlap(fb['loss_range'], fa['loss_range']) is None
  h = fits.headline(fb, fa, bb, ba)
  assert h['extrapolated'] is True and h['overlap'] is None
  assert h['loss'] == fb['loss_range'][0]  # B's lowest loss, the nearest to A's range
  assert abs(math.log(h['multiplier'] / far)) < math.log(1.5)
  # the other way round: A read at its highest loss, the nearest to B's range
  assert fits.headline(fa, fb, ba, bb)['loss'] == fa['loss_range'][1]


def test_a_loss_the_family_never_reaches_has_no_finite_multiplier():
  fa, ba = family(1.0, 0)
  fb, bb = family(K, 1)
  below = 0.5 * min(fb['E'], fa['E'])
  r = fits.multiplier(fb, fa, bb, ba, [below])[0]
  assert r['multiplier'] is None and r['extrapolated'] is True and r['draws'] == 0
  json.dumps(r, allow_nan=False)


def _h(m, lo, hi, extrapolated=False):
  return {'multiplier': m, 'interval': [lo, hi], 'loss': 1.5, 'extrapolated': extrapolated,
          'overlap': [1.2, 1.8]}


def test_rank_orders_and_says_when_intervals_cannot_separate():
  out = fits.rank({'gaussian': _h(60.0, 40.0, 90.0), 'masked': _h(4.0, 3.0, 5.5),
                   'hybrid': _h(5.0, 4.5, 7.0, extrapolated=True), 'ar': _h(1.0, 1.0, 1.0)})
  assert out['order'] == ['ar', 'masked', 'hybrid', 'gaussian']
  assert [p['separable'] for p in out['pairs']] == [True, False, True]
  assert 'masked and hybrid not separable' in out['pairs'][1]['verdict']
  assert out['pairs'][1]['verdict'].endswith('extrapolated: hybrid')
  assert out['pairs'][0]['verdict'].startswith('ar needs less compute than masked')
  assert out['separable'] is False
  clear = fits.rank({'a': _h(2.0, 1.5, 2.5), 'b': _h(9.0, 3.0, None)})
  assert clear['separable'] is True and clear['pairs'][0]['verdict'].count('inf') == 1


def test_crossover_of_data_constrained_losses():
  out = fits.crossover([1, 4, 16], [1.00, 1.05, 1.30], [1.20, 1.10, 1.00])
  # gaps 0.2, 0.05, -0.3: the zero lies 0.05 / 0.35 of the way from log 4 to log 16
  assert out['within'] is True
  assert out['epochs'] == pytest.approx(4 * 4 ** (0.05 / 0.35))
  never = fits.crossover([1, 4, 16], [1.0, 1.05, 1.3], [1.2, 1.15, 1.31])
  assert never['epochs'] is None and never['within'] is False and 'no crossover' in never['note']
  first = fits.crossover([1, 4, 16], [1.0, 1.05, 1.3], [0.9, 1.0, 1.1])
  assert first['epochs'] is None and 'before the measured range' in first['note']
  with pytest.raises(DlmError, match='increasing'):
    fits.crossover([4, 1, 16], [1, 1, 1], [1, 1, 1])
