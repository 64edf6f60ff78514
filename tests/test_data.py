"""The minimal data path: documents, splits, deterministic batches, bad input."""

import numpy as np
import pytest

from conftest import SHARED_DATA, tiny_config
from dlm import data
from dlm.errors import DlmError


def test_documents_split_on_endoftext_lines_or_blank_lines():
  assert data.split_documents('a b\n<|endoftext|>\nc\n<|endoftext|>\n') == ['a b', 'c']
  assert data.split_documents('first para\n\nsecond\n\n\n') == ['first para', 'second']


def test_batches_are_a_function_of_seed_and_step():
  stream = np.arange(1000, dtype=np.int32)
  a = data.train_batch(stream, 0, 7, (2, 4, 16))
  assert a.shape == (2, 4, 16)
  np.testing.assert_array_equal(a, data.train_batch(stream, 0, 7, (2, 4, 16)))
  assert not np.array_equal(a, data.train_batch(stream, 0, 8, (2, 4, 16)))
  np.testing.assert_array_equal(np.diff(a, axis=-1), 1)  # contiguous windows


def test_eval_windows_do_not_overlap_and_respect_the_budget():
  w = data.eval_windows(np.arange(100, dtype=np.int32), 8, 40)
  assert w.shape == (5, 8) and len(np.unique(w)) == w.size


@pytest.mark.parametrize('setup, message', [
    (lambda p: None, 'does not exist'),
    (lambda p: p.mkdir(), 'no .txt files'),
    (lambda p: p.write_text('  \n\n '), 'holds no text'),
    (lambda p: p.write_bytes(b'\xff\xfe bad'), 'not UTF-8'),
])
def test_bad_data_paths_raise_one_line_errors(tmp_path, setup, message):
  path = tmp_path / 'corpus.txt'
  setup(path)
  with pytest.raises(DlmError, match=message):
    data.read_documents(str(path))


def test_corpus_smaller_than_one_window_is_rejected(tmp_path):
  (tmp_path / 'tiny.txt').write_text('one.\n\ntwo.\n\nthree.')
  c = tiny_config(**{'data.path': str(tmp_path / 'tiny.txt')})
  with pytest.raises(DlmError, match='fewer than one window'):
    data.prepare(c, str(tmp_path / 'run'), log=lambda *a: None)
  assert not (tmp_path / 'run' / 'tokenizer').exists()  # nothing half-written


def test_generated_corpus_is_the_offline_default(tmp_path):
  messages = []
  tok, train, val = data.prepare(tiny_config(), str(tmp_path), log=messages.append)
  assert 'generated offline corpus' in messages[0]
  assert train[0] == tok.bos_id and len(train) > 10 * len(val) > 0
  # cached: a second call reads the same tokens back without retraining
  tok2, train2, _ = data.prepare(tiny_config(), str(tmp_path), log=messages.append)
  np.testing.assert_array_equal(train, train2)
  assert 'cached' in messages[-1]


@pytest.mark.skipif(not (SHARED_DATA / 'tinystories').exists(), reason='shared data absent')
def test_tinystories_loads_with_its_own_validation_file(tmp_path):
  c = tiny_config(**{'data.path': str(SHARED_DATA / 'tinystories' / 'valid.txt'),
                     'data.val_path': str(SHARED_DATA / 'tinystories' / 'valid.txt')})
  tok, train, val = data.prepare(c, str(tmp_path), log=lambda *a: None)
  assert (train == tok.bos_id).sum() == 312 and len(train) == len(val)
