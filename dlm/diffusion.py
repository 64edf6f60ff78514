"""Gaussian diffusion in embedding space, as pure functions of log-SNR.

Everything is written in terms of the log signal-to-noise ratio lambda = log(alpha^2 / sigma^2)
of a process z = alpha x + sigma eps, following Kingma et al. 2021 ("Variational Diffusion
Models"). Two paths share every formula below; they differ only in how alpha and sigma split
a given lambda:
- `vp` (variance preserving): alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda);
- `flow` (rectified flow, Liu et al. 2022; Lipman et al. 2022): z = (1 - t) x + t eps, so
  alpha = 1 - t = sigmoid(lambda / 2) and sigma = t = sigmoid(-lambda / 2). It is the VP path
  with z rescaled by sqrt(alpha^2 + sigma^2); its Euler step is the DDIM step below, and a
  cross-entropy denoiser gives its exact velocity (the posterior mean of x).
Working in lambda keeps the numerics in log space (expm1, log-sigmoid) and makes the
continuous-time bound independent of the schedule's shape except at its two ends.

Time t runs from 0 (clean) to 1 (pure noise). A schedule maps t to lambda; how often training
visits each lambda is the noise allocation's business (`dlm.noise`).
"""

import math

import jax
import jax.numpy as jnp

from dlm import streams

SCHEDULES = ('cosine', 'linear', 'sqrt', 'flow')
PARAMETERIZATIONS = ('x0', 'eps', 'v')
PATHS = ('vp', 'flow')

# Default ends of the log-SNR range (config diffusion.logsnr_min / logsnr_max). At lambda = 10
# the noise std is e^-5 ~ 0.007 against embeddings of per-coordinate scale 1, so the token is
# unambiguous; at -12 the signal variance is 6e-6, which makes the prior term of the bound
# ~1e-4 nats per token for diffusion_dim = 64.
LOGSNR_MAX = 10.0
LOGSNR_MIN = -12.0


def logsnr(t, schedule: str):
  """lambda(t) for t in [0, 1], clipped to [LOGSNR_MIN, LOGSNR_MAX]."""
  t = jnp.asarray(t, jnp.float32)
  if schedule == 'cosine':
    # Nichol & Dhariwal 2021: alpha_bar = cos^2(pi/2 (t+s)/(1+s)), so lambda = -2 log tan(.).
    # The angle stops short of pi/2, where float32 tan turns negative (and the log NaN).
    s = 0.008
    angle = jnp.clip(0.5 * math.pi * (t + s) / (1 + s), 1e-6, 0.5 * math.pi - 1e-4)
    lam = -2.0 * jnp.log(jnp.tan(angle))
  elif schedule == 'linear':
    # Ho et al. 2020: beta linear from 1e-4 to 0.02 over 1000 steps, in continuous time. The
    # betas are those of T = 1000 whatever the grid, so the end point (lambda ~ -10, pure
    # noise) does not move with diffusion_steps (scaling T into it left T = 100 at -0.55).
    b0, b1 = 0.1, 20.0
    log_abar = -(b0 * t + 0.5 * (b1 - b0) * t * t)
    lam = log_abar - jnp.log(-jnp.expm1(log_abar))
  elif schedule == 'sqrt':
    # Li et al. 2022 (Diffusion-LM): alpha_bar = 1 - sqrt(t + s); noise rises fast near t = 0.
    abar = jnp.maximum(1.0 - jnp.sqrt(t + 1e-4), 1e-8)  # negative past t ~ 1: clamp
    lam = jnp.log(abar) - jnp.log1p(-abar)
  elif schedule == 'flow':
    # Rectified flow with uniform t: alpha / sigma = (1 - t) / t.
    tc = jnp.clip(t, 1e-6, 1 - 1e-6)
    lam = 2.0 * (jnp.log1p(-tc) - jnp.log(tc))
  else:
    raise ValueError(f'unknown noise schedule {schedule!r}; expected one of {SCHEDULES}')
  return jnp.clip(lam, LOGSNR_MIN, LOGSNR_MAX)


def alpha_sigma(lam, path: str = 'vp'):
  """(alpha, sigma) of the path at log-SNR lam."""
  if path == 'vp':
    return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))
  if path == 'flow':
    return jax.nn.sigmoid(0.5 * lam), jax.nn.sigmoid(-0.5 * lam)
  raise ValueError(f'unknown diffusion path {path!r}; expected one of {PATHS}')


def grid_times(key, batch, diffusion_steps: int):
  """Training times on the T-step grid, stratified over the batch (low-discrepancy sampling),
  in random row order; batch as in `stratified`.

  One uniform offset shared by the batch, spaced 1/batch apart, covers the grid evenly in
  every step and cuts the variance of the loss estimate (Kingma et al. 2021, appendix). The
  permutation keeps any fixed subset of rows (the self-conditioned half) a random sample of
  noise levels rather than the noisiest ones.
  """
  return jnp.floor(stratified(key, batch) * (diffusion_steps + 1)) / diffusion_steps


