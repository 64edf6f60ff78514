"""Training objectives: the diffusion loss (ce or the seed's mse) and the next-token loss.

The diffusion loss also trains the conditional models in the same network: a fraction of rows
get known tokens (`conditioning.random_known`; loss on the other positions only) and, with a
`data.label`, every row its label read off its tokens (`labels.of_tokens`), dropped to "no
label" for a fraction of rows so the unconditional model that guidance needs is trained too.

Both return (loss, (metrics, rows)): scalar float32 metrics, which the train step averages over
micro-batches without knowing which model it is training, and per-row values (the diffusion
loss's log-SNR and cross-entropy per row, which feed the running CE curve of `dlm.noise`).
"""

import jax
import jax.numpy as jnp
import optax

from dlm import conditioning, diffusion, labels, noise
from dlm.model import Transformer


def embedding_table(model: Transformer, params):
  return model.apply(params, method=Transformer.embedding)


def self_condition(params, model: Transformer, z_BLE, lam_B, E_VE, training: bool,
                   enabled: bool, known_BL=None, label_B=None):
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
  first = model.apply(params, z_BLE[:n], lam_B[:n], None,
                      None if known_BL is None else known_BL[:n],
                      None if label_B is None else label_B[:n])
  x0_prev = jax.lax.stop_gradient(diffusion.x0_from_logits(first, E_VE))
  return jnp.concatenate([x0_prev, jnp.zeros_like(z_BLE[n:])], 0)


def training_logsnr(key, batch: int, dc, proposal):
  """The batch's log-SNRs: the schedule on its T-step grid (allocation=schedule) or the run's
  proposal q by inverse CDF; low-discrepancy over the batch either way."""
  if dc.allocation == 'schedule':
    return diffusion.logsnr(diffusion.grid_times(key, batch, dc.diffusion_steps),
                            dc.noise_schedule)
  return noise.sample(proposal, diffusion.stratified(key, batch))


def conditions(key, tokens_BL, dc, patterns, model: Transformer):
  """(known (B, L) bool or None, label ids (B,) or None) of a training batch."""
  k_known, k_drop = jax.random.split(key)
  B, L = tokens_BL.shape
  known_BL = (conditioning.random_known(k_known, B, L, dc.condition_fraction)
              if model.cfg.conditioning else None)
  label_B = None
  if patterns is not None and model.cfg.num_labels:
    dropped_B = jax.random.uniform(k_drop, (B,)) < dc.label_dropout
    label_B = jnp.where(dropped_B, len(labels.VALUES), labels.of_tokens(tokens_BL, patterns))
  return known_BL, label_B


def diffusion_loss(params, model: Transformer, tokens_BL, key, dc, proposal, patterns=None,
                   condition: bool = True):
  """dc: the config's `diffusion` section; proposal: the run's q (`noise.proposal`);
  patterns: the label's token patterns (`labels.Label.patterns`) when the run has a label;
  condition=False: the unconditional objective (no known tokens, no label), for validation.

  ce (default): cross-entropy of the denoiser's logits against the clean tokens at a random
  noise level (CDCD, Plaid), over the unknown positions. mse: squared error of eps / x0 / v
  derived from x0_hat = softmax(logits) @ E, the seed's objective when parameterization='eps'.
  """
  k_t, k_eps, k_cond = jax.random.split(key, 3)
  E_VE = embedding_table(model, params)
  x0_BLE = E_VE[tokens_BL]
  lam_B = training_logsnr(k_t, tokens_BL.shape[0], dc, proposal)
  eps_BLE = jax.random.normal(k_eps, x0_BLE.shape)
  z_BLE = diffusion.q_sample(x0_BLE, lam_B, eps_BLE, dc.path)
  known_BL, label_B = (conditions(k_cond, tokens_BL, dc, patterns, model) if condition
                       else (None, None))
  if known_BL is not None:
    z_BLE = conditioning.inject(z_BLE, x0_BLE, known_BL)
    free_BL = (~known_BL).astype(jnp.float32)
  else:
    free_BL = jnp.ones(tokens_BL.shape, jnp.float32)
  logits_BLV = model.apply(params, z_BLE, lam_B, self_condition(
      params, model, z_BLE, lam_B, E_VE, True, dc.self_condition, known_BL, label_B),
      known_BL, label_B)
  ce_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL)
  ce = jnp.sum(ce_BL * free_BL) / jnp.sum(free_BL)
  if dc.loss == 'ce':
    loss = ce
  else:
    x0_hat = diffusion.x0_from_logits(logits_BLV, E_VE)
    target, pred = diffusion.mse_target_and_pred(dc.parameterization, x0_BLE, eps_BLE, z_BLE,
                                                 x0_hat, lam_B, dc.path)
    loss = jnp.sum(jnp.mean(jnp.square(target - pred), -1) * free_BL) / jnp.sum(free_BL)
  metrics = {
      'loss': loss,
      'ce': ce,
      'embed_norm': jnp.mean(jnp.linalg.norm(E_VE, axis=-1)),
  }
  # The running CE curve of `dlm.noise` is the unconditional one: conditioned rows have
  # context the sampler of unconditional text does not, so they count with weight zero.
  unconditioned_B = jnp.all(free_BL > 0, -1).astype(jnp.float32)
  rows = {'lam': lam_B, 'ce': jax.lax.stop_gradient(ce_BL.mean(-1)), 'weight': unconditioned_B}
  return loss, (metrics, rows)


def ar_loss(params, model: Transformer, tokens_BL):
  """Next-token cross-entropy; the last position has no target and is dropped."""
  logits = model.apply(params, tokens_BL[:, :-1])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BL[:, 1:]).mean()
  return loss, ({'loss': loss, 'ce': loss}, {})


def loss_fn(params, model: Transformer, tokens_BL, key, c, proposal=None, patterns=None,
            condition: bool = True):
  if model.cfg.causal:
    return ar_loss(params, model, tokens_BL)
  return diffusion_loss(params, model, tokens_BL, key, c.diffusion, proposal, patterns,
                        condition)
