"""Absorbing-state masked diffusion (MDLM, Sahoo et al. 2024; MD4, Shi et al. 2024): at time
t in [0, 1] each token is masked independently with probability m(t) = t (alpha_t = 1 - t, the
log-linear schedule), and the denoiser predicts the masked tokens from the visible ones.

The denoiser is the diffusion `Transformer` without new parameters: a visible position enters
as its clean embedding E[x] marked by the learned `known` vector, a masked one as zeros; the
time input is a constant (log-SNR 0). MDLM needs none: given which positions are masked the
posterior of a masked token does not depend on t. SUBS parameterisation: the output covers the
V real tokens only (never the mask), visible tokens are carried through unchanged, and the
loss counts masked positions only.

Likelihood (the NELBO of MDLM and MD4), with the weight -alpha'_t / (1 - alpha_t) = 1 / t:

  -log p(x) <= int_0^1 (1/t) E_{z_t}[sum over masked i of -log p(x_i | z_t)] dt,

which with the true conditionals p(x_i | visible) is exactly -log p(x), not only a bound: it is
the expectation over random orders of an any-order autoregressive factorisation (Ou et al.
2024; Shi et al. 2024). t is drawn in [T_MIN, 1], where the weight 1/t stays bounded; below
T_MIN the model reveals what is still masked at once, each position independently. That last
step costs the `residual` term E[sum over positions masked at T_MIN of CE], about
T_MIN * L * (the CE of one token given all the others), about 1e-3 L nats; it is estimated
and counted like the rest, so the reported number is still an upper bound. The T-step bound
is that of the T-step ancestral sampler: a step t -> s reveals each masked position with
probability (t - s) / t, so its KL term is (t - s) / t * sum over masked i of CE at z_t, the
last step (s = 0) revealing everything. It is the right Riemann sum of the continuous
integrand f(t) = sum_i E[CE_i | i masked at t] on the grid, so it approaches the continuous
bound as T grows, from above where f grows with t (the exact denoiser's does: less context,
more uncertainty; coarse steps draw several tokens independently).

Sampling runs that ancestral process from all-masked at t = 1 (or greedily by confidence,
MaskGIT, Chang et al. 2022), reusing the denoiser's output while nothing changes (MDLM's
caching). Known tokens (prompts, infill templates) are visible from the start and never masked.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from dlm import conditioning, config, diffusion, flops, labels, sharding, streams
from dlm.denoiser import branch_labels, embedding_table
from dlm.families import no_stage, one_budget, one_stage_steps
from dlm.losses import token_ce
from dlm.model import Transformer

NAME = 'masked'
SUMMARY = 'absorbing-state masking of tokens (MDLM / MD4), log-linear schedule'
EXACT = False
LIKELIHOOD = True   # the evaluation gives bits per byte (exact or a bound)
SAMPLE_OPTIONS = frozenset({'num_steps', 'temperature', 'order', 'cache'})
ORDERS = ('random', 'confidence')
INFILL = True
LEVEL = 'masked fraction'  # the corruption level of the held-out CE curve: t

T_MIN = 1e-3       # smallest time of the loss and the continuous bound (see `residual`)
PROBE_STRIDE = 4   # every 4th position is a probe of `context_probe`


def model_fields(c) -> dict:
  del c
  return {'causal': False, 'conditioning': True, 'prior_logits': False, 'mask_token': True}


def train_flops(c, vocab_size: int, by_part: bool = False) -> dict:
  """Training FLOPs per token (`dlm.flops`): one trained pass per row, no self-conditioning."""
  mcfg = config.model_config(c, vocab_size)
  L = mcfg.sequence_len
  return flops.stages({'model': flops.scale(flops.forward(mcfg, L), flops.TRAIN)}, L, by_part)


def describe_bound(c) -> str:
  return 'continuous-time masked-diffusion ELBO (MDLM / MD4), stratified over t'


def level_edges(proposal=None):
  """Bins of the held-out CE curve: 20 equal bins of the masked fraction t."""
  return jnp.linspace(0.0, 1.0, 21)


prepare = no_stage  # one stage: nothing trained before the model
at_budget = one_budget
stage_steps = one_stage_steps


def init_noise(c, mcfg) -> None:
  """No noise state: the schedule is fixed."""
  del c, mcfg


def update_noise(noise_state, rows, step, c):
  """Nothing to update: the schedule is fixed."""
  del rows, step, c
  return noise_state


def inputs(E_VE, tokens_BL, masked_BL):
  """The denoiser's input (B, L, E): clean embeddings where visible, zeros where masked."""
  return jnp.where(masked_BL[..., None], 0.0, E_VE[tokens_BL])


