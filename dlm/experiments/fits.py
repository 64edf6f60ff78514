"""Scaling-law statistics for `dlm.experiments.scaling`: the compute-optimal frontier of a
family's runs, its power-law fit with bootstrap intervals, and the compute multiplier against
the autoregressive twin (pure numpy / scipy, no JAX).

Each run is one point (C, L): training FLOPs and held-out bits/byte (exact for the AR twin, an
upper bound for a diffusion family). Per family:

  envelope  the runs that beat every run of smaller compute: the frontier that the best of the
            measured model sizes traces (Kaplan et al. 2020 fit loss against compute on this
            frontier; Hoffmann et al. 2022 approach 1 takes its minima the same way).
  fit       L(C) = E + A * C^-alpha on the envelope: Hoffmann et al. 2022 approach 3's
            parametric form with compute as the only variable. E is the irreducible loss.
  bootstrap the fit repeated on resamples of all the family's runs, each resample's own
            envelope refitted: the spread of (E, A, alpha) that re-running the sweep could give.
  multiplier M(L) = C_family(L) / C_AR(L), the compute a family needs for the loss the twin
            reaches with C_AR (Gulrajani & Hashimoto 2023 report about 64x for continuous
            diffusion, Plaid), with an interval from pairing the two families' bootstrap draws.

Every returned dict holds Python floats, ints, bools, strings, lists and None only, so the
driver writes it to JSON as it is; None stands for an infinite or undefined value.
"""

import math

import numpy as np
from scipy import optimize

from dlm.errors import DlmError

MIN_POINTS = 3       # E, A and alpha: three parameters need three envelope points
ALPHA_MAX = 3.0      # alpha is fitted in the open interval (0, ALPHA_MAX)
ALPHA_GRID = np.linspace(0.01, ALPHA_MAX - 0.01, 299)  # steps of 0.01, then polished
LEVEL = 0.95         # default coverage of every interval


def _points(C, L) -> tuple[np.ndarray, np.ndarray]:
  C = np.asarray(C, dtype=float).ravel()
  L = np.asarray(L, dtype=float).ravel()
  if C.shape != L.shape:
    raise DlmError(f'scaling fit: {C.size} compute values but {L.size} losses')
  if not (np.all(np.isfinite(C)) and np.all(C > 0)):
    raise DlmError('scaling fit: every training compute must be a finite positive FLOP count')
  if not np.all(np.isfinite(L)):
    raise DlmError('scaling fit: every loss must be finite')
  return C, L


def envelope(C, L) -> np.ndarray:
  """Indices (into C and L, in increasing C) of the lower envelope: a point is kept iff its
  loss is below that of every point with smaller compute. At equal compute only the lowest
  loss can be kept, once: a bootstrap resample repeats points, and a copy adds no information
  to the frontier."""
  C, L = _points(C, L)
  order = np.lexsort((L, C))  # by C, then by L within equal C
  best = np.minimum.accumulate(L[order])
  kept = np.ones(order.size, dtype=bool)
  kept[1:] = L[order][1:] < best[:-1]
  return order[kept]


