"""Gaussian diffusion on token embeddings (CDCD, Dieleman et al. 2022; Plaid, Gulrajani &
Hashimoto 2023; LangFlow, Chen et al. 2026): every token's embedding is noised at one log-SNR
per row, and the denoiser predicts the clean tokens.

Training: cross-entropy of the denoiser's logits against the clean tokens at a log-SNR drawn
from the run's noise proposal q (`dlm.noise`), over the unknown positions; or the seed's mse
objective on eps / x0 / v derived from x0_hat = softmax(logits) @ E. A fraction of rows get
known tokens (`conditioning.random_known`) and, with a `data.label`, every row its label,
dropped for a fraction of rows so the unconditional model that guidance needs is trained too.

Likelihood: two variational upper bounds per sequence x with embeddings x0 (Kingma et al.
2021, "Variational Diffusion Models", eq. 11-17, 32):

  continuous time:  -log p(x) <= E[-log p(x | z_hi)]                          reconstruction
                      + 1/2 int_{lam_lo}^{lam_hi} e^lam E||x0 - x0_hat(z_lam)||^2 dlam   diffusion
                      + KL(q(z_lo | x0) || N(0, I))                             prior
  discrete, T steps: the integral becomes sum_i KL(q(z_s | z_t, x0) || p(z_s | z_t)) over the
                      sampler's grid t_i -> s_i (T + 1 equal quantiles of the proposal without
                      its floor, `noise.steps`); both Gaussians share the variance
                      (1 - r) sigma_s^2 (r = e^(lam_t - lam_s)), so each KL is
                      1/2 (SNR_s - SNR_t) ||x0 - x0_hat(z_t)||^2: the bound of the very model
                      the T-step ancestral sampler runs. It covers a narrower log-SNR range than
                      the continuous bound (the grid's quantiles 1e-4 ... 0.99) with other end
                      terms, so it is not ordered against the continuous one: on trained runs it
                      is usually a little higher (coarse steps cost), at few steps it can be lower.

Expectations are estimated by randomised quasi-Monte Carlo (`diffusion.lattice_draws`), mapped
to log-SNRs by q; in continuous time each draw is importance-weighted by 1 / q(lambda), and q
follows the CE curve, which follows the integrand. With self-conditioning both bounds are those
of the two-pass denoiser (self-conditioned on its own first pass at the same z), which the
sampler runs with sample.self_condition=fresh.

Sampling: one jitted `lax.scan` over num_steps + 1 log-SNRs at equal quantiles of q (`noise.steps`),
noisy to clean. At each step x0_hat = softmax(logits / temperature) @ E (optionally
score-tempered, Plaid, or clamped to the nearest embedding, Diffusion-LM), and one of
`dlm.samplers`' update rules moves z: ancestral (the exact posterior), DDIM, or DPM-Solver++(2M).
The text is the argmax of the denoiser's logits at the clean end. Self-conditioning `previous`
feeds back the previous step's estimate (one forward per step), `fresh` runs the denoiser twice
at the same z (the process the bound describes); either way the estimate fed back is the
temperature-1 one the model was trained on. Known tokens (a prompt, an infill template) are held
at every step the way the run was trained to see them or by RePaint-style replacement; a label
steers by classifier-free guidance, the conditional and unconditional denoisers run as two
forwards per step and mixed.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from dlm import (conditioning, config, denoiser, diffusion, flops, labels, noise, samplers,
                 sharding, streams)
from dlm.denoiser import branch_labels, embedding_table, self_condition
from dlm.families import no_stage, one_budget, one_stage_steps
from dlm.losses import token_ce
from dlm.model import Transformer

NAME = 'gaussian'
SUMMARY = 'Gaussian noise on token embeddings'
EXACT = False
LIKELIHOOD = True   # the evaluation gives bits per byte (exact or a bound)
SAMPLE_OPTIONS = frozenset({'num_steps', 'sampler', 'temperature', 'score_temperature',
                            'self_condition', 'clamp'})
SAMPLERS = samplers.SAMPLERS
INFILL = True
LEVEL = 'logsnr'  # the corruption level of the held-out CE curve


def model_fields(c) -> dict:
  return {'causal': False, 'conditioning': c.diffusion.condition_fraction > 0,
          'prior_logits': c.diffusion.prior_logits}


def train_flops(c, vocab_size: int, by_part: bool = False) -> dict:
  """Training FLOPs per token (`dlm.flops`): the trained pass (with the x0 estimate under the
  mse objective) and the self-conditioning pass on half the rows."""
  mcfg = config.model_config(c, vocab_size)
  L, dc = mcfg.sequence_len, c.diffusion
  return flops.stages({'model': flops.denoiser(mcfg, L, dc.self_condition,
                                               c.train.device_batch_size, dc.loss != 'ce')},
                      L, by_part)


# ---- the train state's noise allocation ---------------------------------------------------

prepare = no_stage  # one stage: nothing trained before the model
at_budget = one_budget
stage_steps = one_stage_steps


def init_noise(c, mcfg) -> dict:
  return noise.init_state(c.diffusion, mcfg.diffusion_dim, mcfg.vocab_size)


def update_noise(noise_state, rows, step, c) -> dict:
  """The running CE curve, and at refresh steps a new proposal (`noise.update`)."""
  return noise.update(noise_state, rows['lam'].reshape(-1), rows['ce'].reshape(-1), step,
                      c.diffusion, rows['weight'].reshape(-1))


# ---- training ------------------------------------------------------------------------------

def draw(key, tokens_BL, model: Transformer, c, proposal=None, patterns=None,
         condition: bool = True, rows=None) -> dict:
  """The random inputs of one batch's loss, each row's a function of the key and its global
  row number alone (`streams`; rows: which rows of the step these are, default all), so the
  train step can draw a device's rows of one micro-batch and a run has the same losses however
  its batch is split (tests). condition=False: the unconditional objective (no known tokens, no
  label), for validation.

  lam (B,) log-SNRs stratified over the step's rows, eps (B, L, E) Gaussian noise, even (B,)
  the rows that get the self-conditioning pass; with conditioning, known (B, L) the known
  positions (`conditioning.random_known`); with a label, dropped (B,) the rows trained without
  it.
  """
  dc = c.diffusion
  k_t, k_eps, k_cond = jax.random.split(key, 3)
  k_known, k_drop = jax.random.split(k_cond)
  B, L = tokens_BL.shape
  rows = streams.of(rows, B)
  d = {'lam': noise.of(dc, model.cfg.diffusion_dim).draw(k_t, rows, proposal),
       'eps': streams.normal(k_eps, rows, (L, model.cfg.diffusion_dim)),
       'even': streams.even(rows)}
  d.update(conditioning.training_draws(k_known, k_drop, tokens_BL, model.cfg, dc, patterns,
                                       condition, rows))
  return d


def scored_positions(tokens_BL, d: dict):
  """The unknown positions (`conditioning.unknown_count`)."""
  return conditioning.unknown_count(tokens_BL, d)


def loss(params, model: Transformer, tokens_BL, d: dict, c, patterns=None, norm=None):
  """(loss, (metrics, rows)). d: the batch's random inputs (`draw`); patterns: the label's
  token patterns (`labels.Label.patterns`) when the run has a label; norm: the positions to
  average over (`scored_positions`; default this batch's).

  ce (default): cross-entropy of the denoiser's logits against the clean tokens at a random
  noise level (CDCD, Plaid), over the unknown positions. mse: squared error of eps / x0 / v
  derived from x0_hat = softmax(logits) @ E, the seed's objective when parameterization='eps'.
  rows (per-row log-SNR, CE and weight) feed the running CE curve of `dlm.noise`.
  """
  dc = c.diffusion
  E_VE = embedding_table(model, params)
  x0_BLE = E_VE[tokens_BL]
  lam_B, eps_BLE = d['lam'], d['eps']
  z_BLE, free_BL = conditioning.held_noisy(x0_BLE, d, dc.path)
  known_BL = d.get('known')
  label_B = labels.of_rows(tokens_BL, d, patterns)
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
  value = ce if dc.loss == 'ce' else mse
  metrics = {'loss': value, 'ce': ce}
  # The running CE curve of `dlm.noise` is the unconditional one: conditioned rows have
  # context the sampler of unconditional text does not, so they count with weight zero.
  unconditioned_B = jnp.all(free_BL > 0, -1).astype(jnp.float32)
  rows = {'lam': lam_B, 'ce': jax.lax.stop_gradient(ce_BL.mean(-1)), 'weight': unconditioned_B}
  return value, (metrics, rows)


def param_metrics(params, model: Transformer) -> dict:
  """The mean norm of the diffusion embeddings (the seed's collapse shows as this shrinking)."""
  return {'embed_norm': jnp.mean(jnp.linalg.norm(embedding_table(model, params), axis=-1))}


# ---- the likelihood bound ----------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=('model', 'c', 'num_steps'))
def bound(params, model: Transformer, c, tokens_BL, prev_B, key, proposal, num_steps: int = 0):
  """The bound per sequence (module docstring) of a trained denoiser; with self-conditioning,
  of the two-pass denoiser (first pass at the same z_t, as the sampler's `fresh` mode runs it).
  prev_B (the token before each window) is unused: the window is bounded as a whole."""
  del prev_B
  E_VE = embedding_table(model, params)

  def denoise(z, lam_B):
    return model.apply(params, z, lam_B, self_condition(
        params, model, z, lam_B, E_VE, False, c.diffusion.self_condition))
  t = bound_terms(denoise, E_VE, tokens_BL, key, c.eval.bound_samples, proposal, num_steps,
                  model.cfg.path)
  parts = {'recon': t['recon'], 'diffusion': t['diffusion'].mean(-1), 'prior': t['prior']}
  return {'nats': sum(parts.values()), 'replicas': t['diffusion'], 'parts': parts,
          'level': t['lam'], 'ce': t['ce']}


def bound_terms(denoise, E_VE, tokens_BL, key, num_samples: int, proposal, num_steps: int = 0,
                path: str = 'vp') -> dict:
  """Per-sequence bound terms in nats for any denoiser logits(z, lam_B) -> (B, L, V):
  recon (B,), diffusion (B, 2) one estimate per replica, prior (B,), and per draw the log-SNR
  and the denoiser's cross-entropy per token (`lam`, `ce`: (B, draws)).

  num_steps = 0: the continuous-time bound over the proposal's log-SNR range, each draw
  lambda ~ q (the run's proposal, `dlm.noise`) weighted by 1 / q(lambda): an unbiased estimate
  for any q > 0 on the range, whose variance is small when q follows the integrand. num_steps
  = T: the discrete bound of the T-step ancestral sampler on its grid (T + 1 equal quantiles
  of q), one KL term drawn uniformly per draw."""
  x0 = E_VE[tokens_BL]
  B = tokens_BL.shape[0]
  if num_steps:  # lam from the noisiest to the cleanest step
    grid = noise.steps(proposal, num_steps)
    lo, hi = grid[0], grid[-1]
  else:
    lo, hi = proposal['edges'][0], proposal['edges'][-1]
  k_rec, k_u, k_eps = jax.random.split(key, 3)

  lam_hi = jnp.full((B,), hi)
  z0 = diffusion.q_sample(x0, lam_hi, jax.random.normal(k_rec, x0.shape), path)
  recon = optax.softmax_cross_entropy_with_integer_labels(denoise(z0, lam_hi), tokens_BL).sum(-1)

  def lam_and_weight(u_B):
    """The log-SNR to denoise at and the weight of ||x0 - x0_hat||^2 in the estimate."""
    if num_steps:
      i = jnp.minimum(jnp.floor(u_B * num_steps).astype(jnp.int32), num_steps - 1)
      lam_t, lam_s = grid[i], grid[i + 1]
      # T * KL: T/2 (SNR_s - SNR_t) = T/2 e^lam_s (1 - e^(lam_t - lam_s)), in expm1 form.
      return lam_t, 0.5 * num_steps * jnp.exp(lam_s) * -jnp.expm1(lam_t - lam_s)
    lam = noise.sample(proposal, u_B)
    return lam, 0.5 * jnp.exp(lam) / noise.density(proposal, lam)

  def one(_, xs):
    u_B, k = xs
    lam_B, w_B = lam_and_weight(u_B)
    z = diffusion.q_sample(x0, lam_B, jax.random.normal(k, x0.shape), path)
    logits = denoise(z, lam_B)
    x0_hat = diffusion.x0_from_logits(logits, E_VE)
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BL).mean(-1)
    return None, (w_B * jnp.sum(jnp.square(x0 - x0_hat), axis=(1, 2)), lam_B, ce_B)

  u_BS = diffusion.lattice_draws(k_u, B, num_samples)
  S = u_BS.shape[1]
  _, (terms_SB, lam_SB, ce_SB) = jax.lax.scan(one, None, (u_BS.T, jax.random.split(k_eps, S)))
  return {'recon': recon, 'diffusion': terms_SB.T.reshape(B, 2, S // 2).mean(-1),
          'prior': diffusion.prior_kl(x0, lo, path).sum(-1), 'lam': lam_SB.T, 'ce': ce_SB.T}


def describe_bound(c) -> str:
  denoiser = 'two-pass self-conditioned denoiser' if c.diffusion.self_condition else 'denoiser'
  return (f'continuous-time variational bound of the {denoiser}, importance-sampled from the '
          'run\'s noise proposal')


def level_edges(proposal):
  """Bins of the held-out CE curve: the proposal's log-SNR bins."""
  return proposal['edges']


# ---- what the model learns from context ----------------------------------------------------

PROBE_STRIDE = 4  # every 4th position is a probe


@functools.partial(jax.jit, static_argnames=('model', 'c', 'clean_context'))
def context_probe(params, model: Transformer, c, tokens_BL, key, proposal, levels_K,
                  clean_context: bool):
  """Mean cross-entropy (K,) at the probe positions (every PROBE_STRIDE-th) noised at the
  level of quantile levels_K[k] of q (0: the clean end, 1: the noisy end), with the rest of
  the window noised at the same level (clean_context=False) or at the clean end of the range
  (True: every context token identifiable from its own vector, without needing the run to have
  been trained with known tokens). The gap between the two is what the model learns from
  context at that level."""
  E_VE = embedding_table(model, params)
  x0 = E_VE[tokens_BL]
  B, L = tokens_BL.shape
  probe_L = jnp.arange(L) % PROBE_STRIDE == 0
  lam_hi = proposal['edges'][-1]

  def one(level, k):
    k_eps, k_ctx = jax.random.split(k)
    lam_B = jnp.full((B,), noise.sample(proposal, 1.0 - level))
    z = diffusion.q_sample(x0, lam_B, jax.random.normal(k_eps, x0.shape), model.cfg.path)
    if clean_context:
      z_ctx = diffusion.q_sample(x0, jnp.full((B,), lam_hi), jax.random.normal(k_ctx, x0.shape),
                                 model.cfg.path)
      z = jnp.where(probe_L[None, :, None], z, z_ctx)
    logits = model.apply(params, z, lam_B, self_condition(
        params, model, z, lam_B, E_VE, False, c.diffusion.self_condition))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BL)
    return jnp.sum(ce * probe_L) / (B * jnp.sum(probe_L))
  return jax.vmap(one)(levels_K, jax.random.split(key, levels_K.shape[0]))


# ---- sampling -------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=(
    'model', 'num_samples', 'seq_len', 'num_steps', 'sampler', 'clamp', 'self_condition',
    'branches', 'trajectory', 'mesh'))
