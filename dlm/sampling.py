"""Generating text: the reverse diffusion as one jitted `lax.scan`.

The sampler walks a strided subset of the training grid (num_steps of the T diffusion steps,
evenly spaced) from pure noise to t = 0. At each step the model's logits give
x0_hat = softmax(logits / temperature) @ E; the update is the exact Gaussian posterior
q(z_s | z_t, x0_hat) between the two grid times (DDPM, any stride) or the deterministic DDIM
step. With self-conditioning, each step also feeds the previous step's x0_hat back to the
model. The text is the argmax of the logits at t = 0.

`temperature` divides the denoiser's logits: below 1 each x0_hat leans toward its most likely
token, above 1 toward the mean embedding.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dlm import diffusion
from dlm.losses import embedding_table


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


def generate(run, num_samples: int = 4, seq_len: int = 0, num_steps: int = 0,
             temperature: float = 0.0, seed: int = 0, sampler: str = '', clamp=None) -> list[dict]:
  """Samples from a loaded run (`dlm.checkpoint.load_run`), one dict per sample.

  Zero / empty arguments take the run's `sample` config. Each record carries the decoded
  `text` (documents joined by blank lines), the `documents`, the `tokens`, the seed and the
  settings, ready to be written as JSONL.
  """
  sc, c = run.config.sample, run.config
  settings = dict(
      seq_len=seq_len or sc.seq_len or run.model_config.sequence_len,
      num_steps=num_steps or sc.num_steps, temperature=temperature or sc.temperature,
      sampler=sampler or sc.sampler, clamp=sc.clamp if clamp is None else clamp)
  tokens = np.asarray(sample_tokens(
      run.params, jax.random.key(seed), model=run.model, num_samples=num_samples,
      seq_len=settings['seq_len'], num_steps=settings['num_steps'],
      diffusion_steps=c.diffusion.diffusion_steps, schedule=c.diffusion.noise_schedule,
      temperature=settings['temperature'], sampler=settings['sampler'],
      clamp=settings['clamp'], self_condition=c.diffusion.self_condition))
  out = []
  for i, row in enumerate(tokens):
    docs = run.tokenizer.decode_documents(row)
    out.append(dict(index=i, text='\n\n'.join(docs), documents=docs, tokens=row.tolist(),
                    seed=seed, step=run.step, **settings))
  return out
