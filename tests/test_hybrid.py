"""The hybrid family (`dlm.families.hybrid`, CANDI) on an enumerable toy and on the tiny
Transformer.

The toy: 27 sequences (V = 3 tokens, L = 3) with random probabilities p, embeddings of radius
sqrt(d). Its exact denoiser, the posterior marginals p(x_i | noisy corrupted embeddings, clean
tokens) by enumeration, must give a bound just above the exact NLL, reach the Gaussian bound
when every position is corrupted and the masked NELBO when the corrupted embeddings carry no
information, and drive the sampler to p (a chi-square test that a wrong denoiser fails)."""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats, special

from conftest import tiny_config
from dlm import diffusion, noise, sharding
from dlm.families import gaussian
from dlm.families import hybrid
from dlm.model import ModelConfig, Transformer

V, L, D = 3, 3, 4
N_SEQ, DRAWS = 2048, 16
_rng = np.random.default_rng(0)
E = _rng.normal(size=(V, D))
E = jnp.asarray(E / np.linalg.norm(E, axis=1, keepdims=True) * np.sqrt(D), jnp.float32)
SEQS = np.array(list(itertools.product(range(V), repeat=L)))          # (27, L)
P = _rng.dirichlet(np.ones(len(SEQS)))
_idx = _rng.choice(len(SEQS), N_SEQ, p=P)
X, NLL = jnp.asarray(SEQS[_idx], jnp.int32), -np.log(P[_idx])        # data and its exact NLL
Q = noise.proposal(noise.init_state(tiny_config().diffusion, D, V))
COUPLED = hybrid.coupling(Q)                                          # lam(t) = F_q^-1(1 - t)
ALL_CORRUPTED = lambda t: (jnp.ones_like(t), jnp.zeros_like(t))       # m(t) = 1
NO_SIGNAL = lambda t: (jnp.full_like(t, -40.0), jnp.zeros_like(t))    # lam -> -inf


def exact_denoiser(p):
  """denoise(z, lam_B, clean_BL) -> log p(x_i | z at the corrupted positions, clean tokens)
  under the joint p over SEQS: Gaussian likelihoods at the corrupted positions, agreement with
  the token whose embedding a clean position carries."""
  log_p = jnp.log(jnp.asarray(p, jnp.float32))
  onehot = jnp.asarray(np.eye(V)[SEQS], jnp.float32)

  def denoise(z_BLE, lam_B, clean_BL):
    a, s = diffusion.alpha_sigma(lam_B[:, None, None])
    ll_BSL = -jnp.sum(jnp.square(z_BLE[:, None] - a[..., None] * E[SEQS][None]), -1) / (2 * s * s)
    token_BL = jnp.argmin(jnp.sum(jnp.square(z_BLE[:, :, None] - E), -1), -1)
    agree_BSL = jnp.where(SEQS[None] == token_BL[:, None], 0.0, -1e30)
    w_BS = jax.nn.softmax(log_p + jnp.sum(jnp.where(clean_BL[:, None], agree_BSL, ll_BSL), -1))
    return jnp.log(jnp.einsum('bs,slv->blv', w_BS, onehot) + 1e-30)
  return denoise


def independent(p):
  """The product of p's marginals: a joint whose exact denoiser ignores the correlations."""
  marginals = np.einsum('s,slv->lv', p, np.eye(V)[SEQS])
  return np.prod(marginals[np.arange(L), SEQS], -1)


@functools.partial(jax.jit, static_argnames=('lam_of', 'mask_rate', 'num_steps'))
def _toy_bound(p, key, lam_of=COUPLED, mask_rate=hybrid.log_linear, num_steps=0):
  return hybrid.bound_terms(exact_denoiser(p), E, X, key, DRAWS, lam_of, num_steps, mask_rate)


def hybrid_nats(p, key, **kw):
  """Per-sequence bound (nats) of the exact denoiser of the joint p on the data X."""
  t = _toy_bound(jnp.asarray(p, jnp.float32), key, **kw)
  return np.asarray(t['replicas'].mean(-1) + t['residual'] + t['prior']), t


def mean_se(x):
  return float(np.mean(x)), float(np.std(x) / np.sqrt(len(x)))


def test_exact_denoiser_bound_is_just_above_the_nll_and_a_worse_denoiser_above_it():
  exact, _ = hybrid_nats(P, jax.random.key(0))
  gap, se = mean_se(exact - NLL)
  assert -3 * se <= gap <= 0.1 + 3 * se, (gap, se)
  steps, _ = hybrid_nats(P, jax.random.key(0), num_steps=50)
  assert mean_se(steps - NLL)[0] >= -3 * se
  # The same draws (the process does not depend on the denoiser) for a denoiser that ignores
  # the correlations between positions: its bound is higher.
  worse, _ = hybrid_nats(independent(P), jax.random.key(0))
  excess, se_excess = mean_se(worse - exact)
  assert excess > 0.1 and excess > 4 * se_excess, (excess, se_excess)


