"""The latent family's text autoencoder: chunks of `latent.chunk` tokens to one vector of
`latent.dim` numbers and back, trained from scratch on the run's data, then frozen.

Encoder: each chunk of c tokens runs on its own through a bidirectional stack of our backbone's
blocks (`model.layers`), and the concatenation of its c hidden states is projected to one
vector, put on the sphere of radius sqrt(dim) (every coordinate of unit scale, like the
Gaussian family's embeddings). A chunk's latent depends on its own tokens only (as in CALM,
Shao et al. 2025), so a known chunk of a prompt or an infill template has the very latent it
would have inside any text.

Decoder: non-autoregressive, the whole sequence at once: each latent is projected to c hidden
states, a bidirectional stack runs over all L positions (so a damaged latent can be read with
its neighbours' help) and a head gives token logits; trained with cross-entropy. Training
damages the latents the way diffusion will (Cosmos, 2025; LDLM): Gaussian noise of a random
scale up to `latent.noise` per row, then dropout of coordinates (`latent.dropout`).

After training, the mean and standard deviation of every latent coordinate over
`latent.stat_batches` training batches are stored with the weights: the diffusion stage works on
standardised latents (x - mean) / std, so every coordinate has unit variance, as the noise
process assumes. The stage's workdir (`<workdir>/autoencoder`) holds its own config.json,
tokenizer, checkpoints (Orbax, with the data position, resumable) and metrics.jsonl; a finished
one can be reused by other runs (`latent.autoencoder=PATH`).
"""

import dataclasses
import functools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlm import checkpoint, data, sharding, storage
from dlm import config as config_lib
from dlm import metrics_log as metrics_log_lib
from dlm.errors import DlmError
from dlm.model import ModelConfig, layers, rms_norm, rotary
from dlm.optim import make_optimizer
from dlm.tokenizer import Tokenizer

STAGE_DIR = 'autoencoder'
# What a reused autoencoder must share with the run that reuses it (besides the tokenizer).
MUST_MATCH = ('model.sequence_len', 'latent.chunk', 'latent.dim')
# What a resumed autoencoder stage must share with the config that resumes it: what it trains
# on and how (the rest of the config is the diffusion stage's, checked by its own workdir).
STAGE_FIELDS = ('seed', 'model.depth', 'model.n_layer', 'model.n_head', 'model.n_embd',
                'model.sequence_len', 'model.vocab_size', 'model.dtype', 'latent', 'data',
                'train.embedding_lr', 'train.unembedding_lr', 'train.matrix_lr', 'train.other_lr',
                'train.weight_decay', 'train.warmup_ratio', 'train.warmdown_ratio',
                'train.final_lr_frac', 'train.grad_clip')


@dataclasses.dataclass(frozen=True)
class Shape:
  """What the autoencoder's modules need: the backbone's config (its blocks), chunk and dim."""
  backbone: ModelConfig
  chunk: int
  dim: int


def _shape(mcfg: ModelConfig, n_layer: int, vocab_size: int, chunk: int, dim: int) -> Shape:
  """The autoencoder beside the latent denoiser `mcfg`: the same width and heads, its own depth
  and the tokenizer's vocabulary, bidirectional, unconditioned."""
  backbone = dataclasses.replace(mcfg, vocab_size=vocab_size, n_layer=n_layer, causal=False,
                                 conditioning=False, num_labels=0, out_dim=0,
                                 prior_logits=False, remat='none')
  return Shape(backbone, chunk, dim)


def shape_of(c, vocab_size: int) -> Shape:
  """The autoencoder of a config (the tokenizer's `vocab_size`)."""
  m = config_lib.model_config(c, vocab_size)
  return _shape(m, c.latent.layers or m.n_layer, m.vocab_size, c.latent.chunk, c.latent.dim)


def shape_of_frozen(mcfg: ModelConfig, frozen: dict) -> Shape:
  """The autoencoder whose weights `frozen` holds, beside the denoiser `mcfg`: read off the
  weights' shapes, so a jitted sampler needs no config."""
  p = frozen['params']['params']
  chunk = p['within'].shape[0]
  n_layer = jax.tree.leaves(p['encoder'])[0].shape[0]
  return _shape(mcfg, n_layer, p['wte'].shape[0], chunk, frozen['mean'].shape[0])


