"""The autoregressive configs derived from a diffusion config, which `configs/*.py` and the
experiment commands both build: its twin and its gen-PPL scorer.

The twin (`ar_twin`): same data, tokenizer, optimiser, logging and token budget, and as nearly
as the dials allow the same number of non-embedding parameters.

The diffusion model carries per-layer time modulation (4 D^2 per layer), the input projection
and the time MLP, which the AR model has no use for; at equal depth and width it would be about
a quarter smaller. The twin keeps the depth and widens (or, if closer, deepens) until the
non-embedding counts match (Kaplan et al. 2020: at fixed parameters, shape matters little).
"""

import copy
import math

import jax

from dlm import config as config_lib
from dlm.model import Transformer, count_params, dummy_input
from dlm.tokenizer import VOCAB_MULTIPLE


def planned_vocab(c) -> int:
  """The model vocabulary a config will get: its own, or the tokenizer's padded to 64."""
  v = c.model.vocab_size or c.data.tokenizer_vocab_size
  return -(-v // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def non_embedding_params(c) -> int:
  mcfg = config_lib.model_config(c, planned_vocab(c))
  shapes = jax.eval_shape(Transformer(mcfg).init, jax.random.key(0), *dummy_input(mcfg))
  return count_params(shapes, exclude_embeddings=True)


def ar_non_embedding_params(n_layer: int, n_embd: int, vocab: int) -> int:
  """q, k, v, out (4 D^2) and the ReLU^2 MLP (8 D^2) per layer, plus the D x V head."""
  return n_layer * 12 * n_embd * n_embd + n_embd * vocab


def ar_twin(c):
  """A copy of `c` with model.family=ar and n_layer / n_embd / n_head matched to its parameters."""
  target, V = non_embedding_params(c), planned_vocab(c)
  depth = c.model.n_layer or c.model.depth
  width = c.model.n_embd or 64 * c.model.depth
  candidates = []
  for n_layer in range(depth, depth + 3):
    for n_embd in range(max(16, width // 2), 2 * width + 1, 8):
      for n_head in {max(1, n_embd // 64), max(1, -(-n_embd // 64))}:
        if n_embd % n_head == 0 and (n_embd // n_head) % 2 == 0:
          gap = abs(ar_non_embedding_params(n_layer, n_embd, V) - target)
          # Within 2% the original depth wins; otherwise the closest count.
          candidates.append(((gap > 0.02 * target, n_layer != depth, gap), n_layer, n_embd,
                             n_head))
  _, n_layer, n_embd, n_head = min(candidates)
  ar = copy.deepcopy(c)
  ar.model.family = 'ar'
  ar.model.n_layer, ar.model.n_embd, ar.model.n_head = n_layer, n_embd, n_head
  return ar


def scorer_config(c):
  """The gen-PPL scorer for runs of config c: autoregressive, larger (1.5x the depth and so the width
  where the width derives from depth, else twice the layers), twice the iterations, the same
  data and sequence length."""
  s = copy.deepcopy(c)
  s.model.family = 'ar'
  layers = c.model.n_layer or c.model.depth
  if c.model.n_embd:
    s.model.n_layer = 2 * layers
  else:
    s.model.n_layer = math.ceil(1.5 * layers)
    s.model.n_embd, s.model.n_head = 64 * math.ceil(1.5 * c.model.depth), 0
  s.train.num_iterations = 2 * c.train.num_iterations
  s.train.checkpoint_every = s.train.num_iterations
  return s
