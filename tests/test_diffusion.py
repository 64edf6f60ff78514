"""The diffusion math: schedules, the forward process, the posterior, conversions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dlm import diffusion


@pytest.mark.parametrize('schedule', diffusion.SCHEDULES)
def test_schedule_is_finite_and_decreasing_from_clean_to_noise(schedule):
  lam = np.asarray(diffusion.logsnr(jnp.linspace(0, 1, 1001), schedule))
  assert np.isfinite(lam).all()
  assert (np.diff(lam) <= 1e-6).all()
  assert lam[0] > 4 and lam[-1] <= -10
  assert lam.max() <= diffusion.LOGSNR_MAX and lam.min() >= diffusion.LOGSNR_MIN


def test_cosine_matches_its_alpha_bar_definition():
  t = jnp.array([0.1, 0.5, 0.9])
  abar = np.cos(0.5 * np.pi * (np.asarray(t) + 0.008) / 1.008) ** 2
  a, _ = diffusion.alpha_sigma(diffusion.logsnr(t, 'cosine'))
  np.testing.assert_allclose(np.asarray(a) ** 2, abar, rtol=1e-4)


def test_linear_matches_the_discrete_ddpm_product_of_betas():
  T = 1000
  betas = np.linspace(1e-4, 0.02, T)
  abar_discrete = np.cumprod(1 - betas)
  a, _ = diffusion.alpha_sigma(diffusion.logsnr(jnp.array([0.25, 0.5]), 'linear'))
  np.testing.assert_allclose(np.asarray(a) ** 2, abar_discrete[[249, 499]], rtol=0.02)


@pytest.mark.parametrize('T', [10, 100, 1000, 4000])
def test_linear_schedule_reaches_pure_noise_for_every_grid(T):
  """The end points hold whatever diffusion_steps is (they used to move with T: -0.55 at 100)."""
  dc = tiny_config(**{'diffusion.noise_schedule': 'linear', 'diffusion.diffusion_steps': T}
                   ).diffusion
  t = np.asarray(diffusion.grid_times(jax.random.key(0), 4096, T))
  lam = np.asarray(diffusion.logsnr(t, dc.noise_schedule))
  assert lam.min() < -9.9 and lam.max() > 9.0
  assert float(diffusion.logsnr(1.0, 'linear')) < -9.9


def test_variance_preserving():
  a, s = diffusion.alpha_sigma(jnp.linspace(-12, 10, 50))
  np.testing.assert_allclose(np.asarray(a ** 2 + s ** 2), 1.0, atol=1e-6)


def test_grid_times_lie_on_the_grid_and_spread_over_it():
  t = np.asarray(diffusion.grid_times(jax.random.key(0), 64, 100))
  np.testing.assert_allclose(t * 100, np.round(t * 100), atol=1e-4)
  assert t.min() >= 0 and t.max() <= 1
  assert np.histogram(t, bins=4, range=(0, 1))[0].min() >= 14  # stratified: ~16 per quarter


def test_stratified_draws_are_in_random_row_order():
  """The self-conditioned first half of a batch must not be its noisiest half."""
  u = np.asarray(diffusion.stratified(jax.random.key(3), 64))
  assert np.histogram(u, bins=4, range=(0, 1))[0].min() == 16
  first_half_means = [np.asarray(diffusion.stratified(jax.random.key(k), 64))[:32].mean()
                      for k in range(20)]
  assert 0.4 < np.mean(first_half_means) < 0.6 and np.std(first_half_means) > 0.01


def test_posterior_keeps_the_forward_marginal_for_any_stride():
  """z_t ~ q(z_t|x), z_s ~ q(z_s|z_t,x)  =>  z_s ~ q(z_s|x): mean alpha_s x, variance sigma_s^2."""
  x = jnp.ones((1, 1, 1)) * 0.7
  lam_t, lam_s = jnp.float32(-1.0), jnp.float32(2.5)
  a_t, s_t = diffusion.alpha_sigma(lam_t)
  a_s, s_s = diffusion.alpha_sigma(lam_s)
  z_t = a_t * x + s_t * jax.random.normal(jax.random.key(0), (200000, 1, 1))
  mean, std = diffusion.posterior(z_t, x, lam_t, lam_s)
  z_s = mean + std * jax.random.normal(jax.random.key(1), z_t.shape)
  assert abs(float(z_s.mean()) - float(a_s * 0.7)) < 5e-3
  assert abs(float(z_s.std()) - float(s_s)) < 5e-3


def test_posterior_at_stride_one_is_the_ddpm_beta_formula():
  T = 1000
  betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
  abar = np.cumprod(1 - betas)
  i = 500  # step i -> i-1
  lam = lambda ab: jnp.float32(np.log(ab / (1 - ab)))
  z, x = jnp.float32(0.3), jnp.float32(-1.2)
  mean, std = diffusion.posterior(z, x, lam(abar[i]), lam(abar[i - 1]))
  coef_x = np.sqrt(abar[i - 1]) * betas[i] / (1 - abar[i])
  coef_z = np.sqrt(1 - betas[i]) * (1 - abar[i - 1]) / (1 - abar[i])
  var = betas[i] * (1 - abar[i - 1]) / (1 - abar[i])
  np.testing.assert_allclose(float(mean), coef_z * 0.3 + coef_x * -1.2, rtol=1e-3)
  np.testing.assert_allclose(float(std) ** 2, var, rtol=1e-2)


def test_prior_logits_are_the_exact_gaussian_posterior_over_tokens():
  E = jax.random.normal(jax.random.key(0), (7, 4))
  z = jax.random.normal(jax.random.key(1), (2, 3, 4))
  lam = jnp.array([0.5, -1.0])
  logits = diffusion.prior_logits(z, lam, E)
  a, s = diffusion.alpha_sigma(lam)
  direct = -0.5 * jnp.sum((z[:, :, None, :] - a[:, None, None, None] * E) ** 2, -1) / (
      s[:, None, None] ** 2)
  np.testing.assert_allclose(jax.nn.log_softmax(logits), jax.nn.log_softmax(direct), atol=1e-4)


def test_eps_and_v_conversions_recover_the_truth_from_the_true_x0():
  x0 = jax.random.normal(jax.random.key(0), (2, 3, 4))
  eps = jax.random.normal(jax.random.key(1), (2, 3, 4))
  lam = jnp.array([1.0, -2.0])
  z = diffusion.q_sample(x0, lam, eps)
  for name in diffusion.PARAMETERIZATIONS:
    target, pred = diffusion.mse_target_and_pred(name, x0, eps, z, x0, lam)
    np.testing.assert_allclose(target, pred, atol=1e-4)


def test_ddim_step_is_deterministic_and_exact_for_the_true_x0():
  x0 = jnp.ones((1, 2, 3))
  eps = jax.random.normal(jax.random.key(0), x0.shape)
  lam_t, lam_s = jnp.float32(-2.0), jnp.float32(1.0)
  z_t = diffusion.q_sample(x0, lam_t[None], eps)
  a_s, s_s = diffusion.alpha_sigma(lam_s)
  np.testing.assert_allclose(diffusion.ddim_step(z_t, x0, lam_t, lam_s), a_s * x0 + s_s * eps,
                             atol=1e-5)


def test_prior_kl_is_small_at_the_end_of_the_schedule():
  x0 = jnp.ones((1, 1, 64))
  assert float(diffusion.prior_kl(x0).sum()) < 1e-3