def denoiser(params, model: Transformer, label_B=None):
  """logits(tokens_BL, masked_BL) -> (B, L, V) of the model: what is under a mask is ignored."""
  E_VE = embedding_table(model, params)

  def denoise(tokens_BL, masked_BL):
    lam_B = jnp.zeros(tokens_BL.shape[:1])
    return model.apply(params, inputs(E_VE, tokens_BL, masked_BL), lam_B, None, ~masked_BL,
                       label_B)
  return denoise


# ---- training ------------------------------------------------------------------------------

def draw(key, tokens_BL, model: Transformer, c, noise_state=None, patterns=None,
         condition: bool = True, rows=None) -> dict:
  """The random inputs of one batch's loss, row by row (see `gaussian.draw`): t (B,)
  stratified in [T_MIN, 1] over the step's rows, u (B, L) uniforms (position i is masked when
  u < t); known (B, L) with conditioning, never masked; dropped (B,) with a label, the rows
  trained without it."""
  del noise_state
  dc = c.diffusion
  k_t, k_u, k_known, k_drop = jax.random.split(key, 4)
  B, L = tokens_BL.shape
  rows = streams.of(rows, B)
  d = {'t': T_MIN + (1.0 - T_MIN) * diffusion.stratified(k_t, rows),
       'u': streams.uniform(k_u, rows, (L,))}
  d.update(conditioning.training_draws(k_known, k_drop, tokens_BL, model.cfg, dc, patterns,
                                       condition, rows))
  return d


def scored_positions(tokens_BL, d: dict):
  """The positions the loss averages over: those not known (masked or not at this t)."""
  return conditioning.unknown_count(tokens_BL, d)


def weight(t):
  """The NELBO's weight of a masked token's CE at t drawn uniformly in [T_MIN, 1]:
  m'(t) / m(t) = 1 / t, times the range's length (the inverse of t's density)."""
  return (1.0 - T_MIN) / t


def row_weight(masked_BL, free_BL):
  """diffusion.masked_loss=mean: each row's masked CE weighted by the inverse of the row's own
  masked fraction, so the row contributes its mean CE over its masked tokens. Given t the
  masked fraction averages t, so this is the ELBO's 1/t weighting self-normalised per row: the
  same target, without the 1/t weights' variance (the seeds it was measured over:
  docs/results.md, 'Model families side by side')."""
  frac_B = jnp.sum(masked_BL, -1) / jnp.maximum(jnp.sum(free_BL, -1), 1)
  return 1.0 / jnp.maximum(frac_B, 1.0 / masked_BL.shape[-1])


def loss(params, model: Transformer, tokens_BL, d: dict, c, patterns=None, norm=None):
  """(loss, (metrics, rows)): the continuous-time NELBO in nats per scored position, the sum
  over masked positions of CE / t over `norm` (default this batch's `scored_positions`), or with
  diffusion.masked_loss=mean each row's CE weighted by `row_weight` instead of 1 / t. At init
  (zero head) every CE is ln V, so the loss estimates ln V.

  metrics are sums over positions over `norm`, so they add over devices like the loss: ce
  (the masked positions' CE) and masked_fraction; ce / masked_fraction is the mean CE per
  masked token. rows: none (the schedule does not adapt)."""
  known_BL = d.get('known')
  masked_BL = d['u'] < d['t'][:, None]
  free_BL = jnp.ones(tokens_BL.shape, bool)
  if known_BL is not None:
    masked_BL &= ~known_BL
    free_BL = ~known_BL
  label_B = labels.of_rows(tokens_BL, d, patterns)
  z_BLE = inputs(embedding_table(model, params), tokens_BL, masked_BL)
  lam_B = jnp.zeros(tokens_BL.shape[:1])
  h_BLD = model.apply(params, z_BLE, lam_B, None, ~masked_BL, label_B,
                      method=Transformer.features)
  ce_BL = token_ce(params, model, h_BLD, z_BLE, tokens_BL, lam_B, c.train.logits_chunk)
  norm = jnp.sum(free_BL).astype(jnp.float32) if norm is None else norm
  m_BL = masked_BL.astype(jnp.float32)
  w_B = row_weight(masked_BL, free_BL) if c.diffusion.masked_loss == 'mean' else weight(d['t'])
  value = jnp.sum(ce_BL * m_BL * w_B[:, None]) / norm
  metrics = {'loss': value, 'ce': jnp.sum(ce_BL * m_BL) / norm,
             'masked_fraction': jnp.sum(m_BL) / norm}
  return value, (metrics, {})