def test_with_every_position_corrupted_it_is_the_gaussian_bound():
  ours, t = hybrid_nats(P, jax.random.key(1), mask_rate=ALL_CORRUPTED)
  np.testing.assert_array_equal(t['reveal'], 0.0)
  denoise = exact_denoiser(P)
  g = jax.jit(lambda key: gaussian.bound_terms(
      lambda z, lam: denoise(z, lam, jnp.zeros(z.shape[:2], bool)), E, X, key, DRAWS, Q))(
          jax.random.key(2))
  np.testing.assert_allclose(t['prior'], g['prior'], rtol=1e-6)
  reference = np.asarray(g["recon"] + g["diffusion"].mean(-1) + g["prior"])
  diff, se = mean_se(ours - reference)
  assert abs(diff) < 3.5 * se + 0.01, (diff, se)
  assert abs(float(t['residual'].mean() - g['recon'].mean())) < 0.02


def masked_nelbo(p, tokens):
  """MDLM's continuous NELBO with the log-linear schedule for the exact conditionals
  p(x_i | unmasked), by enumerating the masks M: int_0^1 1/t sum_M t^|M| (1 - t)^(L - |M|)
  sum_{i in M} -log p(x_i | x_~M) dt, each mask weighted by B(|M|, L - |M| + 1)."""
  out = np.zeros(len(tokens))
  for mask in itertools.product((0, 1), repeat=L):
    M = np.array(mask, bool)
    k = M.sum()
    if not k:
      continue
    visible = np.all((SEQS[None, :, ~M] == tokens[:, None, ~M]), -1)      # (N, 27)
    joint = visible * P
    for i in np.flatnonzero(M):
      hit = joint * (SEQS[None, :, i] == tokens[:, None, i])
      out += special.beta(k, L - k + 1) * -np.log(hit.sum(1) / joint.sum(1))
  return out


def test_with_no_signal_in_the_corrupted_embeddings_it_is_the_masked_nelbo():
  ours, t = hybrid_nats(P, jax.random.key(3), lam_of=NO_SIGNAL)
  assert float(jnp.max(t['gaussian'])) < 1e-6 and float(jnp.max(t['prior'])) < 1e-6
  masked = masked_nelbo(P, np.asarray(X))
  np.testing.assert_allclose(masked, NLL, rtol=1e-5)  # exact conditionals: the NELBO is the NLL
  diff, se = mean_se(ours - masked)
  assert abs(diff) < 3.5 * se + 0.01, (diff, se)


@jax.jit
def _toy_samples(key, p):
  denoise = exact_denoiser(p)
  return hybrid.reverse(lambda z, lam, clean, fed: [denoise(z, lam, clean)], E, key, COUPLED,
                        jnp.zeros((4000, L), jnp.int32),
                        jnp.zeros((4000, L), bool), 100)


def _p_value(key, p):
  ids = np.asarray(_toy_samples(key, jnp.asarray(p, jnp.float32)))
  counts = np.bincount(ids @ V ** np.arange(L - 1, -1, -1), minlength=len(SEQS))
  return stats.chisquare(counts, len(ids) * P).pvalue


def test_sampler_with_the_exact_denoiser_reproduces_the_toy_distribution():
  assert _p_value(jax.random.key(4), P) > 1e-3
  assert _p_value(jax.random.key(4), independent(P)) < 1e-6  # blind to the correlations


VOCAB, LENGTH = 32, 8


@functools.cache
def tiny_model():
  """(model, initial params, noise state) of a one-layer hybrid Transformer with two labels,
  shared by the tests (and their compilations). Robust to a `family` field of ModelConfig."""
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  cfg = {'family': 'hybrid'} if 'family' in fields else {}
  cfg.update(hybrid.model_fields(tiny_config()))
  model = Transformer(ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=32,
                                  sequence_len=LENGTH, diffusion_dim=8, num_labels=2, **cfg))
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, LENGTH, 8)), jnp.zeros((1,)))
  state = jax.jit(lambda: hybrid.init_noise(tiny_config(), model.cfg))()
  return model, params, state


def perturbed(params, scale=0.05):
  """The weights plus Gaussian noise (on the host: no compilation), so the head is not zero."""
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda x: np.asarray(x) + scale * rng.standard_normal(x.shape, np.float32),
                      params)


