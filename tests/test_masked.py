"""Masked diffusion (dlm.families.masked): on a toy whose every sequence can be enumerated, the
NELBO of the exact denoiser is the exact NLL and the ancestral sampler draws the toy's
distribution; the real tiny Transformer trains, starts at ln V per token, samples the same with
and without caching, and keeps known tokens."""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from scipy import stats

from dlm import sharding
from dlm.config import base_config
from dlm.families import masked
from dlm.model import ModelConfig, Transformer

V, L = 3, 3
SEQS = np.array(list(itertools.product(range(V), repeat=L)), np.int32)   # (27, L)


def _toy(seed: int = 0):
  """A joint p over V^L with strong dependence between positions and no tiny cells."""
  rng = np.random.default_rng(seed)
  return 0.7 * rng.dirichlet(np.full(len(SEQS), 0.3)) + 0.3 / len(SEQS)


def _exact(p):
  """The true conditionals p(x_i | visible tokens) by enumeration, as logits."""
  p, seqs, onehot = jnp.asarray(p, jnp.float32), jnp.asarray(SEQS), jnp.eye(V)[SEQS]

  def denoise(tokens_BL, masked_BL):
    fits_BS = jnp.all((seqs[None] == tokens_BL[:, None]) | masked_BL[:, None], -1)
    probs = jnp.einsum('bs,slv->blv', fits_BS * p, onehot)
    return jnp.log(probs / probs.sum(-1, keepdims=True) + 1e-30)
  return denoise


def _marginals(p):
  """(L, V): each position's marginal distribution."""
  return np.einsum('s,slv->lv', p, np.eye(V)[SEQS])


def _unigram(p):
  """A wrong denoiser: each position's marginal, blind to the context."""
  logits = jnp.log(jnp.asarray(_marginals(p), jnp.float32))
  return lambda tokens_BL, masked_BL: jnp.broadcast_to(logits, (*tokens_BL.shape, V))


def _total(terms, weights=None):
  """(the bound summed over the sequences with these weights (default 1), its Monte-Carlo
  standard error from the two replicas)."""
  w = np.ones(len(terms['nats'])) if weights is None else weights
  r = np.asarray(terms['replicas'], np.float64)
  return (float(np.sum(w * terms['nats'])),
          float(np.sqrt(np.sum(np.square(w * (r[:, 0] - r[:, 1]))) / 4)))


def test_nelbo_of_the_exact_denoiser_is_the_nll_and_of_a_wrong_one_above():
  """With the true conditionals the NELBO is -log p(x) for every x, not only a bound. A wrong
  denoiser's bound is that of its own model, so only its expectation under p must exceed the
  entropy H(p); so must the T-step bound's, which approaches it as T grows."""
  p = _toy()
  nll, entropy = float(-np.log(p).sum()), float(-np.sum(p * np.log(p)))
  bound = jax.jit(masked.bound_terms, static_argnums=(0, 3, 4))
  tokens = jnp.asarray(SEQS)
  exact, mc = _total(bound(_exact(p), tokens, jax.random.key(0), 4096))  # every x once
  assert mc < 0.01 * nll and abs(exact - nll) < 4 * mc, (exact, nll, mc)
  wrong, mc = _total(bound(_unigram(p), tokens, jax.random.key(0), 4096), p)
  assert wrong - entropy > 4 * mc, (wrong, entropy, mc)
  # one step reveals every token at once, independently: the marginals, no Monte-Carlo error
  marginals = -np.log(_marginals(p)[np.arange(L), SEQS]).sum(-1)
  one = bound(_exact(p), tokens, jax.random.key(1), 8, 1)
  np.testing.assert_allclose(one['nats'], marginals, rtol=1e-5)
  few, mc_few = _total(bound(_exact(p), tokens, jax.random.key(1), 4096, 4), p)
  many, mc_many = _total(bound(_exact(p), tokens, jax.random.key(2), 4096, 256), p)
  assert few - many > 4 * np.hypot(mc_few, mc_many), (few, many, mc_few, mc_many)
  assert -4 * mc_many < many - entropy < 0.01 * entropy + 4 * mc_many, (many, entropy, mc_many)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _sample(denoise, key, known, steps: int):
  return masked.unmask(denoise, key, jnp.zeros(known.shape, jnp.int32), known, steps)


