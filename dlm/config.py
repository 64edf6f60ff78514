"""The configuration tree every experiment starts from, and the checks that reject bad values.

Each field maps to a knob of the seed (nanochat's diffusion scripts); `configs/*.py` override
what they need. `depth` is the one dial nanochat turns: width = 64 * depth and one head per 64
channels, unless n_embd / n_head / n_layer are given explicitly (non-zero).
"""

import json

import jax
import ml_collections

from dlm import diffusion, labels, noise, samplers, storage
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
      causal=False,        # True: the autoregressive baseline on the same backbone
      dtype='float32',     # compute dtype of every matmul; parameters stay float32
      attention='auto',    # auto (cudnn on NVIDIA GPUs in bf16, else xla) | xla | cudnn
      remat='block',       # what the backward pass recomputes: none | block | dots (model.REMAT);
                           # block was the fastest on the quickstart on CPU (README, Scaling out)
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
                                  # Off: 25% cost the unconditional bound 3-5% (README, Results)
      label_dropout=0.1,          # rows trained without their label (data.label), for guidance
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
      mask_len=16,                # tokens of a bare [MASK] in an infill template
      top_p=1.0,                  # autoregressive runs: nucleus sampling mass (1: off)
  ))

  c.eval = ml_collections.ConfigDict(dict(
      eval_tokens=65536,          # seed --eval_tokens
      batch_size=8,               # seed --batch_size
      bound_samples=8,            # log-SNR draws per sequence for the bounds (two replicas)
      discrete_steps=0,           # T of the discrete T-step bound; 0: sample.num_steps
  ))
  return c


SELF_CONDITION = ('previous', 'fresh')
# Settings a run may change when it resumes: they change speed or memory, never the values.
SAME_MATH = ('model.remat',)


