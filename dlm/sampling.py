"""Generating text: the reverse diffusion as one jitted `lax.scan`.

The sampler's num_steps + 1 log-SNRs sit at equal quantiles of the run's noise proposal q
without its uniform floor (`noise.steps`), from the noisy end to the clean end, so its steps go
where the model's cross-entropy changes, the same places training went. At each step the denoiser's logits give
x0_hat = softmax(logits / temperature) @ E (optionally score-tempered, Plaid, or clamped to
the nearest embedding, Diffusion-LM), and one of `dlm.samplers`' update rules moves z:
ancestral (the exact posterior), DDIM, or DPM-Solver++(2M). The text is the argmax of the
denoiser's logits at the clean end.

Self-conditioning, `previous` (the usual one): each step feeds back the previous step's
estimate, one forward per step; `fresh`: each step runs the denoiser twice at the same z, the
first pass feeding the second, which is the two-pass denoiser the likelihood bound describes
(two forwards per step). Either way the estimate fed back is the temperature-1 one the model
was trained on, not the tempered or clamped one used for the update.

Controllable generation: known tokens (a prompt, or the text of an infill template,
`dlm.conditioning`) are held fixed at every step, the way the run was trained to see them or by
RePaint-style replacement; a label steers by classifier-free guidance, the conditional and
unconditional denoisers run as two forwards per step and mixed. `generate` is the one entry
point for all of it, from the command line and from Python; samples are split over the
devices' mesh (data parallel).

The autoregressive baseline samples left to right from a `<|bos|>` (through a prompt's tokens
first, when given), one token per step of a
jitted `lax.scan` with a key/value cache (`Transformer.decode_step`), with temperature and
nucleus (top-p) truncation. Tokens are drawn by inverse-CDF sampling over the sorted
probabilities rather than Gumbel-max: float32 Gumbel noise cannot reach the tail and silently
lowers the temperature, while the inverse CDF misplaces at most the float32 rounding of the
cumulative sum, about V * 2^-24 of probability (1e-4 for V = 2048), and the sort is needed for
top-p anyway. A test checks the empirical frequencies against the softmax.
"""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from dlm import conditioning, diffusion, labels, noise, samplers, sharding
from dlm.errors import DlmError
from dlm.denoiser import embedding_table
from dlm.model import Transformer, empty_cache


@functools.partial(jax.jit, static_argnames=(
    'model', 'num_samples', 'seq_len', 'sampler', 'clamp', 'self_condition', 'known_by',
    'branches', 'trajectory', 'mesh'))