def _linear(z: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(E, a) minimising sum (E + a z - L)^2 for each row of z (one row per alpha), under
  E >= 0, a >= 0: the unconstrained solution, else the best on the boundary E = 0 (for
  a >= 0 violated the data would rise with compute, which an envelope never does; a = 0 is
  then what is left and the caller rejects it)."""
  zm = z.mean(axis=1)
  dz = z - zm[:, None]
  szz = (dz * dz).sum(axis=1)
  with np.errstate(divide='ignore', invalid='ignore'):
    a = np.where(szz > 0, (dz * (L - L.mean())).sum(axis=1) / szz, 0.0)
    E = L.mean() - a * zm
    on_zero = E < 0
    a0 = (z * L).sum(axis=1) / (z * z).sum(axis=1)
  E = np.where(on_zero, 0.0, E)
  a = np.where(on_zero, a0, a)
  flat = a <= 0
  return np.where(flat, L.mean(), E), np.where(flat, 0.0, a)


def _rss(alpha: np.ndarray, x: np.ndarray, L: np.ndarray):
  z = x[None, :] ** -alpha[:, None]
  E, a = _linear(z, L)
  r = E[:, None] + a[:, None] * z - L
  return (r * r).sum(axis=1), E, a


def fit(C, L) -> dict:
  """Least-squares fit of L(C) = E + A C^-alpha to the envelope of the points (C, L) (the
  envelope of points that already are one is themselves). E >= 0, A > 0, 0 < alpha < 3.

  For a fixed alpha the model is linear in (E, A), so the least squares reduce to a 1-D
  profile over alpha: the (E, A) of each alpha are closed-form. The profile is scanned on a
  grid of 0.01 over the whole interval and polished around its best cell. The grid sees every
  local minimum, so the result does not hang on a start (multi-start nonlinear fits of this
  form are known to stop in different minima), and the 1000 fits of a bootstrap take about a
  second. Compute enters as x = C / C_ref with C_ref the envelope's geometric mean, so that
  x^-alpha stays near 1 whatever the FLOP scale; A is returned in raw FLOP units,
  A = a C_ref^alpha.

  Returns {'E', 'A', 'alpha', 'rms' (of the residuals in loss units), 'n' (envelope points),
  'c_ref', 'loss_range' and 'compute_range' (of the envelope), 'at_bound' (the names among E
  and alpha that sit on their constraint: the data do not pin them inside it)}."""
  C, L = _points(C, L)
  keep = envelope(C, L)
  if keep.size < MIN_POINTS:
    raise DlmError(f'scaling fit: {keep.size} point(s) on the compute-optimal envelope '
                   f'(of {C.size} runs), {MIN_POINTS} needed to fit E, A and alpha')
  C, L = C[keep], L[keep]
  log_ref = float(np.mean(np.log(C)))
  x = np.exp(np.log(C) - log_ref)
  rss, _, _ = _rss(ALPHA_GRID, x, L)
  i = int(np.argmin(rss))
  lo = ALPHA_GRID[i - 1] if i > 0 else 1e-6
  hi = ALPHA_GRID[i + 1] if i + 1 < ALPHA_GRID.size else ALPHA_MAX - 1e-6
  polished = optimize.minimize_scalar(
      lambda al: float(_rss(np.array([al]), x, L)[0][0]), bounds=(lo, hi), method='bounded',
      options={'xatol': 1e-7})
  alpha = float(polished.x) if polished.fun <= rss[i] else float(ALPHA_GRID[i])
  rss1, E, a = _rss(np.array([alpha]), x, L)
  E, a = float(E[0]), float(a[0])
  if not (a > 0 and math.isfinite(E) and math.isfinite(a)):
    raise DlmError('scaling fit: the envelope does not fall with compute; no power law fits')
  at_bound = (['E'] if E == 0.0 else []) + (
      ['alpha'] if alpha <= ALPHA_GRID[0] or alpha >= ALPHA_GRID[-1] else [])
  return {'E': E, 'A': float(math.exp(math.log(a) + alpha * log_ref)), 'alpha': alpha,
          'rms': float(math.sqrt(rss1[0] / L.size)), 'n': int(L.size),
          'c_ref': float(math.exp(log_ref)), 'loss_range': [float(L.min()), float(L.max())],
          'compute_range': [float(C.min()), float(C.max())], 'at_bound': at_bound}


def bootstrap(C, L, n: int = 1000, seed: int = 0) -> dict:
  """Parameter draws from n resamples (with replacement) of all the family's runs, each one's
  envelope fitted as `fit` does. Resampling the runs, not the envelope, lets a resample lose a
  frontier run and see a neighbour take its place, as re-running the sweep could.

  Such a resample's envelope lies on or above the full one, so the draws lean towards higher
  losses; the intervals are the spread of the procedure, not a bias-corrected one. Resamples
  whose envelope has fewer than 3 points, or whose fit fails, are skipped and counted.

  Returns {'E', 'A', 'alpha': lists of the draws, 'n' (resamples tried), 'used',
  'skipped_few_points', 'skipped_failed', 'skipped'}."""
  C, L = _points(C, L)
  if n < 1:
    raise DlmError(f'scaling bootstrap: n={n}, at least 1 resample needed')
  rng = np.random.default_rng(seed)
  draws = {'E': [], 'A': [], 'alpha': []}
  few = failed = 0
  for _ in range(n):
    pick = rng.integers(0, C.size, C.size)
    if envelope(C[pick], L[pick]).size < MIN_POINTS:
      few += 1
      continue
    try:
      p = fit(C[pick], L[pick])
    except DlmError:
      failed += 1
      continue
    for k in draws:
      draws[k].append(p[k])
  used = len(draws['E'])
  return {**draws, 'n': int(n), 'used': used, 'skipped_few_points': few,
          'skipped_failed': failed, 'skipped': few + failed}


def _bounds(level: float) -> tuple[float, float]:
  if not 0 < level < 1:
    raise DlmError(f'interval level {level}: must lie strictly between 0 and 1')
  return (1 - level) / 2, (1 + level) / 2


def intervals(boot: dict, level: float = LEVEL) -> dict:
  """{'E', 'A', 'alpha': [lo, hi]} percentile intervals of a bootstrap's draws (None when it
  has none)."""
  q = _bounds(level)
  return {k: ([float(v) for v in np.quantile(boot[k], q)] if boot[k] else None)
          for k in ('E', 'A', 'alpha')}


def _log_compute(params: dict, L) -> np.ndarray:
  """log C(L) for the parameters (scalars, or arrays of draws broadcast against L): +inf where
  L <= E, the fitted curve never reaching that loss."""
  E, A, alpha = (np.asarray(params[k], dtype=float) for k in ('E', 'A', 'alpha'))
  L = np.asarray(L, dtype=float)
  with np.errstate(divide='ignore', invalid='ignore'):
    gap = L - E
    out = (np.log(A) - np.log(np.where(gap > 0, gap, 1.0))) / alpha
  return np.where(gap > 0, out, np.inf)


def compute_for(params: dict, L):
  """The training compute C(L) = (A / (L - E))^(1/alpha) at which the fitted curve reaches
  loss L; inf where L <= E. A float for a scalar loss and scalar parameters, else an array
  (parameters given as arrays of bootstrap draws broadcast against L)."""
  with np.errstate(over='ignore'):
    c = np.exp(_log_compute(params, L))
  return float(c) if c.ndim == 0 else c


def overlap(L_family_points, L_ar_points):
  """[lo, hi]: the range of losses both families' measured envelopes cover (pass envelope
  losses, or a fit's 'loss_range'); None when they do not overlap. Inside it both curves
  are read where they were measured; outside it at least one is extrapolated."""
  a, b = np.asarray(L_family_points, dtype=float), np.asarray(L_ar_points, dtype=float)
  lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
  return [float(lo), float(hi)] if lo <= hi else None


def _num(x) -> float | None:
  return float(x) if math.isfinite(x) else None


def multiplier(family_fit: dict, ar_fit: dict, family_boot: dict, ar_boot: dict, losses,
               level: float = LEVEL) -> list[dict]:
  """M(L) = C_family(L) / C_AR(L) at each loss of `losses`: how many times the twin's compute
  the family needs to reach the same held-out loss.

  The point value comes from the two fits. Its interval pairs each draw of the family's
  bootstrap with a draw of the twin's and takes percentiles of the paired ratios. The two
  sweeps are independent, so the pairs are drawn at random (a fixed permutation, seed 0; the
  shorter list sets their number): pairing draw i with draw i would tie them whenever both
  bootstraps ran with one seed on sweeps of one design, whose i-th resamples then pick the
  same runs, and the correlated pairs would narrow the interval. The lower percentile is the
  order statistic just below (1 - level)/2, the upper one just above (1 + level)/2, so an
  infinite draw (a curve that never reaches L) is never interpolated with a finite one, and
  the interval errs on the wide side. Pairs where neither
  curve reaches L say nothing of the ratio and are left out.

  Each entry: {'loss', 'multiplier', 'interval': [lo, hi], 'extrapolated', 'overlap',
  'draws'}. 'extrapolated' is true where L lies outside the loss range both envelopes
  measured (`overlap`), a reading no data support at least on one side. 'multiplier' or hi is
  None where the family's curve never reaches L (L <= E: infinite compute); 0.0 where the
  twin's does not."""
  q_lo, q_hi = _bounds(level)
  both = overlap(family_fit['loss_range'], ar_fit['loss_range'])
  losses = np.atleast_1d(np.asarray(losses, dtype=float))
  k = min(len(family_boot['E']), len(ar_boot['E']))
  if k == 0:
    raise DlmError('compute multiplier: a bootstrap has no usable draws (every resample '
                   'had fewer than 3 envelope points or failed to fit)')
  fam = {p: np.asarray(family_boot[p][:k])[:, None] for p in ('E', 'A', 'alpha')}
  pair = np.random.default_rng(0).permutation(k)
  ar = {p: np.asarray(ar_boot[p][:k])[pair][:, None] for p in ('E', 'A', 'alpha')}
  with np.errstate(invalid='ignore'):
    point = _log_compute(family_fit, losses) - _log_compute(ar_fit, losses)
    draws = _log_compute(fam, losses[None, :]) - _log_compute(ar, losses[None, :])
  out = []
  for j, loss in enumerate(losses):
    d = draws[:, j][~np.isnan(draws[:, j])]
    lo = np.quantile(d, q_lo, method='lower') if d.size else math.nan
    hi = np.quantile(d, q_hi, method='higher') if d.size else math.nan
    with np.errstate(over='ignore'):
      m, lo, hi = (math.exp(v) if not math.isnan(v) else math.inf
                   for v in (point[j], lo, hi))
    out.append({'loss': float(loss), 'multiplier': _num(m), 'interval': [_num(lo), _num(hi)],
                'extrapolated': both is None or not both[0] <= loss <= both[1],
                'overlap': both, 'draws': int(d.size)})
  return out


