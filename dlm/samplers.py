"""One reverse step from log-SNR lam_t to lam_s > lam_t, given the denoiser's estimate of x0:
the update rules the sampler's `lax.scan` chooses from (pure functions).

- `ancestral` (DDPM, Ho et al. 2020): a draw from the exact Gaussian posterior
  q(z_s | z_t, x0 = x0_hat), valid for any pair of log-SNRs.
- `ddim` (Song et al. 2021, eta = 0): deterministic, keeps the implied noise; on the flow path
  this is the Euler step of the probability-flow ODE.
- `dpm++2m` (Lu et al. 2022, DPM-Solver++(2M)): the multistep second-order solver of the same
  ODE in data-prediction form. With h the step in half-log-SNR (log alpha/sigma),
  z_s = (sigma_s / sigma_t) z_t + alpha_s (1 - e^-h) D, where D = x0_hat at first order (DDIM
  exactly) and D = (1 + 1/2r) x0_hat - 1/2r x0_hat_prev with r = h_prev / h at second order:
  the correction reuses the previous step's estimate, so it costs no extra forward pass. First
  order at the first step (no previous estimate) and the last (Lu et al.'s "lower order final",
  which they found steadier at few steps).
"""

import jax
import jax.numpy as jnp

from dlm import diffusion

SAMPLERS = ('ancestral', 'ddim', 'dpm++2m')


def score_tempered(z, x0_hat, lam, temperature, path: str = 'vp'):
  """x0 implied by the score divided by `temperature` (Plaid's score temperature, Gulrajani &
  Hashimoto 2023): the implied noise eps_hat = (z - alpha x0_hat) / sigma is scaled by
  1 / temperature, so temperature < 1 moves the estimate further from what z alone says."""
  a, s = diffusion.alpha_sigma(lam, path)
  eps_hat = (z - a * x0_hat) / s / temperature
  return (z - s * eps_hat) / a


def step(sampler: str, z_t, x0_hat, lam_t, lam_s, noise, path: str = 'vp', x0_prev=None,
         lam_prev=None, second_order=False):
  """z_s. noise: standard normal like z_t (used by `ancestral`). For `dpm++2m`, x0_prev and
  lam_prev are the previous step's estimate and log-SNR, and second_order (a traced bool)
  says whether to use them."""
  if sampler == 'ancestral':
    mean, std = diffusion.posterior(z_t, x0_hat, lam_t, lam_s, path)
    return mean + std * noise
  if sampler == 'ddim':
    return diffusion.ddim_step(z_t, x0_hat, lam_t, lam_s, path)
  if sampler == 'dpm++2m':
    _, s_t = diffusion.alpha_sigma(lam_t, path)
    a_s, s_s = diffusion.alpha_sigma(lam_s, path)
    h = 0.5 * (lam_s - lam_t)
    if x0_prev is not None:
      r = 0.5 * (lam_t - lam_prev) / h
      c = 0.5 / jnp.where(second_order, r, 1.0)
      x0_hat = jnp.where(second_order, (1 + c) * x0_hat - c * x0_prev, x0_hat)
    return (s_s / s_t) * z_t - a_s * jnp.expm1(-h) * x0_hat
  raise ValueError(f'unknown sampler {sampler!r}; expected one of {SAMPLERS}')


def reverse(key, lam_steps, z, sampler: str, path: str, *, hold, denoise, estimate,
            spread=lambda z: z, record=None):
  """The reverse process from z at lam_steps[0] (the noisy end) through every log-SNR of
  lam_steps, one jitted `lax.scan` step per pair, then the denoiser once more at the clean end.

  hold(z, lam, key): z with the known positions held; denoise(z, lam, fed) -> (outs, fed'):
  the denoiser's raw outputs (e.g. one per guidance branch) and the estimate fed back at the
  next step (self-conditioning; zeros at the first); estimate(z, lam, outs): the x0 the update
  uses; spread: a sharding constraint on z; record(outs): what each step returns (a
  trajectory), None for nothing. Returns (outs at the clean end, the per-step records)."""
  S = lam_steps.shape[0] - 1
  keys = jax.random.split(key, S + 1)

  def one(carry, xs):
    z, fed, x0_last, lam_last = carry
    lam_t, lam_s, k, i = xs
    k_noise, k_hold = jax.random.split(k)
    z = hold(z, lam_t, k_hold)
    outs, fed = denoise(z, lam_t, fed)
    x0_hat = estimate(z, lam_t, outs)
    z = step(sampler, z, x0_hat, lam_t, lam_s, jax.random.normal(k_noise, z.shape), path,
             x0_prev=x0_last, lam_prev=lam_last, second_order=(i > 0) & (i < S - 1))
    return (spread(z), fed, x0_hat, lam_t), (record(outs) if record else None)

  zeros = jnp.zeros_like(z)
  (z, fed, _, _), steps = jax.lax.scan(
      one, (z, zeros, zeros, lam_steps[0]), (lam_steps[:-1], lam_steps[1:], keys[:S],
                                             jnp.arange(S)))
  outs, _ = denoise(hold(z, lam_steps[-1], keys[S]), lam_steps[-1], fed)
  return outs, steps
