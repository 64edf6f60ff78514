"""The reverse-step rules (`dlm.samplers`) on a toy whose exact denoiser is known: 9 sequences
(V=3 tokens, L=2, d=4) with probabilities q, embeddings of radius sqrt(d). With E[x0 | z] in
hand every sampler must reproduce q (a chi-square test that a wrong denoiser fails), the
second-order solver must beat DDIM at few steps, and the single-step rules must match their
closed forms on both paths."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dlm import diffusion, samplers

V, L, D = 3, 2, 4
LAM_LO, LAM_HI = -10.0, 8.0
P_MIN = 1e-3  # goodness-of-fit threshold on the p-value


def _toy(seed: int = 0):
  """(E (V, D), seqs (9, L), q (9,)): the construction of tests/test_bound.py."""
  rng = np.random.default_rng(seed)
  E = rng.normal(size=(V, D))
  E = E / np.linalg.norm(E, axis=1, keepdims=True) * np.sqrt(D)
  seqs = np.array(list(itertools.product(range(V), repeat=L)))
  q = rng.dirichlet(np.ones(len(seqs)))
  return jnp.asarray(E, jnp.float32), seqs, q


def _exact_x0(E, seqs, q, path):
  """x0_hat(z (B, L, D), lam ()) = E[x0 | z_lam = z] under prior q over the sequences."""
  X = E[seqs]                                   # (9, L, D)
  log_q = jnp.log(jnp.asarray(q, jnp.float32))

  def x0_hat(z, lam):
    a, s = diffusion.alpha_sigma(lam, path)
    ll = -jnp.sum(jnp.square(z[:, None] - a * X[None]), (2, 3)) / (2 * s * s)
    w = jax.nn.softmax(log_q + ll, -1)          # (B, 9)
    return jnp.einsum('bs,sld->bld', w, X)
  return x0_hat


@functools.partial(jax.jit, static_argnames=('x0_hat', 'sampler', 'path'))
def _reverse(x0_hat, sampler, path, z_T, lam_steps, key):
  """z at lam_steps[-1] from z_T at lam_steps[0], as `dlm.sampling.sample_tokens` runs it."""
  S = lam_steps.shape[0] - 1

  def step(carry, xs):
    z, x0_last, lam_last = carry
    lam_t, lam_s, k, i = xs
    x0 = x0_hat(z, lam_t)
    z = samplers.step(sampler, z, x0, lam_t, lam_s, jax.random.normal(k, z.shape), path,
                      x0_prev=x0_last, lam_prev=lam_last, second_order=(i > 0) & (i < S - 1))
    return (z, x0, lam_t), None

  (z, _, _), _ = jax.lax.scan(step, (z_T, jnp.zeros_like(z_T), lam_steps[0]),
                              (lam_steps[:-1], lam_steps[1:], jax.random.split(key, S),
                               jnp.arange(S)))
  return z


def _prior_noise(key, n, path):
  """z at LAM_LO: N(0, sigma^2) (alpha there is 7e-3, so the signal is negligible)."""
  _, s = diffusion.alpha_sigma(jnp.float32(LAM_LO), path)
  return s * jax.random.normal(key, (n, L, D))


def _decode(z, E):
  """Nearest embedding per position (equal norms: the largest inner product)."""
  return np.asarray(jnp.argmax(jnp.einsum('bld,vd->blv', z, E), -1))


def _sample_counts(x0_hat, sampler, path, E, n=4000, steps=200, seed=0):
  k_init, k_steps = jax.random.split(jax.random.key(seed))
  z = _reverse(x0_hat, sampler, path, _prior_noise(k_init, n, path),
               jnp.linspace(LAM_LO, LAM_HI, steps + 1), k_steps)
  tokens = _decode(z, E)
  return np.bincount(tokens[:, 0] * V + tokens[:, 1], minlength=V ** L)


@pytest.mark.parametrize('path', diffusion.PATHS)
@pytest.mark.parametrize('sampler', samplers.SAMPLERS)
def test_sampler_with_the_exact_denoiser_reproduces_the_data_distribution(sampler, path):
  E, seqs, q = _toy()
  counts = _sample_counts(_exact_x0(E, seqs, q, path), sampler, path, E)
  chi2, p = stats.chisquare(counts, counts.sum() * q)
  assert p > P_MIN, (sampler, path, chi2, p, counts, np.round(counts.sum() * q))


@pytest.mark.parametrize('sampler', ('ancestral', 'ddim'))
def test_goodness_of_fit_fails_for_a_denoiser_that_ignores_the_data_distribution(sampler):
  """The negative control: a denoiser whose prior is uniform over the 9 sequences."""
  E, seqs, q = _toy()
  wrong = _exact_x0(E, seqs, np.full(len(seqs), 1.0 / len(seqs)), 'vp')
  counts = _sample_counts(wrong, sampler, 'vp', E)
  chi2, p = stats.chisquare(counts, counts.sum() * q)
  assert p < 1e-12 and chi2 > 10 * stats.chi2.ppf(1 - P_MIN, V ** L - 1), (chi2, p)


@pytest.mark.parametrize('path', diffusion.PATHS)
def test_dpm_solver_2m_at_few_steps_is_closer_to_the_ode_solution_than_ddim(path):
  E, seqs, q = _toy()
  x0_hat = _exact_x0(E, seqs, q, path)
  z_T = _prior_noise(jax.random.key(1), 512, path)
  key = jax.random.key(2)  # unused by the deterministic samplers
  grid = lambda n: jnp.linspace(LAM_LO, LAM_HI, n + 1)
  reference = _reverse(x0_hat, 'ddim', path, z_T, grid(1000), key)
  err = {s: float(jnp.mean(jnp.sum(jnp.square(_reverse(x0_hat, s, path, z_T, grid(8), key)
                                               - reference), (1, 2))))
         for s in ('ddim', 'dpm++2m')}
  assert err['dpm++2m'] < 0.5 * err['ddim'], err


@pytest.mark.parametrize('path', diffusion.PATHS)
@pytest.mark.parametrize('lam_t,lam_s', [(-6.0, -5.0), (-2.0, 4.0), (1.0, 1.5)])
def test_ancestral_step_with_the_true_x0_keeps_the_forward_marginal(path, lam_t, lam_s):
  """z_t ~ q(z_t | x) stepped with x0_hat = x gives z_s ~ N(alpha_s x, sigma_s^2), with the
  forward process's covariance Cov(z_t, z_s) = (alpha_t / alpha_s) sigma_s^2."""
  n = 50_000
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, L, D)), jnp.float32)
  k_eps, k_step = jax.random.split(jax.random.key(0))
  lam_t, lam_s = jnp.float32(lam_t), jnp.float32(lam_s)
  a_t, s_t = diffusion.alpha_sigma(lam_t, path)
  a_s, s_s = diffusion.alpha_sigma(lam_s, path)
  z_t = a_t * x + s_t * jax.random.normal(k_eps, (n, L, D))
  z_s = samplers.step('ancestral', z_t, jnp.broadcast_to(x, z_t.shape), lam_t, lam_s,
                      jax.random.normal(k_step, z_t.shape), path)
  r = np.asarray(z_s - a_s * x).reshape(n, -1)
  rt = np.asarray(z_t - a_t * x).reshape(n, -1)
  s_s, s_t, a_t, a_s = float(s_s), float(s_t), float(a_t), float(a_s)
  np.testing.assert_allclose(r.mean(0), 0.0, atol=5 * s_s / np.sqrt(n))
  np.testing.assert_allclose(r.var(0), s_s ** 2, rtol=5 * np.sqrt(2 / n))
  np.testing.assert_allclose((r * rt).mean(0), a_t / a_s * s_s ** 2,
                             atol=5 * s_s * s_t / np.sqrt(n))