def sphere(u):
  """Rows onto the sphere of radius sqrt(dim)."""
  return u * jax.lax.rsqrt(jnp.sum(u * u, -1, keepdims=True) + 1e-12) * math.sqrt(u.shape[-1])


class Stack(nn.Module):
  """The backbone's blocks (`model.layers`) without time conditioning, named `blocks` so that
  the optimiser (Muon for their matrices) and the sharding rules know them."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, rope):
    return layers(self.cfg)(x, None, rope, None, None)[0]


class Autoencoder(nn.Module):
  shape: Shape

  def setup(self):
    cfg = self.shape.backbone
    self.wte = self.param('wte', nn.initializers.normal(1.0), (cfg.vocab_size, cfg.n_embd))
    self.encoder = Stack(cfg, name='encoder')
    self.to_latent = nn.Dense(self.shape.dim, use_bias=False, name='to_latent')
    self.from_latent = nn.Dense(self.shape.chunk * cfg.n_embd, use_bias=False, name='from_latent')
    self.within = self.param('within', nn.initializers.normal(1.0),
                             (self.shape.chunk, cfg.n_embd))  # position inside a chunk
    self.decoder = Stack(cfg, name='decoder')
    self.head = nn.Dense(cfg.vocab_size, use_bias=False, name='head')

  def __call__(self, tokens_BL):
    return self.decode(self.encode(tokens_BL))

  def encode(self, tokens_BL):
    """Latents (B, L / c, dim) on the sphere of radius sqrt(dim), each chunk encoded alone."""
    cfg, c = self.shape.backbone, self.shape.chunk
    B, L = tokens_BL.shape
    x = rms_norm(self.wte[tokens_BL].reshape(B * L // c, c, cfg.n_embd))
    x = self.encoder(x, rotary(c, cfg.head_dim))
    return sphere(self.to_latent(rms_norm(x).reshape(B, L // c, c * cfg.n_embd)))

  def decode(self, latents_BNE):
    """Token logits (B, N c, V) of latents (B, N, dim), all positions at once."""
    cfg, c = self.shape.backbone, self.shape.chunk
    B, N, _ = latents_BNE.shape
    x = self.from_latent(latents_BNE).reshape(B, N, c, cfg.n_embd) + self.within
    x = rms_norm(x.reshape(B, N * c, cfg.n_embd))
    x = self.decoder(x, rotary(N * c, cfg.head_dim))
    return self.head(rms_norm(x)).astype(jnp.float32)


# ---- the frozen autoencoder the diffusion stage uses: {params, mean, std} -------------------

def encode(frozen: dict, shape: Shape, tokens_BL):
  """Standardised latents (B, L / c, dim) of tokens."""
  u = Autoencoder(shape).apply(frozen['params'], tokens_BL, method=Autoencoder.encode)
  return (u - frozen['mean']) / frozen['std']


def decode(frozen: dict, shape: Shape, x_BNE):
  """Token logits (B, N c, V) of standardised latents."""
  return Autoencoder(shape).apply(frozen['params'], x_BNE * frozen['std'] + frozen['mean'],
                                  method=Autoencoder.decode)


def placeholder(shape: Shape) -> dict:
  """Zeros of the frozen autoencoder's shapes (a restore target; `train` fills in the values)."""
  model = Autoencoder(shape)
  dummy = jnp.zeros((1, shape.chunk), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), dummy)
  zeros = lambda s: jnp.zeros(s.shape, s.dtype)
  return {'params': jax.tree.map(zeros, params), 'mean': jnp.zeros((shape.dim,)),
          'std': jnp.ones((shape.dim,))}


# ---- training -------------------------------------------------------------------------------

