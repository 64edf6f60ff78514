"""Word statistics on hand-checked strings."""

import math

from dlm import textstats


def test_words_are_lowercased_letter_runs():
  assert textstats.words('Hello, World! It\'s 3 o\'clock.') == ['hello', 'world', "it's", "o'clock"]


def test_entropy_of_uniform_and_constant_text():
  assert textstats.word_entropy(['a', 'b', 'c', 'd']) == 2.0
  assert textstats.word_entropy(['a'] * 10) == 0.0
  assert abs(textstats.word_entropy(['a', 'a', 'b']) - (math.log2(3) - 2 / 3)) < 1e-12


def test_distinct_n_counts_unique_ngrams():
  ws = 'the cat the cat the dog'.split()
  assert textstats.distinct_n(ws, 1) == 3 / 6
  assert textstats.distinct_n(ws, 2) == 3 / 5  # (the cat) (cat the) (the dog)


def test_reference_stats_truncate_to_the_same_word_count():
  s = textstats.reference_stats('one two three four five six', 4)
  assert s['words'] == 4 and s['word_entropy'] == 2.0
