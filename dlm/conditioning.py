"""Known tokens: the prefix or the text around a gap that a sample must keep.

Training (CDCD, Dieleman et al. 2022; DiffuSeq's partial noising, Gong et al. 2023): for a
fraction of rows some positions are *known*: they enter the model as their clean embeddings,
marked by a learned vector (`Transformer`), and the loss covers the other positions only. The
known positions are a random prefix, one to three random spans, or both (`random_known`), so
one network learns prefix continuation, infilling and (the other rows) unconditional
generation.

Sampling: a prompt (`prompt`) or an infill template (`template`) becomes a `Condition`, the
token ids and the mask of known positions of one sequence, which the sampler holds fixed at
every step (`inject`).
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from dlm import diffusion, streams
from dlm.errors import DlmError
from dlm.tokenizer import BOS, PAD

PLACEHOLDER = re.compile(r'\[MASK(?::(\d+))?\]')
MAX_SPANS = 3


def random_known(key, batch: int, L: int, fraction):
  """bool (batch, L): for each row, with probability `fraction`, a random prefix (1 to L - 1
  tokens), one to three random spans (1 to L/2 tokens each), or both, with equal odds; no
  known positions otherwise. A row is never entirely known.

  Lengths up to most of the row matter: an infill template keeps nearly everything but a gap
  (a prefix and a span around it). With shorter ones, conditioned infilling of a middle gap
  scored worse than the untrained replacement method: the model had not seen that much known
  text (docs/results.md, 'Lengths of the known spans in training').
  """
  k_row, k_kind, k_prefix, k_n, k_start, k_len = jax.random.split(key, 6)
  pos_L = jnp.arange(L)
  conditioned_B = jax.random.uniform(k_row, (batch,)) < fraction
  kind_B = jax.random.randint(k_kind, (batch,), 0, 3)  # 0 prefix, 1 spans, 2 both
  prefix_BL = pos_L[None] < jax.random.randint(k_prefix, (batch, 1), 1, max(2, L))
  n_B = jax.random.randint(k_n, (batch,), 1, MAX_SPANS + 1)
  start_BS = jax.random.randint(k_start, (batch, MAX_SPANS), 0, L)
  end_BS = start_BS + jax.random.randint(k_len, (batch, MAX_SPANS), 1, max(2, L // 2 + 1))
  active_BS = jnp.arange(MAX_SPANS)[None] < n_B[:, None]
  spans_BL = jnp.any((pos_L[None, None] >= start_BS[..., None])
                     & (pos_L[None, None] < end_BS[..., None]) & active_BS[..., None], 1)
  known_BL = jnp.where((kind_B == 0)[:, None], prefix_BL,
                       jnp.where((kind_B == 1)[:, None], spans_BL, prefix_BL | spans_BL))
  known_BL &= conditioned_B[:, None]
  return known_BL & ~jnp.all(known_BL, -1, keepdims=True)


def training_draws(k_known, k_drop, tokens_BL, mcfg, dc, patterns=None,
                   condition: bool = True, rows=None) -> dict:
  """The conditioning part of a diffusion batch's random inputs, where the run trains with it:
  known (B, L) positions (`random_known`, rows at `dc.condition_fraction`) and dropped (B,) the
  rows trained without their label (`dc.label_dropout`), each row's from its own key
  (`streams`; rows: which rows of the step these are, default all). condition=False: neither
  (validation and the bounds are unconditional)."""
  B, L = tokens_BL.shape
  rows = streams.of(rows, B)
  d = {}
  if condition and mcfg.conditioning and dc.condition_fraction > 0:
    d['known'] = streams.per_row(lambda k: random_known(k, 1, L, dc.condition_fraction)[0],
                                 k_known, rows)
  if condition and patterns is not None and mcfg.num_labels:
    d['dropped'] = streams.uniform(k_drop, rows) < dc.label_dropout
  return d


def unknown_count(tokens_BL, d: dict):
  """How many positions a diffusion batch's loss averages over: the ones not known. The train
  step divides each device's sum by the whole batch's count, so the sum over devices is the
  loss of the whole batch whatever its split."""
  if 'known' in d:
    return jnp.sum(~d['known']).astype(jnp.float32)
  return jnp.float32(tokens_BL.size)


def inject(z_BLE, x0_BLE, known_BL):
  """z with the known positions replaced by their clean embeddings."""
  return jnp.where(known_BL[..., None], x0_BLE, z_BLE)


@dataclasses.dataclass(frozen=True)
class Condition:
  """One sequence's known tokens: ids (L,) (0 where unknown) and the mask of known positions.

  spans: (start, end) of each placeholder, in token positions, for an infill template.
  """
  tokens: np.ndarray
  known: np.ndarray
  kind: str                 # 'prompt' | 'infill'
  text: str                 # the prompt or the template as given
  spans: tuple = ()

  @property
  def length(self) -> int:
    """Tokens up to the end of the template or prompt."""
    return int(np.flatnonzero(self.known)[-1]) + 1 if self.known.any() else 0


def held_noisy(x0_BLE, d: dict, path: str):
  """(z, free): x0 noised at the draws' log-SNRs (`d['lam']`, `d['eps']`) with the known
  positions held clean, and the float mask of the free (scored) positions."""
  z = diffusion.q_sample(x0_BLE, d['lam'], d['eps'], path)
  known = d.get('known')
  if known is None:
    return z, jnp.ones(x0_BLE.shape[:2], jnp.float32)
  return inject(z, x0_BLE, known), (~known).astype(jnp.float32)


def _check_text(text: str, what: str) -> None:
  for special in (BOS, PAD):
    if special in text:
      raise DlmError(f'the {what} contains the special token {special}, which text cannot hold')


def _encode(tokenizer, text: str, what: str) -> list[int]:
  _check_text(text, what)
  return tokenizer.encode(text)


def _finish(ids: list, known: list, seq_len: int, kind: str, text: str, what: str,
            spans=()) -> Condition:
  if len(ids) > seq_len:
    raise DlmError(f'the {what} is {len(ids)} tokens with <|bos|> (placeholders included), '
                   f'longer than the sequence of {seq_len}: shorten it or raise --seq_len')
  tokens = np.zeros(seq_len, np.int32)
  mask = np.zeros(seq_len, bool)
  tokens[:len(ids)] = ids
  mask[:len(ids)] = known
  return Condition(tokens, mask, kind, text, tuple(spans))


def prompt(tokenizer, text: str, seq_len: int) -> Condition:
  """A document that starts with `text`: <|bos|> and its tokens are known, the rest is free."""
  if not text:
    raise DlmError('the prompt is empty')
  ids = [tokenizer.bos_id] + _encode(tokenizer, text, 'prompt')
  if len(ids) >= seq_len:
    raise DlmError(f'the prompt is {len(ids)} tokens with <|bos|>, leaving no room in the '
                   f'sequence of {seq_len}: shorten it or raise --seq_len')
  return _finish(ids, [True] * len(ids), seq_len, 'prompt', text, 'prompt')


def template(tokenizer, text: str, seq_len: int, default_len: int, prefix: str = '') -> Condition:
  """A document with gaps: `[MASK:n]` is n generated tokens, `[MASK]` default_len of them;
  the text around them is known. The template starts the sequence (after <|bos|>) and the
  positions after it are generated freely. `prefix` (a prompt) goes before the template.

  Text before a placeholder drops its trailing spaces: in a GPT-style BPE a word carries its
  leading space, so the generated words bring their own.
  """
  full = prefix + text
  pieces = PLACEHOLDER.split(full)  # text, n, text, n, ..., text (n None for a bare [MASK])
  for piece in pieces[::2]:
    if '[MASK' in piece:
      at = piece.index('[MASK')
      close = piece.find(']', at)
      bad = piece[at:close + 1 if close >= 0 else at + 12]
      raise DlmError(f'malformed placeholder {bad!r} in the template: write [MASK] or [MASK:n] '
                     'with n >= 1')
  if len(pieces) == 1:
    raise DlmError('the template has no placeholder: mark the gaps to fill with [MASK] or '
                   '[MASK:n] (or use --prompt to continue a text)')
  ids, known, spans = [tokenizer.bos_id], [True], []
  for i in range(0, len(pieces), 2):
    piece = pieces[i]
    if i + 1 < len(pieces):
      piece = piece.rstrip(' ')
    piece_ids = _encode(tokenizer, piece, 'template') if piece else []
    ids += piece_ids
    known += [True] * len(piece_ids)
    if i + 1 < len(pieces):
      n = default_len if pieces[i + 1] is None else int(pieces[i + 1])
      if n < 1:
        raise DlmError(f'[MASK:{pieces[i + 1]}] asks for no tokens: n must be >= 1')
      spans.append((len(ids), len(ids) + n))
      ids += [0] * n
      known += [False] * n
  return _finish(ids, known, seq_len, 'infill', text, 'template', spans)


def batch(condition: Condition | None, num_samples: int, seq_len: int):
  """(tokens (N, L) int32, known (N, L) bool) for the sampler; all-unknown without a condition."""
  if condition is None:
    return np.zeros((num_samples, seq_len), np.int32), np.zeros((num_samples, seq_len), bool)
  return (np.broadcast_to(condition.tokens, (num_samples, seq_len)).copy(),
          np.broadcast_to(condition.known, (num_samples, seq_len)).copy())
