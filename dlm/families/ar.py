"""The autoregressive twin: the same backbone with causal attention on token ids, trained on
the next token, with an exact likelihood. It is the yardstick every diffusion family is read
against.

Sampling runs left to right from a `<|bos|>` (through a prompt's tokens first, when given), one
token per step of a jitted `lax.scan` with a key/value cache (`Transformer.decode_step`), with
temperature and nucleus (top-p) truncation. Tokens are drawn by inverse-CDF sampling over the
sorted probabilities rather than Gumbel-max: float32 Gumbel noise cannot reach the tail and
silently lowers the temperature, while the inverse CDF misplaces at most the float32 rounding
of the cumulative sum, about V * 2^-24 of probability (1e-4 for V = 2048), and the sort is
needed for top-p anyway. A test checks the empirical frequencies against the softmax.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from dlm import config, flops, sharding
from dlm.families import no_stage, one_budget, one_stage_steps
from dlm.losses import token_ce
from dlm.model import Transformer, empty_cache

NAME = 'ar'
SUMMARY = 'autoregressive (causal attention, next-token loss)'
EXACT = True
LIKELIHOOD = True   # the evaluation gives bits per byte (exact or a bound)
SAMPLE_OPTIONS = frozenset({'temperature', 'top_p'})
INFILL = False  # it writes left to right and never sees the text after a gap


def model_fields(c) -> dict:
  return {'causal': True, 'conditioning': False, 'prior_logits': False}


def train_flops(c, vocab_size: int, by_part: bool = False) -> dict:
  """Training FLOPs per token (`dlm.flops`): one trained pass over the first L - 1 tokens of
  each window (the last has no target)."""
  mcfg = config.model_config(c, vocab_size)
  L = mcfg.sequence_len
  return flops.stages({'model': flops.scale(flops.forward(mcfg, L - 1), flops.TRAIN)}, L,
                      by_part)


prepare = no_stage  # one stage: nothing trained before the model
at_budget = one_budget
stage_steps = one_stage_steps


def init_noise(c, mcfg):
  return None


def update_noise(noise_state, rows, step, c):
  return noise_state


def draw(key, tokens_BL, model, c, noise_state=None, patterns=None, condition=True,
         rows=None) -> dict:
  """Nothing is random in the next-token loss."""
  return {}


def scored_positions(tokens_BL, d: dict):
  """Every position with a next token."""
  B, L = tokens_BL.shape
  return jnp.float32(B * (L - 1))


def loss(params, model: Transformer, tokens_BL, d: dict, c, patterns=None, norm=None):
  """Next-token cross-entropy; the last position has no target and is dropped."""
  inputs_BL = tokens_BL[:, :-1]
  h_BLD = model.apply(params, inputs_BL, method=Transformer.features)
  ce_BL = token_ce(params, model, h_BLD, inputs_BL, tokens_BL[:, 1:], chunk=c.train.logits_chunk)
  value = jnp.sum(ce_BL) / (ce_BL.size if norm is None else norm)
  return value, ({'loss': value, 'ce': value}, {})


def param_metrics(params, model) -> dict:
  return {}


@functools.partial(jax.jit, static_argnames=('model',))
def nll_nats(params, tokens_BL, prev_B, *, model: Transformer):
  """Exact -log p(x_i | prev, x_<i) in nats, shape (B, L); prev_B is the token before each row."""
  inputs_BL = jnp.concatenate([prev_B[:, None], tokens_BL[:, :-1]], 1)
  return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, inputs_BL),
                                                         tokens_BL)


def bound(params, model: Transformer, c, tokens_BL, prev_B, key, proposal=None,
          num_steps: int = 0) -> dict:
  """The exact NLL per sequence (every token, the first given the token before the window)."""
  nats = nll_nats(params, tokens_BL, prev_B, model=model).sum(-1)
  return {'nats': nats, 'replicas': None, 'parts': {}}


context_probe = None  # a causal model always reads a clean left context


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


@functools.partial(jax.jit, static_argnames=('model', 'num_samples', 'seq_len', 'mesh',
                                             'trajectory'))
def sample_tokens(params, key, proposal=None, *, model, num_samples: int, seq_len: int,
                  bos_id: int, temperature=1.0, top_p=1.0, cond_tokens=None, known=None,
                  label=None, guidance=1.0, branches: int = 0, trajectory: bool = False,
                  mesh=None):
  """Token ids (num_samples, seq_len): `<|bos|>` then seq_len - 1 tokens drawn left to right.

  With a prompt (cond_tokens / known: a known prefix, `conditioning.prompt`), the prompt's
  tokens are fed instead of drawn while its positions pass, which fills the key/value cache
  with them before the first drawn token. (Labels and trajectories are diffusion's.)
  """
  del label, guidance, branches, trajectory
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