def sample_tokens(params, key, lam_steps, *, model, num_samples: int, seq_len: int,
                  sampler: str = 'ancestral', temperature=1.0, score_temperature=1.0,
                  clamp: bool = False, self_condition: str = '', cond_tokens=None, known=None,
                  known_by: str = '', label=None, guidance=1.0, branches: int = 0,
                  trajectory: bool = False, mesh=None):
  """Token ids (num_samples, seq_len) drawn by reverse diffusion through lam_steps (noisy to
  clean, `noise.steps`). self_condition: '' (off), 'previous' or 'fresh'.

  Known tokens: cond_tokens / known (N, L) (`conditioning.batch`), held fixed by `known_by`:
  'trained' (clean embeddings marked as known, the conditioning the model was trained with)
  or 'replace' (RePaint-style, Lugmayr et al. 2022: before each step the known positions of z
  are overwritten by a fresh draw of q(z_t | x0), for models trained without conditioning);
  '' for none. Either way the returned ids are exactly cond_tokens at the known positions.

  Labels: branches = 0 (no label: the unconditional model), 1 (the conditional model with
  `label`) or 2 (classifier-free guidance, Ho & Salimans 2022: both, mixed as
  x0_hat = x0_u + guidance (x0_c - x0_u), the final logits likewise).

  trajectory=True also returns, per step, the argmax ids and the entropy (nats) of each
  position's predicted token distribution, each (steps, N, L).

  mesh: the samples are split over its data axis (data-parallel sampling, a per-device batch);
  None keeps XLA's default placement.
  """
  E_VE = embedding_table(model, params)
  path = model.cfg.path
  N = num_samples
  G = max(branches, 1)
  k_init, k_steps = jax.random.split(key)
  spread = ((lambda x: jax.lax.with_sharding_constraint(x, sharding.rows(N, mesh, 0, x.ndim)))
            if mesh is not None else (lambda x: x))
  z = spread(jax.random.normal(k_init, (N, seq_len, E_VE.shape[-1])))
  if known_by:
    x0_known = E_VE[cond_tokens]
  known_in = known if known_by == 'trained' else None
  labels_G = [None]  # branch labels: the conditional one first, then "no label"
  if branches:
    labels_G = [jnp.full((N,), label, jnp.int32)]
    if branches == 2:
      labels_G.append(jnp.full((N,), model.cfg.num_labels, jnp.int32))

  def mix(xs):
    """The guided combination of the branches' values (a list: conditional, unconditional)."""
    return xs[0] if G == 1 else xs[1] + guidance * (xs[0] - xs[1])

  def hold(z, lam_t, k):
    """z with the known positions held (see known_by)."""
    if known_by == 'trained':
      return conditioning.inject(z, x0_known, known)
    if known_by == 'replace':
      a, s = diffusion.alpha_sigma(lam_t, path)
      return conditioning.inject(z, a * x0_known + s * jax.random.normal(k, z.shape), known)
    return z

  def denoise(z, lam_t, x0_prev):
    """(each branch's logits (N, L, V), the temperature-1 estimate to feed back).

    The branches run as separate forwards of N rows rather than one of 2N: on CPU the
    batched form cost 4.0x the unguided sampler at N = 32, the separate ones about 2x."""
    lam_N = jnp.full((N,), lam_t)
    logits_G = []
    for label_N in labels_G:
      fed = x0_prev if self_condition else None
      if self_condition == 'fresh':
        fed = diffusion.x0_from_logits(model.apply(params, z, lam_N, None, known_in, label_N),
                                       E_VE)
      logits_G.append(model.apply(params, z, lam_N, fed, known_in, label_N))
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
    return jnp.where(known, cond_tokens, ids) if known_by else ids

  def step(carry, xs):
    z, x0_fed, x0_last, lam_last = carry
    lam_t, lam_s, k, i = xs
    k_noise, k_hold = jax.random.split(k)
    z = hold(z, lam_t, k_hold)
    logits_G, x0_fed = denoise(z, lam_t, x0_fed)
    x0_hat = estimate(z, lam_t, logits_G)
    z = samplers.step(sampler, z, x0_hat, lam_t, lam_s, jax.random.normal(k_noise, z.shape),
                      path, x0_prev=x0_last, lam_prev=lam_last,
                      second_order=(i > 0) & (i < lam_steps.shape[0] - 2))
    z = spread(z)
    out = None
    if trajectory:
      logp = jax.nn.log_softmax(mix(logits_G), -1)
      out = (decoded(logits_G), -jnp.sum(jnp.exp(logp) * logp, -1))
    return (z, x0_fed, x0_hat, lam_t), out

  S = lam_steps.shape[0] - 1
  keys = jax.random.split(k_steps, S + 1)
  zeros = jnp.zeros_like(z)
  (z, x0_fed, _, _), steps = jax.lax.scan(
      step, (z, zeros, zeros, lam_steps[0]),
      (lam_steps[:-1], lam_steps[1:], keys[:S], jnp.arange(S)))
  logits_G, _ = denoise(hold(z, lam_steps[-1], keys[S]), lam_steps[-1], x0_fed)
  tokens = decoded(logits_G)
  return (tokens, steps) if trajectory else tokens


def top_p_sample(key, logits_BV, temperature=1.0, top_p=1.0):
  """One token per row from softmax(logits / temperature) cut to its top-p nucleus (Holtzman
  et al. 2020: the fewest most-likely tokens whose mass reaches top_p), by inverse CDF."""
  probs_BV = jax.nn.softmax(logits_BV.astype(jnp.float32) / temperature, -1)
  order_BV = jnp.argsort(-probs_BV, -1)
  sorted_BV = jnp.take_along_axis(probs_BV, order_BV, -1)
  kept_BV = jnp.where(jnp.cumsum(sorted_BV, -1) - sorted_BV < top_p, sorted_BV, 0.0)
  cdf_BV = jnp.cumsum(kept_BV, -1)
  u_B1 = jax.random.uniform(key, (logits_BV.shape[0], 1)) * cdf_BV[:, -1:]
  index_B = jnp.minimum(jnp.sum(cdf_BV <= u_B1, -1), logits_BV.shape[-1] - 1)
  return jnp.take_along_axis(order_BV, index_B[:, None], -1)[:, 0].astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'num_samples', 'seq_len', 'mesh'))
