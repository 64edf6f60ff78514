"""Noise allocation: which log-SNRs training visits, where the sampler steps, and the proposal
of the likelihood bound — one distribution q(lambda) per run, kept in the train state.

A denoiser learns nothing where the token is already decided (high lambda: its own noisy vector
identifies it) or where nothing is known (low lambda); everything about context is learned in
between. Spending training draws and sampling steps in proportion to how fast the
cross-entropy of the denoiser changes with lambda, q(lambda) ~ |dCE/dlambda|, puts them where
words are chosen (CDCD, Dieleman et al. 2022; Plaid, Gulrajani & Hashimoto 2023; LangFlow,
Chen et al. 2026). Allocations (`diffusion.allocation`):

- `schedule`: the seed's, training times uniform on the `diffusion_steps` grid of
  `diffusion.noise_schedule`; q is the density that schedule induces on lambda.
- `gumbel` (LangFlow): with gamma = -lambda the CE curve is close to a scaled Gumbel CDF,
  CE ~ H exp(-exp(-(gamma - mu) / beta)), so q is Gumbel(mu, beta) over gamma. (mu, beta, H)
  start from LangFlow's d = 768 values with mu shifted by ln(d / 768) and are refitted to the
  running CE curve by least squares (Levenberg-Marquardt) every `proposal_refresh` steps.
- `adaptive` (CDCD / InfoNoise, non-parametric): the running CE curve is made monotone and its
  per-bin drop, lightly smoothed, is the density.

Every q is a piecewise-constant density on `proposal_bins` equal bins over the run's log-SNR
range, mixed with a uniform floor (`proposal_floor`): sampling is an inverse CDF (exact for this
form), densities are cheap, and the floor keeps q > 0 on the whole range so the
importance-weighted bound stays unbiased and its weights bounded. The sampler's grid, though,
takes quantiles of q without its floor (`cdf_main`), from 1e-4 to 0.99 (SAMPLER_QUANTILES): the
floor exists for training coverage and importance weights, and on the grid it would only spend
steps where nothing is decided and end with one long jump to the clean end, which the discrete
bound charges in full. The range is set per token:
a token's own noisy vector has total SNR d e^lambda (d = diffusion_dim, rows of radius sqrt d),
so with lambda_tok = lambda + ln d the range [token_logsnr_min, token_logsnr_max] = [-8, 6]
runs from "nothing known" (prior KL ~ e^-8 / 2 nats per token) to "every token decided by its
own vector" (the reconstruction term ~ 0), whatever the diffusion dim. The running curve is an
EMA per bin of the training rows' cross-entropy (debiased by an EMA of the row counts), updated
inside the jitted step; it is checkpointed with the rest of the state, so a resumed run draws
exactly the noise levels of an uninterrupted one.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from dlm import diffusion

# The sampler's grid runs over these quantiles of q without its floor. At the clean end it stops
# at the 99% point: the steps beyond it would each be charged for an SNR that grows like e^lambda,
# while decoding there with the denoiser's own softmax costs almost nothing (docs/results.md,
# 'The sampler's grid stops at the 99% quantile').
SAMPLER_QUANTILES = (1e-4, 0.99)
# LangFlow's released fit for a 768-d embedding space (mu, beta, H_inf in nats).
LANGFLOW_MU, LANGFLOW_BETA = 4.72, 0.85


def logsnr_range(dc, diffusion_dim: int) -> tuple[float, float]:
  shift = math.log(diffusion_dim)
  return dc.token_logsnr_min - shift, dc.token_logsnr_max - shift


def make_edges(dc, diffusion_dim: int) -> np.ndarray:
  """Bin edges: a constant of the config (numpy, so it stays concrete under jit)."""
  return np.linspace(*logsnr_range(dc, diffusion_dim), dc.proposal_bins + 1).astype(np.float32)


def centers(edges) -> jnp.ndarray:
  return 0.5 * (edges[1:] + edges[:-1])


def bin_index(edges, lam):
  K = edges.shape[0] - 1
  return jnp.clip(jnp.floor((lam - edges[0]) / (edges[-1] - edges[0]) * K), 0, K - 1
                  ).astype(jnp.int32)


def gumbel_guess(dc, diffusion_dim: int, vocab_size: int) -> jnp.ndarray:
  """(mu, beta, H) before any fit: LangFlow's values, mu moved by ln(d / 768), H = ln V."""
  mu = dc.gumbel_mu if dc.gumbel_mu else LANGFLOW_MU + math.log(diffusion_dim / 768)
  return jnp.array([mu, dc.gumbel_beta, math.log(vocab_size)], jnp.float32)


