"""Noise allocation (`dlm.noise`): the proposal q(lambda) follows the CE curve it is fed, the
Gumbel fit recovers known parameters, sampling is the inverse CDF, and the proposal is part of
the checkpointed state (a resumed run ends with exactly the proposal of an uninterrupted one)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dlm import checkpoint, noise, train


def _feed(dc, curve, steps: int, rows: int = 64, noise_std: float = 0.05, seed: int = 0):
  """A noise state after `steps` updates with rows drawn uniformly over its range and
  ce = curve(lam) + N(0, noise_std^2)."""
  state = noise.init_state(dc, diffusion_dim=16, vocab_size=256)
  lo, hi = float(state['edges'][0]), float(state['edges'][-1])
  update = jax.jit(lambda s, lam, ce, step: noise.update(s, lam, ce, step, dc))
  rng = np.random.default_rng(seed)
  for i in range(steps):
    lam = rng.uniform(lo, hi, rows).astype(np.float32)
    ce = np.asarray(curve(lam)) + noise_std * rng.normal(size=rows)
    state = update(state, lam, ce.astype(np.float32), i + 1)
  return state


def _fine_grid(edges, per_bin: int = 50):
  """Midpoints of a grid `per_bin` times finer than the bins, and its spacing."""
  lo, hi = float(edges[0]), float(edges[-1])
  n = (edges.shape[0] - 1) * per_bin
  h = (hi - lo) / n
  return lo + h * (np.arange(n) + 0.5), h


def test_adaptive_proposal_concentrates_where_the_ce_curve_is_steepest():
  dc = tiny_config(**{'diffusion.allocation': 'adaptive', 'diffusion.proposal_refresh': 1}).diffusion
  H, l0, w = 5.0, -3.0, 0.5  # a smooth step of height H, steepest at l0, width w
  state = _feed(dc, lambda lam: H / (1.0 + np.exp((lam - l0) / w)), steps=300)
  q = noise.proposal(state)
  edges = np.asarray(q['edges'])
  bin_width = (edges[-1] - edges[0]) / (len(edges) - 1)
  assert edges[0] < l0 - 4 * w and l0 + 4 * w < edges[-1]
  grid, _ = _fine_grid(edges)
  dens = np.asarray(noise.density(q, jnp.asarray(grid)))
  peak = grid[np.argmax(dens)]
  assert abs(peak - l0) <= bin_width, (peak, l0, bin_width)
  # |dCE/dlam| is a logistic density of scale w: 76% of it lies within l0 +- 2w.
  cdf = lambda x: np.interp(x, edges, np.asarray(q['cdf']))
  central = cdf(l0 + 2 * w) - cdf(l0 - 2 * w)
  assert central > 0.6, central
  # The floor: q > 0 on the whole range, at least floor / (range width) everywhere.
  floor = dc.proposal_floor / (edges[-1] - edges[0])
  assert dens.min() >= 0.99 * floor, (dens.min(), floor)


def test_gumbel_allocation_fit_recovers_the_parameters_of_the_ce_curve():
  dc = tiny_config(**{'diffusion.allocation': 'gumbel', 'diffusion.proposal_refresh': 1}).diffusion
  truth = np.array([3.0, 1.5, 4.0], np.float32)  # (mu, beta, H)
  start = np.asarray(noise.init_state(dc, 16, 256)['gumbel'])
  assert np.all(np.abs(start - truth) > 0.3 * truth), start  # the fit has work to do
  state = _feed(dc, lambda lam: noise.gumbel_curve(-lam, truth), steps=30)
  np.testing.assert_allclose(np.asarray(state['gumbel']), truth, rtol=0.1)
  # ... and the proposal is the fitted Gumbel (plus the floor).
  mass = np.asarray(noise.gumbel_mass(state['edges'], truth))
  expected = (1 - dc.proposal_floor) * mass / mass.sum() + dc.proposal_floor / len(mass)
  np.testing.assert_allclose(np.diff(np.asarray(state['cdf'])), expected, atol=2e-3)


def test_fit_gumbel_on_exact_data_converges_from_a_different_start():
  truth = jnp.array([3.0, 1.5, 4.0])
  gamma = jnp.linspace(-3.0, 11.0, 64)
  ce = noise.gumbel_curve(gamma, truth)
  for start in ([0.0, 0.5, 8.0], [6.0, 3.0, 2.0], [-2.0, 0.3, 1.0]):
    fitted = noise.fit_gumbel(jnp.array(start), gamma, ce, jnp.ones_like(gamma))
    np.testing.assert_allclose(np.asarray(fitted), np.asarray(truth), rtol=1e-3, err_msg=str(start))


def _skewed_proposal():
  """A far-from-uniform q: the Gumbel guess of a d=16 run, with the default floor."""
  dc = tiny_config(**{'diffusion.allocation': 'gumbel'}).diffusion
  return noise.proposal(noise.init_state(dc, diffusion_dim=16, vocab_size=256))


def _integrated_cdf(q):
  """F(lambda) by integrating `density` on a fine grid (independent of `sample`)."""
  grid, h = _fine_grid(np.asarray(q['edges']))
  dens = np.asarray(noise.density(q, jnp.asarray(grid)), np.float64)
  F = np.concatenate([[0.0], np.cumsum(dens) * h])
  return np.concatenate([grid - h / 2, grid[-1:] + h / 2]), F


def test_sample_is_the_inverse_cdf_of_density():
  q = _skewed_proposal()
  n = 100_000
  lam = np.sort(np.asarray(noise.sample(q, jax.random.uniform(jax.random.key(0), (n,)))))
  x, F = _integrated_cdf(q)
  assert abs(F[-1] - 1.0) < 1e-3, F[-1]
  assert lam[0] >= x[0] - 1e-5 and lam[-1] <= x[-1] + 1e-5
  empirical = np.searchsorted(lam, x, side='right') / n
  ks = np.max(np.abs(empirical - F))
  assert ks < 1.63 / np.sqrt(n) + 2e-3, ks  # 1% KS critical value, plus the grid's error
  # Finer than the bins: within each bin the draws are uniform (quarter-bin counts).
  edges = np.asarray(q['edges'])
  fine = np.linspace(edges[0], edges[-1], 4 * (len(edges) - 1) + 1)
  counts = np.histogram(lam, fine)[0]
  expected = n * np.repeat(np.diff(np.asarray(q['cdf'])), 4) / 4
  chi2 = np.sum((counts - expected) ** 2 / expected)
  assert chi2 < 256 + 5 * np.sqrt(2 * 255), chi2  # 255 degrees of freedom


def test_steps_are_increasing_equal_quantiles_of_q_without_its_floor():
  q = _skewed_proposal()
  n = 16
  grid = np.asarray(noise.steps(q, n))
  edges = np.asarray(q['edges'])
  assert grid.shape == (n + 1,)
  assert np.all(np.diff(grid) > 0), grid
  assert edges[0] <= grid[0] and grid[-1] <= edges[-1]
  # Equal quantiles of the floor-less q, over SAMPLER_QUANTILES.
  u = np.linspace(*noise.SAMPLER_QUANTILES, n + 1)
  np.testing.assert_allclose(np.interp(grid, edges, np.asarray(q['cdf_main'])), u, atol=1e-5)
  # The floor would have spent the last step on one long jump to the clean end: without it
  # the grid stops where q's mass ends, well inside the range.
  with_floor = np.interp(np.linspace(0, 1, n + 1), np.asarray(q['cdf']), edges)
  assert grid[-1] < with_floor[-1] - 1.0 and grid[-1] - grid[-2] < with_floor[-1] - with_floor[-2]
  assert np.ptp(np.diff(grid)) > 0.5 * np.mean(np.diff(grid))  # not simply evenly spaced


def test_monotone_is_non_increasing_and_fills_gaps():
  rng = np.random.default_rng(0)
  x = np.linspace(-10, 3, 64)
  truth = 5.0 / (1.0 + np.exp(x + 3.0))
  noisy = truth + 0.2 * rng.normal(size=64)
  noisy[[0, 1, 20, 21, 22, 40, 63]] = np.nan  # gaps at both ends and inside
  m = np.asarray(noise.monotone(jnp.asarray(noisy, jnp.float32)))
  assert np.all(np.isfinite(m))
  assert np.all(np.diff(m) <= 1e-6), np.diff(m).max()
  assert np.max(np.abs(m - truth)) < 0.6, np.max(np.abs(m - truth))


def test_monotone_fills_the_gaps_of_a_monotone_curve_by_interpolation():
  curve = np.array([np.nan, 5.0, 4.0, np.nan, np.nan, 1.0, 0.5, np.nan], np.float32)
  m = np.asarray(noise.monotone(jnp.asarray(curve)))
  np.testing.assert_allclose(m, [5.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.5], atol=1e-6)


def test_monotone_leaves_a_monotone_curve_unchanged():
  curve = 5.0 / (1.0 + np.exp(np.linspace(-10, 3, 64) + 3.0))
  m = np.asarray(noise.monotone(jnp.asarray(curve, jnp.float32)))
  np.testing.assert_allclose(m, curve, atol=1e-6)


def _logistic_bin_masses(edges, scale: float):
  """Masses of Logistic(0, scale) in the bins, the end bins taking the tails."""
  F = 1.0 / (1.0 + np.exp(-np.asarray(edges, np.float64) / scale))
  F[0], F[-1] = 0.0, 1.0
  return np.diff(F)


def test_schedule_allocation_proposal_follows_the_schedule_density():
  dc = tiny_config(**{'diffusion.allocation': 'schedule',
                      'diffusion.noise_schedule': 'flow'}).diffusion
  state = noise.init_state(dc, diffusion_dim=16, vocab_size=256)
  edges = np.asarray(state['edges'])
  # lambda = 2 ln((1 - t) / t), t ~ U(0, 1): P(lambda <= l) = sigmoid(l / 2), Logistic(0, 2).
  mass = _logistic_bin_masses(edges, 2.0)
  expected = (1 - dc.proposal_floor) * mass + dc.proposal_floor / len(mass)
  got = np.diff(np.asarray(state['cdf']))
  np.testing.assert_allclose(got, expected, atol=1e-4)
  assert got[0] > 3 * got[1]  # the noisy end bin holds the tail below the range


def test_schedule_allocation_update_keeps_the_proposal_but_tracks_the_curve():
  dc = tiny_config(**{'diffusion.allocation': 'schedule', 'diffusion.proposal_refresh': 1,
                      'diffusion.noise_schedule': 'flow'}).diffusion
  initial = noise.init_state(dc, diffusion_dim=16, vocab_size=256)
  state = _feed(dc, lambda lam: 5.0 / (1.0 + np.exp(lam + 3.0)), steps=10)
  np.testing.assert_array_equal(np.asarray(state['cdf']), np.asarray(initial['cdf']))
  assert np.all(np.asarray(state['weight']) > 0)
  curve = np.asarray(noise.ce_curve(state))
  assert curve[0] > 4.0 and curve[-1] < 1.0, curve


def _losses(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def test_resumed_run_ends_with_the_same_adaptive_proposal(tmp_path):
  quiet = lambda *a, **k: None
  c = tiny_config(**{'diffusion.allocation': 'adaptive', 'diffusion.proposal_refresh': 2})
  train.train(c, str(tmp_path / 'full'), log=quiet)
  assert train.train(c, str(tmp_path / 'cut'), log=quiet, stop_after=5) is None
  train.train(c, str(tmp_path / 'cut'), log=quiet)
  full = checkpoint.load_run(str(tmp_path / 'full'))
  cut = checkpoint.load_run(str(tmp_path / 'cut'))
  assert full.step == cut.step == 6
  for k in ('cdf', 'edges'):
    np.testing.assert_allclose(np.asarray(cut.proposal[k]), np.asarray(full.proposal[k]),
                               rtol=0, atol=1e-6, err_msg=k)
  initial = noise.init_state(c.diffusion, full.model_config.diffusion_dim,
                             full.model_config.vocab_size)
  moved = np.max(np.abs(np.asarray(full.proposal['cdf']) - np.asarray(initial['cdf'])))
  assert moved > 1e-2, moved  # the proposal was rebuilt from the running curve
  a, b = _losses(tmp_path / 'full'), _losses(tmp_path / 'cut')
  assert sorted(a) == sorted(b) == list(range(1, 7))
  np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=1e-5)


@pytest.mark.parametrize('allocation', noise.ALLOCATIONS)
def test_initial_state_builds_under_jit_for_every_allocation(allocation):
  """The train state is initialised inside jax.jit: the schedule's density must be computed
  from constants, not from traced arrays."""
  dc = tiny_config(**{'diffusion.allocation': allocation}).diffusion
  eager = noise.init_state(dc, 16, 256)
  jitted = jax.jit(lambda: noise.init_state(dc, 16, 256))()
  np.testing.assert_allclose(np.asarray(jitted['cdf']), np.asarray(eager['cdf']), atol=1e-6)
  assert float(jitted['cdf'][-1]) == 1.0 and np.all(np.diff(np.asarray(jitted['cdf'])) > 0)
