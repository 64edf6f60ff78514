"""What every family's loss is made of: the cross-entropy of the model's logits against target
tokens, computed in chunks of positions so a large vocabulary's logits never exist at once.
Each family's own objective is in `dlm.families.<family>.loss`; `loss_fn` runs it on a batch.

Every family's loss returns (loss, (metrics, rows)): scalar float32 metrics, sums over positions
divided by the batch's count (`scored_positions`), which the train step adds over devices and
averages over micro-batches without knowing which model it is training, and per-row values
that feed the family's running state (the Gaussian CE curve of `dlm.noise`).
"""

import jax
import jax.numpy as jnp
import optax

from dlm import families
from dlm.model import Transformer


def token_ce(params, model: Transformer, h_BLD, inputs, targets_BL, lam_B=None,
             chunk: int = 0):
  """Cross-entropy (B, L) of the logits of hidden states h (`Transformer.features`) against
  the targets, `chunk` positions at a time: the (B, L, V) float32 logits of a large vocabulary
  (8.6 GB for 64 x 1024 x 32k) never exist at once. Each chunk is rematerialised in the
  backward pass, which repeats the head's forward matmul (a few % of a step's FLOPs).
  chunk = 0: `logits_chunk`'s automatic size."""
  B, L = targets_BL.shape
  chunk = chunk or logits_chunk(B, L, model.cfg.vocab_size)
  if chunk >= L:
    logits = model.apply(params, h_BLD, inputs, lam_B, method=Transformer.logits)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets_BL)
  n = -(-L // chunk)
  pad = lambda x: jnp.pad(x, [(0, 0), (0, n * chunk - L)] + [(0, 0)] * (x.ndim - 2))
  split = lambda x: jnp.moveaxis(pad(x).reshape(B, n, chunk, *x.shape[2:]), 1, 0)

  @jax.checkpoint
  def one(_, xs):
    h, x, t = xs
    logits = model.apply(params, h, x, lam_B, method=Transformer.logits)
    return None, optax.softmax_cross_entropy_with_integer_labels(logits, t)
  _, ce = jax.lax.scan(one, None, (split(h_BLD), split(inputs), split(targets_BL)))
  return jnp.moveaxis(ce, 0, 1).reshape(B, n * chunk)[:, :L]


def logits_chunk(B: int, L: int, V: int, budget: int = 2**29) -> int:
  """Positions per cross-entropy chunk so that one chunk's float32 logits take at most
  `budget` bytes (512 MiB); L (no chunking) when the whole fits."""
  return max(1, min(L, budget // (4 * B * V)))


def loss_fn(params, model: Transformer, tokens_BL, key, c, noise_state=None, patterns=None,
            condition: bool = True):
  """The loss of a whole batch on one device (or under plain jit), for the model's family:
  its random inputs drawn (`draw`), then its `loss`; (loss, (metrics, rows))."""
  family = families.of(model.cfg)
  d = family.draw(key, tokens_BL, model, c, noise_state, patterns, condition)
  return family.loss(params, model, tokens_BL, d, c, patterns)
