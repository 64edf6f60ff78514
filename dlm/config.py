"""The configuration tree every experiment starts from, and the checks that reject bad values.

Each field maps to a knob of the seed (nanochat's diffusion scripts); `configs/*.py` override
what they need. `depth` is the one dial nanochat turns: width = 64 * depth and one head per 64
channels, unless n_embd / n_head / n_layer are given explicitly (non-zero).
"""

import difflib
import json
import math
import os

import jax
import ml_collections

from dlm import diffusion, families, labels, noise, samplers, storage
from dlm.errors import DlmError
from dlm.model import REMAT, ModelConfig


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      depth=12,            # seed --depth; derives n_layer, n_embd, n_head when those are 0
      n_layer=0,
      n_head=0,
      n_embd=0,
      sequence_len=1024,   # seed --max_seq_len / sequence_len
      vocab_size=0,        # 0: the tokenizer's (padded to a multiple of 64)
      diffusion_dim=64,    # width of the space the noise lives in, projected up to n_embd
      family='gaussian',   # what corrupts the text (dlm.families): ar (the autoregressive
                           # twin) | gaussian (noise on embeddings) | masked | hybrid
      dtype='float32',     # compute dtype of every matmul; parameters stay float32
      attention='auto',    # auto (cudnn on NVIDIA GPUs in bf16, else xla) | xla | cudnn
      remat='block',       # what the backward pass recomputes: none | block | dots (model.REMAT);
                           # block was the fastest on CPU (docs/results.md, 'Rematerialisation')
  ))

  c.diffusion = ml_collections.ConfigDict(dict(
      diffusion_steps=1000,       # seed --diffusion_steps: the time grid T of allocation=schedule
      noise_schedule='cosine',    # seed --noise_schedule: cosine | linear | sqrt | flow
      allocation='adaptive',      # noise levels trained, sampled, bounded: schedule | gumbel | adaptive
      path='vp',                  # vp: z = alpha x + sigma eps, a^2 + s^2 = 1 | flow: (1-t) x + t eps
      token_logsnr_min=-8.0,      # range trained and bounded, in log-SNR + ln(diffusion_dim):
      token_logsnr_max=6.0,       # prior KL at its noisy end, reconstruction at its clean end
      gumbel_mu=0.0,              # allocation=gumbel start; 0: 4.72 + ln(diffusion_dim / 768)
      gumbel_beta=0.85,
      proposal_bins=64,           # bins of the running CE-vs-log-SNR curve and of q(lambda)
      proposal_floor=0.05,        # share of q spread uniformly over the range (q > 0 everywhere)
      proposal_refresh=100,       # steps between rebuilds of q from the running curve
      proposal_ema=0.99,          # per-step decay of the running curve
      loss='ce',                  # ce: cross-entropy on clean tokens | mse: the seed's recipe
      parameterization='eps',     # space of the mse loss: eps | x0 | v (unused by ce)
      normalize_embeddings=True,  # fixed-norm embeddings: cannot collapse
      learn_embeddings=True,
      prior_logits=True,          # add the independent-token posterior to the model's logits
      self_condition=True,        # feed the previous x0 estimate back in (+1 forward per step)
      condition_fraction=0.0,     # rows trained with known tokens (prefix / spans) for prompts
                                  # and infilling (e.g. 0.25); 0: untrained (RePaint) infilling.
                                  # Off: it costs the unconditional bound more than a default
                                  # may (docs/results.md, 'What known tokens cost')
      label_dropout=0.1,          # rows trained without their label (data.label), for guidance
      masked_loss='elbo',         # masked family: elbo (CE / t, the bound itself) | mean (each
                                  # row's mean CE over its masked tokens: steadier, docs/results.md)
  ))

  c.train = ml_collections.ConfigDict(dict(
      num_iterations=5000,        # seed --num_iterations
      device_batch_size=32,       # seed --device_batch_size: sequences per device per micro-step
      total_batch_size=0,         # seed --total_batch_size, in tokens; 0: no accumulation
      embedding_lr=0.2,
      unembedding_lr=0.004,
      matrix_lr=0.02,             # Muon
      other_lr=0.004,             # AdamW: input projection, time MLP, modulation
      weight_decay=0.0,
      warmup_ratio=0.0,
      warmdown_ratio=0.2,
      final_lr_frac=0.0,
      grad_clip=1.0,
      ema_decay=0.0,              # 0: no EMA; e.g. 0.999 keeps an EMA used for sampling and eval
      log_every=10,
      eval_every=250,             # 0: never during training
      eval_batches=4,
      checkpoint_every=500,
      keep_checkpoints=3,
      compilation_cache='~/.cache/dlm/jax',  # JAX's persistent compilation cache ('' off)
      fsdp=1,                     # devices each state array is split over (FSDP); 1: replicated
      logits_chunk=0,             # positions per cross-entropy chunk; 0: chunks of <= 512 MiB
                                  # of float32 logits per device (whole sequences when they fit)
      max_bad_steps=10,           # consecutive steps with a non-finite loss or gradient (each
                                  # skipped) after which the run stops
      tensorboard=True,           # TensorBoard event files in workdir/tensorboard
      wandb_project='',           # a Weights & Biases project to log to as well ('' : none)
      eval_samples=2,             # samples drawn at each evaluation, logged as text (0: none)
      eval_bound_samples=2,       # draws per sequence of the bound at the evaluations before the
                                  # final one (two replicas: its MC error); the final one takes
                                  # eval.bound_samples
  ))

  c.data = ml_collections.ConfigDict(dict(
      path='',                    # file, dir, glob, prepared dir or dataset name; '' = TinyStories
                                  # from the hub when online, else the generated corpus
      val_path='',                # '' = hold out 1 in round(1 / val_fraction) documents
      val_fraction=0.05,
      tokenizer='',               # '' = train a BPE | gpt2 (from tiktoken's cache) | a directory
      tokenizer_vocab_size=4096,
      num_generated_stories=20000,  # documents of the default corpus (either source)
      max_documents=0,            # 0 = every document of data.path
      train_windows=0,            # > 0: train on only the train split's first this many windows,
                                  # repeated (a fixed budget of unique tokens); 0 = all of them
      on_error='skip',            # undecodable bytes, bad .jsonl lines: skip (and count) | stop
      num_workers=0,              # grain worker processes (0: threads in this process)
      label='',                   # a label read off each window, for guidance: '' (none) |
                                  # keyword:WORD (does the window contain WORD)
  ))

  c.sample = ml_collections.ConfigDict(dict(
      num_samples=4,
      seq_len=0,                  # 0: model.sequence_len
      num_steps=100,
      temperature=1.0,            # divides the denoiser's logits in x0_hat
      score_temperature=1.0,      # divides the implied score (Plaid); < 1 sharpens
      sampler='ancestral',        # ancestral | ddim | dpm++2m
      self_condition='previous',  # previous: feed back the last step's x0_hat | fresh: 2 passes
      clamp=False,                # snap x0_hat to the nearest embedding before each update
      guidance=1.0,               # classifier-free guidance scale with --label (0: unconditional)
      order='random',             # masked / hybrid: which positions a step reveals: random (the
                                  # ancestral sampler) | confidence (the most confident first)
      cache=True,                 # masked: reuse the last forward pass when no token changed
      mask_len=16,                # tokens of a bare [MASK] in an infill template
      top_p=1.0,                  # autoregressive runs: nucleus sampling mass (1: off)
  ))

  c.latent = ml_collections.ConfigDict(dict(  # the latent family (docs/latent.md)
      chunk=4,                    # tokens per latent vector (model.sequence_len must divide)
      dim=32,                     # width of a latent vector
      autoencoder='',             # '' trains the autoencoder stage in <workdir>/autoencoder;
                                  # a path reuses that finished stage (same tokenizer, length,
                                  # chunk and dim)
      iterations=1000,            # optimiser steps of the autoencoder stage, batches of the
                                  # same size as the diffusion stage's: its share of the budget
      fraction=0.5,               # the experiments' split of one step budget: the autoencoder
                                  # takes this share, diffusion the rest (`latent.at_budget`;
                                  # configs/latent.py's 400 + 400)
      layers=0,                   # layers of the encoder and of the decoder; 0: model's n_layer
      noise=0.25,                 # largest std of the Gaussian noise on latents while training
                                  # (the sampler ends near 0.3 in standardised units)
      dropout=0.05,               # dropout rate of latent coordinates while training
      stat_batches=8,             # training batches the latent mean / std are measured on
  ))

  c.eval = ml_collections.ConfigDict(dict(
      eval_tokens=65536,          # seed --eval_tokens
      batch_size=8,               # seed --batch_size
      bound_samples=8,            # log-SNR draws per sequence for the bounds (two replicas)
      discrete_steps=0,           # T of the discrete T-step bound; 0: sample.num_steps
  ))
  return c


