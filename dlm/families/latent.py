"""Latent diffusion: Gaussian diffusion on the latents of a text autoencoder trained first
(LD4LG, Lovelace et al. 2023; PLANNER, Zhang et al. 2023; CALM, Shao et al. 2025).

Two stages, one command. `prepare` trains the autoencoder (`dlm.autoencoder`: each chunk of
`latent.chunk` tokens to one vector of `latent.dim` numbers, a non-autoregressive decoder back)
in <workdir>/autoencoder, or reuses a finished one (`latent.autoencoder=PATH`); its weights and
latent statistics then sit frozen in the train state (`state['noise']['frozen']`, beside the
noise allocation, and so in the proposal that training, evaluation and sampling receive). The
diffusion stage trains a denoiser on the backbone over the L / c standardised latents: the
Gaussian family's path, noise allocation, self-conditioning, conditioning and labels, with the
denoiser's head predicting x0 directly (`ModelConfig.out_dim`) and an MSE loss in the space of
`diffusion.parameterization` (x0, eps or v; `diffusion.loss` is not read). The noise
allocation follows the per-row x0 error against log-SNR, as the Gaussian family's follows its
cross-entropy.

Known tokens (prompts, infill templates) are known chunks: a chunk whose c tokens are all known
is held at its clean latent (trained conditioning, or RePaint-style replacement); a chunk that
is only partly known (a prompt that does not end on a chunk boundary) is generated like a free
one, and after decoding every known token is put back verbatim. The encoder reads each chunk
alone, so a known chunk's latent is exactly the one the autoencoder was trained to decode.

Likelihood: none. A deterministic autoencoder gives text no probability, so the diffusion
model's bound on its latents bounds nothing about the tokens; `bound` returns no nats and the
evaluation says so (`describe_bound`), reporting instead the autoencoder's reconstruction
accuracy from clean latents and from latents noised to the sampler's last log-SNR, and the
held-out cross-entropy of the decoded denoiser estimate against log-SNR.

Sampling: the Gaussian family's reverse process (`samplers.reverse`: ancestral, DDIM,
DPM-Solver++(2M), with guidance and score temperature) over L / c latents, then one decoder
pass at the clean end.
"""

import copy
import functools
import math

import jax
import jax.numpy as jnp
import optax

from dlm import autoencoder, conditioning, config, denoiser, diffusion, flops, labels, noise
from dlm import samplers, sharding, storage
from dlm.errors import DlmError
from dlm.families import gaussian
from dlm.model import Transformer

NAME = 'latent'
SUMMARY = 'Gaussian diffusion on the latents of a text autoencoder trained first'
EXACT = False
LIKELIHOOD = False  # a deterministic autoencoder gives text no probability
SAMPLE_OPTIONS = frozenset({'num_steps', 'sampler', 'score_temperature', 'self_condition'})
SAMPLERS = samplers.SAMPLERS
INFILL = True
LEVEL = 'logsnr'


def _check_chunk(length: int, chunk: int, what: str) -> None:
  if length % chunk:
    raise DlmError(f'{what}={length} is not divisible by latent.chunk={chunk}: the latent '
                   'family turns every chunk of tokens into one vector')


def model_fields(c) -> dict:
  """A denoiser of latents: as wide as a latent in and out, no token table or prior logits."""
  _check_chunk(c.model.sequence_len, c.latent.chunk, 'model.sequence_len')
  if c.sample.seq_len:
    _check_chunk(c.sample.seq_len, c.latent.chunk, 'sample.seq_len')
  return {'causal': False, 'conditioning': c.diffusion.condition_fraction > 0,
          'prior_logits': False, 'diffusion_dim': c.latent.dim, 'out_dim': c.latent.dim}


def train_flops(c, vocab_size: int, by_part: bool = False) -> dict:
  """Training FLOPs per token of each stage (`dlm.flops`). The autoencoder: encoder (each chunk
  alone) and decoder (the whole window) trained together. Diffusion: the frozen encoder's
  forward on every token, then the denoiser on one position per chunk (L / c), its head
  predicting a latent, with the self-conditioning pass as the Gaussian family's."""
  mcfg = config.model_config(c, vocab_size)
  shape = autoencoder.shape_of(c, vocab_size)
  L, n = mcfg.sequence_len, shape.chunk
  encode = flops.encoder(shape.backbone, L, n, shape.dim)
  decode = flops.decoder(shape.backbone, L, n, shape.dim)
  denoise = flops.denoiser(mcfg, L // n, c.diffusion.self_condition, c.train.device_batch_size,
                           False)
  return flops.stages({'autoencoder': flops.scale(flops.add(encode, decode), flops.TRAIN),
                       'diffusion': flops.add(flops.scale(encode, flops.NO_GRAD), denoise)},
                      L, by_part)