def sample_tokens(params, key, proposal, *, model, num_samples: int, seq_len: int,
                  num_steps: int, sampler: str = 'ancestral', temperature=1.0,
                  score_temperature=1.0, clamp: bool = False, self_condition: str = '',
                  cond_tokens=None, known=None, label=None, guidance=1.0,
                  branches: int = 0, trajectory: bool = False, mesh=None, bos_id=None):
  """Token ids (num_samples, seq_len) drawn by reverse diffusion through num_steps + 1
  log-SNRs at equal quantiles of the proposal (`noise.steps`). self_condition: '' (off),
  'previous' or 'fresh'.

  Known tokens: cond_tokens / known (N, L) (`conditioning.batch`), held fixed (`known_by`) the
  way the run was trained to see them (clean embeddings marked as known) or, for a run trained
  without conditioning, RePaint-style (Lugmayr et al. 2022: before each step the known
  positions of z are overwritten by a fresh draw of q(z_t | x0)). Either way the returned ids
  are exactly cond_tokens at the known positions.

  Labels: branches = 0 (no label: the unconditional model), 1 (the conditional model with
  `label`) or 2 (classifier-free guidance, Ho & Salimans 2022: both, mixed as
  x0_hat = x0_u + guidance (x0_c - x0_u), the final logits likewise).

  trajectory=True also returns, per step, the argmax ids and the entropy (nats) of each
  position's predicted token distribution, each (steps, N, L).

  mesh: the samples are split over its data axis (data-parallel sampling, a per-device batch);
  None keeps XLA's default placement. bos_id: unused (every position is generated).
  """
  del bos_id
  lam_steps = noise.steps(proposal, num_steps)
  E_VE = embedding_table(model, params)
  path = model.cfg.path
  N = num_samples
  k_init, k_steps = jax.random.split(key)
  spread = ((lambda x: jax.lax.with_sharding_constraint(x, sharding.rows(N, mesh, 0, x.ndim)))
            if mesh is not None else (lambda x: x))
  z = spread(jax.random.normal(k_init, (N, seq_len, E_VE.shape[-1])))
  how = denoiser.known_by(model, cond_tokens)
  hold = denoiser.holder(how, E_VE[cond_tokens] if how else None, known, path)
  known_in = known if how == 'trained' else None
  labels_G = branch_labels(model, N, label, branches)
  mix = functools.partial(denoiser.guided, guidance=guidance)

  def denoise(z, lam_t, x0_prev):
    """(each branch's logits (N, L, V), the temperature-1 estimate to feed back)."""
    logits_G = denoiser.branches(params, model, z, jnp.full((N,), lam_t), x0_prev, known_in,
                                 labels_G, self_condition, E_VE)
    return logits_G, mix([diffusion.x0_from_logits(l, E_VE) for l in logits_G])

  def estimate(z, lam_t, logits_G):
    """The x0 the update uses."""
    if clamp:
      x0_hat = E_VE[jnp.argmax(mix(logits_G), -1)]
    else:
      x0_hat = mix([diffusion.x0_from_logits(l, E_VE, temperature) for l in logits_G])
    return samplers.score_tempered(z, x0_hat, lam_t, score_temperature, path)

  def decoded(logits_G):
    ids = jnp.argmax(mix(logits_G), -1).astype(jnp.int32)
    return jnp.where(known, cond_tokens, ids) if how else ids

  def record(logits_G):
    logp = jax.nn.log_softmax(mix(logits_G), -1)
    return decoded(logits_G), -jnp.sum(jnp.exp(logp) * logp, -1)

  logits_G, steps = samplers.reverse(k_steps, lam_steps, z, sampler, path, hold=hold,
                                     denoise=denoise, estimate=estimate, spread=spread,
                                     record=record if trajectory else None)
  tokens = decoded(logits_G)
  return (tokens, steps) if trajectory else tokens
