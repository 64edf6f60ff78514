"""Generating text: the reverse diffusion as one jitted `lax.scan`.

The sampler's num_steps + 1 log-SNRs sit at equal quantiles of the run's noise proposal q
without its uniform floor (`noise.steps`), from the noisy end to the clean end, so its steps go
where the model's cross-entropy changes, the same places training went. At each step the denoiser's logits give
x0_hat = softmax(logits / temperature) @ E (optionally score-tempered, Plaid, or clamped to
the nearest embedding, Diffusion-LM), and one of `dlm.samplers`' update rules moves z:
ancestral (the exact posterior), DDIM, or DPM-Solver++(2M). The text is the argmax of the
denoiser's logits at the clean end.

Self-conditioning, `previous` (the usual one): each step feeds back the previous step's
estimate, one forward per step; `fresh`: each step runs the denoiser twice at the same z, the
first pass feeding the second, which is the two-pass denoiser the likelihood bound describes
(two forwards per step). Either way the estimate fed back is the temperature-1 one the model
was trained on, not the tempered or clamped one used for the update.

The autoregressive baseline samples left to right from a `<|bos|>`, one token per step of a
jitted `lax.scan` with a key/value cache (`Transformer.decode_step`), with temperature and
nucleus (top-p) truncation. Tokens are drawn by inverse-CDF sampling over the sorted
probabilities rather than Gumbel-max: float32 Gumbel noise cannot reach the tail and silently
lowers the temperature, while the inverse CDF misplaces at most the float32 rounding of the
cumulative sum, about V * 2^-24 of probability (1e-4 for V = 2048), and the sort is needed for
top-p anyway. A test checks the empirical frequencies against the softmax.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dlm import diffusion, noise, samplers
from dlm.losses import embedding_table
from dlm.model import Transformer, empty_cache


@functools.partial(jax.jit, static_argnames=(
    'model', 'num_samples', 'seq_len', 'sampler', 'clamp', 'self_condition'))
def sample_tokens(params, key, lam_steps, *, model, num_samples: int, seq_len: int,
                  sampler: str = 'ancestral', temperature=1.0, score_temperature=1.0,
                  clamp: bool = False, self_condition: str = ''):
  """Token ids (num_samples, seq_len) drawn by reverse diffusion through lam_steps (noisy to
  clean, `noise.steps`). self_condition: '' (off), 'previous' or 'fresh'."""
  E_VE = embedding_table(model, params)
  path = model.cfg.path
  N = num_samples
  k_init, k_steps = jax.random.split(key)
  z = jax.random.normal(k_init, (N, seq_len, E_VE.shape[-1]))

  def denoise(z, lam_t, x0_prev):
    """(logits, the temperature-1 estimate to feed back)."""
    lam_B = jnp.full((N,), lam_t)
    if self_condition == 'fresh':
      x0_prev = diffusion.x0_from_logits(model.apply(params, z, lam_B), E_VE)
    logits = model.apply(params, z, lam_B, x0_prev if self_condition else None)
    return logits, diffusion.x0_from_logits(logits, E_VE)

  def estimate(z, lam_t, logits):
    """The x0 the update uses."""
    if clamp:
      x0_hat = E_VE[jnp.argmax(logits, -1)]
    else:
      x0_hat = diffusion.x0_from_logits(logits, E_VE, temperature)
    return samplers.score_tempered(z, x0_hat, lam_t, score_temperature, path)

  def step(carry, xs):
    z, x0_fed, x0_last, lam_last = carry
    lam_t, lam_s, k, i = xs
    logits, x0_fed = denoise(z, lam_t, x0_fed)
    x0_hat = estimate(z, lam_t, logits)
    z = samplers.step(sampler, z, x0_hat, lam_t, lam_s, jax.random.normal(k, z.shape), path,
                      x0_prev=x0_last, lam_prev=lam_last,
                      second_order=(i > 0) & (i < lam_steps.shape[0] - 2))
    return (z, x0_fed, x0_hat, lam_t), None

  S = lam_steps.shape[0] - 1
  keys = jax.random.split(k_steps, S)
  zeros = jnp.zeros_like(z)
  (z, x0_fed, _, _), _ = jax.lax.scan(
      step, (z, zeros, zeros, lam_steps[0]), (lam_steps[:-1], lam_steps[1:], keys, jnp.arange(S)))
  logits, _ = denoise(z, lam_steps[-1], x0_fed)
  return jnp.argmax(logits, -1).astype(jnp.int32)


def top_p_sample(key, logits_BV, temperature=1.0, top_p=1.0):
  """One token per row from softmax(logits / temperature) cut to its top-p nucleus (Holtzman
  et al. 2020: the fewest most-likely tokens whose mass reaches top_p), by inverse CDF."""
  probs_BV = jax.nn.softmax(logits_BV.astype(jnp.float32) / temperature, -1)
  order_BV = jnp.argsort(-probs_BV, -1)
  sorted_BV = jnp.take_along_axis(probs_BV, order_BV, -1)
  kept_BV = jnp.where(jnp.cumsum(sorted_BV, -1) - sorted_BV < top_p, sorted_BV, 0.0)
  cdf_BV = jnp.cumsum(kept_BV, -1)
  u_B1 = jax.random.uniform(key, (logits_BV.shape[0], 1)) * cdf_BV[:, -1:]
  index_B = jnp.minimum(jnp.sum(cdf_BV <= u_B1, -1), logits_BV.shape[-1] - 1)
  return jnp.take_along_axis(order_BV, index_B[:, None], -1)[:, 0].astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'num_samples', 'seq_len'))
def sample_ar_tokens(params, key, *, model, num_samples: int, seq_len: int, bos_id: int,
                     temperature=1.0, top_p=1.0):
  """Token ids (num_samples, seq_len): `<|bos|>` then seq_len - 1 tokens drawn left to right."""
  N = num_samples
  first_B = jnp.full((N,), bos_id, jnp.int32)

  def step(carry, xs):
    token_B, cache = carry
    pos, k = xs
    logits_BV, cache = model.apply(params, token_B, cache, pos, method=Transformer.decode_step)
    nxt_B = top_p_sample(k, logits_BV, temperature, top_p)
    return (nxt_B, cache), nxt_B

  keys = jax.random.split(key, seq_len - 1)
  _, rest_LB = jax.lax.scan(step, (first_B, empty_cache(model.cfg, N)),
                            (jnp.arange(seq_len - 1), keys))
  return jnp.concatenate([first_B[:, None], rest_LB.T], 1)


def generate(run, num_samples: int = 4, seq_len: int = 0, num_steps: int = 0,
             temperature: float = 0.0, seed: int = 0, sampler: str = '', clamp=None,
             top_p: float = 0.0, score_temperature: float = 0.0,
             self_condition: str = '') -> list[dict]:
  """Samples from a loaded run (`dlm.checkpoint.load_run`), one dict per sample.

  Zero / empty arguments take the run's `sample` config. Each record carries the decoded
  `text` (documents joined by blank lines), the `documents`, the `tokens`, the seed and the
  settings, ready to be written as JSONL. Diffusion runs use num_steps / sampler / clamp /
  score_temperature / self_condition, autoregressive runs (model.causal) top_p; both use
  temperature.
  """
  tokens, settings = sample_array(run, num_samples, seq_len, num_steps, temperature, seed,
                                  sampler, clamp, top_p, score_temperature, self_condition)
  out = []
  for i, row in enumerate(tokens):
    docs = run.tokenizer.decode_documents(row)
    out.append(dict(index=i, text='\n\n'.join(docs), documents=docs, tokens=row.tolist(),
                    seed=seed, step=run.step, **settings))
  return out


def sample_array(run, num_samples: int, seq_len: int = 0, num_steps: int = 0,
                 temperature: float = 0.0, seed: int = 0, sampler: str = '', clamp=None,
                 top_p: float = 0.0, score_temperature: float = 0.0,
                 self_condition: str = '') -> tuple[np.ndarray, dict]:
  """(token ids (num_samples, seq_len), the settings used): `generate` without decoding."""
  sc, c = run.config.sample, run.config
  settings = dict(seq_len=seq_len or sc.seq_len or run.model_config.sequence_len,
                  temperature=temperature or sc.temperature)
  key = jax.random.key(seed)
  if run.model_config.causal:
    settings.update(family='autoregressive', top_p=top_p or sc.top_p)
    tokens = sample_ar_tokens(
        run.params, key, model=run.model, num_samples=num_samples,
        seq_len=settings['seq_len'], bos_id=run.tokenizer.bos_id,
        temperature=settings['temperature'], top_p=settings['top_p'])
    return np.asarray(tokens), settings
  settings.update(
      family='diffusion', num_steps=num_steps or sc.num_steps, sampler=sampler or sc.sampler,
      score_temperature=score_temperature or sc.score_temperature,
      clamp=sc.clamp if clamp is None else clamp,
      self_condition=(self_condition or sc.self_condition) if c.diffusion.self_condition else 'off',
      allocation=c.diffusion.allocation)
  lam_steps = noise.steps(run.proposal, settings['num_steps'])
  tokens = sample_tokens(
      run.params, key, lam_steps, model=run.model, num_samples=num_samples,
      seq_len=settings['seq_len'], sampler=settings['sampler'],
      temperature=settings['temperature'], score_temperature=settings['score_temperature'],
      clamp=settings['clamp'],
      self_condition='' if settings['self_condition'] == 'off' else settings['self_condition'])
  return np.asarray(tokens), settings