SELF_CONDITION = ('previous', 'fresh')


def model_config(c, vocab_size: int) -> ModelConfig:
  m = c.model
  n_layer = m.n_layer or m.depth
  n_embd = m.n_embd or 64 * m.depth
  n_head = m.n_head or max(1, n_embd // 64)
  if m.vocab_size and m.vocab_size < vocab_size:
    raise DlmError(f'model.vocab_size={m.vocab_size} is smaller than the tokenizer\'s {vocab_size}')
  fields = dict(
      vocab_size=m.vocab_size or vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
      sequence_len=m.sequence_len, diffusion_dim=m.diffusion_dim, family=m.family,
      normalize_embeddings=c.diffusion.normalize_embeddings,
      learn_embeddings=c.diffusion.learn_embeddings, path=c.diffusion.path,
      num_labels=len(labels.VALUES) if c.data.label and m.family != 'ar' else 0, dtype=m.dtype,
      attention=attention(c), remat=m.remat)
  # causal, conditioning, prior_logits, and whatever else the family sets for itself
  return ModelConfig(**{**fields, **families.get(m.family).model_fields(c)})


def attention(c) -> str:
  """The attention implementation `model.attention` resolves to on this machine: cuDNN's
  flash attention where it applies (an NVIDIA GPU, bf16, head dim a multiple of 8 up to 128),
  XLA's otherwise."""
  m = c.model
  if m.attention != 'auto':
    return m.attention
  n_embd = m.n_embd or 64 * m.depth
  head_dim = n_embd // (m.n_head or max(1, n_embd // 64))
  fits = jax.default_backend() == 'gpu' and m.dtype == 'bfloat16'
  return 'cudnn' if fits and head_dim % 8 == 0 and head_dim <= 128 else 'xla'


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise DlmError(message)


# ---- the rules: one per field of base_config(), each a function value -> complaint or None ----

def _integer(low: int, high: int | None = None):
  def check(v):
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
      if high is not None:
        return f'must be an integer in [{low}, {high}]'
      return 'must be a positive integer' if low == 1 else f'must be an integer >= {low}'
  return check


def _number(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
            high_open: bool = False):
  """A finite int or float in the interval; the complaint writes the interval out."""
  def check(v):
    ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
          and (v > low if low_open else v >= low) and (v < high if high_open else v <= high))
    if ok:
      return None
    if high == math.inf:
      return 'must be a finite number' + ('' if low == -math.inf
                                          else f' {">" if low_open else ">="} {low:g}')
    return (f'must be a number in {"(" if low_open else "["}{low:g}, {high:g}'
            f'{")" if high_open else "]"}')
  return check