def loss(params, model: Autoencoder, tokens_BL, key, lc):
  """Cross-entropy of the decoder's logits of damaged latents (noise of a per-row scale drawn
  uniformly in [0, lc.noise], then inverted dropout of coordinates at rate lc.dropout) against
  the tokens; metrics: loss and the token accuracy of that damaged reconstruction."""
  u = model.apply(params, tokens_BL, method=Autoencoder.encode)
  k_s, k_eps, k_drop = jax.random.split(key, 3)
  sigma_B = jax.random.uniform(k_s, (u.shape[0], 1, 1)) * lc.noise
  u = u + sigma_B * jax.random.normal(k_eps, u.shape)
  if lc.dropout:
    keep = jax.random.bernoulli(k_drop, 1.0 - lc.dropout, u.shape)
    u = jnp.where(keep, u / (1.0 - lc.dropout), 0.0)
  logits = model.apply(params, u, method=Autoencoder.decode)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BL).mean()
  accuracy = jnp.mean(jnp.argmax(logits, -1) == tokens_BL)
  return ce, {'loss': ce, 'accuracy': accuracy}


def _stage_config(c):
  """c with the schedule of the autoencoder stage: latent.iterations optimiser steps."""
  sc = c.copy_and_resolve_references()
  sc.train.num_iterations = c.latent.iterations
  return sc


def _init_fn(model, tx, shape: Shape):
  def init(key):
    params = model.init(key, jnp.zeros((1, shape.chunk), jnp.int32))
    return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params),
            'mean': jnp.zeros((shape.dim,)), 'std': jnp.zeros((shape.dim,))}
  return init


def _check_stage_config(c, directory: str) -> None:
  path = storage.join(directory, 'config.json')
  if not storage.exists(path):
    return
  diff = [d for d in config_lib.resume_conflicts(config_lib.load_json(path), c)
          if any(d.split(' ')[0] == f or d.startswith(f + '.') for f in STAGE_FIELDS)]
  if diff:
    raise DlmError(f'{directory} holds an autoencoder trained with other settings '
                   f'({"; ".join(diff)}): use a new --workdir or the original config')


def train(c, directory: str, tok: Tokenizer, data_dir: str, manifest: dict,
          log=functools.partial(print, flush=True), stop_after: int | None = None):
  """Train (or resume, or just load when finished) the autoencoder stage in `directory` on the
  run's prepared training data; returns the frozen autoencoder ({params, mean, std}), or None
  when stopped after `stop_after` steps (a simulated preemption, as `train.train`'s)."""
  _check_stage_config(c, directory)
  storage.makedirs(directory)
  lc = c.latent
  shape = shape_of(c, tok.vocab_size)
  sc = _stage_config(c)
  model = Autoencoder(shape)
  tx = make_optimizer(sc.train, shape.backbone.n_embd)
  mesh = sharding.make_mesh()
  L, B = c.model.sequence_len, c.train.device_batch_size * jax.device_count()
  batch_sh = sharding.batch_sharding(mesh, batch_axis=1)
  batches = data.TrainBatches(
      data.shard_paths(data_dir, manifest, 'train'), L, (1, B), c.seed + 2,
      *sharding.process_block(batch_sh, (1, B, L), 1), c.data.num_workers,
      put=functools.partial(sharding.to_device, sharding=batch_sh),
      unique_windows=c.data.train_windows)
  target = checkpoint.abstract_state(_init_fn(model, tx, shape), mesh)
  ckpts = checkpoint.Checkpoints(directory, keep=c.train.keep_checkpoints)
  layout = {'windows_per_step': B, 'processes': jax.process_count()}
  start, state = ckpts.restore_latest(target, batches, layout)
  T = lc.iterations
  if start is not None and start >= T and float(state['std'][0]) > 0:
    ckpts.close()
    log(f'autoencoder: finished in {directory} (step {start}), frozen')
    return frozen_of(state)
  if start is None:
    state, start = jax.jit(_init_fn(model, tx, shape))(jax.random.key(c.seed + 2)), 0
    if sharding.is_main_process():
      tok.save(storage.join(directory, 'tokenizer'))
  else:
    log(f'autoencoder: resuming from checkpoint {start} in {directory}')
  if sharding.is_main_process():
    config_lib.save_json(c, storage.join(directory, 'config.json'))
  log(f'autoencoder: {shape.chunk} tokens -> 1 latent of {shape.dim}, encoder and decoder '
      f'{shape.backbone.n_layer} layers of width {shape.backbone.n_embd}, {T} steps of '
      f'{B} x {L} tokens')
  step_fn = jax.jit(functools.partial(_step, model=model, tx=tx, lc=lc), donate_argnums=(0,))
  key = jax.random.key(c.seed + 3)
  metrics_log = metrics_log_lib.MetricsLog(directory, start, T)
  for step in range(start, T):
    state, metrics = step_fn(state, next(batches)[0], key)
    done = step + 1
    if done % c.train.log_every == 0 or done == T or done == start + 1:
      record = {'step': done, **{k: float(v) for k, v in metrics.items()}}
      metrics_log.write(record)
      log(f'autoencoder step {done}/{T} | loss {record["loss"]:.4f} | noisy accuracy '
          f'{record["accuracy"]:.2%}')
    if done % c.train.checkpoint_every == 0 and done < T:
      ckpts.save(done, state, batches, layout=layout)
    if stop_after is not None and done >= stop_after:
      ckpts.close()
      return None
  state = dict(state, **statistics(state['params'], model, batches, lc.stat_batches))
  ckpts.save(T, state, batches, force=True, layout=layout)
  ckpts.close()
  log(f'autoencoder: trained and frozen in {directory}')
  return frozen_of(state)