def param_metrics(params, model: Transformer) -> dict:
  del params, model
  return {}


# ---- the likelihood bound ----------------------------------------------------------------

def bound(params, model: Transformer, c, tokens_BL, prev_B, key, proposal=None,
          num_steps: int = 0) -> dict:
  """The NELBO per sequence of a trained denoiser (`bound_terms`), c.eval.bound_samples draws.
  prev_B and proposal are unused: the window is bounded as a whole, the schedule is fixed."""
  del prev_B, proposal
  return _bound(params, tokens_BL, key, model=model, num_samples=c.eval.bound_samples,
                num_steps=num_steps)


@functools.partial(jax.jit, static_argnames=('model', 'num_samples', 'num_steps'))
def _bound(params, tokens_BL, key, *, model, num_samples: int, num_steps: int):
  return bound_terms(denoiser(params, model), tokens_BL, key, num_samples, num_steps)


def masked_ce(denoise, tokens_BL, masked_BL, scored_BL=None):
  """Sum (B,) and count (B,) of the CE over the scored positions (default: the masked ones)."""
  scored_BL = masked_BL if scored_BL is None else scored_BL
  ce_BL = optax.softmax_cross_entropy_with_integer_labels(denoise(tokens_BL, masked_BL),
                                                          tokens_BL)
  return jnp.sum(jnp.where(scored_BL, ce_BL, 0.0), -1), jnp.sum(scored_BL, -1)


