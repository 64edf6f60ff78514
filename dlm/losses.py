"""Training objectives: the diffusion loss (ce or the seed's mse) and the next-token loss.

Both return (loss, metrics) with scalar float32 metrics, so the train step can average them
over micro-batches without knowing which model it is training.
"""

import jax
import jax.numpy as jnp
import optax

from dlm import diffusion
from dlm.model import Transformer


def embedding_table(model: Transformer, params, learn: bool = True):
  E = model.apply(params, method=Transformer.embedding)
  return E if learn else jax.lax.stop_gradient(E)


def self_condition(params, model: Transformer, z_BLE, lam_B, E_VE, training: bool,
                   enabled: bool):
  """The x0 estimate fed back to the model, or None when self-conditioning is off.

  Training: the model's own first-pass estimate (without gradient) for the first half of the
  batch and zeros for the rest, so the model also works without one (Chen et al. 2023). The
  rows are independent random windows, so a fixed split is as good as a coin flip, and the
  extra pass costs half a forward instead of a whole one.
  Evaluation: always the first-pass estimate, as the sampler does it, so the bound is that of
  the model the sampler runs (still a function of z_t alone, hence still a valid bound).
  """
  if not enabled:
    return None
  n = z_BLE.shape[0] // 2 if training else z_BLE.shape[0]
  first = model.apply(params, z_BLE[:n], lam_B[:n])
  x0_prev = jax.lax.stop_gradient(diffusion.x0_from_logits(first, E_VE))
  return jnp.concatenate([x0_prev, jnp.zeros_like(z_BLE[n:])], 0)


def diffusion_loss(params, model: Transformer, tokens_BL, key, dc):
  """dc: the config's `diffusion` section.

  ce (default): cross-entropy of the denoiser's logits against the clean tokens at a random
  noise level (CDCD, Plaid). mse: squared error of eps / x0 / v derived from
  x0_hat = softmax(logits) @ E, the seed's objective when parameterization='eps'.
  """
  k_t, k_eps = jax.random.split(key)
  E_VE = embedding_table(model, params, dc.learn_embeddings)
  x0_BLE = E_VE[tokens_BL]
  B = tokens_BL.shape[0]
  lam_B = diffusion.logsnr(diffusion.grid_times(k_t, B, dc.diffusion_steps),
                           dc.noise_schedule, dc.diffusion_steps)
  eps_BLE = jax.random.normal(k_eps, x0_BLE.shape)
  z_BLE = diffusion.q_sample(x0_BLE, lam_B, eps_BLE)
  logits_BLV = model.apply(params, z_BLE, lam_B, self_condition(
      params, model, z_BLE, lam_B, E_VE, True, dc.self_condition))
  ce = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL).mean()
  if dc.loss == 'ce':
    loss = ce
  else:
    x0_hat = diffusion.x0_from_logits(logits_BLV, E_VE)
    target, pred = diffusion.mse_target_and_pred(dc.parameterization, x0_BLE, eps_BLE, z_BLE,
                                                 x0_hat, lam_B)
    loss = jnp.mean(jnp.square(target - pred))
  metrics = {
      'loss': loss,
      'ce': ce,
      'embed_norm': jnp.mean(jnp.linalg.norm(E_VE, axis=-1)),
  }
  return loss, metrics


def ar_loss(params, model: Transformer, tokens_BL):
  """Next-token cross-entropy; the last position has no target and is dropped."""
  logits = model.apply(params, tokens_BL[:, :-1])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BL[:, 1:]).mean()
  return loss, {'loss': loss, 'ce': loss}


def loss_fn(params, model: Transformer, tokens_BL, key, c):
  if model.cfg.causal:
    return ar_loss(params, model, tokens_BL)
  return diffusion_loss(params, model, tokens_BL, key, c.diffusion)
