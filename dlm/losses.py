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
from dlm.denoiser import embedding_table, self_condition
from dlm.model import Transformer


def token_ce(params, model: Transformer, h_BLD, inputs, targets_BL, lam_B=None,
             chunk: int = 0):
  """Cross-entropy (B, L) of the logits of hidden states h (`Transformer.features`) against
  the targets, `chunk` positions at a time: the (B, L, V) float32 logits of a large vocabulary
  (8.6 GB for 64 x 1024 x 32k) never exist at once. Each chunk is rematerialised in the
  backward pass, which repeats the head's forward matmul (a few % of a step's FLOPs).
  chunk = 0: `logits_chunk`'s automatic size."""
  B, L = targets_BL.shape
  chunk = chunk or logits_chunk(B, L, model.cfg.vocab_size)
  if chunk >= L:
    logits = model.apply(params, h_BLD, inputs, lam_B, method=Transformer.logits)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets_BL)
  n = -(-L // chunk)
  pad = lambda x: jnp.pad(x, [(0, 0), (0, n * chunk - L)] + [(0, 0)] * (x.ndim - 2))
  split = lambda x: jnp.moveaxis(pad(x).reshape(B, n, chunk, *x.shape[2:]), 1, 0)

  @jax.checkpoint
  def one(_, xs):
    h, x, t = xs
    logits = model.apply(params, h, x, lam_B, method=Transformer.logits)
    return None, optax.softmax_cross_entropy_with_integer_labels(logits, t)
  _, ce = jax.lax.scan(one, None, (split(h_BLD), split(inputs), split(targets_BL)))
  return jnp.moveaxis(ce, 0, 1).reshape(B, n * chunk)[:, :L]


def logits_chunk(B: int, L: int, V: int, budget: int = 2**29) -> int:
  """Positions per cross-entropy chunk so that one chunk's float32 logits take at most
  `budget` bytes (512 MiB); L (no chunking) when the whole fits."""
  return max(1, min(L, budget // (4 * B * V)))


def training_logsnr(key, batch: int, dc, proposal):
  """The batch's log-SNRs: the schedule on its T-step grid (allocation=schedule) or the run's
  proposal q by inverse CDF; low-discrepancy over the batch either way."""
  if dc.allocation == 'schedule':
    return diffusion.logsnr(diffusion.grid_times(key, batch, dc.diffusion_steps),
                            dc.noise_schedule)
  return noise.sample(proposal, diffusion.stratified(key, batch))


def draw(key, tokens_BL, model: Transformer, c, proposal=None, patterns=None,
         condition: bool = True) -> dict:
  """The random inputs of one batch's loss, drawn at the shape of the whole (global) batch:
  with JAX's partitionable threefry their values do not depend on how the rows are split over
  devices, so the train step can hand each device its rows (`train.make_train_step`) and a run
  has the same losses on 1 device and on 8 (tests). condition=False: the unconditional
  objective (no known tokens, no label), for validation.

  lam (B,) log-SNRs, eps (B, L, E) Gaussian noise, even (B,) the rows that get the
  self-conditioning pass; with conditioning, known (B, L) the known positions
  (`conditioning.random_known`); with a label, dropped (B,) the rows trained without it.
  """
  if model.cfg.causal:
    return {}
  dc = c.diffusion
  k_t, k_eps, k_cond = jax.random.split(key, 3)
  k_known, k_drop = jax.random.split(k_cond)
  B, L = tokens_BL.shape
  d = {'lam': training_logsnr(k_t, B, dc, proposal),
       'eps': jax.random.normal(k_eps, (B, L, model.cfg.diffusion_dim)),
       'even': jnp.arange(B) % 2 == 0}
  if condition and model.cfg.conditioning:
    d['known'] = conditioning.random_known(k_known, B, L, dc.condition_fraction)
  if condition and patterns is not None and model.cfg.num_labels:
    d['dropped'] = jax.random.uniform(k_drop, (B,)) < dc.label_dropout
  return d


def scored_positions(tokens_BL, d: dict, causal: bool):
  """How many positions a batch's loss averages over: the unknown ones (diffusion), every
  one with a next token (AR). The train step divides each device's sum by the whole batch's
  count, so the sum over devices is the loss of the whole batch whatever its split."""
  B, L = tokens_BL.shape
  if causal:
    return jnp.float32(B * (L - 1))
  if 'known' in d:
    return jnp.sum(~d['known']).astype(jnp.float32)
  return jnp.float32(B * L)


def diffusion_loss(params, model: Transformer, tokens_BL, d: dict, c, patterns=None,
                   norm=None):
  """d: the batch's random inputs (`draw`); patterns: the label's token patterns
  (`labels.Label.patterns`) when the run has a label; norm: the positions to average over
  (`scored_positions`; default this batch's).

  ce (default): cross-entropy of the denoiser's logits against the clean tokens at a random
  noise level (CDCD, Plaid), over the unknown positions. mse: squared error of eps / x0 / v
  derived from x0_hat = softmax(logits) @ E, the seed's objective when parameterization='eps'.
  """
  dc = c.diffusion
  E_VE = embedding_table(model, params)
  x0_BLE = E_VE[tokens_BL]
  lam_B, eps_BLE = d['lam'], d['eps']
  z_BLE = diffusion.q_sample(x0_BLE, lam_B, eps_BLE, dc.path)
  known_BL = d.get('known')
  label_B = None
  if 'dropped' in d:
    label_B = jnp.where(d['dropped'], len(labels.VALUES), labels.of_tokens(tokens_BL, patterns))
  if known_BL is not None:
    z_BLE = conditioning.inject(z_BLE, x0_BLE, known_BL)
    free_BL = (~known_BL).astype(jnp.float32)
  else:
    free_BL = jnp.ones(tokens_BL.shape, jnp.float32)
  norm = jnp.sum(free_BL) if norm is None else norm
  x0_prev = self_condition(params, model, z_BLE, lam_B, E_VE, True, dc.self_condition,
                           known_BL, label_B, d['even'])
  if dc.loss == 'ce':
    h_BLD = model.apply(params, z_BLE, lam_B, x0_prev, known_BL, label_B,
                        method=Transformer.features)
    ce_BL = token_ce(params, model, h_BLD, z_BLE, tokens_BL, lam_B, c.train.logits_chunk)
  else:  # the seed's recipe needs whole logits for x0_hat
    logits_BLV = model.apply(params, z_BLE, lam_B, x0_prev, known_BL, label_B)
    ce_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL)
    x0_hat = diffusion.x0_from_logits(logits_BLV, E_VE)
    target, pred = diffusion.mse_target_and_pred(dc.parameterization, x0_BLE, eps_BLE, z_BLE,
                                                 x0_hat, lam_B, dc.path)
    mse = jnp.sum(jnp.mean(jnp.square(target - pred), -1) * free_BL) / norm
  ce = jnp.sum(ce_BL * free_BL) / norm
  loss = ce if dc.loss == 'ce' else mse
  metrics = {'loss': loss, 'ce': ce}
  # The running CE curve of `dlm.noise` is the unconditional one: conditioned rows have
  # context the sampler of unconditional text does not, so they count with weight zero.
  unconditioned_B = jnp.all(free_BL > 0, -1).astype(jnp.float32)
  rows = {'lam': lam_B, 'ce': jax.lax.stop_gradient(ce_BL.mean(-1)), 'weight': unconditioned_B}
  return loss, (metrics, rows)


def ar_loss(params, model: Transformer, tokens_BL, chunk: int = 0, norm=None):
  """Next-token cross-entropy; the last position has no target and is dropped."""
  inputs_BL = tokens_BL[:, :-1]
  h_BLD = model.apply(params, inputs_BL, method=Transformer.features)
  ce_BL = token_ce(params, model, h_BLD, inputs_BL, tokens_BL[:, 1:], chunk=chunk)
  loss = jnp.sum(ce_BL) / (ce_BL.size if norm is None else norm)
  return loss, ({'loss': loss, 'ce': loss}, {})


def loss_given(params, model: Transformer, tokens_BL, d: dict, c, patterns=None, norm=None):
  """The loss of a batch whose random inputs `d` are drawn (`draw`); (loss, (metrics, rows)).
  Both families' metrics are sums over positions divided by `norm`, so they add up over the
  devices' shares of a batch like the loss does."""
  if model.cfg.causal:
    return ar_loss(params, model, tokens_BL, c.train.logits_chunk, norm)
  return diffusion_loss(params, model, tokens_BL, d, c, patterns, norm)


def loss_fn(params, model: Transformer, tokens_BL, key, c, proposal=None, patterns=None,
            condition: bool = True):
  """The loss of a whole batch on one device (or under plain jit): draws, then `loss_given`."""
  d = draw(key, tokens_BL, model, c, proposal, patterns, condition)
  return loss_given(params, model, tokens_BL, d, c, patterns)


def param_metrics(params, model: Transformer) -> dict:
  """Metrics of the weights alone, logged beside the loss: the mean norm of the diffusion
  embeddings (the seed's collapse shows as this shrinking)."""
  if model.cfg.causal:
    return {}
  return {'embed_norm': jnp.mean(jnp.linalg.norm(embedding_table(model, params), axis=-1))}