def at_budget(c):
  """c spending its train.num_iterations batches over both stages: the autoencoder takes
  latent.fraction of them (at least one step each), diffusion the rest, so a latent run reads
  as many tokens as another family's run of the same budget. A fraction and not the ratio of
  a config's two step counts: the experiments' presets set the budget alone, and the split must
  follow it (configs/latent.py's 400 + 400 is a fraction of 0.5)."""
  budget = c.train.num_iterations
  if budget < 2:
    raise DlmError(f'train.num_iterations={budget}: the latent family needs at least 2 steps '
                   'to split between its autoencoder and diffusion stages')
  c = copy.deepcopy(c)
  c.latent.iterations = min(max(round(c.latent.fraction * budget), 1), budget - 1)
  c.train.num_iterations = budget - c.latent.iterations
  return c


def stage_steps(c) -> dict:
  """Optimiser steps of the autoencoder stage, then of the diffusion stage (a reused
  autoencoder's steps count: its tokens were spent on this run's model all the same)."""
  return {'autoencoder': c.latent.iterations, 'diffusion': c.train.num_iterations}


# ---- the autoencoder stage and the state it leaves ------------------------------------------

def prepare(c, workdir, tok, data_dir, manifest, log) -> dict:
  """The frozen autoencoder ({params, mean, std}): the one in latent.autoencoder, or the one
  trained (or resumed, or found finished) in <workdir>/autoencoder."""
  if not c.latent.autoencoder:
    return autoencoder.train(c, storage.join(workdir, autoencoder.STAGE_DIR), tok, data_dir,
                             manifest, log)
  frozen = autoencoder.load(c.latent.autoencoder, c, tok)
  want = autoencoder.placeholder(autoencoder.shape_of(c, tok.vocab_size))
  shapes = lambda t: jax.tree.map(lambda x: x.shape, t)
  if shapes(frozen) != shapes(want):
    raise DlmError(f'latent.autoencoder={c.latent.autoencoder} has another shape than this run\'s '
                   'autoencoder (latent.layers or the model width differ)')
  log(f'autoencoder: reusing {c.latent.autoencoder}')
  return frozen


def init_noise(c, mcfg) -> dict:
  """The noise allocation over the latent's log-SNR range, and a placeholder of the frozen
  autoencoder (`state.create` puts the trained one there). The Gumbel guess starts its curve's
  height at ln(e) = 1: the x0 error of unit-variance latents with nothing known."""
  shape = autoencoder.shape_of(c, mcfg.vocab_size)
  return {**noise.init_state(c.diffusion, mcfg.diffusion_dim, math.e),
          'frozen': autoencoder.placeholder(shape)}


update_noise = gaussian.update_noise  # the running curve of `rows`, the frozen part kept


def _shape(model: Transformer, proposal) -> autoencoder.Shape:
  return autoencoder.shape_of_frozen(model.cfg, proposal['frozen'])


# ---- training -------------------------------------------------------------------------------

def draw(key, tokens_BL, model: Transformer, c, proposal=None, patterns=None,
         condition: bool = True, rows=None) -> dict:
  """The Gaussian family's draws (`gaussian.draw`, rows keyed the same way) at one position per
  chunk, and the clean standardised latents x0 (B, L / c, dim) of the batch (the frozen
  encoder)."""
  d = gaussian.draw(key, tokens_BL[:, ::c.latent.chunk], model, c, proposal, patterns, condition,
                    rows)
  d['x0'] = autoencoder.encode(proposal['frozen'], _shape(model, proposal), tokens_BL)
  return d


scored_positions = gaussian.scored_positions  # the unknown latent positions


def loss(params, model: Transformer, tokens_BL, d: dict, c, patterns=None, norm=None):
  """(loss, (metrics, rows)): the squared error of the denoiser's x0 estimate of the latents
  at a random log-SNR, measured in the space of `diffusion.parameterization` (Ho et al. 2020;
  Salimans & Ho 2022), over the unknown latent positions. rows: per-row log-SNR and x0 error
  (`x0_mse`), the curve the noise allocation follows."""
  dc = c.diffusion
  x0, lam_B, eps = d['x0'], d['lam'], d['eps']
  z, free = conditioning.held_noisy(x0, d, dc.path)
  known = d.get('known')
  label_B = labels.of_rows(tokens_BL, d, patterns)
  norm = jnp.sum(free) if norm is None else norm
  x0_prev = denoiser.self_condition(params, model, z, lam_B, None, True, dc.self_condition,
                                    known, label_B, d['even'])
  x0_hat = model.apply(params, z, lam_B, x0_prev, known, label_B)
  target, pred = diffusion.mse_target_and_pred(dc.parameterization, x0, eps, z, x0_hat, lam_B,
                                               dc.path)
  mse = jnp.sum(jnp.mean(jnp.square(target - pred), -1) * free) / norm
  x0_err = jnp.mean(jnp.square(x0 - x0_hat), -1)
  metrics = {'loss': mse, 'x0_mse': jnp.sum(x0_err * free) / norm}
  unconditioned = jnp.all(free > 0, -1).astype(jnp.float32)  # as the Gaussian family's curve
  rows = {'lam': lam_B, 'ce': jax.lax.stop_gradient(x0_err.mean(-1)), 'weight': unconditioned}
  return mse, (metrics, rows)