@pytest.mark.parametrize('path', diffusion.PATHS)
def test_score_temperature_one_is_the_identity(path):
  k1, k2 = jax.random.split(jax.random.key(0))
  z, x0 = jax.random.normal(k1, (4, L, D)), jax.random.normal(k2, (4, L, D))
  np.testing.assert_allclose(samplers.score_tempered(z, x0, jnp.float32(0.5), 1.0, path), x0,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('path', diffusion.PATHS)
def test_score_temperature_below_one_moves_the_estimate_away_from_what_z_alone_says(path):
  """x0_T - z / alpha = (x0 - z / alpha) / T: the estimate is pushed away from z / alpha."""
  k1, k2 = jax.random.split(jax.random.key(0))
  z, x0 = jax.random.normal(k1, (4, L, D)), jax.random.normal(k2, (4, L, D))
  lam, T = jnp.float32(0.5), 0.5
  a, _ = diffusion.alpha_sigma(lam, path)
  tempered = samplers.score_tempered(z, x0, lam, T, path)
  np.testing.assert_allclose(tempered - z / a, (x0 - z / a) / T, rtol=1e-4, atol=1e-4)
  assert float(jnp.linalg.norm(tempered - z / a)) > 1.9 * float(jnp.linalg.norm(x0 - z / a))


def test_flow_path_q_sample_interpolates_data_and_noise_linearly():
  k1, k2 = jax.random.split(jax.random.key(0))
  x0, eps = jax.random.normal(k1, (3, L, D)), jax.random.normal(k2, (3, L, D))
  lam = jnp.array([-4.0, 0.0, 3.0])
  t = jax.nn.sigmoid(-lam / 2)[:, None, None]
  np.testing.assert_allclose(diffusion.q_sample(x0, lam, eps, 'flow'), (1 - t) * x0 + t * eps,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(t[1], 0.5)


def test_flow_path_ddim_step_is_the_euler_step_of_the_velocity_ode():
  """dz/dt = eps_hat - x0_hat with t = sigma = sigmoid(-lam / 2)."""
  k1, k2 = jax.random.split(jax.random.key(0))
  z_t, x0_hat = jax.random.normal(k1, (3, L, D)), jax.random.normal(k2, (3, L, D))
  lam_t, lam_s = jnp.float32(-1.0), jnp.float32(0.7)
  t, s = jax.nn.sigmoid(-lam_t / 2), jax.nn.sigmoid(-lam_s / 2)
  eps_hat = (z_t - (1 - t) * x0_hat) / t
  euler = z_t + (s - t) * (eps_hat - x0_hat)
  np.testing.assert_allclose(diffusion.ddim_step(z_t, x0_hat, lam_t, lam_s, 'flow'), euler,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(samplers.step('ddim', z_t, x0_hat, lam_t, lam_s, None, 'flow'),
                             euler, rtol=1e-5, atol=1e-5)