def _chi2_pvalue(samples, p):
  counts = np.bincount(np.ravel_multi_index(np.asarray(samples).T, (V,) * L),
                       minlength=len(SEQS))
  return stats.chisquare(counts, len(samples) * p).pvalue


def test_ancestral_sampler_with_the_exact_denoiser_draws_the_toy_distribution():
  p, n = _toy(), 4000
  assert n * p.min() > 5  # chi-square's rule of thumb
  unknown = np.zeros((n, L), bool)
  samples = _sample(_exact(p), jax.random.key(0), unknown, 200)
  assert _chi2_pvalue(samples, p) > 1e-3
  # the test can fail: the same samples are not the product of the marginals, and one step
  # (every token revealed at once, independently) does not draw the joint
  assert _chi2_pvalue(samples, np.prod(_marginals(p)[np.arange(L), SEQS], -1)) < 1e-6
  assert _chi2_pvalue(_sample(_exact(p), jax.random.key(0), unknown, 1), p) < 1e-6


# ---- the real tiny Transformer ----------------------------------------------------------------

VT, LT, E = 16, 8, 8


def _model(head_scale: float = 0.0):
  """The tiny model the masked family builds (with two labels, for guidance), and its weights:
  the init (a zero head: uniform logits) or every weight perturbed at random, so that the
  logits depend on the input."""
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  cfg = ModelConfig(vocab_size=VT, n_layer=1, n_head=2, n_embd=32, sequence_len=LT,
                    diffusion_dim=E, num_labels=2,
                    **{k: v for k, v in masked.model_fields(None).items() if k in fields})
  if 'family' in fields:
    cfg = dataclasses.replace(cfg, family='masked')
  model = Transformer(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, LT, E)), jnp.zeros((1,)), None,
                      jnp.zeros((1, LT), bool))
  if head_scale:
    params = jax.tree.map(lambda x: x + head_scale * jax.random.normal(jax.random.key(1), x.shape),
                          params)
  return model, params


def _config(**diffusion):
  c = base_config()
  c.eval.bound_samples = 64
  c.diffusion.update(diffusion)
  return ml_collections.FrozenConfigDict(c)


def _tokens(n: int, seed: int = 0):
  """Rows counting up from a random start: easy to learn from context."""
  start = np.random.default_rng(seed).integers(0, VT, (n, 1))
  return jnp.asarray((start + np.arange(LT)) % VT, jnp.int32)


def test_loss_starts_at_ln_v_per_weighted_masked_token_and_training_reduces_it():
  model, params = _model()
  c = _config(condition_fraction=0.5)
  tokens = _tokens(32)
  patterns = jnp.array([[3, 4]], jnp.int32)  # a label: does the row hold 3 then 4
  loss = jax.jit(lambda p, d: masked.loss(p, model, tokens, d, c, patterns))
  draw = jax.jit(lambda key: masked.draw(key, tokens, model, c, None, patterns))
  draws = [draw(jax.random.key(-i)) for i in range(8)]
  d = draws[0]
  assert set(d) == {'t', 'u', 'known', 'dropped'}
  value, (metrics, rows) = loss(params, d)
  hit = (d['u'] < d['t'][:, None]) & ~d['known']
  norm = masked.scored_positions(tokens, d)
  assert float(norm) == float(np.sum(~np.asarray(d['known']))) and rows == {}
  # zero head: every CE is ln V, so the loss is ln V times the weights of the masked tokens
  np.testing.assert_allclose(value, np.log(VT) * jnp.sum(hit * masked.weight(d['t'])[:, None])
                             / norm, rtol=1e-5)
  np.testing.assert_allclose(metrics['ce'], np.log(VT) * metrics['masked_fraction'], rtol=1e-5)
  np.testing.assert_allclose(metrics['masked_fraction'], jnp.sum(hit) / norm, rtol=1e-6)

  opt = optax.adam(5e-3)

  @jax.jit
  def step(params, state, d):
    updates, state = opt.update(jax.grad(lambda p: loss(p, d)[0])(params), state)
    return optax.apply_updates(params, updates), state
  trained, state = params, opt.init(params)
  for i in range(150):
    trained, state = step(trained, state, draw(jax.random.key(i)))
  before, after = (np.mean([loss(p, d)[0] for d in draws]) for p in (params, trained))
  assert after < 0.85 * before, (after, before)


