"""The hybrid family: masking decides which tokens are corrupted, Gaussian noise how much
(CANDI, Pynadath et al. 2025, arXiv 2510.22510).

Masked diffusion corrupts a token all at once, Gaussian diffusion every token by the same
amount; CANDI decouples the two. At time t in [0, 1] each position is corrupted with
probability m(t) = t (the log-linear schedule of MDLM, Sahoo et al. 2024). A corrupted position
carries a noisy embedding z = alpha(lam) E[x] + sigma(lam) eps, the others their clean
embedding and the model's learned `known` marker. The log-SNR is coupled to t by the run's
noise proposal q (`dlm.noise`): lam(t) = F_q^-1(1 - t), so t = 0 is the clean end, t = 1 the
noisy end, and a uniform t draws lam ~ q, the allocation that follows the CE curve.

The bound. Per position the forward process is clean until a random time tau (P(tau < t) =
m(t)), then Gaussian: z ~ q(z | x) at lam(tau), diffused onward to lam(t). It is Markov and its
marginal at t is the one above; given tau < t, the law of z_t does not depend on tau. So from t
back to s < t a corrupted position is revealed (tau in (s, t]) with probability
(m(t) - m(s)) / m(t) whatever z_t, and otherwise moves by the Gaussian posterior
q(z_s | z_t, x). The model reveals with the same probability a token drawn from the denoiser's
softmax and moves the rest by q(z_s | z_t, x0_hat), x0_hat = softmax(logits) @ E (CDCD).
Sharing the reveal probability, the step's KL per corrupted position is the masked term plus
the Gaussian one (the KL of two Gaussian posteriors of `dlm.families.gaussian`, Kingma et al. 2021):
  (m(t) - m(s)) / m(t) CE + m(s) / m(t) 1/2 (SNR_s - SNR_t) ||x0 - x0_hat||^2,
summed over the T steps of the grid t_k = 1 - k / T (the last, to s = 0, reveals all), plus
the prior term below: the discrete bound of the T-step ancestral sampler. As s -> t the sum
becomes the continuous NELBO
  E_t[ m'(t) / m(t) sum_corrupted CE ]                                    reveal
  + E_t[ 1/2 e^lam |dlam/dt| sum_corrupted ||x0 - x0_hat||^2 ]          gaussian
  + E[ sum_{corrupted at T_MIN} CE ]                                    residual
  + KL(q(z_1 | x) || N(0, I)) over every position (m(1) = 1)            prior,
t uniform on [T_MIN, 1] (below T_MIN one last step reveals everything left: m'/m = 1/t gives
the reveal estimate a variance growing like log(1 / T_MIN), and the residual costs about
L T_MIN tokens decoded near the clean end). With t uniform |dlam/dt| = 1 / q(lam): the
Gaussian family's importance weight. Limits (tests): with no clean positions (m = 1 for t > 0)
the reveal term vanishes and the residual is the reconstruction term, so the bound is the
Gaussian bound; with no information in the corrupted embeddings (lam -> -inf) the gaussian and
prior terms vanish and it is the masked NELBO (MDLM).

Training: the cross-entropy of the corrupted positions at t uniform (CANDI trains with CE on
the corrupted positions), each weighted by 1 / m(t). The weight makes the loss, a sum over
positions over the batch's scored count (what the train step adds up over devices), an
unbiased estimate of the mean CE per position at lam ~ q: every row counts alike whatever its
t, as in the Gaussian family, so q weighs the noise levels the same way there and here. The
weight is at most 1 / T_MIN, where lam is near the clean end and the CE near zero.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from dlm import (conditioning, config, denoiser, diffusion, flops, labels, losses, noise,
                 samplers, sharding, streams)
from dlm.denoiser import embedding_table
from dlm.families import gaussian, no_stage, one_budget, one_stage_steps
from dlm.model import Transformer

NAME = 'hybrid'
SUMMARY = ('masking picks the corrupted tokens, Gaussian noise at a coupled log-SNR corrupts '
           'them (CANDI)')
EXACT = False
LIKELIHOOD = True   # the evaluation gives bits per byte (exact or a bound)
SAMPLE_OPTIONS = frozenset({'num_steps', 'sampler', 'temperature', 'score_temperature',
                            'self_condition', 'clamp', 'order'})
ORDERS = ('random', 'confidence')
SAMPLERS = samplers.SAMPLERS
INFILL = True
LEVEL = 'logsnr'  # the corruption level of the held-out CE curve: lam of the corrupted tokens
T_MIN = 1e-3  # the continuous bound and training stop here (see the module docstring)


def log_linear(t):
  """(m(t), m'(t)) of the log-linear schedule m(t) = t: MDLM's, linear in the mask rate."""
  return t, jnp.ones_like(t)


def coupling(proposal):
  """t -> (lam(t), |dlam/dt|) with lam(t) = F_q^-1(1 - t): |dlam/dt| = 1 / q(lam).

  Measured against lam(t) = F_q^-1((1 - t)^4), which takes the corrupted tokens' identity away
  early so that most of the path is masking with a faint hint: that bound was worse
  (docs/results.md, 'Model families side by side')."""
  def lam_of(t):
    lam = noise.sample(proposal, 1.0 - t)
    return lam, 1.0 / noise.density(proposal, lam)
  return lam_of


def train_flops(c, vocab_size: int, by_part: bool = False) -> dict:
  """Training FLOPs per token (`dlm.flops`): the trained pass (always the CE objective) and the
  self-conditioning pass on half the rows."""
  mcfg = config.model_config(c, vocab_size)
  L = mcfg.sequence_len
  return flops.stages({'model': flops.denoiser(mcfg, L, c.diffusion.self_condition,
                                               c.train.device_batch_size, False)}, L, by_part)


def describe_bound(c) -> str:
  denoiser = 'two-pass self-conditioned denoiser' if c.diffusion.self_condition else 'denoiser'
  return (f'continuous-time hybrid ELBO (CANDI-style masking + Gaussian noise) of the '
          f'{denoiser}, t stratified, the log-SNR coupled to t by the run\'s noise proposal')


def level_edges(proposal):
  """Bins of the held-out CE curve: the proposal's log-SNR bins."""
  return proposal['edges']


def model_fields(c) -> dict:
  """Bidirectional attention on embeddings; the `known` marker tells clean positions apart."""
  return {'causal': False, 'conditioning': True}


prepare = no_stage  # one stage: nothing trained before the model
at_budget = one_budget
stage_steps = one_stage_steps


# The noise proposal q and its running CE curve (`dlm.noise`), which lam(t) follows: kept as the
# Gaussian family keeps it, from the rows' (lam, CE over the corrupted positions).
init_noise, update_noise = gaussian.init_noise, gaussian.update_noise


def draw(key, tokens_BL, model: Transformer, c, noise_state, patterns=None,
         condition: bool = True, rows=None) -> dict:
  """The random inputs of a batch's loss, row by row (see `gaussian.draw`): t (B,) stratified
  over [T_MIN, 1] over the step's rows, lam (B,) its log-SNR, u (B, L) (corrupted where
  u < m(t)), eps (B, L, E), even (B,); known (B, L) with condition_fraction > 0, dropped (B,)
  with a label. noise_state: the proposal q (`noise.proposal`)."""
  dc = c.diffusion
  k_t, k_u, k_eps, k_cond = jax.random.split(key, 4)
  k_known, k_drop = jax.random.split(k_cond)
  B, L = tokens_BL.shape
  rows = streams.of(rows, B)
  t_B = T_MIN + (1.0 - T_MIN) * diffusion.stratified(k_t, rows)
  d = {'t': t_B, 'lam': coupling(noise_state)(t_B)[0],
       'u': streams.uniform(k_u, rows, (L,)),
       'eps': streams.normal(k_eps, rows, (L, model.cfg.diffusion_dim)),
       'even': streams.even(rows)}
  d.update(conditioning.training_draws(k_known, k_drop, tokens_BL, model.cfg, dc, patterns,
                                       condition, rows))
  return d


def scored_positions(tokens_BL, d: dict):
  """The positions the loss is normalised by: every one that is not known."""
  return conditioning.unknown_count(tokens_BL, d)


def loss(params, model: Transformer, tokens_BL, d: dict, c, patterns=None, norm=None):
  """(loss, (metrics, rows)): the 1 / m(t)-weighted CE of the corrupted positions over `norm`
  (module docstring); metrics loss, ce (the same) and corrupted_fraction, sums over norm; rows
  lam, ce (mean over each row's corrupted positions) and weight (1 for unconditioned rows with
  a corrupted position: the running CE curve of `dlm.noise`)."""
  dc = c.diffusion
  E_VE = embedding_table(model, params)
  x0_BLE = E_VE[tokens_BL]
  m_B, _ = log_linear(d['t'])
  lam_B = d['lam']
  known_BL = d.get('known', jnp.zeros(tokens_BL.shape, bool))
  corrupt_BL = (d['u'] < m_B[:, None]) & ~known_BL
  z_BLE = jnp.where(corrupt_BL[..., None], diffusion.q_sample(x0_BLE, lam_B, d['eps'],
                                                              dc.path), x0_BLE)
  label_B = labels.of_rows(tokens_BL, d, patterns)
  clean_BL = ~corrupt_BL
  x0_prev = denoiser.self_condition(params, model, z_BLE, lam_B, E_VE, True, dc.self_condition,
                                    clean_BL, label_B, d['even'])
  h_BLD = model.apply(params, z_BLE, lam_B, x0_prev, clean_BL, label_B,
                      method=Transformer.features)
  ce_BL = losses.token_ce(params, model, h_BLD, z_BLE, tokens_BL, lam_B, c.train.logits_chunk)
  hit_BL = corrupt_BL.astype(jnp.float32)
  norm = scored_positions(tokens_BL, d) if norm is None else norm
  value = jnp.sum(ce_BL * hit_BL / m_B[:, None]) / norm
  count_B = jnp.sum(hit_BL, -1)
  metrics = {'loss': value, 'ce': value, 'corrupted_fraction': jnp.sum(hit_BL) / norm}
  weight_B = ((count_B > 0) & ~jnp.any(known_BL, -1)).astype(jnp.float32)
  rows = {'lam': lam_B, 'weight': weight_B,
          'ce': jax.lax.stop_gradient(jnp.sum(ce_BL * hit_BL, -1) / jnp.maximum(count_B, 1))}
  return value, (metrics, rows)


def param_metrics(params, model: Transformer) -> dict:
  """The mean norm of the diffusion embeddings (`gaussian.param_metrics`)."""
  return {'embed_norm': jnp.mean(jnp.linalg.norm(embedding_table(model, params), axis=-1))}


def bound_terms(denoise, E_VE, tokens_BL, key, num_samples: int, lam_of, num_steps: int = 0,
                mask_rate=log_linear, path: str = 'vp') -> dict:
  """The bound's terms in nats for any denoise(z_BLE, lam_B, clean_BL) -> logits (B, L, V):
  reveal, gaussian (B,), replicas (B, 2) their sum per lattice replica, residual, prior (B,);
  per draw level (B, S) its log-SNR and ce (B, S) the mean CE per corrupted token (NaN where
  none is). lam_of: t -> (lam, |dlam/dt|) (`coupling`); mask_rate: t -> (m, m'), m(1) = 1.
  num_steps = 0: the continuous NELBO, t on randomly shifted lattices over [T_MIN, 1]
  (`diffusion.lattice_draws`); T: the T-step discrete bound, one step drawn per draw, times T."""
  x0_BLE = E_VE[tokens_BL]
  B, L = tokens_BL.shape
  k_res, k_u, k_draws = jax.random.split(key, 3)

  def corrupted(t_B, k):
    """The denoiser's per-position CE and squared error at a state drawn at t (zero where
    clean), the corrupted positions and lam(t)."""
    k_mask, k_eps = jax.random.split(k)
    lam_B, _ = lam_of(t_B)
    hit_BL = (jax.random.uniform(k_mask, (B, L)) < mask_rate(t_B)[0][:, None])
    z_BLE = jnp.where(hit_BL[..., None], diffusion.q_sample(
        x0_BLE, lam_B, jax.random.normal(k_eps, x0_BLE.shape), path), x0_BLE)
    logits = denoise(z_BLE, lam_B, ~hit_BL)
    ce_BL = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BL)
    sq_BL = jnp.sum(jnp.square(x0_BLE - diffusion.x0_from_logits(logits, E_VE)), -1)
    hit_BL = hit_BL.astype(jnp.float32)
    return ce_BL * hit_BL, sq_BL * hit_BL, hit_BL, lam_B

  def weights(u_B):
    """The time to draw the state at and the weights of its summed CE and squared error."""
    if num_steps:
      k_B = jnp.minimum(jnp.floor(u_B * num_steps).astype(jnp.int32), num_steps - 1)
      t_B, s_B = 1.0 - k_B / num_steps, 1.0 - (k_B + 1) / num_steps
      m_t, m_s = mask_rate(t_B)[0], jnp.where(s_B > 0, mask_rate(s_B)[0], 0.0)
      lam_t, lam_s = lam_of(t_B)[0], lam_of(s_B)[0]
      # T/2 (SNR_s - SNR_t) in expm1 form, for the positions that stay corrupted
      snr_gap = 0.5 * jnp.exp(lam_s) * -jnp.expm1(lam_t - lam_s)
      return t_B, num_steps * (m_t - m_s) / m_t, num_steps * m_s / m_t * snr_gap
    t_B = T_MIN + (1.0 - T_MIN) * u_B
    (m, dm), (lam, rate) = mask_rate(t_B), lam_of(t_B)
    return t_B, (1.0 - T_MIN) * dm / m, (1.0 - T_MIN) * 0.5 * jnp.exp(lam) * rate

  def one(_, xs):
    u_B, k = xs
    t_B, w_ce, w_sq = weights(u_B)
    ce_BL, sq_BL, hit_BL, lam_B = corrupted(t_B, k)
    count_B = jnp.sum(hit_BL, -1)
    mean_ce = jnp.where(count_B > 0, jnp.sum(ce_BL, -1) / jnp.maximum(count_B, 1), jnp.nan)
    return None, (w_ce * jnp.sum(ce_BL, -1), w_sq * jnp.sum(sq_BL, -1), lam_B, mean_ce)

  u_BS = diffusion.lattice_draws(k_u, B, num_samples)
  S = u_BS.shape[1]
  _, (reveal_SB, gauss_SB, lam_SB, ce_SB) = jax.lax.scan(
      one, None, (u_BS.T, jax.random.split(k_draws, S)))
  if num_steps:  # the last step revealed everything
    residual = jnp.zeros((B,))
  else:
    residual = jnp.sum(corrupted(jnp.full((B,), T_MIN), k_res)[0], -1)
  lam_min = lam_of(jnp.ones(()))[0]
  return {'reveal': reveal_SB.mean(0), 'gaussian': gauss_SB.mean(0),
          'replicas': (reveal_SB + gauss_SB).T.reshape(B, 2, S // 2).mean(-1),
          'residual': residual, 'prior': diffusion.prior_kl(x0_BLE, lam_min, path).sum(-1),
          'level': lam_SB.T, 'ce': ce_SB.T}


def two_pass(params, model: Transformer, E_VE, enabled: bool):
  """denoise(z, lam_B, clean_BL) -> logits of the model, with self-conditioning the two-pass
  denoiser (`denoiser.self_condition`), which the sampler's `fresh` mode runs."""
  def denoise(z_BLE, lam_B, clean_BL):
    fed = denoiser.self_condition(params, model, z_BLE, lam_B, E_VE, False, enabled, clean_BL)
    return model.apply(params, z_BLE, lam_B, fed, clean_BL)
  return denoise


@functools.partial(jax.jit, static_argnames=('model', 'num_samples', 'self_condition',
                                             'num_steps'))
def _bound(params, tokens_BL, key, proposal, *, model, num_samples, self_condition, num_steps):
  E_VE = embedding_table(model, params)
  return bound_terms(two_pass(params, model, E_VE, self_condition), E_VE, tokens_BL, key,
                     num_samples, coupling(proposal), num_steps, path=model.cfg.path)


def bound(params, model: Transformer, c, tokens_BL, prev_B, key, proposal,
          num_steps: int = 0) -> dict:
  """Nats per sequence (an upper bound on -log p): {'nats', 'replicas', 'parts', 'level', 'ce'}
  (`bound_terms`); prev_B (the token before each row) is the AR family's and unused here."""
  t = _bound(params, tokens_BL, key, proposal, model=model, num_samples=c.eval.bound_samples,
             self_condition=c.diffusion.self_condition, num_steps=num_steps)
  parts = {k: t[k] for k in ('reveal', 'gaussian', 'residual', 'prior')}
  return {'nats': t['replicas'].mean(-1) + t['residual'] + t['prior'],
          'replicas': t['replicas'], 'parts': parts, 'level': t['level'], 'ce': t['ce']}


@functools.partial(jax.jit, static_argnames=('model', 'self_condition'))
def _probe(params, tokens_BL, key, proposal, levels_K, clean_context, *, model, self_condition):
  E_VE = embedding_table(model, params)
  denoise = two_pass(params, model, E_VE, self_condition)
  x0_BLE = E_VE[tokens_BL]
  B, L = tokens_BL.shape
  probe_BL = jnp.broadcast_to(jnp.arange(L) % 4 == 0, (B, L))

  def one(xs):
    t, k = xs
    k_mask, k_eps = jax.random.split(k)
    lam_B = jnp.full((B,), coupling(proposal)(t)[0])
    hit_BL = probe_BL | (~clean_context & (jax.random.uniform(k_mask, (B, L)) < log_linear(t)[0]))
    z_BLE = jnp.where(hit_BL[..., None], diffusion.q_sample(
        x0_BLE, lam_B, jax.random.normal(k_eps, x0_BLE.shape), model.cfg.path), x0_BLE)
    ce_BL = optax.softmax_cross_entropy_with_integer_labels(denoise(z_BLE, lam_B, ~hit_BL),
                                                            tokens_BL)
    return jnp.sum(ce_BL * probe_BL) / jnp.sum(probe_BL)
  return jax.lax.map(one, (levels_K, jax.random.split(key, levels_K.shape[0])))


def context_probe(params, model: Transformer, c, tokens_BL, key, proposal, levels_K,
                  clean_context: bool):
  """(K,) mean CE of the probe positions (every 4th) corrupted at t = levels_K[k], with the
  other positions corrupted at the same t (clean_context=False) or all clean (True): how much
  the clean context is worth at each corruption level."""
  return _probe(params, tokens_BL, key, proposal, jnp.asarray(levels_K, jnp.float32),
                jnp.asarray(clean_context), model=model,
                self_condition=c.diffusion.self_condition)


def draw_tokens(key, logits_NLV, temperature=1.0):
  """(ids, their probabilities) drawn from softmax(logits / temperature) by inverse CDF, not
  float32 Gumbel-max, which cannot reach the tail (`ar.top_p_sample`)."""
  probs = jax.nn.softmax(logits_NLV.astype(jnp.float32) / temperature, -1)
  cdf = jnp.cumsum(probs, -1)
  u = jax.random.uniform(key, probs.shape[:-1] + (1,)) * cdf[..., -1:]
  ids = jnp.minimum(jnp.sum(cdf <= u, -1), probs.shape[-1] - 1).astype(jnp.int32)
  return ids, jnp.take_along_axis(probs, ids[..., None], -1)[..., 0]


def reveals(key, corrupt_NL, p, confidence_NL, order: str):
  """Which corrupted positions a step reveals, each with probability p: independently
  ('random'), or the expected number, stochastically rounded, of the most confident
  ('confidence': the largest probability of the drawn token)."""
  k_u, k_round = jax.random.split(key)
  if order == 'random':
    return corrupt_NL & (jax.random.uniform(k_u, corrupt_NL.shape) < p)
  if order != 'confidence':
    raise ValueError(f'unknown reveal order {order!r}; expected one of {ORDERS}')
  count_N = jnp.floor(jnp.sum(corrupt_NL, -1) * p + jax.random.uniform(k_round,
                                                                       corrupt_NL.shape[:1]))
  rank_NL = jnp.argsort(jnp.argsort(-jnp.where(corrupt_NL, confidence_NL, -1.0), -1), -1)
  return corrupt_NL & (rank_NL < count_N[:, None])


def reverse(denoise, E_VE, key, lam_of, cond_tokens_NL, known_NL, num_steps: int, *,
            sampler='ancestral', temperature=1.0, score_temperature=1.0, clamp=False,
            order='random', guidance=1.0, trajectory=False, path='vp',
            spread=lambda x: x):
  """The T-step reverse process on the grid t_k = 1 - k / T (pure: any denoise(z_NLE, lam_N,
  clean_NL, x0_fed) -> [logits of each guidance branch]). Each step reveals each corrupted
  position with probability (m(t) - m(s)) / m(t) (all at s = 0) and moves the others by
  `samplers.step` from lam(t) to lam(s); see `sample_tokens`."""
  N, L = cond_tokens_NL.shape
  t_K = jnp.linspace(1.0, 0.0, num_steps + 1)
  lam_K = lam_of(t_K)[0]
  m_K = log_linear(t_K)[0].at[-1].set(0.0)
  k_init, k_steps = jax.random.split(key)
  mix = lambda xs: xs[0] if len(xs) == 1 else xs[1] + guidance * (xs[0] - xs[1])

  def step(carry, xs):
    z, ids, corrupt, x0_fed, x0_last, lam_last = carry
    lam_t, lam_s, m_t, m_s, k, i = xs
    k_noise, k_draw, k_reveal = jax.random.split(k, 3)
    z = jnp.where(corrupt[..., None], z, E_VE[ids])
    logits_G = denoise(z, jnp.full((N,), lam_t), ~corrupt, x0_fed)
    x0_fed = mix([diffusion.x0_from_logits(l, E_VE) for l in logits_G])
    logits = mix(logits_G)
    if clamp:
      x0_hat = E_VE[jnp.argmax(logits, -1)]
    else:
      x0_hat = mix([diffusion.x0_from_logits(l, E_VE, temperature) for l in logits_G])
    x0_hat = samplers.score_tempered(z, x0_hat, lam_t, score_temperature, path)
    z = samplers.step(sampler, z, x0_hat, lam_t, lam_s, jax.random.normal(k_noise, z.shape),
                      path, x0_prev=x0_last, lam_prev=lam_last,
                      second_order=(i > 0) & (i < num_steps - 1))
    drawn, confidence = draw_tokens(k_draw, logits, temperature)
    revealed = reveals(k_reveal, corrupt, (m_t - m_s) / m_t, confidence, order)
    ids, corrupt = spread(jnp.where(revealed, drawn, ids)), spread(corrupt & ~revealed)
    out = None
    if trajectory:
      logp = jax.nn.log_softmax(logits, -1)
      out = (jnp.where(corrupt, jnp.argmax(logits, -1).astype(jnp.int32), ids),
             jnp.where(corrupt, -jnp.sum(jnp.exp(logp) * logp, -1), 0.0))
    return (spread(z), ids, corrupt, x0_fed, x0_hat, lam_t), out

  z = spread(jax.random.normal(k_init, (N, L, E_VE.shape[-1])))
  zeros = jnp.zeros_like(z)
  carry = (z, cond_tokens_NL.astype(jnp.int32), ~known_NL, zeros, zeros, lam_K[0])
  (_, ids, _, _, _, _), steps = jax.lax.scan(
      step, carry, (lam_K[:-1], lam_K[1:], m_K[:-1], m_K[1:],
                    jax.random.split(k_steps, num_steps), jnp.arange(num_steps)))
  return (ids, steps) if trajectory else ids


@functools.partial(jax.jit, static_argnames=(
    'model', 'num_samples', 'seq_len', 'num_steps', 'sampler', 'self_condition', 'clamp',
    'order', 'branches', 'trajectory', 'mesh'))
def sample_tokens(params, key, proposal, *, model, num_samples: int, seq_len: int,
                  num_steps: int, sampler: str = 'ancestral', temperature=1.0,
                  score_temperature=1.0, self_condition: str = '', clamp: bool = False,
                  order: str = 'random', cond_tokens=None, known=None, label=None,
                  branches: int = 0, guidance=1.0, trajectory: bool = False, mesh=None,
                  bos_id=None):
  """Token ids (num_samples, seq_len) by the reverse process from t = 1 to 0 in num_steps
  steps, lam(t) by the coupling to q. At each step the denoiser's logits (guidance branches
  mixed as in `gaussian.sample_tokens`: x0_hat mixed, the logits mixed for the reveals) give
  x0_hat = softmax(logits / temperature) @ E (score-tempered, or clamped to the argmax
  embedding), by which the positions that stay corrupted move (`samplers.step`: ancestral,
  ddim, dpm++2m); revealed tokens are drawn from softmax(logits / temperature), in `order`
  random or confidence (`reveals`). Revealed and known positions carry their clean embeddings
  and the known marker; known tokens (cond_tokens / known (N, L)) come back verbatim.
  self_condition: '' (off), 'previous' (the last step's temperature-1 estimate) or 'fresh' (a
  first pass at the same input). branches: 0 (no label), 1 (the label), 2 (classifier-free
  guidance). trajectory=True also returns per step (ids, entropy) (steps, N, L): the revealed
  ids and the argmax elsewhere, the predicted distribution's entropy (0 where revealed).
  mesh: rows split over its data axis like `gaussian.sample_tokens`."""
  N, L = num_samples, seq_len
  labels_G = denoiser.branch_labels(model, N, label, branches)
  E_VE = embedding_table(model, params)

  def denoise(z, lam_N, clean_NL, x0_prev):
    logits_G = []
    for label_N in labels_G:
      fed = x0_prev if self_condition else None
      if self_condition == 'fresh':
        fed = diffusion.x0_from_logits(model.apply(params, z, lam_N, None, clean_NL, label_N),
                                       E_VE)
      logits_G.append(model.apply(params, z, lam_N, fed, clean_NL, label_N))
    return logits_G

  if known is None:
    cond_tokens, known = jnp.zeros((N, L), jnp.int32), jnp.zeros((N, L), bool)
  spread = ((lambda x: jax.lax.with_sharding_constraint(x, sharding.rows(N, mesh, 0, x.ndim)))
            if mesh is not None else (lambda x: x))
  return reverse(denoise, E_VE, key, coupling(proposal), cond_tokens, known, num_steps,
                 sampler=sampler, temperature=temperature, score_temperature=score_temperature,
                 clamp=clamp, order=order, guidance=guidance, trajectory=trajectory,
                 path=model.cfg.path, spread=spread)