def headline(family_fit: dict, ar_fit: dict, family_boot: dict, ar_boot: dict,
             level: float = LEVEL) -> dict:
  """One multiplier for the family, read at one loss: the geometric mean of the range both
  envelopes measured. That is the middle of what both measured: each curve is read between
  its own runs, away from the ends of the range, where a fitted power law is least pinned and
  its bootstrap fans out widest. Geometric rather than arithmetic because the curves and the
  multiplier are ratios of scales (for a range 1.2-2.0 bits/byte it reads at 1.55, not 1.6).

  Ranges that do not overlap: read at the family's measured loss nearest to the twin's range
  (its lowest if the family stays above the twin, its highest if below), so the family's own
  curve is read on its data and only the twin's is extended; flagged extrapolated, overlap
  None. Returns {'multiplier', 'interval': [lo, hi], 'loss', 'extrapolated', 'overlap',
  'draws'} as `multiplier` does."""
  both = overlap(family_fit['loss_range'], ar_fit['loss_range'])
  if both is not None:
    loss = math.sqrt(both[0] * both[1])
  else:
    f_lo, f_hi = family_fit['loss_range']
    loss = f_lo if f_lo > ar_fit['loss_range'][1] else f_hi
  return multiplier(family_fit, ar_fit, family_boot, ar_boot, [loss], level)[0]


