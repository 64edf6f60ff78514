"""A synthetic corpus whose exact entropy rate is known: a seeded first-order Markov chain.

The words are made-up syllable strings; each word's successor is drawn from its own sparse
distribution (a Dirichlet draw with small concentration, so a few successors dominate, as in
text). Documents start in the stationary distribution, so the chain is stationary and
  H(document of n words) = H(pi) + (n - 1) * H_rate,   H_rate = sum_i pi_i * H(P[i, :]),
in bits. Per byte, the long-run rate is H_rate / E_pi[bytes per word, space included]. An
evaluation can then check that a model's likelihood bound sits above the truth and approaches
it.
"""

import dataclasses

import numpy as np

_SYLLABLES = [c + v for c in 'bdfgklmnprstvz' for v in 'aeiou']


@dataclasses.dataclass(frozen=True)
class MarkovChain:
  words: tuple[str, ...]
  transitions: np.ndarray  # [V, V], rows sum to 1
  stationary: np.ndarray   # [V]

  def entropy_rate_bits_per_word(self) -> float:
    return float(self.stationary @ _entropy_bits(self.transitions))

  def document_entropy_bits(self, num_words: int) -> float:
    """Exact entropy of one document of `num_words` words (the first drawn from pi)."""
    return float(_entropy_bits(self.stationary[None])[0]
                 + (num_words - 1) * self.entropy_rate_bits_per_word())

  def entropy_rate_bits_per_byte(self) -> float:
    """Long-run bits per UTF-8 byte, each word followed by one separator byte."""
    bytes_per_word = self.stationary @ np.array([len(w) + 1 for w in self.words])
    return self.entropy_rate_bits_per_word() / float(bytes_per_word)

  def documents(self, num_documents: int, num_words: int, seed: int = 0) -> list[str]:
    """Documents of `num_words` space-separated words; the same for the same seed."""
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(self.transitions, axis=1)
    docs = []
    for _ in range(num_documents):
      state = rng.choice(len(self.words), p=self.stationary)
      ids = [state]
      for u in rng.random(num_words - 1):
        state = min(int(np.searchsorted(cumulative[state], u, side='right')), len(self.words) - 1)
        ids.append(state)
      docs.append(' '.join(self.words[i] for i in ids))
    return docs


def markov_chain(num_words: int = 64, concentration: float = 0.1, seed: int = 0) -> MarkovChain:
  rng = np.random.default_rng(seed)
  words = _distinct_words(num_words, rng)
  transitions = rng.dirichlet(np.full(num_words, concentration), size=num_words)
  transitions = transitions + 1e-6  # every transition possible: the chain is irreducible
  transitions /= transitions.sum(axis=1, keepdims=True)
  return MarkovChain(words, transitions, _stationary(transitions))


def _distinct_words(n: int, rng: np.random.Generator) -> tuple[str, ...]:
  words: dict[str, None] = {}
  while len(words) < n:
    words[''.join(rng.choice(_SYLLABLES, size=rng.integers(1, 4)))] = None
  return tuple(words)


def _stationary(transitions: np.ndarray) -> np.ndarray:
  """The left eigenvector of eigenvalue 1, normalised to a distribution."""
  values, vectors = np.linalg.eig(transitions.T)
  pi = np.real(vectors[:, np.argmin(np.abs(values - 1))])
  return pi / pi.sum()


def _entropy_bits(p: np.ndarray) -> np.ndarray:
  return -np.sum(p * np.log2(p), axis=-1)
