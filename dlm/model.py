"""The transformer shared by the diffusion model and the autoregressive baseline.

nanochat conventions: parameter-free RMSNorm, rotary positions, QK-norm, ReLU^2 MLP, no biases,
an untied output head, zero-initialised output projections, and one `depth` dial that derives
the width. The layers run under `nn.scan`, so compile time does not grow with depth.

Two switches make the two model families:
- `causal=False` (diffusion): the input is a noisy sequence z_t in a small `diffusion_dim`-wide
  embedding space, beside the model's previous estimate of x0 (self-conditioning, Chen et al.
  2023 "Analog Bits"; zeros when absent), projected up to the model width; the diffusion time (as log-SNR) enters every
  layer through a zero-initialised scale/shift modulation of its pre-norm activations (DiT's
  adaLN, Peebles & Xie 2023). The output logits are added to the independent-token posterior
  `diffusion.prior_logits`, so the network learns only the correction. Conditioning
  (`dlm.conditioning`): known positions carry their clean embeddings plus a learned `known`
  vector; a label (`dlm.labels`) adds a learned embedding to every position's input, with one
  extra row meaning "no label" for the unconditional half of classifier-free guidance.
- `causal=True` (autoregressive): the input is token ids, attention is causal, no time input.

Tensors in the hot code are named with their shapes: B batch, L length, D width, H heads,
K head dim, V vocabulary, E diffusion dim, C conditioning width.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlm import diffusion


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  n_layer: int
  n_head: int
  n_embd: int
  sequence_len: int
  diffusion_dim: int = 64
  family: str = 'gaussian'     # `dlm.families`: which corruption the model is trained to undo
  causal: bool = False         # causal attention on token ids (the ar family)
  normalize_embeddings: bool = True
  prior_logits: bool = True
  learn_embeddings: bool = True
  path: str = 'vp'
  conditioning: bool = False   # a learned marker for known (clean) positions
  mask_token: bool = False     # a learned input for the other positions (the masked family's
                               # [MASK]: their input is otherwise exactly zero)
  num_labels: int = 0          # label values for classifier-free guidance (0: no labels)
  dtype: str = 'float32'       # compute dtype of every matmul; parameters stay float32
  attention: str = 'xla'       # xla | cudnn (flash attention on NVIDIA GPUs, bf16 / fp16)
  remat: str = 'block'         # what the backward pass recomputes (REMAT)
  out_dim: int = 0             # > 0: the head predicts a vector of this width instead of
                               # token logits, and there is no token table (the latent family's
                               # denoiser, whose inputs and outputs are autoencoder latents)

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head


def rms_norm(x):
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-6)).astype(x.dtype)


def rotary(L: int, K: int):
  """cos, sin tables of shape (L, K/2) for rotary embeddings (Su et al. 2021)."""
  inv_freq = 1.0 / (10000 ** (jnp.arange(0, K, 2, dtype=jnp.float32) / K))
  angles = jnp.arange(L, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x_BLHK, cos, sin):
  x1, x2 = jnp.split(x_BLHK.astype(jnp.float32), 2, axis=-1)
  cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).astype(x_BLHK.dtype)


TIME_FEATURES = 256  # sinusoidal features of the diffusion time, the time MLP's input width


def time_features(lam_B, dim: int = TIME_FEATURES):
  """Sinusoidal features of the log-SNR, rescaled so the default range spans [0, 1000] like a
  DDPM timestep index."""
  s = (lam_B - diffusion.LOGSNR_MIN) / (diffusion.LOGSNR_MAX - diffusion.LOGSNR_MIN) * 1000.0
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(dim // 2, dtype=jnp.float32) / (dim // 2))
  args = s[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], -1)


def _uniform(scale):
  """nanochat's init: uniform with the standard deviation of N(0, scale^2)."""
  bound = math.sqrt(3) * scale
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Block(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, cond_BC, rope, cache=None, pos=None):
    """cache: this layer's {'k', 'v'} of shape (B, S, H, K) for one-token decoding at `pos`
    (AR only); the new token's key and value are written at `pos` and it attends to 0..pos."""
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    D, H, K = cfg.n_embd, cfg.n_head, cfg.head_dim
    init = _uniform(D ** -0.5)
    dense = lambda n, name, kinit=init: nn.DenseGeneral(
        n, use_bias=False, dtype=dt, kernel_init=kinit, name=name)

    if cond_BC is not None:
      mod = nn.Dense(4 * D, use_bias=False, dtype=dt, kernel_init=nn.initializers.zeros,
                     name='modulation')
      shift1, scale1, shift2, scale2 = jnp.split(mod(nn.silu(cond_BC))[:, None, :], 4, -1)
    else:
      shift1 = scale1 = shift2 = scale2 = 0.0

    h = (rms_norm(x_BLD) * (1 + scale1) + shift1).astype(dt)
    B, L, _ = h.shape
    q = dense(D, 'q')(h).reshape(B, L, H, K)
    k = dense(D, 'k')(h).reshape(B, L, H, K)
    v = dense(D, 'v')(h).reshape(B, L, H, K)
    cos, sin = rope
    q, k = rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin))
    if cache is None:
      att = jax.nn.dot_product_attention(q, k, v, is_causal=cfg.causal,
                                         implementation=cfg.attention)
    else:
      cache = {'k': jax.lax.dynamic_update_slice_in_dim(cache['k'], k.astype(cache['k'].dtype),
                                                        pos, 1),
               'v': jax.lax.dynamic_update_slice_in_dim(cache['v'], v.astype(cache['v'].dtype),
                                                        pos, 1)}
      # Keys past `pos` are zeros from the empty cache; key_value_seq_lengths masks them
      # (boolean masks and fp32 biases have open bugs in some attention backends).
      att = jax.nn.dot_product_attention(q, cache['k'], cache['v'],
                                         key_value_seq_lengths=jnp.full((B,), pos + 1, jnp.int32))
    x_BLD = x_BLD + dense(D, 'attn_out', nn.initializers.zeros)(att.reshape(B, L, D))

    h = (rms_norm(x_BLD) * (1 + scale2) + shift2).astype(dt)
    h = jnp.square(jax.nn.relu(dense(4 * D, 'mlp_in')(h)))
    x_BLD = x_BLD + dense(D, 'mlp_out', nn.initializers.zeros)(h)
    return x_BLD, cache