def _with_floor(mass, floor: float):
  mass = mass / jnp.sum(mass)
  return (1.0 - floor) * mass + floor / mass.shape[0]


def _cdf(mass):
  cdf = jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(mass / jnp.sum(mass))])
  return cdf.at[-1].set(1.0)  # float32 rounding would leave the clean end 1e-7 short


def _cdfs(mass, floor: float) -> dict:
  """q with its floor (training, importance weights) and without (the sampler's grid)."""
  return {'cdf': _cdf(_with_floor(mass, floor)), 'cdf_main': _cdf(mass)}


def schedule_mass(dc, edges) -> np.ndarray:
  """Bin masses of lambda(t) for t uniform in [0, 1] (the schedule's own density); mass
  beyond the range goes to the end bins. A constant of the config, computed eagerly even when
  called while tracing (the state's init runs under jit)."""
  with jax.ensure_compile_time_eval():
    lam = np.sort(np.asarray(diffusion.logsnr(np.linspace(0, 1, 200001), dc.noise_schedule)))
    cdf = np.searchsorted(lam, np.asarray(edges), side='right') / len(lam)
  cdf[0], cdf[-1] = 0.0, 1.0
  return np.diff(cdf)


def gumbel_mass(edges, params) -> jnp.ndarray:
  """Bin masses of Gumbel(mu, beta) over gamma = -lambda: P(lambda <= l) = 1 - G(-l)."""
  mu, beta = params[0], params[1]
  tail = -jnp.expm1(-jnp.exp((edges + mu) / beta))  # 1 - exp(-exp((l + mu) / beta))
  return jnp.maximum(jnp.diff(tail), 0.0) + 1e-12


def gumbel_curve(gamma, params):
  mu, beta, h = params[0], params[1], params[2]
  return h * jnp.exp(-jnp.exp(-(gamma - mu) / beta))


def fit_gumbel(params, gamma, ce, weight, iterations: int = 30):
  """(mu, beta, H) minimising sum w (ce - curve(gamma))^2, by damped Gauss-Newton from params.
  beta and H are fitted in log space so they stay positive."""
  def residual(theta):
    p = jnp.stack([theta[0], jnp.exp(theta[1]), jnp.exp(theta[2])])
    return jnp.sqrt(weight) * (gumbel_curve(gamma, p) - ce)

  def step(_, carry):
    theta, damping = carry
    r = residual(theta)
    J = jax.jacfwd(residual)(theta)
    JtJ = J.T @ J
    delta = jnp.linalg.solve(JtJ + damping * (jnp.diag(jnp.diag(JtJ)) + 1e-9 * jnp.eye(3)),
                             -J.T @ r)
    better = jnp.sum(residual(theta + delta) ** 2) < jnp.sum(r ** 2)
    return (jnp.where(better, theta + delta, theta),
            jnp.where(better, damping * 0.3, damping * 10.0))

  theta0 = jnp.stack([params[0], jnp.log(params[1]), jnp.log(params[2])])
  theta, _ = jax.lax.fori_loop(0, iterations, step, (theta0, jnp.float32(1e-2)))
  fitted = jnp.stack([theta[0], jnp.exp(theta[1]), jnp.exp(theta[2])])
  # A fit that failed (too little data, a flat curve) keeps the previous proposal.
  ok = jnp.all(jnp.isfinite(fitted)) & (fitted[1] > 0.05) & (fitted[1] < 20.0)
  return jnp.where(ok, fitted, params)


def ce_curve(state):
  """The running CE per bin (nats per token), NaN where no row has landed yet."""
  return jnp.where(state['weight'] > 0, state['ce'] / jnp.maximum(state['weight'], 1e-20),
                   jnp.nan)


