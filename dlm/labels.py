"""Labels read off the text itself, for classifier-free guidance without labelled data.

`data.label` names an attribute of a training window that is a deterministic function of its
tokens, so every window is labelled for free and a sample's label can be checked the same way:

  keyword:WORD   does the window contain WORD (as the token sequence of ' WORD', 'WORD',
                 ' Word' or 'Word')? values: no, yes

The label is computed on device from the token ids (`of_tokens`), inside the jitted train
step, and by the same function on samples, so "control success" means exactly what the model
was trained to control.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from dlm.errors import DlmError

KINDS = ('keyword',)
VALUES = ('no', 'yes')  # of every kind so far


@dataclasses.dataclass(frozen=True)
class Label:
  spec: str                 # as written in the config, e.g. 'keyword:dragon'
  values: tuple[str, ...]   # value names; index i is label id i; id len(values) is "no label"
  patterns: np.ndarray      # (P, M) int32 token sequences, right-padded with -1

  @property
  def null(self) -> int:
    return len(self.values)

  def index(self, value: str) -> int:
    if value not in self.values:
      raise DlmError(f'--label={value!r} is not a value of this run\'s label {self.spec!r}; '
                     f'expected one of {self.values}')
    return self.values.index(value)


def check_spec(spec: str) -> None:
  """Reject a malformed `data.label` before any data is read."""
  if not spec:
    return
  kind, _, arg = spec.partition(':')
  if kind not in KINDS:
    raise DlmError(f'data.label={spec!r}: expected one of {[k + ":..." for k in KINDS]} '
                   '(e.g. keyword:dragon)')
  if not arg.strip() or arg != arg.strip() or ' ' in arg:
    raise DlmError(f'data.label={spec!r}: give one word after "keyword:", e.g. keyword:dragon')


def build(spec: str, tokenizer) -> Label | None:
  """The label of `spec` for this tokenizer; None when spec is empty (no labels)."""
  if not spec:
    return None
  check_spec(spec)
  word = spec.partition(':')[2]
  variants = {word, ' ' + word, word.capitalize(), ' ' + word.capitalize()}
  seqs = sorted({tuple(tokenizer.encode(v)) for v in variants})
  M = max(len(s) for s in seqs)
  patterns = np.full((len(seqs), M), -1, np.int32)
  for i, s in enumerate(seqs):
    patterns[i, :len(s)] = s
  return Label(spec, VALUES, patterns)


def of_tokens(tokens_BL, patterns_PM):
  """int32 (B,): 1 where a row contains any of the patterns (-1 pads a shorter pattern)."""
  B, L = tokens_BL.shape
  P, M = patterns_PM.shape
  padded = jnp.concatenate([tokens_BL, jnp.full((B, M), -2, tokens_BL.dtype)], 1)
  hit_BPL = jnp.ones((B, P, L), bool)
  for j in range(M):  # M is a handful of tokens: unrolled
    p_P1 = patterns_PM[:, j][:, None]
    hit_BPL &= (padded[:, None, j:j + L] == p_P1[None]) | (p_P1[None] < 0)
  return jnp.any(hit_BPL, (1, 2)).astype(jnp.int32)


def of_rows(tokens_BL, d: dict, patterns):
  """Each training row's label id, "no label" (len(VALUES)) for the rows `d['dropped']` marks;
  None for a batch drawn without labels."""
  if 'dropped' not in d:
    return None
  return jnp.where(d['dropped'], len(VALUES), of_tokens(tokens_BL, patterns))
