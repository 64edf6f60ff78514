"""Tests for dlm.tokenizer: one small tokenizer trained on TinyStories, shared by all tests."""
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm.errors import DlmError
from dlm.tokenizer import BYTES_FILE, CONFIG_FILE, RANKS_FILE, Tokenizer, train_tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories" / "train.txt"
SEPARATOR = "\n<|endoftext|>\n"

# Any valid str: every code point except lone surrogates, which UTF-8 cannot encode.
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
PROPERTY = settings(max_examples=200, deadline=None)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
  if not DATA.exists():
    pytest.skip(f"training text {DATA} is absent (shared data not mounted)")
  with DATA.open(encoding="utf-8") as f:
    stories = f.read(300_000).split(SEPARATOR)
  return train_tokenizer(stories, vocab_size=1000)


def test_vocab_is_padded_to_a_multiple_of_64(tok):
  assert tok.vocab_size % 64 == 0
  assert tok.encoding.n_vocab <= tok.vocab_size < tok.encoding.n_vocab + 64
  assert tok.encoding.n_vocab == 1000  # 998 byte tokens and merges, then bos and pad
  assert {tok.bos_id, tok.pad_id} == {998, 999}


def test_merges_compress_training_like_text(tok):
  text = "Once upon a time, there was a little girl named Lily. She liked to play."
  assert len(text.encode()) / len(tok.encode(text)) > 2.5


@PROPERTY
@given(texts)
def test_round_trip_is_lossless(tok, text):
  assert tok.decode(tok.encode(text)) == text


@PROPERTY
@given(texts)
def test_token_bytes_sum_to_utf8_length(tok, text):
  ids = tok.encode(text)
  assert tok.token_bytes()[ids].sum() == len(text.encode("utf-8"))


def test_token_bytes_shape_and_zeros(tok):
  lengths = tok.token_bytes()
  assert lengths.shape == (tok.vocab_size,) and lengths.dtype == np.int32
  assert lengths[tok.bos_id] == lengths[tok.pad_id] == 0
  assert (lengths[tok.encoding.n_vocab:] == 0).all()
  assert (lengths[:256] == 1).all()


def test_special_strings_in_text_encode_as_ordinary_text(tok):
  text = "a <|bos|> b <|pad|><|bos|>"
  ids = tok.encode(text)
  assert tok.bos_id not in ids and tok.pad_id not in ids
  assert tok.decode(ids) == text


@settings(max_examples=50, deadline=None)
@given(st.lists(texts, max_size=5))
def test_encode_batch_and_documents_match_encode(tok, docs):
  assert tok.encode_batch(docs) == [tok.encode(d) for d in docs]
  flat = tok.encode_documents(docs)
  assert flat.dtype == np.int32
  assert flat.tolist() == [i for d in docs for i in [tok.bos_id] + tok.encode(d)]
  assert tok.decode_documents(flat) == docs


def test_decode_documents_splits_at_bos(tok):
  a, b = tok.encode("The cat sat."), tok.encode("A dog ran.")
  bos = tok.bos_id
  assert tok.decode_documents([bos] + a + [bos] + b) == ["The cat sat.", "A dog ran."]
  assert tok.decode_documents(a + [bos] + b) == ["The cat sat.", "A dog ran."]  # partial first
  assert tok.decode_documents([bos, bos] + a) == ["", "The cat sat."]
  assert tok.decode_documents([]) == []


def test_decode_drops_pad_and_gap_renders_bos(tok):
  a = tok.encode("Hi.")
  gap = list(range(tok.encoding.n_vocab, tok.vocab_size))
  assert tok.decode([tok.pad_id] + a + gap + [tok.bos_id] + a) == "Hi.<|bos|>Hi."
  assert tok.decode(np.array(a, np.int32)) == "Hi."


def test_decode_rejects_out_of_range_ids(tok):
  with pytest.raises(DlmError, match="token ids"):
    tok.decode([tok.vocab_size])
  with pytest.raises(DlmError, match="token ids"):
    tok.decode([-1])