def rank(headlines: dict) -> dict:
  """Orders the families ({name: headline dict}) from the least compute to the most, and says
  for each neighbouring pair whether their intervals separate them. Intervals that overlap
  mean the sweep cannot tell which of the two is cheaper: the report must say so instead of
  ranking them.

  Returns {'order': names, 'pairs': [{'lower', 'higher', 'separable', 'verdict'}],
  'separable': whether every neighbouring pair is}."""
  inf = math.inf

  def key(name):
    m = headlines[name]['multiplier']
    return inf if m is None else m

  order = sorted(headlines, key=key)
  pairs = []
  for a, b in zip(order, order[1:]):
    ia, ib = headlines[a]['interval'], headlines[b]['interval']
    a_hi = inf if ia[1] is None else ia[1]
    b_lo = 0.0 if ib[0] is None else ib[0]
    separable = a_hi < b_lo
    shown = f'{a} {_fmt(ia)}, {b} {_fmt(ib)}'
    verdict = (f'{a} needs less compute than {b} (intervals {shown} do not overlap)'
               if separable else
               f'{a} and {b} not separable: their intervals overlap ({shown})')
    extrapolated = [n for n in (a, b) if headlines[n]['extrapolated']]
    if extrapolated:
      verdict += f'; extrapolated: {", ".join(extrapolated)}'
    pairs.append({'lower': a, 'higher': b, 'separable': separable, 'verdict': verdict})
  return {'order': order, 'pairs': pairs, 'separable': all(p['separable'] for p in pairs)}