def _step(state, tokens_BL, key, *, model, tx, lc):
  k = jax.random.fold_in(key, state['step'])
  (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state['params'], model, tokens_BL,
                                                               k, lc)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  return dict(state, params=optax.apply_updates(state['params'], updates), opt_state=opt_state,
              step=state['step'] + 1), metrics


def statistics(params, model: Autoencoder, batches, num_batches: int) -> dict:
  """Per-coordinate mean and std {mean, std} (dim,) of the clean latents of the next
  `num_batches` training batches."""
  encode_ = jax.jit(lambda t: model.apply(params, t, method=Autoencoder.encode))
  u = np.concatenate([np.asarray(sharding.fetch(encode_(next(batches)[0]))).reshape(
      -1, model.shape.dim) for _ in range(num_batches)])
  return {'mean': jnp.asarray(u.mean(0), jnp.float32),
          'std': jnp.asarray(np.maximum(u.std(0), 1e-3), jnp.float32)}


def frozen_of(state) -> dict:
  return {'params': state['params'], 'mean': state['mean'], 'std': state['std']}


# ---- reusing a finished autoencoder ---------------------------------------------------------

def load(directory: str, c, tok: Tokenizer) -> dict:
  """The frozen autoencoder of a finished stage in `directory`, refused in one line when it is
  missing, unfinished, or made for another tokenizer, sequence length, chunk or width."""
  where = f'latent.autoencoder={directory}'
  if not os.path.isfile(os.path.join(directory, 'config.json')):
    raise DlmError(f'{where}: no autoencoder there (no config.json); train one with '
                   '--mode=train and an empty latent.autoencoder')
  saved = config_lib.load_json(os.path.join(directory, 'config.json'))
  for key in MUST_MATCH:
    section, name = key.split('.')
    if saved[section][name] != c[section][name]:
      raise DlmError(f'{where} was trained with {key}={saved[section][name]}, this run has '
                     f'{c[section][name]}')
  tok_dir = os.path.join(directory, 'tokenizer')
  if not os.path.isfile(os.path.join(tok_dir, 'tokenizer.json')):
    raise DlmError(f'{where}: no tokenizer there: is it an autoencoder workdir?')
  if Tokenizer.load(tok_dir).fingerprint() != tok.fingerprint():
    raise DlmError(f'{where} was trained with another tokenizer than this run\'s (other data or '
                   'data.tokenizer settings)')
  shape = shape_of(saved, tok.vocab_size)
  model = Autoencoder(shape)
  tx = make_optimizer(_stage_config(saved).train, shape.backbone.n_embd)
  target = checkpoint.abstract_state(_init_fn(model, tx, shape), sharding.make_mesh())
  ckpt_dir = os.path.join(directory, 'checkpoints')
  steps = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(
      ckpt_dir) else []
  if not steps or steps[-1] < saved.latent.iterations:
    raise DlmError(f'{where} is unfinished (checkpoint {steps[-1] if steps else "none"} of '
                   f'{saved.latent.iterations}): run its training to the end first')
  ckpts = checkpoint.Checkpoints(directory, read_only=True)
  state = ckpts.restore_parts(steps[-1], target, ('params', 'mean', 'std'))
  ckpts.close()
  return frozen_of(state)

