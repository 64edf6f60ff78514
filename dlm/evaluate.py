"""Held-out numbers: the training objective and a true likelihood bound in bits.

The diffusion model has no exact likelihood; what it has is the variational bound of a
continuous-time diffusion (Kingma et al. 2021, eq. 11-17), per sequence x with embeddings x0:

  -log p(x) <= E[-log p(x | z_0)]                         reconstruction at lambda_max
             + 1/2 int_{lam_min}^{lam_max} e^lam E||x0 - x0_hat(z_lam)||^2 dlam   diffusion
             + KL(q(z_1 | x0) || N(0, I))                 prior at lambda_min

The integral is estimated with log-SNR drawn uniformly (stratified per sequence), which
needs no schedule derivative because the model is conditioned on lambda itself. The
decoder p(x | z_0) is the model's own softmax at lambda_max. Bits per byte divide the total
bits (boundary tokens included) by the UTF-8 bytes of the same tokens, so the number can be
set beside an autoregressive model's exact NLL on the same text.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlm import diffusion, losses
from dlm.model import Transformer

LN2 = float(np.log(2.0))


@functools.partial(jax.jit, static_argnames=('model', 'config'))
def _objective(params, tokens_BL, key, *, model, config):
  return losses.loss_fn(params, model, tokens_BL, key, config)[1]


@functools.partial(jax.jit, static_argnames=('model', 'num_samples', 'self_condition'))
def diffusion_bound_nats(params, tokens_BL, key, *, model: Transformer, num_samples: int,
                         self_condition: bool = False):
  """Per-sequence bound terms in nats: dict of (B,) arrays recon, diffusion, prior."""
  E_VE = losses.embedding_table(model, params)

  def denoise(z, lam_B):
    return model.apply(params, z, lam_B, losses.self_condition(
        params, model, z, lam_B, E_VE, False, self_condition))

  x0 = E_VE[tokens_BL]
  B = tokens_BL.shape[0]
  lo, hi = diffusion.LOGSNR_MIN, diffusion.LOGSNR_MAX
  k_rec, k_u, k_eps = jax.random.split(key, 3)

  lam_hi = jnp.full((B,), hi)
  z0 = diffusion.q_sample(x0, lam_hi, jax.random.normal(k_rec, x0.shape))
  logits = denoise(z0, lam_hi)
  recon = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BL).sum(-1)

  u = (jax.random.uniform(k_u, (B, 1)) + jnp.arange(num_samples) / num_samples) % 1.0
  lam_BS = lo + (hi - lo) * u

  def one(carry, xs):
    lam_B, k = xs
    z = diffusion.q_sample(x0, lam_B, jax.random.normal(k, x0.shape))
    x0_hat = diffusion.x0_from_logits(denoise(z, lam_B), E_VE)
    err = jnp.sum(jnp.square(x0 - x0_hat), axis=(1, 2))
    return carry + 0.5 * (hi - lo) * jnp.exp(lam_B) * err, None

  keys = jax.random.split(k_eps, num_samples)
  total, _ = jax.lax.scan(one, jnp.zeros((B,)), (lam_BS.T, keys))
  return {'recon': recon, 'diffusion': total / num_samples,
          'prior': diffusion.prior_kl(x0).sum(-1)}


def evaluate(params, model: Transformer, c, windows: np.ndarray, token_bytes: np.ndarray,
             batch_size: int, seed: int = 0, progress=None, bound: bool = True) -> dict:
  """val_loss and (diffusion, unless bound=False) the bound in bits per token / byte."""
  n = (len(windows) // batch_size) * batch_size
  if n == 0:
    raise ValueError(f'{len(windows)} evaluation windows are fewer than batch_size={batch_size}')
  windows = windows[:n]
  key = jax.random.key(seed)
  objective, per_seq, parts = [], [], {'recon': 0.0, 'diffusion': 0.0, 'prior': 0.0}
  batches = range(0, n, batch_size)
  for i in (progress(batches) if progress else batches):
    tokens = jnp.asarray(windows[i:i + batch_size])
    k = jax.random.fold_in(key, i)
    objective.append(float(_objective(params, tokens, k, model=model, config=c)['loss']))
    if model.cfg.causal or not bound:
      continue
    terms = jax.device_get(diffusion_bound_nats(
        params, tokens, k, model=model, num_samples=c.eval.bound_samples,
        self_condition=c.diffusion.self_condition))
    per_seq.append(terms['recon'] + terms['diffusion'] + terms['prior'])
    for name in parts:
      parts[name] += float(terms[name].sum())
  tokens_total = windows.size
  result = {'val_loss': float(np.mean(objective)), 'eval_tokens': int(tokens_total),
            'eval_bytes': int(token_bytes[windows].sum())}
  if per_seq:
    nats = np.concatenate(per_seq)
    L = windows.shape[1]
    result.update(
        bits_per_token=float(nats.sum() / tokens_total / LN2),
        bits_per_token_stderr=float(nats.std(ddof=1) / np.sqrt(len(nats)) / L / LN2)
        if len(nats) > 1 else float('nan'),
        bits_per_byte=float(nats.sum() / LN2 / max(result['eval_bytes'], 1)),
        bound_terms_bits_per_token={k: v / tokens_total / LN2 for k, v in parts.items()},
        bound='upper (continuous-time variational bound; the true NLL is lower)')
  return result