def test_save_load_round_trip(tok, tmp_path):
  tok.save(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted([RANKS_FILE, CONFIG_FILE, BYTES_FILE])
  np.testing.assert_array_equal(np.load(tmp_path / BYTES_FILE, allow_pickle=False), tok.token_bytes())
  assert not any(p.suffix in (".pkl", ".pickle") for p in tmp_path.iterdir())
  loaded = Tokenizer.load(tmp_path)
  for name in ("vocab_size", "bos_id", "pad_id"):
    assert getattr(loaded, name) == getattr(tok, name)
  assert loaded.encoding._mergeable_ranks == tok.encoding._mergeable_ranks
  assert loaded.encoding._pat_str == tok.encoding._pat_str
  np.testing.assert_array_equal(loaded.token_bytes(), tok.token_bytes())
  text = "Once upon a time 12345, 🐱 猫 e\u0301 \x00 \r end."
  assert loaded.encode(text) == tok.encode(text)


def test_save_overwrites_an_existing_tokenizer(tok, tmp_path):
  other = train_tokenizer(["abc abd abe " * 50], vocab_size=300)
  other.save(tmp_path)
  tok.save(tmp_path)
  assert Tokenizer.load(tmp_path).encoding.n_vocab == tok.encoding.n_vocab


@pytest.mark.parametrize("docs", [[], [""], ["", "", ""], iter([])])
def test_empty_corpus_raises(docs):
  with pytest.raises(DlmError, match="empty"):
    train_tokenizer(docs, vocab_size=300)


def test_one_string_instead_of_documents_raises():
  with pytest.raises(DlmError, match="iterable of documents"):
    train_tokenizer("hello world", vocab_size=300)


def test_too_small_vocab_raises():
  with pytest.raises(DlmError, match="vocab_size"):
    train_tokenizer(["hello world"], vocab_size=257)


def test_max_chars_caps_training_text():
  # With only "ab" seen, training cannot learn the "cd" merge that the rest would teach.
  tok = train_tokenizer(iter(["ab", "cd" * 1000]), vocab_size=300, max_chars=2)
  assert tok.encoding.n_vocab == 256 + 1 + 2
  assert len(tok.encode("cd")) == 2


def test_tiny_corpus_stops_early_but_is_usable():
  tok = train_tokenizer(["hi"], vocab_size=4096)
  assert tok.vocab_size == 320 and tok.decode(tok.encode("hi there")) == "hi there"


@pytest.mark.parametrize("content", [
    "{not json", "[]", '{"format_version": 1}',
    '{"format_version": 99, "pattern": "x", "special_tokens": {}, "vocab_size": 64}',
])
def test_malformed_config_raises(tok, tmp_path, content):
  tok.save(tmp_path)
  (tmp_path / CONFIG_FILE).write_text(content)
  with pytest.raises(DlmError, match=CONFIG_FILE):
    Tokenizer.load(tmp_path)


@pytest.mark.parametrize("change", [
    {"vocab_size": 100}, {"vocab_size": 1000}, {"pattern": "(unclosed"},
    {"special_tokens": {"<|bos|>": 5, "<|pad|>": 999}},
    {"special_tokens": {"<|eos|>": 998, "<|pad|>": 999}},
])
def test_inconsistent_config_raises(tok, tmp_path, change):
  tok.save(tmp_path)
  config = json.loads((tmp_path / CONFIG_FILE).read_text())
  (tmp_path / CONFIG_FILE).write_text(json.dumps({**config, **change}))
  with pytest.raises(DlmError, match=CONFIG_FILE):
    Tokenizer.load(tmp_path)


@pytest.mark.parametrize("content", ["not base64 and more\n", "QQ== x\n", "QQ== 0\nQQ== 1\n", ""])
def test_malformed_ranks_raise(tok, tmp_path, content):
  tok.save(tmp_path)
  (tmp_path / RANKS_FILE).write_text(content)
  with pytest.raises(DlmError, match=RANKS_FILE):
    Tokenizer.load(tmp_path)


@pytest.mark.parametrize("missing", [RANKS_FILE, CONFIG_FILE])
def test_missing_file_raises(tok, tmp_path, missing):
  tok.save(tmp_path)
  (tmp_path / missing).unlink()
  with pytest.raises(DlmError, match=missing):
    Tokenizer.load(tmp_path)
