"""The importance-weighted continuous-time bound (`families.gaussian.bound_terms` with a proposal q):
on a toy whose exact NLL and exact denoiser are known (9 sequences, V=3, L=2, d=4, as in
tests/test_bound.py), any q > 0 gives the same bound in expectation, above H(q_data), and a q
that follows the integrand cuts its Monte-Carlo error against uniform draws over the range."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from dlm import diffusion, noise
from dlm.families import gaussian

V, L, D = 3, 2, 4
EDGES = jnp.linspace(-12.0, 10.0, 65)
BATCH, SAMPLES = 2048, 4
FLOOR = 0.05


def _toy(seed: int = 0):
  rng = np.random.default_rng(seed)
  E = rng.normal(size=(V, D))
  E = jnp.asarray(E / np.linalg.norm(E, axis=1, keepdims=True) * np.sqrt(D), jnp.float32)
  seqs = np.array(list(itertools.product(range(V), repeat=L)))
  q = rng.dirichlet(np.ones(len(seqs)))
  return E, seqs, q, rng


def _exact_denoiser(E, seqs, q, path):
  """logits(z (B, L, D), lam (B,)) of the Bayes-optimal denoiser: log P(x0_l = v | z)."""
  X = E[seqs]
  onehot = jnp.asarray(np.eye(V)[seqs], jnp.float32)  # (9, L, V)
  log_q = jnp.log(jnp.asarray(q, jnp.float32))

  def denoise(z, lam_B):
    a, s = diffusion.alpha_sigma(lam_B, path)
    ll = -jnp.sum(jnp.square(z[:, None] - a[:, None, None, None] * X[None]), (2, 3)) / (
        2 * jnp.square(s)[:, None])
    w = jax.nn.softmax(log_q + ll, -1)               # (B, 9)
    return jnp.log(jnp.einsum('bs,slv->blv', w, onehot) + 1e-30)
  return denoise


def _fitted_proposal(denoise, E, seqs, q, rng, n: int = 1024):
  """q proportional to the integrand 1/2 e^lam E||x0 - x0_hat||^2 at the bin centres
  (estimated from the exact denoiser), mixed with a uniform floor."""
  K = EDGES.shape[0] - 1
  lam = noise.centers(EDGES)
  x0 = jnp.tile(E[seqs[rng.choice(len(seqs), n, p=q)]], (K, 1, 1))
  lam_B = jnp.repeat(lam, n)
  z = diffusion.q_sample(x0, lam_B, jax.random.normal(jax.random.key(123), x0.shape))
  err = jnp.sum(jnp.square(x0 - diffusion.x0_from_logits(denoise(z, lam_B), E)), (1, 2))
  f = np.asarray(0.5 * jnp.exp(lam) * err.reshape(K, n).mean(1), np.float64)
  mass = (1 - FLOOR) * f / f.sum() + FLOOR / K
  return {'cdf': jnp.asarray(np.concatenate([[0.0], np.cumsum(mass)]), jnp.float32),
          'edges': EDGES}


def _uniform_proposal():
  return {'cdf': jnp.linspace(0.0, 1.0, EDGES.shape[0]), 'edges': EDGES}


def _estimate(denoise, E, x, proposal, key, path='vp'):
  """(mean nats per sequence, its standard error over sequences, Monte-Carlo std per sequence
  from the two replicas, the raw terms)."""
  t = jax.device_get(gaussian.bound_terms(denoise, E, x, key, SAMPLES, proposal, 0, path))
  d = np.asarray(t['diffusion'], np.float64)
  nats = np.asarray(t['recon']) + d.mean(-1) + np.asarray(t['prior'])
  mc = np.sqrt(np.mean(np.square(d[:, 0] - d[:, 1]) / 4))
  return nats.mean(), nats.std(ddof=1) / np.sqrt(len(nats)), mc, t


def _setup():
  E, seqs, q, rng = _toy()
  denoise = _exact_denoiser(E, seqs, q, 'vp')
  x = jnp.asarray(seqs[rng.choice(len(seqs), BATCH, p=q)], jnp.int32)
  H = float(-np.sum(q * np.log(q)))  # nats per sequence
  return E, seqs, q, rng, denoise, x, H


def test_fitted_and_uniform_proposals_give_the_same_bound_above_the_true_nll():
  E, seqs, q, rng, denoise, x, H = _setup()
  good = _estimate(denoise, E, x, _fitted_proposal(denoise, E, seqs, q, rng), jax.random.key(0))
  flat = _estimate(denoise, E, x, _uniform_proposal(), jax.random.key(1))
  (m_g, se_g, _, _), (m_u, se_u, _, _) = good, flat
  assert abs(m_g - m_u) < 3 * np.hypot(se_g, se_u), (m_g, se_g, m_u, se_u)
  for m, se in ((m_g, se_g), (m_u, se_u)):
    assert H - 3 * se <= m <= H + 0.05 + 3 * se, (H, m, se)  # exact denoiser: tight


def test_fitted_proposal_more_than_halves_the_monte_carlo_variance_of_uniform_draws():
  """The replicas' Monte-Carlo variance per sequence, pooled over 16 keys (it is heavy-tailed:
  rare confusions between tokens at high lambda, where q is thin, carry large weights). On this
  toy the fitted q gives about 0.55x the std of uniform draws: the error left is that of the
  noise eps at a given lambda, which no choice of q over lambda removes."""
  E, seqs, q, rng, denoise, x, _ = _setup()
  good = _fitted_proposal(denoise, E, seqs, q, rng)
  mc_var = {name: np.mean([_estimate(denoise, E, x, p, jax.random.key(k))[2] ** 2
                           for k in range(16)])
            for name, p in (('fitted', good), ('uniform', _uniform_proposal()))}
  ratio = np.sqrt(mc_var['fitted'] / mc_var['uniform'])
  assert ratio < 0.7, (ratio, mc_var)


def test_bound_terms_are_the_same_on_the_flow_path():
  """The flow path is the vp path with z rescaled: the exact denoiser's estimates and hence
  the diffusion and reconstruction terms coincide draw for draw (same key)."""
  E, seqs, q, rng, _, x, _ = _setup()
  x = x[:256]
  _, _, _, vp = _estimate(_exact_denoiser(E, seqs, q, 'vp'), E, x, _uniform_proposal(),
                          jax.random.key(0), 'vp')
  _, _, _, flow = _estimate(_exact_denoiser(E, seqs, q, 'flow'), E, x, _uniform_proposal(),
                            jax.random.key(0), 'flow')
  np.testing.assert_allclose(flow['lam'], vp['lam'])
  np.testing.assert_allclose(flow['diffusion'], vp['diffusion'], rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(flow['recon'], vp['recon'], atol=1e-4)
  np.testing.assert_allclose(flow['prior'], vp['prior'], atol=1e-3)
  assert np.mean(vp['diffusion']) > 0.5  # the terms compared are not all zero