def bound_terms(denoise, tokens_BL, key, num_samples: int, num_steps: int = 0) -> dict:
  """The bound in nats per sequence for any denoise(tokens_BL, masked_BL) -> logits (B, L, V):
  {'nats' (B,), 'replicas' (B, 2), 'parts': {'masking', 'residual'} (B,), 'level' (B, S) the
  t of each draw, 'ce' (B, S) its mean CE per masked token (0 where it masked none)}.

  Randomised quasi-Monte Carlo: t from two shifted lattices of num_samples / 2 points per
  sequence (`diffusion.lattice_draws`), each replica an unbiased estimate of the whole bound (with one
  draw of the residual each), so the Monte-Carlo error is sqrt(sum (r0 - r1)^2 / 4).
  num_steps = 0: continuous time on [T_MIN, 1] plus the residual. num_steps = T: the T-step
  bound on linspace(1, 0, T + 1), one step t -> s drawn uniformly per draw, weighted by
  T (t - s) / t; no residual (the last step reveals everything)."""
  B, L = tokens_BL.shape
  k_u, k_mask, k_res = jax.random.split(key, 3)
  u_BS = diffusion.lattice_draws(k_u, B, num_samples)
  S = u_BS.shape[1]
  if num_steps:
    i_BS = jnp.minimum(jnp.floor(u_BS * num_steps), num_steps - 1)
    t_BS, s_BS = 1.0 - i_BS / num_steps, 1.0 - (i_BS + 1) / num_steps
    w_BS = num_steps * (t_BS - s_BS) / t_BS
  else:
    t_BS = T_MIN + (1.0 - T_MIN) * u_BS
    w_BS = weight(t_BS)

  def one(_, xs):
    t_B, k = xs
    total_B, n_B = masked_ce(denoise, tokens_BL, jax.random.uniform(k, (B, L)) < t_B[:, None])
    return None, (total_B, total_B / jnp.maximum(n_B, 1))
  _, (total_SB, ce_SB) = jax.lax.scan(one, None, (t_BS.T, jax.random.split(k_mask, S)))
  masking_B2 = (w_BS * total_SB.T).reshape(B, 2, S // 2).mean(-1)
  residual_B2 = jnp.zeros_like(masking_B2)
  if not num_steps:  # one draw per replica: what is still masked at T_MIN, revealed there
    # Each sequence's two copies side by side, so a row's draws do not depend on how many
    # rows the batch has (a padded batch bounds its real rows as an unpadded one does).
    two_BL = jnp.repeat(tokens_BL, 2, axis=0)
    total, _ = masked_ce(denoise, two_BL, jax.random.uniform(k_res, two_BL.shape) < T_MIN)
    residual_B2 = total.reshape(B, 2)
  replicas = masking_B2 + residual_B2
  return {'nats': replicas.mean(-1), 'replicas': replicas,
          'parts': {'masking': masking_B2.mean(-1), 'residual': residual_B2.mean(-1)},
          'level': t_BS, 'ce': ce_SB.T}


# ---- what the model learns from context ----------------------------------------------------

def context_probe(params, model: Transformer, c, tokens_BL, key, proposal, levels_K,
                  clean_context: bool):
  """Mean CE (K,) at the probe positions (every PROBE_STRIDE-th), masked, with the other
  positions masked at rate levels_K[k] (0: all visible, 1: all masked; clean_context=False) or
  all visible (True, the same for every k). The gap between the two is what the model learns
  from the context that masking at that rate hides. c and proposal are unused."""
  del c, proposal
  return _probe(params, tokens_BL, key, jnp.asarray(levels_K, jnp.float32), model=model,
                clean_context=clean_context)


@functools.partial(jax.jit, static_argnames=('model', 'clean_context'))
def _probe(params, tokens_BL, key, levels_K, *, model, clean_context: bool):
  denoise = denoiser(params, model)
  B, L = tokens_BL.shape
  probe_BL = jnp.broadcast_to(jnp.arange(L) % PROBE_STRIDE == 0, (B, L))

  def one(level, k):
    context_BL = jax.random.uniform(k, (B, L)) < (0.0 if clean_context else level)
    total_B, n_B = masked_ce(denoise, tokens_BL, probe_BL | context_BL, probe_BL)
    return jnp.sum(total_B) / jnp.sum(n_B)
  return jax.vmap(one)(levels_K, jax.random.split(key, levels_K.shape[0]))


# ---- sampling -------------------------------------------------------------------------------

def draw_tokens(key, logits_NLV, temperature=1.0):
  """(a token id per position from softmax(logits / temperature), its probability), by inverse
  CDF like the AR sampler: float32 Gumbel noise cannot reach the tail and silently lowers the
  temperature, while the inverse CDF misplaces at most the float32 rounding of the cumulative
  sum (about V * 2^-24 of probability)."""
  probs = jax.nn.softmax(logits_NLV.astype(jnp.float32) / temperature, -1)
  cdf = jnp.cumsum(probs, -1)
  u = jax.random.uniform(key, cdf.shape[:-1] + (1,)) * cdf[..., -1:]
  ids = jnp.minimum(jnp.sum(cdf <= u, -1), probs.shape[-1] - 1).astype(jnp.int32)
  return ids, jnp.take_along_axis(probs, ids[..., None], -1)[..., 0]


def unmask(denoise, key, cond_tokens, known, num_steps: int, temperature=1.0,
           order: str = 'random', cache: bool = True, trajectory: bool = False,
           spread=lambda x: x):
  """Token ids (N, L) by reversing the masking from t = 1 to 0 on linspace(1, 0, num_steps + 1)
  with any denoise(ids_NL, masked_NL) -> logits (N, L, V); the known positions (N, L) start
  visible with cond_tokens and are never masked, so they come back verbatim.

  order='random' (ancestral): a step t -> s reveals each masked position with probability
  (t - s) / t (the exact reverse of the masking given the denoiser), to a token drawn from
  softmax(logits / temperature); the last step (s = 0) reveals all the rest. 'confidence'
  (greedy, MaskGIT): each row reveals as many positions as the schedule unmasks in this step,
  leaving round(free positions * s) masked, and picks those whose drawn token is the most
  probable; its text is not a sample of the model's distribution.

  cache=True (MDLM): the denoiser has no time input, so when no position changed since its last
  forward the logits are reused and no forward runs (`lax.cond`; with a batch, a step is
  skipped only when no row changed). Forwards run at the first step and after each step that
  revealed something (at most L + 1 for one row), so with num_steps >> L most steps cost only
  the draw; the samples are those of cache=False.

  trajectory=True also returns (ids with -1 at masked positions and the entropy of each
  position's predicted distribution, both (steps, N, L), and whether the step ran the
  denoiser (steps,))."""
  if order not in ORDERS:
    raise ValueError(f'unknown unmasking order {order!r}; expected one of {ORDERS}')
  if num_steps < 1:
    raise ValueError(f'num_steps={num_steps}: the sampler needs at least one step')
  N, L = known.shape
  free_N = jnp.sum(~known, -1)
  grid = 1.0 - jnp.arange(num_steps + 1) / num_steps  # 1 ... 0, both ends exact

  def step(carry, xs):
    ids, masked, cached, stale = carry
    t, s, k = xs
    k_draw, k_reveal = jax.random.split(k)
    if cache:
      logits = jax.lax.cond(stale, lambda: spread(denoise(ids, masked)), lambda: cached)
    else:
      logits = spread(denoise(ids, masked))
    drawn, p = draw_tokens(k_draw, logits, temperature)
    if order == 'random':
      reveal = masked & (jax.random.uniform(k_reveal, (N, L)) < (t - s) / t)
    else:
      count_N = jnp.sum(masked, -1) - jnp.round(free_N * s).astype(jnp.int32)
      rank = jnp.argsort(jnp.argsort(jnp.where(masked, -p, jnp.inf), -1), -1)
      reveal = masked & (rank < count_N[:, None])
    ids = spread(jnp.where(reveal, drawn, ids))
    masked = spread(masked & ~reveal)
    out = None
    if trajectory:
      logp = jax.nn.log_softmax(logits, -1)
      out = (jnp.where(masked, -1, ids), -jnp.sum(jnp.exp(logp) * logp, -1), stale | (not cache))
    return (ids, masked, logits if cache else None, jnp.any(reveal)), out

  ids, masked = spread(jnp.where(known, cond_tokens, 0)), spread(~known)
  cached = None  # the logits of the last forward, carried only when caching
  if cache:
    cached = spread(jnp.zeros(jax.eval_shape(denoise, ids, masked).shape, jnp.float32))
  (ids, _, _, _), steps = jax.lax.scan(
      step, (ids, masked, cached, jnp.bool_(True)),
      (grid[:-1], grid[1:], jax.random.split(key, num_steps)))
  return (ids, steps) if trajectory else ids


@functools.partial(jax.jit, static_argnames=(
    'model', 'num_samples', 'seq_len', 'num_steps', 'order', 'cache', 'branches', 'trajectory',
    'mesh'))
def sample_tokens(params, key, proposal=None, *, model, num_samples: int, seq_len: int,
                  num_steps: int, temperature=1.0, order: str = 'random', cache: bool = True,
                  cond_tokens=None, known=None, label=None, branches: int = 0, guidance=1.0,
                  trajectory: bool = False, mesh=None, bos_id=None):
  """Token ids (num_samples, seq_len) from the model by `unmask` (order, cache, trajectory
  there; the trajectory's third part counts the forwards each step ran, guidance branches
  included). proposal is unused (the schedule is fixed).

  Known tokens: cond_tokens / known (N, L) (`conditioning.batch`), visible throughout and
  returned verbatim. Labels: branches = 0 (no label: the unconditional model), 1 (the
  conditional model with `label`) or 2 (classifier-free guidance, Ho & Salimans 2022: both
  forwards, mixed in logit space as l_u + guidance (l_c - l_u)). mesh: the samples are split
  over its devices by rows (data-parallel sampling); None keeps XLA's default placement.
  bos_id: unused (every position is generated)."""
  del proposal, bos_id
  N = num_samples
  spread = ((lambda x: jax.lax.with_sharding_constraint(x, sharding.rows(N, mesh, 0, x.ndim)))
            if mesh is not None else (lambda x: x))
  if known is None:
    cond_tokens = jnp.zeros((N, seq_len), jnp.int32)
    known = jnp.zeros((N, seq_len), bool)
  labels_G = branch_labels(model, N, label, branches)
  denoise_G = [denoiser(params, model, label_N) for label_N in labels_G]

  def denoise(ids, masked):
    l_G = [f(ids, masked) for f in denoise_G]
    return l_G[0] if len(l_G) == 1 else l_G[1] + guidance * (l_G[0] - l_G[1])
  out = unmask(denoise, key, cond_tokens, known, num_steps, temperature, order, cache,
               trajectory, spread)
  if not trajectory:
    return out
  ids, (ids_S, entropy_S, ran_S) = out
  return ids, (ids_S, entropy_S, ran_S.astype(jnp.int32) * len(labels_G))