# Rematerialisation of each layer in the backward pass: compute traded for memory. none keeps
# every activation; block keeps only each layer's input and runs the layer forward again in the
# backward pass (~8N instead of 6N FLOPs per token); dots keeps the outputs of the weight
# matmuls and recomputes the rest (norms, rotary, attention, ReLU^2). On the quickstart on CPU
# block was the fastest all the same: less memory traffic outweighs the extra FLOPs there
# (docs/results.md, 'Rematerialisation').
REMAT = ('none', 'block', 'dots')


def _remat(block, how: str):
  if how == 'none':
    return block
  policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if how == 'dots' else None
  # prevent_cse=False: inside a scan XLA cannot fold the recomputation back into the forward
  # (JAX's advice for checkpoint under scan), and the guard would only cost speed
  return nn.remat(block, policy=policy, prevent_cse=False)


def layers(cfg: ModelConfig, name: str = 'blocks', layer_params=None):
  """The stack of cfg.n_layer `Block`s under `nn.scan` (one compiled layer whatever the depth),
  rematerialised as cfg.remat says: the backbone every network of the project is made of.
  layer_params: as `Transformer.layer_params`."""
  block = Block
  if layer_params is not None:
    block = nn.map_variables(Block, 'params', trans_in_fn=layer_params, init=False)
  return nn.scan(
      _remat(block, cfg.remat), variable_axes={'params': 0}, split_rngs={'params': True},
      in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast), length=cfg.n_layer)(cfg, name=name)