def monotone(curve_K):
  """A non-increasing version of a noisy CE-vs-lambda curve with gaps (NaN): gaps filled from
  their neighbours, then the mean of the running max from the clean end and the running min
  from the noisy end (each monotone, so their mean is, and their biases cancel)."""
  K = curve_K.shape[0]
  idx = jnp.arange(K)
  seen = jnp.isfinite(curve_K)
  value = jnp.where(seen, curve_K, 0.0)
  prev = jax.lax.cummax(jnp.where(seen, idx, -1))
  nxt = jax.lax.cummin(jnp.where(seen, idx, K), reverse=True)
  v_prev, v_next = value[jnp.clip(prev, 0, K - 1)], value[jnp.clip(nxt, 0, K - 1)]
  w = (idx - prev) / jnp.maximum(nxt - prev, 1)
  filled = jnp.where(seen, value, jnp.where(prev < 0, v_next, jnp.where(
      nxt >= K, v_prev, v_prev + w * (v_next - v_prev))))
  from_clean = jax.lax.cummax(filled, reverse=True)
  from_noise = jax.lax.cummin(filled)
  return 0.5 * (from_clean + from_noise)


def adaptive_mass(curve_K):
  """Density ~ the drop of the monotone CE curve per bin (central differences, so the mass sits
  on the bin where the curve falls), smoothed by a [1, 2, 1] kernel."""
  m = monotone(curve_K)
  drop = jnp.maximum(-jnp.gradient(m), 0.0)
  drop = jnp.convolve(jnp.pad(drop, 1, mode='edge'), jnp.array([0.25, 0.5, 0.25]), 'valid')
  return drop + 1e-12


class Allocation:
  """A run's noise allocation: how training draws log-SNRs, how q starts and how it follows the
  running CE curve. One object per `diffusion.allocation` (`of`); the state it keeps is a plain
  dict of arrays in the train state, so it is checkpointed and jitted like the rest:
  {ce, weight: the running curve (K,); gumbel: (mu, beta, H); cdf, cdf_main, edges: q with and
  without its floor (K + 1,)}. What uses q alone (the sampler's grid, the bound's importance
  weights) reads it through the module functions `sample`, `density`, `steps`."""

  def __init__(self, dc, diffusion_dim: int, vocab_size: int):
    self.dc, self.diffusion_dim, self.vocab_size = dc, diffusion_dim, vocab_size

  def init(self) -> dict:
    dc = self.dc
    edges = make_edges(dc, self.diffusion_dim)
    params = gumbel_guess(dc, self.diffusion_dim, self.vocab_size)
    return {'ce': jnp.zeros((dc.proposal_bins,)), 'weight': jnp.zeros((dc.proposal_bins,)),
            'gumbel': params, **_cdfs(self.initial_mass(edges, params), dc.proposal_floor),
            'edges': jnp.asarray(edges)}

  def initial_mass(self, edges, params):
    """q's bin masses before any data: the Gumbel guess (adaptive starts there too)."""
    return gumbel_mass(edges, params)

  def draw(self, key, rows, q: dict):
    """The log-SNRs of `rows` (a row count, or a step's `streams.Rows`): q by inverse CDF of
    low-discrepancy u's (`diffusion.stratified`)."""
    return sample(q, diffusion.stratified(key, rows))

  def update(self, state: dict, lam_N, ce_N, step, weight_N=None) -> dict:
    """Add this step's rows (lambda, mean CE per token, optional weight) to the running curve;
    at refresh steps rebuild q from it. `step` is the step just completed (1-based)."""
    dc = self.dc
    K = dc.proposal_bins
    b = bin_index(state['edges'], lam_N)
    w_N = jnp.ones_like(ce_N) if weight_N is None else weight_N
    new = dict(state,
               ce=dc.proposal_ema * state['ce'] + jnp.zeros((K,)).at[b].add(ce_N * w_N),
               weight=dc.proposal_ema * state['weight'] + jnp.zeros((K,)).at[b].add(w_N))
    refresh = (step % dc.proposal_refresh == 0) & (jnp.sum(new['weight'] > 0) >= 4)
    return jax.lax.cond(refresh, self.rebuild, lambda new: new, new)

  def rebuild(self, state: dict) -> dict:
    """q refitted to the running curve: (Gumbel parameters, bin masses) from `refit`."""
    params, mass = self.refit(state)
    return dict(state, gumbel=params, **_cdfs(mass, self.dc.proposal_floor))

  def refit(self, state: dict):
    raise NotImplementedError

  def summary(self, state: dict) -> dict:
    """The running CE curve and the proposal, as plain lists for metrics.jsonl and reports."""
    curve = np.asarray(ce_curve(state))
    return {'logsnr': [round(float(x), 4) for x in np.asarray(centers(state['edges']))],
            'ce': [None if not np.isfinite(x) else round(float(x), 5) for x in curve],
            'q': [round(float(x), 6) for x in np.asarray(bin_densities(state))]}