def _one_of(*values):
  return lambda v: None if v in values else f'must be one of {", ".join(map(str, values))}'


def _boolean(v):
  return None if isinstance(v, bool) else 'must be True or False'


def _string(v):
  return None if isinstance(v, str) else 'must be a string'


def _label(v):
  if not isinstance(v, str):
    return 'must be a string'
  try:
    labels.check_spec(v)
  except DlmError:
    return 'must be empty or keyword:WORD (e.g. keyword:dragon)'


_POSITIVE = _number(0, low_open=True)
_FRACTION = _number(0, 1)

RULES = {
    'seed': _integer(0, 2**32 - 1),  # 32 bits: within what jax.random and grain's shuffle take
    'model.depth': _integer(1),
    'model.n_layer': _integer(0),    # 0: derived from depth (likewise n_head, n_embd)
    'model.n_head': _integer(0),
    'model.n_embd': _integer(0),
    'model.sequence_len': _integer(2),
    'model.vocab_size': _integer(0),
    'model.diffusion_dim': _integer(1),
    'model.family': _one_of(*families.FAMILIES),
    'model.dtype': _one_of('float32', 'bfloat16'),
    'model.attention': _one_of('auto', 'xla', 'cudnn'),
    'model.remat': _one_of(*REMAT),
    'diffusion.diffusion_steps': _integer(1),
    'diffusion.noise_schedule': _one_of(*diffusion.SCHEDULES),
    'diffusion.allocation': _one_of(*noise.ALLOCATIONS),
    'diffusion.path': _one_of(*diffusion.PATHS),
    'diffusion.token_logsnr_min': _number(),
    'diffusion.token_logsnr_max': _number(),
    'diffusion.gumbel_mu': _number(),
    'diffusion.gumbel_beta': _POSITIVE,
    'diffusion.proposal_bins': _integer(4),
    # q > 0 everywhere keeps the importance-weighted bound unbiased
    'diffusion.proposal_floor': _number(0, 1, low_open=True),
    'diffusion.proposal_refresh': _integer(1),
    'diffusion.proposal_ema': _number(0, 1, high_open=True),
    'diffusion.loss': _one_of('ce', 'mse'),
    'diffusion.parameterization': _one_of(*diffusion.PARAMETERIZATIONS),
    'diffusion.normalize_embeddings': _boolean,
    'diffusion.learn_embeddings': _boolean,
    'diffusion.prior_logits': _boolean,
    'diffusion.self_condition': _boolean,
    'diffusion.condition_fraction': _FRACTION,
    # guidance needs the unconditional model that the dropped rows train
    'diffusion.label_dropout': _number(0, 1, low_open=True, high_open=True),
    'diffusion.masked_loss': _one_of('elbo', 'mean'),
    'train.num_iterations': _integer(1),
    'train.device_batch_size': _integer(1),
    'train.total_batch_size': _integer(0),
    'train.embedding_lr': _POSITIVE,   # a frozen embedding is diffusion.learn_embeddings=False
    'train.unembedding_lr': _POSITIVE,
    'train.matrix_lr': _POSITIVE,
    'train.other_lr': _POSITIVE,
    'train.weight_decay': _number(0),
    'train.warmup_ratio': _FRACTION,
    'train.warmdown_ratio': _FRACTION,
    'train.final_lr_frac': _FRACTION,
    'train.grad_clip': _number(0),     # 0: no clipping
    'train.ema_decay': _number(0, 1, high_open=True),
    'train.log_every': _integer(1),
    'train.eval_every': _integer(0),   # 0: never during training
    'train.eval_batches': _integer(1),
    'train.checkpoint_every': _integer(1),
    'train.keep_checkpoints': _integer(1),
    'train.compilation_cache': _string,
    'train.fsdp': _integer(1),
    'train.logits_chunk': _integer(0),  # 0: automatic
    'train.max_bad_steps': _integer(1),
    'train.tensorboard': _boolean,
    'train.wandb_project': _string,
    'train.eval_samples': _integer(0),
    'train.eval_bound_samples': _integer(2),  # two replicas at least, for the Monte-Carlo error
    'data.path': _string,
    'data.val_path': _string,
    'data.val_fraction': _number(0, 1, high_open=True),
    'data.tokenizer': _string,
    'data.tokenizer_vocab_size': _integer(256 + 2),  # every byte, plus BOS and pad
    'data.num_generated_stories': _integer(1),
    'data.max_documents': _integer(0),
    'data.train_windows': _integer(0),
    'data.on_error': _one_of('skip', 'stop'),
    'data.num_workers': _integer(0),
    'data.label': _label,
    'sample.num_samples': _integer(1),
    'sample.seq_len': _integer(0),     # 0: model.sequence_len
    'sample.num_steps': _integer(1),
    'sample.temperature': _POSITIVE,
    'sample.score_temperature': _POSITIVE,
    'sample.sampler': _one_of(*samplers.SAMPLERS),
    'sample.self_condition': _one_of(*SELF_CONDITION),
    'sample.clamp': _boolean,
    'sample.guidance': _number(0),
    'sample.mask_len': _integer(1),
    'sample.top_p': _number(0, 1, low_open=True),
    'sample.order': _one_of('random', 'confidence'),
    'sample.cache': _boolean,
    'latent.chunk': _integer(1),
    'latent.dim': _integer(2),
    'latent.autoencoder': _string,
    'latent.iterations': _integer(1),
    'latent.fraction': _number(0, 1, low_open=True, high_open=True),
    'latent.layers': _integer(0),      # 0: model's n_layer
    'latent.noise': _number(0),
    'latent.dropout': _number(0, 1, high_open=True),
    'latent.stat_batches': _integer(1),
    'eval.eval_tokens': _integer(1),
    'eval.batch_size': _integer(1),
    'eval.bound_samples': _integer(2),  # two replicas at least, for the Monte-Carlo error
    'eval.discrete_steps': _integer(0),  # 0: sample.num_steps
}


