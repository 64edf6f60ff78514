"""The Markov corpus: its stated entropy is the true one."""

import numpy as np

from dlm.data import synthetic


def test_stationary_distribution_is_stationary():
  chain = synthetic.markov_chain(num_words=20, seed=1)
  np.testing.assert_allclose(chain.stationary @ chain.transitions, chain.stationary, atol=1e-10)


def test_empirical_surprisal_matches_the_exact_entropy_rate():
  chain = synthetic.markov_chain(num_words=16, seed=0)
  docs = chain.documents(200, num_words=100, seed=0)
  index = {w: i for i, w in enumerate(chain.words)}
  ids = np.array([[index[w] for w in d.split(' ')] for d in docs])
  surprisal = -np.log2(chain.transitions[ids[:, :-1], ids[:, 1:]])
  rate = chain.entropy_rate_bits_per_word()
  assert 0.3 < rate < np.log2(16)  # sparse rows: far below uniform
  assert abs(surprisal.mean() - rate) < 4 * surprisal.std() / np.sqrt(surprisal.size)
  assert chain.document_entropy_bits(100) > 99 * rate
  assert 0 < chain.entropy_rate_bits_per_byte() < rate


def test_documents_are_reproducible():
  chain = synthetic.markov_chain()
  assert chain.documents(3, 10, seed=5) == chain.documents(3, 10, seed=5)
  assert chain.documents(3, 10, seed=5) != chain.documents(3, 10, seed=6)