def sample_ar_tokens(params, key, *, model, num_samples: int, seq_len: int, bos_id: int,
                     temperature=1.0, top_p=1.0, cond_tokens=None, known=None, mesh=None):
  """Token ids (num_samples, seq_len): `<|bos|>` then seq_len - 1 tokens drawn left to right.

  With a prompt (cond_tokens / known: a known prefix, `conditioning.prompt`), the prompt's
  tokens are fed instead of drawn while its positions pass, which fills the key/value cache
  with them before the first drawn token.
  """
  N = num_samples
  first_B = jnp.full((N,), bos_id, jnp.int32)

  def step(carry, xs):
    token_B, cache = carry
    pos, k = xs
    logits_BV, cache = model.apply(params, token_B, cache, pos, method=Transformer.decode_step)
    nxt_B = top_p_sample(k, logits_BV, temperature, top_p)
    if known is not None:
      nxt_B = jnp.where(known[:, pos + 1], cond_tokens[:, pos + 1], nxt_B)
    return (nxt_B, cache), nxt_B

  keys = jax.random.split(key, seq_len - 1)
  cache = empty_cache(model.cfg, N)
  if mesh is not None:  # data-parallel decoding: each device its rows of the cache
    first_B = jax.lax.with_sharding_constraint(first_B, sharding.rows(N, mesh))
    cache = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
        x, sharding.rows(N, mesh, 1, x.ndim)), cache)
  _, rest_LB = jax.lax.scan(step, (first_B, cache),
                            (jnp.arange(seq_len - 1), keys))
  return jnp.concatenate([first_B[:, None], rest_LB.T], 1)


def generate(run, num_samples: int = 4, seq_len: int = 0, num_steps: int = 0,
             temperature: float = 0.0, seed: int = 0, sampler: str = '', clamp=None,
             top_p: float = 0.0, score_temperature: float = 0.0, self_condition: str = '',
             prompt: str = '', infill: str = '', label: str = '', guidance=None) -> list[dict]:
  """Samples from a loaded run (`dlm.checkpoint.load_run`), one dict per sample.

  Zero / empty arguments take the run's `sample` config. Each record carries the decoded
  `text` (documents joined by blank lines), the `documents`, the `tokens`, the seed and every
  setting, ready to be written as JSONL. Diffusion runs use num_steps / sampler / clamp /
  score_temperature / self_condition, autoregressive runs (model.causal) top_p; both use
  temperature.

  prompt: text the samples continue (both families). infill: a template whose `[MASK:n]` /
  `[MASK]` placeholders the samples fill (diffusion only; `conditioning.template`); the
  record's `fills` holds the text generated for each placeholder. label / guidance: the value
  of the run's `data.label` to steer towards and the classifier-free guidance scale (0: the
  unconditional model, 1: the conditional one, > 1: pushed further); the record's
  `attribute` is the label value read off the sample itself.
  """
  tokens, settings = sample_array(run, num_samples, seq_len, num_steps, temperature, seed,
                                  sampler, clamp, top_p, score_temperature, self_condition,
                                  prompt, infill, label, guidance)
  return records(run, tokens, settings, seed)


def records(run, tokens: np.ndarray, settings: dict, seed: int) -> list[dict]:
  """One JSON-ready dict per row of `tokens` drawn with `settings` (see `generate`)."""
  label = _run_label(run)
  found = (np.asarray(labels.of_tokens(jnp.asarray(tokens), label.patterns))
           if label is not None else None)
  spans = settings.get('spans', [])
  out = []
  for i, row in enumerate(tokens):
    docs = run.tokenizer.decode_documents(row)
    r = dict(index=i, text='\n\n'.join(docs), documents=docs, tokens=row.tolist(), seed=seed,
             step=run.step, **settings)
    if spans:
      r['fills'] = [run.tokenizer.decode(row[a:b]) for a, b in spans]
    if found is not None:
      r['attribute'] = label.values[int(found[i])]
    out.append(r)
  return out


def _run_label(run):
  """The run's `data.label` (`labels.Label`), None for AR runs and runs without one."""
  if run.model_config.causal or not run.model_config.num_labels:
    return None
  return labels.build(run.config.data.label, run.tokenizer)


def condition(run, seq_len: int, prompt: str = '', infill: str = ''):
  """The `conditioning.Condition` of a prompt and / or an infill template, None without."""
  if infill and run.model_config.causal:
    raise DlmError('--infill needs a diffusion run: an autoregressive model writes left to '
                   'right and never sees the text after a gap (use --prompt to continue a text)')
  if infill:
    return conditioning.template(run.tokenizer, infill, seq_len, run.config.sample.mask_len,
                                 prefix=prompt)
  if prompt:
    return conditioning.prompt(run.tokenizer, prompt, seq_len)
  return None


