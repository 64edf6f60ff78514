"""Word-level statistics of text, to set samples beside real text of the same length.

Entropy of the word unigram distribution (in bits) falls when a sampler repeats itself, and
distinct-n (the fraction of n-grams that are unique, Li et al. 2016) falls with loops. Both
depend on the amount of text, so compare only equal word counts (`reference_stats` does).
"""

import collections
import math
import re

_WORD = re.compile(r"[a-z']+")


def words(text: str) -> list[str]:
  return _WORD.findall(text.lower())


def word_entropy(ws: list[str]) -> float:
  counts = collections.Counter(ws)
  n = len(ws)
  return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def distinct_n(ws: list[str], n: int) -> float:
  grams = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 0.0


def stats(texts: list[str]) -> dict:
  ws = [w for t in texts for w in words(t)]
  return {'words': len(ws), 'word_entropy': word_entropy(ws), 'distinct_1': distinct_n(ws, 1),
          'distinct_2': distinct_n(ws, 2)}


def reference_stats(reference_text: str, num_words: int) -> dict:
  """The same statistics for the first num_words words of real text."""
  return stats([' '.join(words(reference_text)[:num_words])])
