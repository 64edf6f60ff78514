"""Training objectives: the diffusion loss (ce or the seed's mse) and the next-token loss.

Both return (loss, (metrics, rows)): scalar float32 metrics, which the train step averages over
micro-batches without knowing which model it is training, and per-row values (the diffusion
loss's log-SNR and cross-entropy per row, which feed the running CE curve of `dlm.noise`).
"""

import jax
import jax.numpy as jnp
import optax

from dlm import diffusion, noise
from dlm.model import Transformer


def embedding_table(model: Transformer, params):
  return model.apply(params, method=Transformer.embedding)


def self_condition(params, model: Transformer, z_BLE, lam_B, E_VE, training: bool,
                   enabled: bool):
  """The x0 estimate fed back to the model, or None when self-conditioning is off.

  Training: the model's own first-pass estimate (temperature 1, without gradient) for the first
  half of the rows and zeros for the rest, so the model also works without one (Chen et al.
  2023). The rows are independent random windows whose noise levels come in random order
  (`diffusion.stratified`), so the first half is a uniformly random half of the (window, noise
  level) pairs, and the extra pass costs half a forward instead of a whole one.
  Evaluation: always the first-pass estimate at the same z: the two-pass denoiser, whose bound
  this is (a function of z_t alone, hence a valid bound) and which the sampler's `fresh` mode
  runs; the `previous` mode feeds back the last step's estimate instead, a different process.
  """
  if not enabled:
    return None
  n = z_BLE.shape[0] // 2 if training else z_BLE.shape[0]
  first = model.apply(params, z_BLE[:n], lam_B[:n])
  x0_prev = jax.lax.stop_gradient(diffusion.x0_from_logits(first, E_VE))
  return jnp.concatenate([x0_prev, jnp.zeros_like(z_BLE[n:])], 0)


def training_logsnr(key, batch: int, dc, proposal):
  """The batch's log-SNRs: the schedule on its T-step grid (allocation=schedule) or the run's
  proposal q by inverse CDF; low-discrepancy over the batch either way."""
  if dc.allocation == 'schedule':
    return diffusion.logsnr(diffusion.grid_times(key, batch, dc.diffusion_steps),
                            dc.noise_schedule)
  return noise.sample(proposal, diffusion.stratified(key, batch))


def diffusion_loss(params, model: Transformer, tokens_BL, key, dc, proposal):
  """dc: the config's `diffusion` section; proposal: the run's q (`noise.proposal`).

  ce (default): cross-entropy of the denoiser's logits against the clean tokens at a random
  noise level (CDCD, Plaid). mse: squared error of eps / x0 / v derived from
  x0_hat = softmax(logits) @ E, the seed's objective when parameterization='eps'.
  """
  k_t, k_eps = jax.random.split(key)
  E_VE = embedding_table(model, params)
  x0_BLE = E_VE[tokens_BL]
  lam_B = training_logsnr(k_t, tokens_BL.shape[0], dc, proposal)
  eps_BLE = jax.random.normal(k_eps, x0_BLE.shape)
  z_BLE = diffusion.q_sample(x0_BLE, lam_B, eps_BLE, dc.path)
  logits_BLV = model.apply(params, z_BLE, lam_B, self_condition(
      params, model, z_BLE, lam_B, E_VE, True, dc.self_condition))
  ce_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL)
  ce = ce_BL.mean()
  if dc.loss == 'ce':
    loss = ce
  else:
    x0_hat = diffusion.x0_from_logits(logits_BLV, E_VE)
    target, pred = diffusion.mse_target_and_pred(dc.parameterization, x0_BLE, eps_BLE, z_BLE,
                                                 x0_hat, lam_B, dc.path)
    loss = jnp.mean(jnp.square(target - pred))
  metrics = {
      'loss': loss,
      'ce': ce,
      'embed_norm': jnp.mean(jnp.linalg.norm(E_VE, axis=-1)),
  }
  rows = {'lam': lam_B, 'ce': jax.lax.stop_gradient(ce_BL.mean(-1))}
  return loss, (metrics, rows)


def ar_loss(params, model: Transformer, tokens_BL):
  """Next-token cross-entropy; the last position has no target and is dropped."""
  logits = model.apply(params, tokens_BL[:, :-1])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BL[:, 1:]).mean()
  return loss, ({'loss': loss, 'ce': loss}, {})


def loss_fn(params, model: Transformer, tokens_BL, key, c, proposal=None):
  if model.cfg.causal:
    return ar_loss(params, model, tokens_BL)
  return diffusion_loss(params, model, tokens_BL, key, c.diffusion, proposal)