def guidance_branches(run, label: str, guidance) -> tuple[int, int, float]:
  """(branches, label id, scale) for `sample_tokens`; guidance None takes the config's."""
  W = run.config.sample.guidance if guidance is None else guidance
  if W < 0:
    raise DlmError(f'--guidance={W}: the guidance scale must be >= 0 (0: unconditional, '
                   '1: conditional, > 1: pushed further)')
  if not label:
    return 0, 0, W
  spec = _run_label(run)
  if spec is None:
    raise DlmError(f'--label={label!r}: the run in {run.workdir} was trained without labels '
                   '(train a diffusion run with data.label, e.g. keyword:dragon)')
  # W = 0 and W = 1 need one branch: the mixture is exactly that branch.
  return (0 if W == 0 else 1 if W == 1 else 2), spec.index(label), W


def sample_array(run, num_samples: int, seq_len: int = 0, num_steps: int = 0,
                 temperature: float = 0.0, seed: int = 0, sampler: str = '', clamp=None,
                 top_p: float = 0.0, score_temperature: float = 0.0, self_condition: str = '',
                 prompt: str = '', infill: str = '', label: str = '', guidance=None,
                 trajectory: bool = False):
  """(token ids (num_samples, seq_len), the settings used): `generate` without decoding.
  trajectory=True (diffusion): also the per-step argmax ids and entropies (`sample_tokens`)."""
  kwargs, settings = _prepare(run, num_samples, seq_len, num_steps, temperature, sampler,
                              clamp, top_p, score_temperature, self_condition, prompt, infill,
                              label, guidance)
  key = jax.random.key(seed)
  if run.model_config.causal:
    tokens = sample_ar_tokens(run.params, key, model=run.model, **kwargs)
    return sharding.fetch(tokens), settings
  out = sample_tokens(run.params, key, model=run.model, trajectory=trajectory, **kwargs)
  if trajectory:
    return sharding.fetch(out[0]), settings, sharding.fetch(out[1])
  return sharding.fetch(out), settings


def _prepare(run, num_samples: int, seq_len: int = 0, num_steps: int = 0,
             temperature: float = 0.0, sampler: str = '', clamp=None, top_p: float = 0.0,
             score_temperature: float = 0.0, self_condition: str = '', prompt: str = '',
             infill: str = '', label: str = '', guidance=None):
  """(keyword arguments of the jitted sampler, the settings to record); arguments as in
  `sample_array`, zero / empty ones taking the run's config."""
  sc, c = run.config.sample, run.config
  L = seq_len or sc.seq_len or run.model_config.sequence_len
  settings = dict(seq_len=L, temperature=temperature or sc.temperature)
  cond = condition(run, L, prompt, infill)
  if cond is not None:
    settings.update(prompt=prompt, infill=infill)
  cond_tokens, known = conditioning.batch(cond, num_samples, L)
  mesh = sharding.make_mesh()
  cond_kwargs = {'mesh': mesh} if cond is None else dict(
      mesh=mesh, cond_tokens=sharding.global_rows(cond_tokens, mesh),
      known=sharding.global_rows(known, mesh))
  if run.model_config.causal:
    if label:
      raise DlmError(f'--label={label!r}: guidance needs a diffusion run trained with '
                     'data.label; this is an autoregressive run')
    settings.update(family='autoregressive', top_p=top_p or sc.top_p)
    return dict(num_samples=num_samples, seq_len=L, bos_id=run.tokenizer.bos_id,
                temperature=settings['temperature'], top_p=settings['top_p'],
                **cond_kwargs), settings
  branches, label_id, W = guidance_branches(run, label, guidance)
  settings.update(
      family='diffusion', num_steps=num_steps or sc.num_steps, sampler=sampler or sc.sampler,
      score_temperature=score_temperature or sc.score_temperature,
      clamp=sc.clamp if clamp is None else clamp,
      self_condition=(self_condition or sc.self_condition) if c.diffusion.self_condition else 'off',
      allocation=c.diffusion.allocation)
  known_by = ''
  if cond is not None:
    known_by = 'trained' if run.model_config.conditioning else 'replace'
    settings.update(known_by=known_by, spans=[list(s) for s in cond.spans])
    if known_by == 'replace':
      print('note: this run was trained without conditioning (diffusion.condition_fraction=0):'
            ' known tokens are held by replacement (RePaint-style), which follows them less '
            'closely', file=sys.stderr)
  if label:
    settings.update(label=label, guidance=W)
  return dict(
      lam_steps=noise.steps(run.proposal, settings['num_steps']), num_samples=num_samples,
      seq_len=L, sampler=settings['sampler'], temperature=settings['temperature'],
      score_temperature=settings['score_temperature'], clamp=settings['clamp'],
      self_condition='' if settings['self_condition'] == 'off' else settings['self_condition'],
      known_by=known_by, label=label_id, guidance=W, branches=branches, **cond_kwargs), settings