def param_metrics(params, model: Transformer) -> dict:
  del params, model
  return {}


# ---- evaluation: no likelihood; reconstruction and the decoded CE curve -----------------------

def last_logsnr(proposal, c):
  """The log-SNR of the sampler's last step (the clean end of its grid, `noise.steps`)."""
  return noise.steps(proposal, c.sample.num_steps)[-1]


@functools.partial(jax.jit, static_argnames=('model', 'c', 'num_steps'))
def bound(params, model: Transformer, c, tokens_BL, prev_B, key, proposal, num_steps: int = 0):
  """No nats (module docstring). Per sequence: the autoencoder's token accuracy from the clean
  latents and from latents noised to the sampler's last log-SNR (decoded at x0 = z / alpha,
  noise std `sigma` = sigma / alpha in standardised units), and, per draw of log-SNR from the
  proposal, the cross-entropy of the decoded estimate of the (two-pass, with
  self-conditioning) denoiser. num_steps > 0 (a discrete bound): nothing more to say."""
  del prev_B
  if num_steps:
    return {'nats': None, 'replicas': None, 'parts': {}}
  frozen, shape, path = proposal['frozen'], _shape(model, proposal), model.cfg.path
  x0 = autoencoder.encode(frozen, shape, tokens_BL)
  B = x0.shape[0]
  k_noisy, k_u, k_eps = jax.random.split(key, 3)
  a, s = diffusion.alpha_sigma(last_logsnr(proposal, c), path)
  accuracy = lambda x: jnp.mean(jnp.argmax(autoencoder.decode(frozen, shape, x), -1)
                                == tokens_BL, -1)
  clean = accuracy(x0)
  noisy = accuracy(x0 + s / a * jax.random.normal(k_noisy, x0.shape))

  def one(_, xs):
    u_B, k = xs
    lam_B = noise.sample(proposal, u_B)
    z = diffusion.q_sample(x0, lam_B, jax.random.normal(k, x0.shape), path)
    x0_hat = model.apply(params, z, lam_B, denoiser.self_condition(
        params, model, z, lam_B, None, False, c.diffusion.self_condition))
    logits = autoencoder.decode(frozen, shape, x0_hat)
    return None, (lam_B, optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BL)
                  .mean(-1))

  u_BS = diffusion.lattice_draws(k_u, B, c.eval.bound_samples)
  S = u_BS.shape[1]
  _, (lam_SB, ce_SB) = jax.lax.scan(one, None, (u_BS.T, jax.random.split(k_eps, S)))
  return {'nats': None, 'replicas': None, 'parts': {}, 'level': lam_SB.T, 'ce': ce_SB.T,
          'means': {'reconstruction_accuracy': {'clean': clean, 'noisy': noisy,
                                                'sigma': jnp.full((B,), s / a)}}}


def describe_bound(c) -> str:
  del c
  return ('none: the autoencoder is deterministic, so it gives text no probability and a bound '
          'on its latents bounds no likelihood of the tokens (no bits per token or byte); see '
          'reconstruction_accuracy and the samples\' quality instead')


level_edges = gaussian.level_edges


PROBE_STRIDE = 4  # every 4th latent position (chunk) is a probe


