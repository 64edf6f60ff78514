"""Gaussian diffusion in embedding space, as pure functions of log-SNR.

Everything is written in terms of the log signal-to-noise ratio lambda = log(alpha^2 / sigma^2)
of a variance-preserving process z_t = alpha_t x + sigma_t eps (alpha^2 = sigmoid(lambda),
sigma^2 = sigmoid(-lambda)), following Kingma et al. 2021 ("Variational Diffusion Models").
Working in lambda keeps the numerics in log space (item 8 of DESIGN.md) and makes the
continuous-time bound independent of the schedule's shape except at its two ends.

Time t runs from 0 (clean) to 1 (pure noise). A schedule maps t to lambda; training draws t on
the grid {0, 1/T, ..., 1} of the config's `diffusion_steps` T so the strided sampler only ever
asks the model about times it was trained on.
"""

import math

import jax
import jax.numpy as jnp

SCHEDULES = ('cosine', 'linear', 'sqrt')
PARAMETERIZATIONS = ('x0', 'eps', 'v')

# Ends of the log-SNR range. At lambda = 10 the noise std is e^-5 ~ 0.007 against embeddings
# of per-coordinate scale 1, so the token is unambiguous; at -12 the signal variance is 6e-6,
# which makes the prior term of the bound ~1e-4 nats per token for diffusion_dim = 64.
LOGSNR_MAX = 10.0
LOGSNR_MIN = -12.0


def logsnr(t, schedule: str, diffusion_steps: int = 1000):
  """lambda(t) for t in [0, 1], clipped to [LOGSNR_MIN, LOGSNR_MAX]."""
  t = jnp.asarray(t, jnp.float32)
  if schedule == 'cosine':
    # Nichol & Dhariwal 2021: alpha_bar = cos^2(pi/2 (t+s)/(1+s)), so lambda = -2 log tan(.).
    # The angle stops short of pi/2, where float32 tan turns negative (and the log NaN).
    s = 0.008
    angle = jnp.clip(0.5 * math.pi * (t + s) / (1 + s), 1e-6, 0.5 * math.pi - 1e-4)
    lam = -2.0 * jnp.log(jnp.tan(angle))
  elif schedule == 'linear':
    # Ho et al. 2020: beta linear from 1e-4 to 0.02 over T steps; continuous-time log alpha_bar.
    b0, b1 = 1e-4, 0.02
    log_abar = -diffusion_steps * (b0 * t + 0.5 * (b1 - b0) * t * t)
    lam = log_abar - jnp.log(-jnp.expm1(log_abar))
  elif schedule == 'sqrt':
    # Li et al. 2022 (Diffusion-LM): alpha_bar = 1 - sqrt(t + s); noise rises fast near t = 0.
    abar = jnp.maximum(1.0 - jnp.sqrt(t + 1e-4), 1e-8)  # negative past t ~ 1: clamp
    lam = jnp.log(abar) - jnp.log1p(-abar)
  else:
    raise ValueError(f'unknown noise schedule {schedule!r}; expected one of {SCHEDULES}')
  return jnp.clip(lam, LOGSNR_MIN, LOGSNR_MAX)


def alpha_sigma(lam):
  """(alpha, sigma) of a variance-preserving process at log-SNR lam."""
  return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))


def grid_times(key, batch: int, diffusion_steps: int):
  """Training times on the T-step grid, stratified over the batch (low-discrepancy sampling).

  One uniform offset shared by the batch, spaced 1/batch apart, covers the grid evenly in
  every step and cuts the variance of the loss estimate (Kingma et al. 2021, appendix).
  """
  u = (jax.random.uniform(key, ()) + jnp.arange(batch) / batch) % 1.0
  return jnp.floor(u * (diffusion_steps + 1)) / diffusion_steps


def q_sample(x0, lam, eps):
  """z ~ q(z_t | x0): broadcast lam over the trailing (length, dim) axes."""
  a, s = alpha_sigma(lam[:, None, None])
  return a * x0 + s * eps


def prior_logits(z, lam, embed):
  """log N(z | alpha e_v, sigma^2) over tokens v, up to a constant: the exact posterior over each
  position's token if tokens were independent and uniform.

  The denoiser adds its own logits to these, so the network only learns what the independent
  posterior misses. At initialisation (zero head) the model is exactly "i.i.d. uniform tokens",
  whose bound is log2(V) bits per token: a sanity check the tests rely on.
  """
  a, s = alpha_sigma(lam[:, None, None])
  snr_ = jnp.exp(lam)[:, None, None]
  ze = jnp.einsum('bld,vd->blv', z, embed) * (a / (s * s))
  return ze - 0.5 * snr_ * jnp.sum(embed * embed, -1)


def x0_from_logits(logits, embed, temperature: float = 1.0):
  """Score interpolation (Dieleman et al. 2022, CDCD): x0_hat = softmax(logits / T) @ E."""
  probs = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  return probs @ embed


def eps_from_x0(z, x0, lam):
  a, s = alpha_sigma(lam[:, None, None])
  return (z - a * x0) / s


def v_from_x0(z, x0, lam):
  """v = alpha eps - sigma x0 (Salimans & Ho 2022)."""
  a, s = alpha_sigma(lam[:, None, None])
  return a * eps_from_x0(z, x0, lam) - s * x0


def mse_target_and_pred(parameterization: str, x0, eps, z, x0_hat, lam):
  """The (target, prediction) pair in which an MSE loss is measured: eps, x0 or v."""
  if parameterization == 'x0':
    return x0, x0_hat
  a, s = alpha_sigma(lam[:, None, None])
  if parameterization == 'eps':
    return eps, eps_from_x0(z, x0_hat, lam)
  if parameterization == 'v':
    return a * eps - s * x0, v_from_x0(z, x0_hat, lam)
  raise ValueError(f'unknown parameterization {parameterization!r}; expected {PARAMETERIZATIONS}')


def posterior(z_t, x0_hat, lam_t, lam_s):
  """Mean and std of q(z_s | z_t, x0 = x0_hat) for s earlier (less noisy) than t.

  Valid for any pair of times, so a sampler may stride over the training grid; the seed's
  sampler reused single-step betas on a strided grid, which is only right for stride 1.
  In log-SNR form (Kingma et al. 2021, eq. 32): with r = exp(lam_t - lam_s) <= 1,
  mean = r (alpha_s/alpha_t) z_t + (1 - r) alpha_s x0,  var = (1 - r) sigma_s^2.
  """
  a_t, _ = alpha_sigma(lam_t)
  a_s, s_s = alpha_sigma(lam_s)
  one_minus_r = -jnp.expm1(lam_t - lam_s)
  mean = (1 - one_minus_r) * (a_s / a_t) * z_t + one_minus_r * a_s * x0_hat
  return mean, jnp.sqrt(one_minus_r) * s_s


def ddim_step(z_t, x0_hat, lam_t, lam_s):
  """Deterministic DDIM update (Song et al. 2021): keep the predicted noise, move x0 forward."""
  a_t, s_t = alpha_sigma(lam_t)
  a_s, s_s = alpha_sigma(lam_s)
  eps_hat = (z_t - a_t * x0_hat) / s_t
  return a_s * x0_hat + s_s * eps_hat


def prior_kl(x0, lam_min: float = LOGSNR_MIN):
  """KL(q(z_1 | x0) || N(0, I)) in nats, summed over the embedding axis: shape (B, L)."""
  a2, s2 = jax.nn.sigmoid(lam_min), jax.nn.sigmoid(-lam_min)
  return 0.5 * jnp.sum(s2 + a2 * x0 * x0 - 1.0 - jnp.log(s2), axis=-1)