def test_bound_of_the_untrained_model_is_log_vocab_nats_per_token():
  c = tiny_config(**{'eval.bound_samples': 16})
  model, params, state = tiny_model()
  q = noise.proposal(state)
  tokens = np.random.default_rng(5).integers(0, VOCAB, (32, LENGTH))
  out = hybrid.bound(params, model, c, tokens, None, jax.random.key(6), q)
  total = sum(out['parts'].values())
  np.testing.assert_allclose(out['nats'], total, rtol=1e-5)
  nats, se = mean_se(np.asarray(out['nats']))
  assert abs(nats - LENGTH * np.log(VOCAB)) < 0.05 * LENGTH * np.log(VOCAB), (nats, se)
  assert out['replicas'].shape == (32, 2) and out['level'].shape == out['ce'].shape == (32, 16)
  steps = hybrid.bound(params, model, c, tokens, None, jax.random.key(6), q, num_steps=20)
  assert float(steps['nats'].mean()) > nats - 3 * se


def test_loss_falls_and_adds_up_over_a_split_batch():
  c = tiny_config(**{'diffusion.condition_fraction': 0.5})
  model, params, state = tiny_model()
  q = noise.proposal(state)

  def batch(key):  # rows of one repeated token: any clean position gives the row away
    return jnp.broadcast_to(jax.random.randint(key, (16, 1), 0, VOCAB), (16, LENGTH))

  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt, key):
    tokens = batch(key)
    d = hybrid.draw(jax.random.fold_in(key, 1), tokens, model, c, q)
    grads, (metrics, rows) = jax.grad(hybrid.loss, has_aux=True)(params, model, tokens, d, c)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, rows

  evaluate_loss = jax.jit(lambda p, tokens, d, norm: hybrid.loss(p, model, tokens, d, c,
                                                                  norm=norm))
  tokens = np.repeat(np.random.default_rng(7).integers(0, VOCAB, (64, 1)), LENGTH, 1)
  d = jax.jit(lambda k, tokens: hybrid.draw(k, tokens, model, c, q))(jax.random.key(8), tokens)
  assert 'known' in d and float(jnp.min(d['t'])) >= hybrid.T_MIN
  norm = hybrid.scored_positions(tokens, d)
  before = float(evaluate_loss(params, tokens, d, norm)[0])
  opt = tx.init(params)
  for i in range(120):
    params, opt, rows = step(params, opt, jax.random.key(100 + i))
  state = jax.jit(lambda state, rows: hybrid.update_noise(state, rows, 1, c))(state, rows)
  assert float(state['weight'].sum()) > 0
  after, (metrics, rows) = evaluate_loss(params, tokens, d, norm)
  assert float(after) < 0.85 * before, (before, float(after))
  assert 0 < float(metrics['corrupted_fraction']) < 1 and rows['ce'].shape == (64,)
  # Each device's share over the whole batch's count adds up to the whole batch's loss.
  d = jax.device_get(d)
  halves = [evaluate_loss(params, tokens[r], jax.tree.map(lambda x: x[r], d), norm)[0]
            for r in (slice(0, 32), slice(32, 64))]
  np.testing.assert_allclose(sum(halves), after, rtol=1e-5)


def test_sampling_keeps_known_tokens_and_the_probe_runs():
  c = tiny_config(**{'diffusion.self_condition': False})
  N = 4
  model, params, state = tiny_model()
  params = perturbed(params)
  q = noise.proposal(state)
  cond = np.random.default_rng(9).integers(0, VOCAB, (N, LENGTH))
  known = np.zeros((N, LENGTH), bool)
  known[:, :3] = known[:, 6] = True
  ids, (traj_ids, entropy) = hybrid.sample_tokens(
      params, jax.random.key(10), q, model=model, num_samples=N, seq_len=LENGTH, num_steps=6,
      sampler='dpm++2m', self_condition='previous', order='confidence', cond_tokens=cond,
      known=known, label=1, branches=2, guidance=2.0, trajectory=True,
      mesh=sharding.make_mesh())
  np.testing.assert_array_equal(np.asarray(ids)[known], cond[known])
  assert 0 <= int(ids.min()) and int(ids.max()) < VOCAB
  assert traj_ids.shape == entropy.shape == (6, N, LENGTH)
  np.testing.assert_array_equal(traj_ids[-1], ids)
  assert float(entropy[-1].max()) == 0.0 and float(entropy[0].max()) > 0
  levels = np.array([0.2, 0.9])
  probe = [hybrid.context_probe(params, model, c, cond, jax.random.key(12), q, levels, clean)
           for clean in (False, True)]
  assert all(p.shape == (2,) and bool(jnp.all(jnp.isfinite(p))) for p in probe)