@functools.partial(jax.jit, static_argnames=('model', 'c', 'clean_context'))
def context_probe(params, model: Transformer, c, tokens_BL, key, proposal, levels_K,
                  clean_context: bool):
  """Mean cross-entropy (K,) of the decoded estimate at the tokens of the probe chunks (every
  PROBE_STRIDE-th), noised at the level of quantile levels_K[k] of q, with the other chunks
  noised at the same level (clean_context=False) or at the clean end of the range (True); as
  the Gaussian family's probe, over chunks."""
  frozen, shape, path = proposal['frozen'], _shape(model, proposal), model.cfg.path
  x0 = autoencoder.encode(frozen, shape, tokens_BL)
  B, N, _ = x0.shape
  probe_N = jnp.arange(N) % PROBE_STRIDE == 0
  probe_L = jnp.repeat(probe_N, shape.chunk)
  lam_hi = proposal['edges'][-1]

  def one(level, k):
    k_eps, k_ctx = jax.random.split(k)
    lam_B = jnp.full((B,), noise.sample(proposal, 1.0 - level))
    z = diffusion.q_sample(x0, lam_B, jax.random.normal(k_eps, x0.shape), path)
    if clean_context:
      z_ctx = diffusion.q_sample(x0, jnp.full((B,), lam_hi), jax.random.normal(k_ctx, x0.shape),
                                 path)
      z = jnp.where(probe_N[None, :, None], z, z_ctx)
    x0_hat = model.apply(params, z, lam_B, denoiser.self_condition(
        params, model, z, lam_B, None, False, c.diffusion.self_condition))
    ce = optax.softmax_cross_entropy_with_integer_labels(
        autoencoder.decode(frozen, shape, x0_hat), tokens_BL)
    return jnp.sum(ce * probe_L) / (B * jnp.sum(probe_L))
  return jax.vmap(one)(levels_K, jax.random.split(key, levels_K.shape[0]))


# ---- sampling -------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=(
    'model', 'num_samples', 'seq_len', 'num_steps', 'sampler', 'self_condition', 'branches',
    'trajectory', 'mesh'))
def sample_tokens(params, key, proposal, *, model, num_samples: int, seq_len: int,
                  num_steps: int, sampler: str = 'ancestral', score_temperature=1.0,
                  self_condition: str = '', cond_tokens=None, known=None, label=None,
                  guidance=1.0, branches: int = 0, trajectory: bool = False, mesh=None,
                  bos_id=None):
  """Token ids (num_samples, seq_len): reverse diffusion over seq_len / c latents through
  num_steps + 1 log-SNRs at equal quantiles of the proposal (`samplers.reverse`), then one
  decoder pass on the final estimate. Options as the Gaussian family's `sample_tokens`.

  Known tokens (cond_tokens / known (N, L)): the chunks whose tokens are all known are held at
  their clean latents (trained conditioning, or RePaint-style replacement) and replace the
  estimate before decoding; a partly known chunk is generated; every known token is then put
  back, so the returned ids equal cond_tokens wherever known.

  trajectory=True also returns, per step, the decoded ids of that step's estimate and the
  entropy (nats) of each token's decoded distribution, each (steps, N, L)."""
  del bos_id
  frozen, shape, path = proposal['frozen'], _shape(model, proposal), model.cfg.path
  _check_chunk(seq_len, shape.chunk, 'the sample length')
  N, n = num_samples, seq_len // shape.chunk
  lam_steps = noise.steps(proposal, num_steps)
  k_init, k_steps = jax.random.split(key)
  spread = ((lambda x: jax.lax.with_sharding_constraint(x, sharding.rows(N, mesh, 0, x.ndim)))
            if mesh is not None else (lambda x: x))
  z = spread(jax.random.normal(k_init, (N, n, shape.dim)))
  how = denoiser.known_by(model, cond_tokens)
  if how:
    known_n = jnp.all(known.reshape(N, n, shape.chunk), -1)
    x0_known = autoencoder.encode(frozen, shape, cond_tokens)
  hold = denoiser.holder(how, x0_known if how else None, known_n if how else None, path)
  known_in = known_n if how == 'trained' else None
  labels_G = denoiser.branch_labels(model, N, label, branches)
  mix = functools.partial(denoiser.guided, guidance=guidance)

  def denoise(z, lam_t, x0_prev):
    """(each branch's x0 estimate, their guided mixture to feed back)."""
    outs = denoiser.branches(params, model, z, jnp.full((N,), lam_t), x0_prev, known_in,
                             labels_G, self_condition, None)
    return outs, mix(outs)

  def estimate(z, lam_t, outs):
    return samplers.score_tempered(z, mix(outs), lam_t, score_temperature, path)

  def logits_of(outs):
    x0_hat = mix(outs)
    if how:
      x0_hat = conditioning.inject(x0_hat, x0_known, known_n)
    return autoencoder.decode(frozen, shape, x0_hat)

  def decoded(logits):
    ids = jnp.argmax(logits, -1).astype(jnp.int32)
    return jnp.where(known, cond_tokens, ids) if how else ids

  def record(outs):
    logp = jax.nn.log_softmax(logits_of(outs), -1)
    return decoded(logp), -jnp.sum(jnp.exp(logp) * logp, -1)

  outs, steps = samplers.reverse(k_steps, lam_steps, z, sampler, path, hold=hold,
                                 denoise=denoise, estimate=estimate, spread=spread,
                                 record=record if trajectory else None)
  tokens = decoded(logits_of(outs))
  return (tokens, steps) if trajectory else tokens
