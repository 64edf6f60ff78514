"""Statistics of generated and real text: what gen-PPL alone cannot show.

A sampler can buy a low generative perplexity by repeating itself, so sample quality is always
reported beside diversity (Holtzman et al. 2020): the entropy of the unigram distribution
(in bits; falls when a sampler loops), distinct-n (unique n-grams over all n-grams, Li et al.
2016), the repetition rate (seq-rep-4 of Welleck et al. 2019: the fraction of a sample's
4-grams that repeat an earlier one), the fraction of document-boundary tokens and the length
to the first boundary. All of them depend on the amount of text, so samples
are only set beside real text of the same shape (the same number of windows of the same
length, `reference_windows`).

Two views: token ids (the models' own units; both families share the tokenizer) and words
(`words`: lowercased letter runs, tokenizer-independent).
"""

import collections
import math
from collections.abc import Hashable, Sequence

import numpy as np

from dlm.corpus import words  # the lexicon's own word rule, so the two always agree

REPETITION_N = 4


def entropy(items: Sequence[Hashable]) -> float:
  """Entropy in bits of the empirical distribution of `items` (0 for none)."""
  counts = collections.Counter(items)
  n = len(items)
  return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def ngrams(items: Sequence[Hashable], n: int) -> list[tuple]:
  return [tuple(items[i:i + n]) for i in range(len(items) - n + 1)]


def distinct_n(items: Sequence[Hashable], n: int) -> float:
  grams = ngrams(items, n)
  return len(set(grams)) / len(grams) if grams else 0.0


def pooled_distinct_n(rows: Sequence[Sequence[Hashable]], n: int) -> float:
  """distinct-n over several samples: n-grams inside each sample, unique over all of them."""
  grams = [g for r in rows for g in ngrams(list(r), n)]
  return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(items: Sequence[Hashable], n: int = REPETITION_N) -> float:
  """seq-rep-n: the fraction of n-grams that already occurred earlier in the same sample."""
  grams = ngrams(items, n)
  return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def first_document_length(row: Sequence[int], boundary: int) -> int:
  """Tokens before the first document boundary, a boundary at position 0 (AR samples start
  with `<|bos|>`) not counted; the whole row when it holds no boundary (a censored length)."""
  row = list(row)
  start = 1 if row and row[0] == boundary else 0
  return row.index(boundary, start) - start if boundary in row[start:] else len(row) - start


def token_stats(rows: np.ndarray, boundary: int) -> dict:
  """Statistics of token-id rows (N, L), one sample or held-out window per row."""
  rows = [list(map(int, r)) for r in np.asarray(rows)]
  out = {'unigram_entropy': float(np.mean([entropy(r) for r in rows]))}
  for n in range(1, 5):
    out[f'distinct_{n}'] = pooled_distinct_n(rows, n)
  out.update(
      repetition_rate=float(np.mean([repetition_rate(r) for r in rows])),
      boundary_rate=float(np.mean([r.count(boundary) / len(r) for r in rows])),
      first_document_length=float(np.mean([first_document_length(r, boundary) for r in rows])))
  return out


def stats(texts: list[str]) -> dict:
  """Word statistics of texts taken together."""
  ws = [w for t in texts for w in words(t)]
  return {'words': len(ws), 'word_entropy': entropy(ws), 'distinct_1': distinct_n(ws, 1),
          'distinct_2': distinct_n(ws, 2)}


def reference_stats(reference_text: str, num_words: int) -> dict:
  """The same statistics for the first num_words words of real text."""
  return stats([' '.join(words(reference_text)[:num_words])])


def reference_windows(stream: np.ndarray, num: int, length: int, seed: int = 0) -> np.ndarray:
  """`num` windows of `length` tokens at seeded random offsets of a held-out stream: real text
  shaped like a batch of samples."""
  if len(stream) < length:
    raise ValueError(f'held-out stream of {len(stream)} tokens is shorter than {length}')
  starts = np.random.default_rng(seed).integers(0, len(stream) - length + 1, num)
  return stream[starts[:, None] + np.arange(length)]