def test_bound_at_initialisation_is_l_ln_v_per_sequence():
  model, params = _model()
  tokens = _tokens(16)
  out = masked.bound(params, model, _config(), tokens, None, jax.random.key(0))
  total, mc = _total(out)
  assert abs(total - 16 * LT * np.log(VT)) < 4 * mc and mc < 0.05 * total, (total, mc)
  np.testing.assert_allclose(out['parts']['masking'] + out['parts']['residual'], out['nats'],
                             rtol=1e-6)
  assert 0 <= float(out['parts']['residual'].mean()) < 0.05
  assert out['level'].shape == out['ce'].shape == (16, 64)
  probe = masked.context_probe(params, model, None, tokens, jax.random.key(0), None,
                               jnp.array([0.2, 0.9]), False)
  np.testing.assert_allclose(probe, np.log(VT), rtol=1e-5)


def _known(N: int):
  """A prompt of 3 tokens and a known last token (an infill template), and their tokens."""
  known = np.zeros((N, LT), bool)
  known[:, :3] = known[:, -1] = True
  return known, np.asarray(_tokens(N, seed=1))


def test_cached_and_uncached_sampling_agree_keep_known_tokens_and_caching_runs_fewer_forwards():
  model, params = _model(head_scale=0.3)
  N, steps = 2, 48
  known, cond = _known(N)
  out = {cache: masked.sample_tokens(
      params, jax.random.key(3), None, model=model, num_samples=N, seq_len=LT,
      num_steps=steps, cache=cache, cond_tokens=jnp.asarray(cond), known=jnp.asarray(known),
      label=1, branches=2, guidance=2.0, trajectory=True, mesh=sharding.make_mesh())
         for cache in (True, False)}
  (ids, (traj, entropy, forwards)), (ids_u, (traj_u, _, forwards_u)) = out[True], out[False]
  np.testing.assert_array_equal(ids, ids_u)
  np.testing.assert_array_equal(traj, traj_u)
  ids, traj = np.asarray(ids), np.asarray(traj)
  # guidance runs two forwards a step; cached, only after a step that revealed something
  free = N * LT - known.sum()
  assert int(forwards_u.sum()) == 2 * steps and 2 <= int(forwards.sum()) <= 2 * (free + 1)
  np.testing.assert_array_equal(ids[known], cond[known])
  np.testing.assert_array_equal(traj[:, known], np.broadcast_to(cond[known], (steps, known.sum())))
  assert traj.shape == entropy.shape == (steps, N, LT) and np.all(traj[-1] == ids)
  assert np.all((ids >= 0) & (ids < VT)) and np.all(np.asarray(entropy) >= 0)


def test_greedy_confidence_reveals_what_the_schedule_expects_and_keeps_known_tokens():
  model, params = _model(head_scale=0.3)
  N, steps = 4, 5
  known, cond = _known(N)
  ids, (traj, _, _) = masked.sample_tokens(
      params, jax.random.key(0), None, model=model, num_samples=N, seq_len=LT, num_steps=steps,
      order='confidence', cond_tokens=jnp.asarray(cond), known=jnp.asarray(known),
      trajectory=True)
  ids, traj = np.asarray(ids), np.asarray(traj)
  np.testing.assert_array_equal(ids[known], cond[known])
  assert np.all((ids >= 0) & (ids < VT))
  left = np.sum(traj == -1, -1)  # masked after each step: round(free positions * s)
  s = np.linspace(1, 0, steps + 1)[1:]
  np.testing.assert_array_equal(left, np.broadcast_to(np.round(4 * s)[:, None], (steps, N)))


def test_the_mean_loss_is_each_rows_mean_masked_ce_over_the_scored_positions():
  """diffusion.masked_loss=mean: a row contributes its mean CE over its masked tokens times
  its free positions, so at init (every CE ln V) the loss is ln V over rows that mask any."""
  model, params = _model()
  c = _config(condition_fraction=0.5, masked_loss='mean')
  tokens = _tokens(32)
  d = masked.draw(jax.random.key(3), tokens, model, c)
  value, _ = masked.loss(params, model, tokens, d, c)
  hit = np.asarray((d['u'] < d['t'][:, None]) & ~d['known'])
  free = np.sum(~np.asarray(d['known']), -1)
  expected = np.log(VT) * np.sum(free * (hit.sum(-1) > 0)) / free.sum()
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  elbo, _ = masked.loss(params, model, tokens, d, _config(condition_fraction=0.5))
  assert abs(float(elbo) - float(value)) > 1e-3  # the two weightings differ batch by batch