def model_config(c, vocab_size: int) -> ModelConfig:
  m = c.model
  n_layer = m.n_layer or m.depth
  n_embd = m.n_embd or 64 * m.depth
  n_head = m.n_head or max(1, n_embd // 64)
  if m.vocab_size and m.vocab_size < vocab_size:
    raise DlmError(f'model.vocab_size={m.vocab_size} is smaller than the tokenizer\'s {vocab_size}')
  return ModelConfig(
      vocab_size=m.vocab_size or vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
      sequence_len=m.sequence_len, diffusion_dim=m.diffusion_dim, causal=m.causal,
      normalize_embeddings=c.diffusion.normalize_embeddings,
      prior_logits=c.diffusion.prior_logits, learn_embeddings=c.diffusion.learn_embeddings,
      path=c.diffusion.path,
      conditioning=not m.causal and c.diffusion.condition_fraction > 0,
      num_labels=len(labels.VALUES) if c.data.label and not m.causal else 0, dtype=m.dtype,
      attention=attention(c), remat=m.remat)


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


def validate(c, num_devices: int | None = 1) -> None:
  """Reject impossible values with one line that names the field (num_devices=None: leave out
  the checks that depend on the devices)."""
  m, d, t, s = c.model, c.diffusion, c.train, c.sample
  _require(m.depth >= 1 or m.n_layer >= 1, 'model.depth must be >= 1')
  n_embd = m.n_embd or 64 * m.depth
  n_head = m.n_head or max(1, n_embd // 64)
  _require(n_embd % n_head == 0, f'model.n_embd={n_embd} is not divisible by n_head={n_head}')
  _require((n_embd // n_head) % 2 == 0, 'head dimension must be even (rotary embeddings)')
  _require(m.sequence_len >= 2, 'model.sequence_len must be >= 2')
  _require(m.diffusion_dim >= 1, 'model.diffusion_dim must be >= 1')
  _require(m.dtype in ('float32', 'bfloat16'), f'model.dtype={m.dtype!r}: use float32 or bfloat16')
  _require(m.remat in REMAT, f'model.remat={m.remat!r}: expected one of {REMAT}')
  _require(m.attention in ('auto', 'xla', 'cudnn'),
           f'model.attention={m.attention!r}: expected auto, xla or cudnn')
  _require(m.attention != 'cudnn' or (jax.default_backend() == 'gpu' and m.dtype == 'bfloat16'),
           f'model.attention=cudnn needs an NVIDIA GPU and model.dtype=bfloat16 (here: '
           f'{jax.default_backend()}, {m.dtype}); use auto')
  _require(d.noise_schedule in diffusion.SCHEDULES,
           f'diffusion.noise_schedule={d.noise_schedule!r}: expected one of {diffusion.SCHEDULES}')
  _require(d.loss in ('ce', 'mse'), f'diffusion.loss={d.loss!r}: expected ce or mse')
  _require(d.parameterization in diffusion.PARAMETERIZATIONS,
           f'diffusion.parameterization={d.parameterization!r}: expected one of '
           f'{diffusion.PARAMETERIZATIONS}')
  _require(d.diffusion_steps >= 1, 'diffusion.diffusion_steps must be >= 1')
  _require(d.allocation in noise.ALLOCATIONS,
           f'diffusion.allocation={d.allocation!r}: expected one of {noise.ALLOCATIONS}')
  _require(d.path in diffusion.PATHS, f'diffusion.path={d.path!r}: expected one of {diffusion.PATHS}')
  _require(d.token_logsnr_min < d.token_logsnr_max,
           'diffusion.token_logsnr_min must be below token_logsnr_max')
  _require(d.gumbel_beta > 0, 'diffusion.gumbel_beta must be > 0')
  _require(d.proposal_bins >= 4, 'diffusion.proposal_bins must be >= 4')
  _require(0 < d.proposal_floor <= 1, 'diffusion.proposal_floor must be in (0, 1] (q > 0 '
           'everywhere keeps the bound unbiased)')
  _require(d.proposal_refresh >= 1, 'diffusion.proposal_refresh must be >= 1')
  _require(0 <= d.proposal_ema < 1, 'diffusion.proposal_ema must be in [0, 1)')
  _require(0 <= d.condition_fraction <= 1, 'diffusion.condition_fraction must be in [0, 1]')
  _require(0 < d.label_dropout < 1, 'diffusion.label_dropout must be in (0, 1): guidance needs '
           'the unconditional model that the dropped rows train')
  labels.check_spec(c.data.label)
  _require(s.guidance >= 0, 'sample.guidance must be >= 0')
  _require(s.mask_len >= 1, 'sample.mask_len must be >= 1')
  _require(t.num_iterations >= 1, 'train.num_iterations must be >= 1')
  _require(t.device_batch_size >= 1, 'train.device_batch_size must be >= 1')
  _require(t.fsdp >= 1, 'train.fsdp must be >= 1')
  if num_devices is not None:
    _require(num_devices % t.fsdp == 0,
             f'train.fsdp={t.fsdp} must divide the {num_devices} devices')
    accumulation_steps(c, num_devices)
  _require(0 <= t.ema_decay < 1, 'train.ema_decay must be in [0, 1)')
  _require(s.num_steps >= 1, 'sample.num_steps must be >= 1')
  _require(s.seq_len <= m.sequence_len,
           f'sample.seq_len={s.seq_len} exceeds model.sequence_len={m.sequence_len}')
  _require(s.temperature > 0, 'sample.temperature must be > 0')
  _require(s.score_temperature > 0, 'sample.score_temperature must be > 0')
  _require(s.self_condition in SELF_CONDITION,
           f'sample.self_condition={s.self_condition!r}: expected one of {SELF_CONDITION}')
  _require(0 < s.top_p <= 1, 'sample.top_p must be in (0, 1]')
  _require(c.eval.bound_samples >= 2, 'eval.bound_samples must be >= 2 (two replicas for the '
           'standard error)')
  _require(c.eval.discrete_steps >= 0, 'eval.discrete_steps must be >= 0')
  _require(s.sampler in samplers.SAMPLERS,
           f'sample.sampler={s.sampler!r}: expected one of {samplers.SAMPLERS}')
  _require(c.data.on_error in ('skip', 'stop'),
           f'data.on_error={c.data.on_error!r}: expected skip or stop')
  _require(c.data.num_workers >= 0, 'data.num_workers must be >= 0')


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
  c = base_config()
  flat = _flatten(saved)
  c.update_from_flattened_dict({**OFF_WHEN_ABSENT, **flat})
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