def flat_keys(c) -> dict:
  """{dotted name: value} of every field of a config (a ConfigDict or a plain dict)."""
  return _flatten(c.to_dict() if hasattr(c, 'to_dict') else c)


def unknown_key_message(key: str) -> str:
  if key == 'model.causal':
    return ('unknown config key model.causal: it became model.family (model.causal=True is '
            f'model.family=ar; the others: {", ".join(families.FAMILIES[1:])})')
  close = difflib.get_close_matches(key, RULES, n=1)
  return f'unknown config key {key}' + (f'; did you mean {close[0]}?' if close else '')


def check_keys(c) -> None:
  """Reject a field that base_config() does not have: ConfigDicts accept new keys, so a
  misspelt `c.train.log_evry = 5` in a config file would otherwise be silently ignored."""
  flat = flat_keys(c)
  unknown = next((key for key in flat if key not in RULES), None)
  # the message (a fuzzy search over every field) only when there is one: it cost 0.2 s per
  # validation when built for every key
  _require(unknown is None, unknown is not None and unknown_key_message(unknown))
  missing = [k for k in RULES if k not in flat]
  _require(not missing, f'the config lacks {", ".join(missing)}: build it from '
           'dlm.config.base_config()')


def check_fields(c) -> None:
  """Every field known and within its rule, one line naming the first that is not."""
  check_keys(c)
  flat = flat_keys(c)
  for key, rule in RULES.items():
    complaint = rule(flat[key])
    _require(complaint is None, f'{key}={flat[key]!r} {complaint}')


