"""Held-out numbers: the training objective and the likelihood in bits, for both model families.

Autoregressive: the exact negative log-likelihood, sum_i -log p(x_i | x_<i).

Diffusion: no exact likelihood, but two variational upper bounds, per sequence x with
embeddings x0 (Kingma et al. 2021, "Variational Diffusion Models", eq. 11-17, 32):

  continuous time:  -log p(x) <= E[-log p(x | z_hi)]                          reconstruction
                      + 1/2 int_{lam_lo}^{lam_hi} e^lam E||x0 - x0_hat(z_lam)||^2 dlam   diffusion
                      + KL(q(z_lo | x0) || N(0, I))                             prior
  discrete, T steps: the integral becomes sum_i KL(q(z_s | z_t, x0) || p(z_s | z_t)) over the
                      sampler's grid t_i -> s_i (T + 1 equal quantiles of the proposal); both Gaussians share the variance
                      (1 - r) sigma_s^2 (r = e^(lam_t - lam_s)), so each KL is
                      1/2 (SNR_s - SNR_t) ||x0 - x0_hat(z_t)||^2: the bound of the very model
                      the T-step ancestral sampler runs, and never below the continuous one.

Both expectations are estimated by randomised quasi-Monte Carlo: per sequence, two independently
shifted lattices of bound_samples / 2 points each in [0, 1) (low-discrepancy times, Owen 1997),
mapped to log-SNRs by the run's noise proposal q (`dlm.noise`). In continuous time each draw is
importance-weighted by 1 / q(lambda); q follows the CE curve, which follows the integrand, so
the draws land where the integrand is large and the Monte-Carlo error falls well below that of
uniform draws over the range (what is left comes mostly from the Gaussian noise at a given
lambda).
With self-conditioning both bounds are those of the two-pass denoiser (self-conditioned on its
own first pass at the same z), which the sampler runs with sample.self_condition=fresh.
Each replica alone is unbiased, so half their difference measures the Monte-Carlo error of the
draws (`*_mc_stderr`); the `*_stderr` beside it is the spread over held-out sequences, which
also holds the data's own variance and is what an AR model's exact NLL is compared with.
The decoder p(x | z_hi) is the model's own softmax at the highest log-SNR. Bits per byte divide
the total bits (boundary tokens included) by the UTF-8 bytes of the same tokens, so the two
families are compared on the same text independently of the tokenizer.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlm import denoiser, diffusion, losses, noise, sharding
from dlm.model import Transformer

LN2 = float(np.log(2.0))


@functools.partial(jax.jit, static_argnames=('model', 'config'))
def _objective(params, tokens_BL, key, proposal, *, model, config):
  return losses.loss_fn(params, model, tokens_BL, key, config, proposal, condition=False)[1][0]


@functools.partial(jax.jit, static_argnames=('model',))
def ar_nll_nats(params, tokens_BL, prev_B, *, model: Transformer):
  """Exact -log p(x_i | prev, x_<i) in nats, shape (B, L); prev_B is the token before each row."""
  inputs_BL = jnp.concatenate([prev_B[:, None], tokens_BL[:, :-1]], 1)
  return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, inputs_BL),
                                                         tokens_BL)


def lattice_draws(key, batch: int, num_samples: int):
  """(batch, 2 * (num_samples // 2)) points in [0, 1): two randomly shifted evenly spaced
  lattices per row (randomised quasi-Monte Carlo), replica r in columns r*h .. r*h + h - 1."""
  h = num_samples // 2
  shift = jax.random.uniform(key, (batch, 2, 1))
  return ((shift + jnp.arange(h) / h) % 1.0).reshape(batch, 2 * h)


@functools.partial(jax.jit, static_argnames=('model', 'num_samples', 'self_condition',
                                             'num_steps'))
def diffusion_bound_nats(params, tokens_BL, key, proposal, *, model: Transformer,
                         num_samples: int, self_condition: bool = False, num_steps: int = 0):
  """`bound_terms` of a trained denoiser; with self-conditioning, of the two-pass denoiser
  (first pass at the same z_t, as the sampler's `fresh` mode runs it)."""
  E_VE = denoiser.embedding_table(model, params)

  def denoise(z, lam_B):
    return model.apply(params, z, lam_B, denoiser.self_condition(
        params, model, z, lam_B, E_VE, False, self_condition))
  return bound_terms(denoise, E_VE, tokens_BL, key, num_samples, proposal, num_steps,
                     model.cfg.path)


def bound_terms(denoise, E_VE, tokens_BL, key, num_samples: int, proposal, num_steps: int = 0,
                path: str = 'vp') -> dict:
  """Per-sequence bound terms in nats for any denoiser logits(z, lam_B) -> (B, L, V):
  recon (B,), diffusion (B, 2) one estimate per replica, prior (B,), and per draw the log-SNR
  and the denoiser's cross-entropy per token (`lam`, `ce`: (B, draws)).

  num_steps = 0: the continuous-time bound over the proposal's log-SNR range, each draw
  lambda ~ q (the run's proposal, `dlm.noise`) weighted by 1 / q(lambda): an unbiased estimate
  for any q > 0 on the range, whose variance is small when q follows the integrand. num_steps
  = T: the discrete bound of the T-step ancestral sampler on its grid (T + 1 equal quantiles
  of q), one KL term drawn uniformly per draw."""
  x0 = E_VE[tokens_BL]
  B = tokens_BL.shape[0]
  if num_steps:  # lam from the noisiest to the cleanest step
    grid = noise.steps(proposal, num_steps)
    lo, hi = grid[0], grid[-1]
  else:
    lo, hi = proposal['edges'][0], proposal['edges'][-1]
  k_rec, k_u, k_eps = jax.random.split(key, 3)

  lam_hi = jnp.full((B,), hi)
  z0 = diffusion.q_sample(x0, lam_hi, jax.random.normal(k_rec, x0.shape), path)
  recon = optax.softmax_cross_entropy_with_integer_labels(denoise(z0, lam_hi), tokens_BL).sum(-1)

  def lam_and_weight(u_B):
    """The log-SNR to denoise at and the weight of ||x0 - x0_hat||^2 in the estimate."""
    if num_steps:
      i = jnp.minimum(jnp.floor(u_B * num_steps).astype(jnp.int32), num_steps - 1)
      lam_t, lam_s = grid[i], grid[i + 1]
      # T * KL: T/2 (SNR_s - SNR_t) = T/2 e^lam_s (1 - e^(lam_t - lam_s)), in expm1 form.
      return lam_t, 0.5 * num_steps * jnp.exp(lam_s) * -jnp.expm1(lam_t - lam_s)
    lam = noise.sample(proposal, u_B)
    return lam, 0.5 * jnp.exp(lam) / noise.density(proposal, lam)

  def one(_, xs):
    u_B, k = xs
    lam_B, w_B = lam_and_weight(u_B)
    z = diffusion.q_sample(x0, lam_B, jax.random.normal(k, x0.shape), path)
    logits = denoise(z, lam_B)
    x0_hat = diffusion.x0_from_logits(logits, E_VE)
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BL).mean(-1)
    return None, (w_B * jnp.sum(jnp.square(x0 - x0_hat), axis=(1, 2)), lam_B, ce_B)

  u_BS = lattice_draws(k_u, B, num_samples)
  S = u_BS.shape[1]
  _, (terms_SB, lam_SB, ce_SB) = jax.lax.scan(one, None, (u_BS.T, jax.random.split(k_eps, S)))
  return {'recon': recon, 'diffusion': terms_SB.T.reshape(B, 2, S // 2).mean(-1),
          'prior': diffusion.prior_kl(x0, lo, path).sum(-1), 'lam': lam_SB.T, 'ce': ce_SB.T}


def _summary(prefix: str, nats_N, tokens: int, num_bytes: int, mc_var: float | None) -> dict:
  """bits per token / byte of per-sequence nats, with the standard error over sequences and,
  for a bound, the Monte-Carlo standard error of its draws."""
  n, total = len(nats_N), float(nats_N.sum())
  per_token = tokens / n
  out = {f'{prefix}bits_per_token': total / tokens / LN2,
         f'{prefix}bits_per_byte': total / LN2 / max(num_bytes, 1),
         f'{prefix}bits_per_token_stderr':
             float(nats_N.std(ddof=1) / np.sqrt(n) / per_token / LN2) if n > 1 else float('nan')}
  if mc_var is not None:
    out[f'{prefix}bits_per_token_mc_stderr'] = float(np.sqrt(mc_var) / tokens / LN2)
  return out


def context_tokens(windows: np.ndarray) -> np.ndarray:
  """The token before each window of one consecutive stream (`data.eval_windows`): the last of
  the previous window. The first window opens the stream with `<|bos|>` and gets that same
  token as its context, which charges the AR model for one unpredictable token (conservative)."""
  return np.concatenate([windows[:1, 0], windows[:-1, -1]]).astype(np.int32)


def evaluate(params, model: Transformer, c, windows: np.ndarray, token_bytes: np.ndarray,
             batch_size: int, seed: int = 0, progress=None, bound: bool = True,
             proposal=None, discrete: bool = True) -> dict:
  """val_loss and (unless bound=False) the likelihood of `windows` in bits per token / byte.

  windows: consecutive slices of one token stream, (n, L). The AR model scores every token of
  every window (the first with the token before it as context, `context_tokens`), the
  diffusion model bounds each window as a whole: the same tokens, the same bytes. proposal:
  the diffusion run's q (`state.proposal`); it decides the training objective's noise levels
  too, so val_loss is only comparable between runs with the same allocation. discrete=False
  skips the discrete T-step bound.
  """
  n = (len(windows) // batch_size) * batch_size
  if n == 0:
    raise ValueError(f'{len(windows)} evaluation windows are fewer than batch_size={batch_size}')
  if not model.cfg.causal and proposal is None:
    raise ValueError('a diffusion run is evaluated with its noise proposal (state.proposal)')
  prev = context_tokens(windows)[:n]
  windows = windows[:n]
  key = jax.random.key(seed)
  dc = c.diffusion
  discrete_steps = c.eval.discrete_steps or c.sample.num_steps
  objective, per_seq = [], {'': [], 'discrete_': []}
  mc_var = {'': 0.0, 'discrete_': 0.0}
  parts = {'recon': 0.0, 'diffusion': 0.0, 'prior': 0.0}
  curve_lam, curve_ce = [], []
  batches = range(0, n, batch_size)
  for i in (progress(batches) if progress else batches):
    tokens = sharding.global_rows(windows[i:i + batch_size])  # data-parallel over the mesh
    k = jax.random.fold_in(key, i)
    objective.append(float(_objective(params, tokens, k, proposal, model=model,
                                      config=c)['loss']))
    if not bound:
      continue
    if model.cfg.causal:
      nll = ar_nll_nats(params, tokens, sharding.global_rows(prev[i:i + batch_size]),
                        model=model)
      per_seq[''].append(sharding.fetch(nll).sum(-1))
      continue
    for prefix, steps in (('', 0), ('discrete_', discrete_steps))[:2 if discrete else 1]:
      terms = sharding.fetch(diffusion_bound_nats(
          params, tokens, k, proposal, model=model, num_samples=c.eval.bound_samples,
          self_condition=dc.self_condition, num_steps=steps))
      d = terms['diffusion']
      per_seq[prefix].append(terms['recon'] + d.mean(-1) + terms['prior'])
      mc_var[prefix] += float(np.sum(np.square(d[:, 0] - d[:, 1])) / 4)
      if not prefix:
        curve_lam.append(terms['lam'].ravel())
        curve_ce.append(terms['ce'].ravel())
        for name in parts:
          parts[name] += float(np.sum(terms[name].mean(-1) if name == 'diffusion' else terms[name]))
  tokens_total = windows.size
  result = {'val_loss': float(np.mean(objective)), 'eval_tokens': int(tokens_total),
            'eval_bytes': int(token_bytes[windows].sum())}
  if not per_seq['']:
    return result
  b = result['eval_bytes']
  if model.cfg.causal:
    result.update(_summary('', np.concatenate(per_seq['']), tokens_total, b, None),
                  likelihood='exact negative log-likelihood (autoregressive)')
    return result
  result.update(_summary('', np.concatenate(per_seq['']), tokens_total, b, mc_var['']))
  if discrete:
    result.update(_summary('discrete_', np.concatenate(per_seq['discrete_']), tokens_total, b,
                           mc_var['discrete_']), discrete_steps=int(discrete_steps))
  denoiser = 'two-pass self-conditioned denoiser' if dc.self_condition else 'denoiser'
  result.update(
      bound_terms_bits_per_token={k: v / tokens_total / LN2 for k, v in parts.items()},
      heldout_ce_vs_logsnr=binned_curve(np.concatenate(curve_lam), np.concatenate(curve_ce),
                                        np.asarray(proposal['edges'])),
      likelihood=f'upper bound (continuous-time variational bound of the {denoiser}, '
                 f'importance-sampled from the run\'s noise proposal; the true NLL is lower)')
  return result


def binned_curve(lam, ce, edges) -> dict:
  """Mean cross-entropy per token in the proposal's log-SNR bins (None where no draw fell)."""
  centers = np.asarray(noise.centers(edges))
  b = np.asarray(noise.bin_index(edges, lam))
  total, count = np.bincount(b, ce, len(centers)), np.bincount(b, minlength=len(centers))
  return {'logsnr': [round(float(x), 4) for x in centers],
          'ce': [round(float(t / n), 5) if n else None for t, n in zip(total, count)]}