def stratified(key, batch):
  """batch points in [0, 1): one random offset, spaced 1/batch apart, randomly permuted.
  batch: a row count, or the `streams.Rows` of a step a device draws (`streams.stratified`)."""
  return streams.stratified(key, streams.whole(batch) if isinstance(batch, int) else batch)


def lattice_draws(key, batch: int, num_samples: int):
  """(batch, 2 * (num_samples // 2)) points in [0, 1): two randomly shifted evenly spaced
  lattices per row (randomised quasi-Monte Carlo), replica r in columns r*h .. r*h + h - 1."""
  h = num_samples // 2
  shift = jax.random.uniform(key, (batch, 2, 1))
  return ((shift + jnp.arange(h) / h) % 1.0).reshape(batch, 2 * h)


def q_sample(x0, lam, eps, path: str = 'vp'):
  """z ~ q(z_t | x0): broadcast lam over the trailing (length, dim) axes."""
  a, s = alpha_sigma(lam[:, None, None], path)
  return a * x0 + s * eps


def prior_logits(z, lam, embed, path: str = 'vp'):
  """log N(z | alpha e_v, sigma^2) over tokens v, up to a constant: the exact posterior over each
  position's token if tokens were independent and uniform.

  The denoiser adds its own logits to these, so the network only learns what the independent
  posterior misses. At initialisation (zero head) the model is exactly "i.i.d. uniform tokens",
  whose bound is log2(V) bits per token: a sanity check the tests rely on.
  """
  a, s = alpha_sigma(lam[:, None, None], path)
  snr_ = jnp.exp(lam)[:, None, None]
  ze = jnp.einsum('bld,vd->blv', z, embed) * (a / (s * s))
  return ze - 0.5 * snr_ * jnp.sum(embed * embed, -1)


def x0_from_logits(logits, embed, temperature: float = 1.0):
  """Score interpolation (Dieleman et al. 2022, CDCD): x0_hat = softmax(logits / T) @ E."""
  probs = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  return probs @ embed


def eps_from_x0(z, x0, lam, path: str = 'vp'):
  a, s = alpha_sigma(lam[:, None, None], path)
  return (z - a * x0) / s


def velocity(x0, eps, lam, path: str = 'vp'):
  """The path's velocity: alpha eps - sigma x0 for vp (Salimans & Ho 2022's v, d z / d angle),
  eps - x0 for flow (d z / d t)."""
  if path == 'flow':
    return eps - x0
  a, s = alpha_sigma(lam[:, None, None], path)
  return a * eps - s * x0


def mse_target_and_pred(parameterization: str, x0, eps, z, x0_hat, lam, path: str = 'vp'):
  """The (target, prediction) pair in which an MSE loss is measured: eps, x0 or v."""
  if parameterization == 'x0':
    return x0, x0_hat
  eps_hat = eps_from_x0(z, x0_hat, lam, path)
  if parameterization == 'eps':
    return eps, eps_hat
  if parameterization == 'v':
    return velocity(x0, eps, lam, path), velocity(x0_hat, eps_hat, lam, path)
  raise ValueError(f'unknown parameterization {parameterization!r}; expected {PARAMETERIZATIONS}')


def posterior(z_t, x0_hat, lam_t, lam_s, path: str = 'vp'):
  """Mean and std of q(z_s | z_t, x0 = x0_hat) for s earlier (less noisy) than t.

  Valid for any pair of log-SNRs, so a sampler may place its steps anywhere; the seed's
  sampler reused single-step betas on a strided grid, which is only right for stride 1.
  In log-SNR form (Kingma et al. 2021, eq. 32), for any path: with r = exp(lam_t - lam_s) <= 1,
  mean = r (alpha_s/alpha_t) z_t + (1 - r) alpha_s x0,  var = (1 - r) sigma_s^2.
  """
  a_t, _ = alpha_sigma(lam_t, path)
  a_s, s_s = alpha_sigma(lam_s, path)
  one_minus_r = -jnp.expm1(lam_t - lam_s)
  mean = (1 - one_minus_r) * (a_s / a_t) * z_t + one_minus_r * a_s * x0_hat
  return mean, jnp.sqrt(one_minus_r) * s_s


def ddim_step(z_t, x0_hat, lam_t, lam_s, path: str = 'vp'):
  """Deterministic DDIM update (Song et al. 2021): keep the predicted noise, move x0 forward.
  On the flow path this is the Euler step of the probability-flow ODE."""
  a_t, s_t = alpha_sigma(lam_t, path)
  a_s, s_s = alpha_sigma(lam_s, path)
  eps_hat = (z_t - a_t * x0_hat) / s_t
  return a_s * x0_hat + s_s * eps_hat


def prior_kl(x0, lam_min: float = LOGSNR_MIN, path: str = 'vp'):
  """KL(q(z_1 | x0) || N(0, I)) in nats, summed over the embedding axis: shape (B, L)."""
  a, s = alpha_sigma(jnp.float32(lam_min), path)
  a2, s2 = a * a, s * s
  return 0.5 * jnp.sum(s2 + a2 * x0 * x0 - 1.0 - jnp.log(s2), axis=-1)