class Schedule(Allocation):
  """The seed's: times uniform on the T-step grid of the noise schedule; q is the density that
  schedule induces on lambda, and never changes."""

  def initial_mass(self, edges, params):
    return jnp.asarray(schedule_mass(self.dc, edges), jnp.float32)

  def draw(self, key, rows, q: dict):
    dc = self.dc
    return diffusion.logsnr(diffusion.grid_times(key, rows, dc.diffusion_steps),
                            dc.noise_schedule)

  def rebuild(self, state: dict) -> dict:
    return state  # the curve is kept for the plots; q stays the schedule's


class Gumbel(Allocation):
  """LangFlow's: q = Gumbel(mu, beta) over -lambda, refitted to the running curve."""

  def refit(self, state: dict):
    curve = ce_curve(state)
    seen = jnp.isfinite(curve)
    params = fit_gumbel(state['gumbel'], -centers(state['edges']), jnp.where(seen, curve, 0.0),
                        jnp.where(seen, state['weight'], 0.0))
    return params, gumbel_mass(state['edges'], params)

  def summary(self, state: dict) -> dict:
    fitted = (float(x) for x in np.asarray(state['gumbel']))
    return {**super().summary(state), 'gumbel': dict(zip(('mu', 'beta', 'h'), fitted))}


class Adaptive(Allocation):
  """CDCD / InfoNoise: q follows the drop of the monotone running curve, bin by bin."""

  def refit(self, state: dict):
    return state['gumbel'], adaptive_mass(ce_curve(state))


ALLOCATIONS = {'schedule': Schedule, 'gumbel': Gumbel, 'adaptive': Adaptive}


def of(dc, diffusion_dim: int, vocab_size: int = 0) -> Allocation:
  """The allocation `dc.allocation` names (the one place that reads it)."""
  return ALLOCATIONS[dc.allocation](dc, diffusion_dim, vocab_size)


def init_state(dc, diffusion_dim: int, vocab_size: int) -> dict:
  """The allocation's state before training (`Allocation.init`)."""
  return of(dc, diffusion_dim, vocab_size).init()


def proposal(state: dict) -> dict:
  """q alone ({cdf, cdf_main, edges}): what sampling and evaluation need; with `frozen`, the
  arrays a family keeps unchanged beside it (the latent family's autoencoder), which they need
  too."""
  return {k: state[k] for k in ('cdf', 'cdf_main', 'edges', 'frozen') if k in state}


def update(state: dict, lam_N, ce_N, step, dc, weight_N=None) -> dict:
  """`Allocation.update` of dc's allocation (its bins are in the state)."""
  return of(dc, 0).update(state, lam_N, ce_N, step, weight_N)


def sample(q: dict, u):
  """lambda = F^-1(u), u in [0, 1]: piecewise-linear inverse of the piecewise-constant density."""
  return jnp.interp(u, q['cdf'], q['edges'])


def bin_densities(q: dict):
  """q(lambda) in each bin (K,): mass over width."""
  return jnp.diff(q['cdf']) / jnp.diff(q['edges'])


def density(q: dict, lam):
  """q(lambda) on the range."""
  return bin_densities(q)[bin_index(q['edges'], lam)]


def steps(q: dict, num_steps: int):
  """num_steps + 1 log-SNRs at equal quantiles of q without its floor, from the noisy end to
  the clean end (quantiles SAMPLER_QUANTILES)."""
  u = jnp.linspace(*SAMPLER_QUANTILES, num_steps + 1)
  return jnp.interp(u, q['cdf_main'], q['edges'])


def summary(state: dict, dc) -> dict:
  """`Allocation.summary` of dc's allocation."""
  return of(dc, 0).summary(state)
