"""Generating text: the reverse diffusion as one jitted `lax.scan`.

The sampler walks a strided subset of the training grid (num_steps of the T diffusion steps,
evenly spaced) from pure noise to t = 0. At each step the model's logits give
x0_hat = softmax(logits / temperature) @ E; the update is the exact Gaussian posterior
q(z_s | z_t, x0_hat) between the two grid times (DDPM, any stride) or the deterministic DDIM
step. With self-conditioning, each step also feeds the previous step's x0_hat back to the
model. The text is the argmax of the logits at t = 0.

`temperature` divides the denoiser's logits: below 1 each x0_hat leans toward its most likely
token, above 1 toward the mean embedding.

The autoregressive baseline samples left to right from a `<|bos|>`, one token per step of a
jitted `lax.scan` with a key/value cache (`Transformer.decode_step`), with temperature and
nucleus (top-p) truncation. Tokens are drawn by inverse-CDF sampling over the sorted
probabilities rather than Gumbel-max: float32 Gumbel noise cannot reach the tail and silently
lowers the temperature (DESIGN.md 4.8), while the inverse CDF misplaces at most the float32
rounding of the cumulative sum, about V * 2^-24 of probability (1e-4 for V = 2048), and the
sort is needed for top-p anyway. A test checks the empirical frequencies against the softmax.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dlm import diffusion
from dlm.losses import embedding_table
from dlm.model import Transformer, empty_cache


def step_times(num_steps: int, diffusion_steps: int) -> np.ndarray:
  """num_steps + 1 grid times from 1 down to 0, evenly strided over the T-step grid."""
  k = np.round(np.linspace(diffusion_steps, 0, num_steps + 1)).astype(np.int64)
  return k / diffusion_steps


@functools.partial(jax.jit, static_argnames=(
    'model', 'num_samples', 'seq_len', 'num_steps', 'diffusion_steps', 'schedule', 'sampler',
    'clamp', 'self_condition'))
def sample_tokens(params, key, *, model, num_samples: int, seq_len: int, num_steps: int,
                  diffusion_steps: int, schedule: str, temperature=1.0, sampler: str = 'ddpm',
                  clamp: bool = False, self_condition: bool = False):
  """Token ids (num_samples, seq_len) drawn by reverse diffusion."""
  E_VE = embedding_table(model, params)
  lam = diffusion.logsnr(jnp.asarray(step_times(num_steps, diffusion_steps)), schedule,
                         diffusion_steps)
  N = num_samples
  k_init, k_steps = jax.random.split(key)
  z = jax.random.normal(k_init, (N, seq_len, E_VE.shape[-1]))

  def denoise(z, lam_t, x0_prev):
    logits = model.apply(params, z, jnp.full((N,), lam_t), x0_prev)
    if clamp:
      # Snap to the nearest token embedding (Diffusion-LM's clamping trick).
      return logits, E_VE[jnp.argmax(logits, -1)]
    return logits, diffusion.x0_from_logits(logits, E_VE, temperature)

  def step(carry, xs):
    z, x0_prev = carry
    lam_t, lam_s, k = xs
    _, x0_hat = denoise(z, lam_t, x0_prev if self_condition else None)
    if sampler == 'ddim':
      return (diffusion.ddim_step(z, x0_hat, lam_t, lam_s), x0_hat), None
    mean, std = diffusion.posterior(z, x0_hat, lam_t, lam_s)
    return (mean + std * jax.random.normal(k, z.shape), x0_hat), None

  keys = jax.random.split(k_steps, num_steps)
  (z, x0_prev), _ = jax.lax.scan(step, (z, jnp.zeros_like(z)), (lam[:-1], lam[1:], keys))
  logits, _ = denoise(z, lam[-1], x0_prev if self_condition else None)
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
             top_p: float = 0.0) -> list[dict]:
  """Samples from a loaded run (`dlm.checkpoint.load_run`), one dict per sample.

  Zero / empty arguments take the run's `sample` config. Each record carries the decoded
  `text` (documents joined by blank lines), the `documents`, the `tokens`, the seed and the
  settings, ready to be written as JSONL. Diffusion runs use num_steps / sampler / clamp,
  autoregressive runs (model.causal) top_p; both use temperature.
  """
  tokens, settings = sample_array(run, num_samples, seq_len, num_steps, temperature, seed,
                                  sampler, clamp, top_p)
  out = []
  for i, row in enumerate(tokens):
    docs = run.tokenizer.decode_documents(row)
    out.append(dict(index=i, text='\n\n'.join(docs), documents=docs, tokens=row.tolist(),
                    seed=seed, step=run.step, **settings))
  return out


def sample_array(run, num_samples: int, seq_len: int = 0, num_steps: int = 0,
                 temperature: float = 0.0, seed: int = 0, sampler: str = '', clamp=None,
                 top_p: float = 0.0) -> tuple[np.ndarray, dict]:
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
  settings.update(family='diffusion', num_steps=num_steps or sc.num_steps,
                  sampler=sampler or sc.sampler, clamp=sc.clamp if clamp is None else clamp)
  tokens = sample_tokens(
      run.params, key, model=run.model, num_samples=num_samples,
      seq_len=settings['seq_len'], num_steps=settings['num_steps'],
      diffusion_steps=c.diffusion.diffusion_steps, schedule=c.diffusion.noise_schedule,
      temperature=settings['temperature'], sampler=settings['sampler'],
      clamp=settings['clamp'], self_condition=c.diffusion.self_condition)
  return np.asarray(tokens), settings