def validate(c, num_devices: int | None = 1) -> None:
  """Reject unknown fields and impossible values with one line that names the field; runs
  before any data is read or any file is written (num_devices=None: leave out the checks that
  depend on the devices)."""
  check_fields(c)
  m, d, t, s = c.model, c.diffusion, c.train, c.sample
  # Fields that are only wrong together.
  n_embd = m.n_embd or 64 * m.depth
  n_head = m.n_head or max(1, n_embd // 64)
  _require(n_embd % n_head == 0, f'model.n_embd={n_embd} is not divisible by n_head={n_head}')
  _require((n_embd // n_head) % 2 == 0, f'the head dimension n_embd / n_head = '
           f'{n_embd // n_head} must be even (rotary embeddings rotate pairs of channels)')
  _require(m.attention != 'cudnn' or (jax.default_backend() == 'gpu' and m.dtype == 'bfloat16'),
           f'model.attention=cudnn needs an NVIDIA GPU and model.dtype=bfloat16 (here: '
           f'{jax.default_backend()}, {m.dtype}); use auto')
  _require(d.token_logsnr_min < d.token_logsnr_max,
           f'diffusion.token_logsnr_min={d.token_logsnr_min:g} must be below '
           f'token_logsnr_max={d.token_logsnr_max:g}')
  _require(d.loss == 'ce' or m.family == 'gaussian',
           f'diffusion.loss={d.loss} is the Gaussian family\'s (the seed\'s MSE on '
           f'embeddings); model.family={m.family} trains with cross-entropy (loss=ce)')
  families.get(m.family).model_fields(c)  # a family refuses what it cannot run, in one line
  _require(s.seq_len <= m.sequence_len,
           f'sample.seq_len={s.seq_len} exceeds model.sequence_len={m.sequence_len}')
  if num_devices is not None:
    _require(num_devices % t.fsdp == 0,
             f'train.fsdp={t.fsdp} must divide the {num_devices} devices')
    accumulation_steps(c, num_devices)


# ---- the command line: which flags each mode reads, and their values -------------------------

_EVERY_MODE = ('mode', 'workdir', 'distributed', 'coordinator_address', 'num_processes',
               'process_id')
_SAMPLING = ('checkpoint', 'output', 'seed', 'num_samples', 'seq_len', 'num_steps', 'temperature',
             'top_p', 'sampler', 'score_temperature', 'self_condition', 'order', 'cache')
# The flags each mode of main.py reads; one given to a mode that ignores it is refused, since a
# silently ignored --seed or --config.sample.num_steps would look as if it had been applied.
MODE_FLAGS = {
    'train': (*_EVERY_MODE, 'config'),
    'prepare': (*_EVERY_MODE, 'config'),
    'sample': (*_EVERY_MODE, *_SAMPLING, 'prompt', 'infill', 'label', 'guidance'),
    'eval': (*_EVERY_MODE, *_SAMPLING, 'eval_tokens', 'batch_size', 'bound_samples', 'eval_data',
             'scorer'),
}


def check_command(mode: str, given, config_given: bool = False,
                  distributed: bool = False) -> None:
  """Refuse a command line whose flags the mode would not read. given: the names of the flags
  on it (`MODE_FLAGS`); config_given: whether --config or a --config.* override is on it."""
  if mode not in ('train', 'prepare') and config_given:
    raise DlmError(f'--config and --config.* apply to --mode=train: --mode={mode} reads the run\'s '
                   'own config.json (use the sampling flags, e.g. --num_steps)')
  known = {n for names in MODE_FLAGS.values() for n in names}
  for name in sorted(set(given) & known):
    if name not in MODE_FLAGS[mode]:
      modes = '|'.join(m for m, names in MODE_FLAGS.items() if name in names)
      raise DlmError(f'--{name} does not apply to --mode={mode} (a flag of --mode={modes})'
                     + ('; the training seed is --config.seed' if name == 'seed' else ''))
  _require(not (distributed and mode == 'prepare'),
           '--mode=prepare runs in one process: drop --distributed')


def check_sample_flags(run, flags: dict) -> None:
  """The sampling flags of --mode=sample / eval against the loaded run (`checkpoint.Run`).
  flags: {name: value} as given; 0, '' and None leave the run's `sample` config in charge."""
  from dlm import families, sampling
  sampling.resolve_options(run, families.of(run.model_config),
                           {k: flags[k] for k in sampling.OPTIONS if k in flags})
  f = lambda name, default=0: default if flags.get(name) is None else flags[name]
  _require(f('score_temperature') >= 0, '--score_temperature must be positive')
  _require(f('seq_len') <= run.model_config.sequence_len,
           f'--seq_len={f("seq_len")} exceeds the model\'s sequence_len='
           f'{run.model_config.sequence_len}')
  _require(min(f('num_steps'), f('seq_len'), f('num_samples')) >= 0 and f('temperature') >= 0,
           '--num_samples, --seq_len, --num_steps and --temperature must be positive')
  _require(0 <= f('top_p') <= 1, '--top_p must be in (0, 1]')
  guidance = flags.get('guidance')
  if guidance is not None:
    _require(guidance >= 0, f'--guidance={guidance:g}: the guidance scale must be >= 0')
    _require(bool(flags.get('label')),
             '--guidance steers towards a --label: give one (e.g. --label=yes)')


def check_eval_flags(flags: dict) -> None:
  """The evaluation flags of --mode=eval ({name: value}; 0: the run's `eval` config)."""
  _require(min(flags.get('eval_tokens', 0), flags.get('batch_size', 0)) >= 0,
           '--eval_tokens and --batch_size must be positive')
  _require(flags.get('bound_samples', 0) in (0, None) or flags['bound_samples'] >= 2,
           '--bound_samples must be >= 2 (two replicas for the Monte-Carlo error)')


def check_eval_windows(windows: int, batch_size: int, source: str, seq_len: int,
                       tokens: int) -> None:
  """--mode=eval's held-out text (`tokens` tokens cut into `windows` windows of seq_len) must
  fill at least one batch."""
  _require(windows >= batch_size and tokens >= seq_len,
           f'{source} gives {windows} windows of {seq_len} tokens, fewer than '
           f'--batch_size={batch_size}: lower --batch_size or give more text')


def check_output(output: str, workdir: str) -> None:
  """Refuse an --output that cannot be written, or that is one of the run's own files, before
  minutes of sampling or evaluation."""
  if not output:
    return
  path = os.path.realpath(output)
  _require(not os.path.isdir(path), f'--output={output} is a directory; give a file name')
  inside = os.path.relpath(path, os.path.realpath(workdir)).split(os.sep)
  _require(inside[0] not in ('config.json', 'metrics.jsonl', 'checkpoints', 'data', 'tokenizer',
                             'tensorboard', 'wandb', 'wandb_run_id', 'autoencoder'),
           f'--output={output} would overwrite the run\'s own {inside[0]}; write elsewhere')
  parent = os.path.dirname(path)
  while not os.path.exists(parent):  # the nearest folder that exists must take new entries
    parent = os.path.dirname(parent)
  _require(os.path.isdir(parent) and os.access(parent, os.W_OK) and not (
      os.path.exists(path) and not os.access(path, os.W_OK)),
           f'--output={output} cannot be written ({parent} is not a writable directory)')


# ---- resuming -------------------------------------------------------------------------------

# What may differ between a workdir's saved config and the config that resumes it: settings
# of speed, layout and bookkeeping that leave the trained function and the data order alone.
# Anything else (a learning rate, the seed, the data, the model) would splice two different
# runs into one loss curve, so a resume with it changed is refused. A dotted name covers one
# field, a section name all of its fields.
MAY_CHANGE_ON_RESUME = (
    'train.num_iterations',    # extends (or shortens) a run; the LR schedule is re-planned over
                               # the new length, so an extended warmdown restarts from there
    'train.device_batch_size',  # how each step is split into micro-batches; the tokens per
                                # step are checked against the checkpoint (check_layout)
    'train.fsdp',              # how the state is laid out over devices, not what it holds
    'train.log_every', 'train.eval_every', 'train.eval_batches', 'train.checkpoint_every',
    'train.keep_checkpoints', 'train.compilation_cache',  # reporting, saving and caching
    'train.logits_chunk',      # how the cross-entropy is split in memory, not its value
    'train.max_bad_steps',     # when to give up on non-finite steps
    'train.tensorboard', 'train.wandb_project', 'train.eval_samples',  # what is tracked where
    'train.eval_bound_samples',  # how precisely (a new value starts a new series of draws)
    'model.attention',         # the same attention computed by another kernel
    'model.remat',             # what the backward pass recomputes, not what it computes
    'data.num_workers',        # how batches are loaded, not which
    'sample', 'eval',          # used after training, or by --mode=sample / eval
)


def resume_conflicts(saved, current) -> list[str]:
  """'key: old there, new here' for each field that differs and may not change on resume."""
  old, new = flat_keys(saved), flat_keys(current)
  out = []
  for key in sorted(set(old) | set(new)):
    if key in MAY_CHANGE_ON_RESUME or key.split('.')[0] in MAY_CHANGE_ON_RESUME:
      continue
    if old.get(key) != new.get(key):
      out.append(f'{key} {old.get(key)!r} there, {new.get(key)!r} here')
  return out


def accumulation_steps(c, num_devices: int) -> int:
  """Micro-steps per optimiser step, so that total_batch_size tokens are seen per update."""
  t = c.train
  per_micro = t.device_batch_size * c.model.sequence_len * num_devices
  if not t.total_batch_size:
    return 1
  _require(t.total_batch_size % per_micro == 0,
           f'train.total_batch_size={t.total_batch_size} tokens is not divisible by '
           f'device_batch_size * sequence_len * devices = {per_micro}')
  return t.total_batch_size // per_micro


def save_json(c, path) -> None:
  storage.write_text(path, c.to_json(indent=2, sort_keys=True))


def load_json(path) -> ml_collections.ConfigDict:
  """The config a run saved in its workdir; merged over the defaults so old runs keep loading."""
  try:
    saved = json.loads(storage.read_text(path))
  except FileNotFoundError:
    raise DlmError(f'no config.json in the workdir ({path}): is it a dlm training workdir?')
  except json.JSONDecodeError as e:
    raise DlmError(f'{path} is not valid JSON: {e}')
  if not isinstance(saved, dict):
    raise DlmError(f'{path} holds no config (a JSON object)')
  flat = _flatten(saved)
  if 'model.causal' in flat and 'model.family' not in flat:  # saved before model.family
    flat['model.family'] = 'ar' if flat.pop('model.causal') else 'gaussian'
  unknown = [k for k in flat if k not in RULES]
  _require(not unknown, f'{path} has settings this version of dlm does not know: '
           f'{", ".join(unknown)}')
  c = base_config()
  try:
    c.update_from_flattened_dict({**OFF_WHEN_ABSENT, **flat})
  except (TypeError, ValueError) as e:
    raise DlmError(f'{path}: {" ".join(str(e).split())}')
  try:  # the fields alone: the run may be read on other devices than it trained on
    check_fields(c)
  except DlmError as e:
    raise DlmError(f'{path}: {e}')
  return c


# Features a run saved before they existed was trained without.
OFF_WHEN_ABSENT = {'diffusion.condition_fraction': 0.0}


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out