class Transformer(nn.Module):
  cfg: ModelConfig
  # A function of one layer's weights applied inside the layer scan before the layer runs:
  # under FSDP, the all-gather of that layer's shards (`sharding.layer_gather`), so only one
  # layer is ever whole on a device. None: the weights as stored.
  layer_params: Any = None

  def setup(self):
    cfg = self.cfg
    if cfg.causal:
      self.wte = self.param('wte', nn.initializers.normal(1.0), (cfg.vocab_size, cfg.n_embd))
    else:
      if not cfg.out_dim:
        self.embed_table = self.param(
            'embed', nn.initializers.normal(1.0), (cfg.vocab_size, cfg.diffusion_dim))
      self.in_proj = nn.Dense(cfg.n_embd, use_bias=False, dtype=cfg.dtype, kernel_init=_uniform(
          (2 * cfg.diffusion_dim) ** -0.5), name='in_proj')
      self.time_in = nn.Dense(cfg.n_embd, use_bias=False, dtype=cfg.dtype, name='time_in')
      self.time_out = nn.Dense(cfg.n_embd, use_bias=False, dtype=cfg.dtype, name='time_out')
      if cfg.conditioning:
        self.known = self.param('known', nn.initializers.normal(1.0), (cfg.n_embd,))
      if cfg.mask_token:
        self.mask = self.param('mask', nn.initializers.normal(1.0), (cfg.n_embd,))
      if cfg.num_labels:  # one more row: "no label", for the unconditional half of guidance
        self.label_table = self.param('label', nn.initializers.normal(1.0),
                                      (cfg.num_labels + 1, cfg.n_embd))
    self.blocks = layers(cfg, layer_params=self.layer_params)
    # Zero head: uniform predictions at init, so the diffusion bound starts at exactly log2(V).
    self.head = nn.Dense(cfg.out_dim or cfg.vocab_size, use_bias=False, dtype=cfg.dtype,
                         kernel_init=nn.initializers.zeros, name='head')

  def embedding(self):
    """The diffusion embedding table E (V, E), on the sphere of radius sqrt(E) when normalised.

    A fixed norm is what stops the collapse of trainable embeddings under an MSE loss: the
    loss can no longer shrink by shrinking E (Li et al. 2022 see the collapse; CDCD and Plaid
    normalise). Radius sqrt(E) gives each coordinate unit scale, matching the unit noise.
    With learn_embeddings=False no gradient reaches the table from any use of it (the targets,
    the prior logits, x0_hat), so it stays exactly at its initial values.
    """
    E = self.embed_table
    if not self.cfg.learn_embeddings:
      E = jax.lax.stop_gradient(E)
    if self.cfg.normalize_embeddings:
      E = E * jax.lax.rsqrt(jnp.sum(E * E, -1, keepdims=True) + 1e-12) * math.sqrt(E.shape[-1])
    return E

  def __call__(self, inputs, lam_B=None, x0_prev_BLE=None, known_BL=None, label_B=None):
    """Logits (B, L, V), float32.

    Diffusion: inputs = z_t (B, L, E), lam_B, and optionally the previous estimate of x0 for
    self-conditioning (zeros when there is none), the mask of known positions (whose inputs
    the caller has set to their clean embeddings, `conditioning.inject`; they get the learned
    `known` vector) and the label ids (None or `num_labels`: no label). AR: inputs = token ids
    (B, L).
    """
    return self.logits(self.features(inputs, lam_B, x0_prev_BLE, known_BL, label_B), inputs,
                       lam_B)

  def features(self, inputs, lam_B=None, x0_prev_BLE=None, known_BL=None, label_B=None):
    """The normalised last hidden states (B, L, D) that `logits` maps to the vocabulary; the
    losses call the two halves separately to compute the cross-entropy in chunks."""
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    L = inputs.shape[1]
    if L > cfg.sequence_len:
      raise ValueError(f'sequence length {L} exceeds the model maximum {cfg.sequence_len}')
    rope = rotary(L, cfg.head_dim)
    if cfg.causal:
      x_BLD, cond_BC = self.wte[inputs], None
    else:
      if x0_prev_BLE is None:
        x0_prev_BLE = jnp.zeros_like(inputs)
      x_BLD = self.in_proj(jnp.concatenate([inputs, x0_prev_BLE], -1))
      if known_BL is not None:
        if not cfg.conditioning:
          raise ValueError('known positions given to a model trained without conditioning')
        x_BLD = x_BLD + known_BL[..., None] * self.known
        if cfg.mask_token:
          # Without it a masked position's input is exactly zero, and so (zero-initialised
          # head and output projections) is every gradient: training never starts.
          x_BLD = x_BLD + (~known_BL)[..., None] * self.mask
      if cfg.num_labels:
        # Added to every position's input like a token embedding: a direct path. Through the
        # zero-initialised time modulation instead, a keyword label had no measurable effect
        # (docs/results.md, 'How a label enters the model').
        if label_B is None:
          label_B = jnp.full(lam_B.shape, cfg.num_labels, jnp.int32)
        x_BLD = x_BLD + self.label_table[label_B][:, None, :]
      elif label_B is not None:
        raise ValueError('labels given to a model trained without labels')
      cond_BC = self.time_out(nn.silu(self.time_in(time_features(lam_B))))
    x_BLD = rms_norm(x_BLD).astype(dt)
    x_BLD, _ = self.blocks(x_BLD, cond_BC, rope, None, None)
    return rms_norm(x_BLD)

  def logits(self, h_BLD, inputs, lam_B=None):
    """Logits (B, L, V) float32 of hidden states from `features` at the positions of `inputs`
    (any run of positions: each position's logits depend on its own hidden state and, for
    diffusion, its own z_t only)."""
    logits_BLV = self.head(h_BLD).astype(jnp.float32)
    if not self.cfg.causal and self.cfg.prior_logits:
      logits_BLV = logits_BLV + diffusion.prior_logits(inputs, lam_B, self.embedding(),
                                                       self.cfg.path)
    return logits_BLV

  def decode_step(self, token_B, cache, pos):
    """AR only: logits (B, V) for the token after `token_B` at position `pos`, and the cache
    with this position's keys and values added (cache from `empty_cache`).

    The same weights and arithmetic as the full causal forward, one position at a time, so
    sampling costs O(length) per token instead of O(length^2) (tests compare the two).
    """
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    cos, sin = rotary(cfg.sequence_len, cfg.head_dim)
    rope = (jax.lax.dynamic_slice_in_dim(cos, pos, 1), jax.lax.dynamic_slice_in_dim(sin, pos, 1))
    x_B1D = rms_norm(self.wte[token_B][:, None, :]).astype(dt)
    x_B1D, cache = self.blocks(x_B1D, None, rope, cache, pos)
    return self.head(rms_norm(x_B1D))[:, 0].astype(jnp.float32), cache


def dummy_input(cfg: ModelConfig, batch: int = 1) -> tuple:
  """Inputs of the model's shape, for `init` and `eval_shape`: token ids for a causal model,
  (z, lam) for a denoiser."""
  L = cfg.sequence_len
  if cfg.causal:
    return (jnp.zeros((batch, L), jnp.int32),)
  return jnp.zeros((batch, L, cfg.diffusion_dim)), jnp.zeros((batch,))


def empty_cache(cfg: ModelConfig, batch: int) -> dict:
  """Keys and values for every layer and position: {'k', 'v'} of shape (layers, B, S, H, K)."""
  shape = (cfg.n_layer, batch, cfg.sequence_len, cfg.n_head, cfg.head_dim)
  return {'k': jnp.zeros(shape, cfg.dtype), 'v': jnp.zeros(shape, cfg.dtype)}


def count_params(params, exclude_embeddings: bool = False) -> int:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return sum(x.size for path, x in flat
             if not (exclude_embeddings and any(getattr(p, 'key', '') in ('embed', 'wte')
                                                for p in path)))