def _fmt(interval) -> str:
  lo, hi = interval
  return f'[{"?" if lo is None else f"{lo:.3g}"}, {"inf" if hi is None else f"{hi:.3g}"}]'


def crossover(epochs, loss_ar, loss_diff) -> dict:
  """Data-constrained runs: each family's loss after 1, 4, 16, ... repetitions of one fixed
  set of unique tokens (the same compute at each epoch count). Returns {'epochs', 'within',
  'note'}: 'epochs' the repetition count at which the diffusion loss comes down to the
  twin's, interpolated linearly in log(epochs) between the last count where diffusion is not
  below and the first where it is; None, with within false and the note saying which, when
  diffusion is below from the first count (the crossing lies before it) or never below (no
  crossing in the measured range; nothing is extrapolated)."""
  e = np.asarray(epochs, dtype=float).ravel()
  a = np.asarray(loss_ar, dtype=float).ravel()
  d = np.asarray(loss_diff, dtype=float).ravel()
  if not e.size == a.size == d.size:
    raise DlmError(f'crossover: {e.size} epoch counts, {a.size} AR losses, {d.size} '
                   'diffusion losses; one of each per count')
  if e.size < 2 or not (np.all(np.isfinite(e)) and np.all(e > 0) and np.all(np.diff(e) > 0)):
    raise DlmError('crossover: at least 2 epoch counts, positive and increasing')
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(d))):
    raise DlmError('crossover: every loss must be finite')
  gap = d - a
  below = np.flatnonzero(gap < 0)
  if below.size == 0:
    return {'epochs': None, 'within': False,
            'note': f'diffusion stays above the AR twin up to {e[-1]:g} epochs: no crossover '
                    'in the measured range'}
  j = int(below[0])
  if j == 0:
    return {'epochs': None, 'within': False,
            'note': f'diffusion is already below the AR twin at {e[0]:g} epoch(s): the '
                    'crossover lies before the measured range'}
  t = gap[j - 1] / (gap[j - 1] - gap[j])
  at = float(math.exp(math.log(e[j - 1]) + t * (math.log(e[j]) - math.log(e[j - 1]))))
  note = f'diffusion comes below the AR twin at {at:.3g} epochs'
  if np.any(gap[j:] > 0):
    note += ' (and rises above it again later in the range)'
  return {'epochs': at, 'within': True, 'note': note}
