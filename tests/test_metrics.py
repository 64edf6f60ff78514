"""Sample statistics on hand-checked strings and token rows."""

import math

import numpy as np

from dlm import metrics


def test_words_are_lowercased_letter_runs():
  assert metrics.words('Hello, World! It\'s 3 o\'clock.') == ['hello', 'world', "it's", "o'clock"]


def test_entropy_of_uniform_constant_and_skewed_items():
  assert metrics.entropy(['a', 'b', 'c', 'd']) == 2.0
  assert metrics.entropy(['a'] * 10) == 0.0
  assert abs(metrics.entropy(['a', 'a', 'b']) - (math.log2(3) - 2 / 3)) < 1e-12


def test_distinct_n_counts_unique_ngrams():
  ws = metrics.words('the cat the cat the dog')
  assert metrics.distinct_n(ws, 1) == 3 / 6
  assert metrics.distinct_n(ws, 2) == 3 / 5  # (the cat) (cat the) (the dog)
  assert metrics.distinct_n(ws, 3) == 3 / 4  # (the cat the) twice


def test_pooled_distinct_n_keeps_ngrams_inside_each_sample():
  # 'b a' would only exist across the boundary between the two samples.
  assert metrics.pooled_distinct_n([['a', 'b'], ['a', 'b']], 2) == 1 / 2
  assert metrics.pooled_distinct_n([['a', 'b'], ['a', 'c']], 1) == 3 / 4


def test_repetition_rate_is_the_share_of_repeated_4grams():
  assert metrics.repetition_rate(metrics.words('a b c d e f g')) == 0.0
  # 'a b c d a b c d': 4-grams abcd bcda cdab dabc abcd -> one repeat of five.
  assert abs(metrics.repetition_rate(metrics.words('a b c d a b c d')) - 1 / 5) < 1e-12


def test_first_document_length_skips_a_leading_boundary():
  B = 0
  assert metrics.first_document_length([B, 5, 6, B, 7], B) == 2
  assert metrics.first_document_length([5, 6, B], B) == 2
  assert metrics.first_document_length([5, 6, 7], B) == 3  # censored at the row's end


def test_token_stats_of_fixed_rows():
  rows = np.array([[0, 1, 1, 2], [0, 3, 0, 3]])
  s = metrics.token_stats(rows, boundary=0)
  assert s['unigram_entropy'] == (1.5 + 1.0) / 2
  assert s['distinct_1'] == 4 / 8
  assert s['distinct_2'] == 5 / 6  # 01 11 12 | 03 30 03: 03 repeats
  assert s['boundary_rate'] == (1 / 4 + 2 / 4) / 2
  assert s['first_document_length'] == (3 + 1) / 2
  assert s['repetition_rate'] == 0.0


def test_reference_stats_truncate_to_the_same_word_count():
  s = metrics.reference_stats('one two three four five six', 4)
  assert s['words'] == 4 and s['word_entropy'] == 2.0


def test_reference_windows_have_the_samples_shape():
  w = metrics.reference_windows(np.arange(100), num=5, length=8, seed=1)
  assert w.shape == (5, 8) and np.all(np.diff(w, axis=1) == 1)
