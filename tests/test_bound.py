"""The likelihood bound: log2(V) bits per token for the untrained model (i.i.d. uniform tokens)."""

import jax
import ml_collections
import numpy as np

from conftest import tiny_config
from dlm import evaluate, noise
from dlm.families import gaussian
from dlm.model import ModelConfig, Transformer


def test_bound_at_initialisation_is_log2_vocab_bits_per_token():
  V, L = 256, 16
  model = Transformer(ModelConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=32, sequence_len=L,
                                  diffusion_dim=16))
  params = model.init(jax.random.key(0), np.zeros((1, L, 16), np.float32), np.zeros((1,)))
  windows = np.random.default_rng(0).integers(0, V, (32, L)).astype(np.int32)
  token_bytes = np.full(V, 2, np.int32)
  c = ml_collections.FrozenConfigDict(tiny_config(**{'eval.bound_samples': 32}))
  q = noise.proposal(noise.init_state(c.diffusion, 16, V))
  result = evaluate.evaluate(params, model, c, windows, token_bytes, batch_size=16, proposal=q)
  assert abs(result['bits_per_token'] - np.log2(V)) < 0.03 * np.log2(V), result
  assert abs(result['bits_per_byte'] - result['bits_per_token'] / 2) < 1e-4
  assert 0 < result['bits_per_token_stderr'] < 0.3
  terms = result['bound_terms_bits_per_token']
  assert terms['diffusion'] > 0.9 * np.log2(V)  # nearly all information enters through diffusion
  assert terms['prior'] < 0.01


def _markov_chain(V: int, seed: int = 0):
  """A sparse token-level Markov chain: (transitions, stationary distribution)."""
  rng = np.random.default_rng(seed)
  P = rng.dirichlet(np.full(V, 0.05), size=V) + 1e-3
  P /= P.sum(1, keepdims=True)
  w, v = np.linalg.eig(P.T)
  pi = np.real(v[:, np.argmin(np.abs(w - 1))])
  return P, pi / pi.sum()


def _entropy_bits(p):
  return float(-np.sum(p * np.log2(p), -1)) if p.ndim == 1 else -np.sum(p * np.log2(p), -1)


def _draw_chain(P, pi, n: int, L: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  x = np.zeros((n, L), np.int32)
  x[:, 0] = rng.choice(len(pi), n, p=pi)
  cum = np.cumsum(P, 1)
  for i in range(1, L):
    x[:, i] = np.minimum((rng.random(n)[:, None] > cum[x[:, i - 1]]).sum(1), len(pi) - 1)
  return x


def test_bound_with_the_exact_denoiser_is_tight_above_the_true_nll():
  """A tiny problem where the exact NLL is known: 9 sequences (V=3, L=2) with probabilities q.
  The Bayes-optimal denoiser E[x0 | z] is computed by enumeration; its bound must sit above
  H(q) (= its exact NLL in expectation) and, in continuous time, close to it."""
  import itertools
  import jax.numpy as jnp
  V, L, d = 3, 2, 4
  rng = np.random.default_rng(0)
  E = rng.normal(size=(V, d))
  E = jnp.asarray(E / np.linalg.norm(E, axis=1, keepdims=True) * np.sqrt(d), jnp.float32)
  seqs = np.array(list(itertools.product(range(V), repeat=L)))
  q = rng.dirichlet(np.ones(len(seqs)))
  onehot = jnp.asarray(np.eye(V)[seqs], jnp.float32)  # (9, L, V)

  def denoise(z_BLd, lam_B):
    a = jnp.sqrt(jax.nn.sigmoid(lam_B))[:, None, None, None]
    s2 = jax.nn.sigmoid(-lam_B)[:, None, None, None]
    means = a * E[seqs][None]                       # (1, 9, L, d)
    ll = -jnp.sum(jnp.square(z_BLd[:, None] - means), (2, 3)) / (2 * s2[:, :, 0, 0])
    w = jax.nn.softmax(jnp.log(jnp.asarray(q, jnp.float32)) + ll, -1)   # (B, 9)
    return jnp.log(jnp.einsum('bs,slv->blv', w, onehot) + 1e-30)

  x = jnp.asarray(seqs[rng.choice(len(seqs), 2048, p=q)], jnp.int32)
  H = float(-np.sum(q * np.log2(q)))
  out = {}
  proposal = noise.proposal(noise.init_state(tiny_config().diffusion, d, V))
  for steps in (0, 20):
    t = gaussian.bound_terms(denoise, E, x, jax.random.key(steps), 16, proposal, steps)
    bits = np.asarray(t['recon'] + t['diffusion'].mean(-1) + t['prior']) / np.log(2)
    out[steps] = (bits.mean(), bits.std() / np.sqrt(len(bits)))
  cont, se = out[0]
  assert H - 3 * se <= cont <= H + 0.05 + 3 * se, (H, out)
  assert out[20][0] >= cont - 3 * se  # the 20-step bound is looser than the continuous one


def test_trained_bound_stays_above_and_approaches_the_entropy_rate():
  """Train a tiny denoiser on a token-level Markov chain whose entropy is exact."""
  import optax
  from dlm import losses
  V, L = 8, 16
  P, pi = _markov_chain(V)
  truth = (_entropy_bits(pi) + (L - 1) * float(pi @ _entropy_bits(P))) / L  # bits per token
  model = Transformer(ModelConfig(vocab_size=V, n_layer=2, n_head=2, n_embd=64, sequence_len=L,
                                  diffusion_dim=8))
  params = model.init(jax.random.key(0), np.zeros((1, L, 8), np.float32), np.zeros((1,)))
  c = tiny_config(**{'diffusion.self_condition': False, 'eval.bound_samples': 8})
  frozen = ml_collections.FrozenConfigDict(c)
  dc = c.diffusion
  q = noise.proposal(noise.init_state(dc, 8, V))
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt, tokens, key):
    grads = jax.grad(lambda p: losses.loss_fn(p, model, tokens, key, c, q)[0])(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  held_out = _draw_chain(P, pi, 256, L, seed=1)

  def bound(params):
    t = jax.device_get(gaussian.bound(params, model, frozen, held_out, None,
                                      jax.random.key(9), q))
    bits = t['nats'] / np.log(2) / L
    return bits.mean(), bits.std() / np.sqrt(len(bits))

  init, _ = bound(params)
  opt = tx.init(params)
  for i in range(400):
    params, opt = step(params, opt, _draw_chain(P, pi, 64, L, seed=100 + i), jax.random.key(i))
  trained, se = bound(params)
  assert trained >= truth - 3 * se, (trained, truth)           # a bound never beats the truth
  assert trained - truth < 0.5 * (init - truth), (init, trained, truth)  # and it closes in
