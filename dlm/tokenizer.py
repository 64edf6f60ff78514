"""Byte-level BPE tokenizer, trained here with rustbpe and run with tiktoken.

tiktoken's bundled GPT-2 / cl100k files are downloaded at run time, so they fail on
offline machines. As in nanochat, we train our own byte-level BPE with rustbpe (fast,
GPT-4-style split) and wrap its merge ranks in a `tiktoken.Encoding` for fast encoding.
It is saved as plain text (tiktoken's base64 ranks file plus a small JSON file), never
pickle: workdirs are shared, and loading a pickle runs whatever code it contains.
"""
import base64
import binascii
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable

import numpy as np
import rustbpe
import tiktoken
from etils import epath

from dlm import storage
from dlm.errors import DlmError

# GPT-4's split pattern with numbers split into groups of at most two digits (nanochat).
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}|"""
                 r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
BOS, PAD = "<|bos|>", "<|pad|>"
RANKS_FILE, CONFIG_FILE, BYTES_FILE = "tokenizer.tiktoken", "tokenizer.json", "token_bytes.npy"
FORMAT_VERSION = 1
VOCAB_MULTIPLE = 64


class Tokenizer:
  """A tiktoken encoding plus `<|bos|>`, `<|pad|>`, and a model vocab padded to 64."""

  # tiktoken has no public accessor for its ranks, pattern and special ids; we read the
  # same private attributes its own __getstate__ uses.
  def __init__(self, encoding: tiktoken.Encoding, vocab_size: int) -> None:
    specials = encoding._special_tokens
    if set(specials) != {BOS, PAD}:
      raise DlmError(f"tokenizer special tokens must be {BOS} and {PAD},"
                     f" got {sorted(specials)}")
    # Ids are stored as int32 (encode_documents), so they must fit in one.
    if vocab_size % VOCAB_MULTIPLE or not encoding.n_vocab <= vocab_size < 2**31:
      raise DlmError(f"tokenizer vocab_size {vocab_size} must be a multiple of {VOCAB_MULTIPLE}"
                     f" in [{encoding.n_vocab}, 2**31)")
    self.encoding = encoding
    self.vocab_size = vocab_size
    self.bos_id, self.pad_id = specials[BOS], specials[PAD]
    self._token_bytes = np.zeros(vocab_size, np.int32)
    self._decodable = np.zeros(vocab_size, bool)  # False for pad, padding gap and rank holes
    for token, rank in encoding._mergeable_ranks.items():
      self._token_bytes[rank] = len(token)
      self._decodable[rank] = True
    self._decodable[self.bos_id] = True

  def encode(self, text: str) -> list[int]:
    # encode_ordinary: a literal "<|bos|>" in data is plain text, never the bos id.
    return self.encoding.encode_ordinary(text)

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return self.encoding.encode_ordinary_batch(list(texts))

  def encode_documents(self, texts: Iterable[str]) -> np.ndarray:
    pieces = [np.array([self.bos_id] + ids, np.int32) for ids in self.encode_batch(list(texts))]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)

  def decode(self, ids) -> str:
    ids = self._check_ids(ids)
    return self.encoding.decode(ids[self._decodable[ids]].tolist())

  def decode_documents(self, ids) -> list[str]:
    ids = self._check_ids(ids)
    pieces = np.split(ids, np.flatnonzero(ids == self.bos_id))
    if len(pieces[0]) == 0:  # nothing before a leading bos (or no ids at all)
      pieces = pieces[1:]
    return [self.decode(p[1:] if len(p) and p[0] == self.bos_id else p) for p in pieces]

  def token_bytes(self) -> np.ndarray:
    """UTF-8 byte length of each id (0 for specials and padding), for bits per byte."""
    return self._token_bytes.copy()

  def _files(self) -> tuple[str, str]:
    ranks = sorted(self.encoding._mergeable_ranks.items(), key=lambda item: item[1])
    lines = "".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks)
    config = {"format_version": FORMAT_VERSION, "pattern": self.encoding._pat_str,
              "special_tokens": self.encoding._special_tokens, "vocab_size": self.vocab_size}
    return lines, json.dumps(config, indent=2) + "\n"

  def fingerprint(self) -> str:
    """SHA-256 of the saved files' contents: prepared shards record it to catch a mismatch."""
    return hashlib.sha256("".join(self._files()).encode()).hexdigest()

  def save(self, directory) -> None:
    """The ranks and config (what `load` reads) plus token byte lengths for other tools.

    `directory` may be local or any `etils.epath` URL (a gs:// workdir)."""
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines, config = self._files()
    storage.write_text(directory / RANKS_FILE, lines)
    storage.save_npy(directory / BYTES_FILE, self._token_bytes)
    storage.write_text(directory / CONFIG_FILE, config)  # last: its presence means a whole one

  @classmethod
  def load(cls, directory) -> "Tokenizer":
    directory = epath.Path(directory)
    config = _read_config(directory / CONFIG_FILE)
    ranks = _read_ranks(directory / RANKS_FILE)
    try:
      return cls(_make_encoding(ranks, config["pattern"], config["special_tokens"]),
                 config["vocab_size"])
    except DlmError as e:  # name the file whose contents do not fit together
      raise DlmError(f"{directory / CONFIG_FILE}: {e}") from None

  def _check_ids(self, ids) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1:
      raise DlmError(f"token ids must be one-dimensional, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise DlmError(f"token ids must lie in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
    return ids


def train_tokenizer(texts: Iterable[str], vocab_size: int, max_chars: int = 5_000_000) -> Tokenizer:
  """Train on at most `max_chars` characters of `texts`; `vocab_size` counts the 2 specials."""
  if vocab_size < 256 + 2:
    raise DlmError(f"tokenizer vocab_size must be at least {256 + 2} (256 bytes + 2 specials),"
                   f" got {vocab_size}")
  if isinstance(texts, str):  # iterating would treat every character as a document
    raise DlmError("tokenizer training text must be an iterable of documents, not one string")
  docs = _take_chars(texts, max_chars)
  if not any(docs):
    raise DlmError("tokenizer training text is empty")
  trainer = rustbpe.Tokenizer()
  trainer.train_from_iterator(iter(docs), vocab_size - 2, pattern=SPLIT_PATTERN)
  ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
  first_special = max(ranks.values()) + 1
  specials = {BOS: first_special, PAD: first_special + 1}
  encoding = _make_encoding(ranks, trainer.get_pattern(), specials)
  padded = -(-encoding.n_vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE  # round up
  return Tokenizer(encoding, padded)


def gpt2_tokenizer() -> Tokenizer:
  """GPT-2's byte-level BPE with <|bos|> and <|pad|> after its 50,257 tokens (vocab 50,304).

  Only from tiktoken's cache (TIKTOKEN_CACHE_DIR, DATA_GYM_CACHE_DIR or <tmp>/data-gym-cache,
  files named by the SHA-1 of their URL): tiktoken would
  otherwise download the files, which hangs or fails on an offline machine.
  """
  from tiktoken_ext import openai_public
  cache = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get(  # tiktoken.load's own rule
      "DATA_GYM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "data-gym-cache")))
  urls = [f"https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/{name}"
          for name in ("vocab.bpe", "encoder.json")]
  if not cache or not all(os.path.exists(os.path.join(cache, hashlib.sha1(u.encode()).hexdigest()))
                          for u in urls):
    raise DlmError(f"the GPT-2 tokenizer files are not in tiktoken's cache ({cache or 'off'}): "
                   "run tiktoken.get_encoding('gpt2') once online, or train a tokenizer")
  gpt2 = openai_public.gpt2()
  ranks = gpt2["mergeable_ranks"]
  specials = {BOS: len(ranks), PAD: len(ranks) + 1}
  encoding = _make_encoding(ranks, gpt2["pat_str"], specials)
  return Tokenizer(encoding, -(-encoding.n_vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE)


def _take_chars(texts: Iterable[str], max_chars: int) -> list[str]:
  """The first `max_chars` characters of `texts`; the last document is cut to fit."""
  docs, total = [], 0
  for text in texts:
    if total >= max_chars:
      break
    docs.append(text[:max_chars - total])
    total += len(docs[-1])
  return docs


def _make_encoding(ranks: dict[bytes, int], pattern: str,
                   specials: dict[str, int]) -> tiktoken.Encoding:
  if set(specials.values()) & set(ranks.values()):
    raise DlmError("tokenizer special token ids collide with ordinary token ids")
  try:
    return tiktoken.Encoding("dlm", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
  except (ValueError, OverflowError) as e:  # a pattern the regex engine rejects, huge ids
    raise DlmError(f"cannot build tokenizer: {e}") from None


def _read_config(path: epath.Path) -> dict:
  try:
    config = json.loads(path.read_text(encoding="utf-8"))
  except OSError as e:
    raise DlmError(f"cannot read tokenizer config {path}: {e.strerror}") from None
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DlmError(f"tokenizer config {path} is not valid JSON: {e}") from None
  expected = {"format_version": int, "pattern": str, "special_tokens": dict, "vocab_size": int}
  if not isinstance(config, dict) or any(not isinstance(config.get(k), t)
                                         for k, t in expected.items()):
    raise DlmError(f"tokenizer config {path} needs keys {', '.join(expected)} of the right types")
  if config["format_version"] != FORMAT_VERSION:
    raise DlmError(f"tokenizer config {path} has format_version {config['format_version']},"
                   f" expected {FORMAT_VERSION}")
  if not all(isinstance(i, int) and i >= 0 for i in config["special_tokens"].values()):
    raise DlmError(f"tokenizer config {path}: special token ids must be integers >= 0")
  return config


def _read_ranks(path: epath.Path) -> dict[bytes, int]:
  # Parsed here, not with tiktoken.load.load_tiktoken_bpe: that caches files by path in a
  # temp dir, so a tokenizer re-saved at the same path could load stale ranks.
  try:
    lines = path.read_bytes().decode("ascii").splitlines()
  except OSError as e:
    raise DlmError(f"cannot read tokenizer ranks {path}: {e.strerror}") from None
  except UnicodeDecodeError:
    raise DlmError(f"tokenizer ranks {path} is not base64 text") from None
  ranks = {}
  for number, line in enumerate(lines, 1):
    try:
      token, rank = line.split()
      ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (ValueError, binascii.Error):
      raise DlmError(f"tokenizer ranks {path} line {number} is not 'base64 rank':"
                     f" {line[:60]!r}") from None
  if len(ranks) != len(lines) or len(set(ranks.values())) != len(ranks):
    raise DlmError(f"tokenizer ranks {path} repeats a token or a rank")
  if min(ranks.values(), default=0) < 0:
    raise DlmError(f"tokenizer ranks {path} has a negative rank")
  # Every single byte must be a token, or some text could not be encoded at all.
  if any(bytes([b]) not in ranks for b in range(256)):
    raise DlmError(f"tokenizer ranks {path} lacks some of the 256 single-byte tokens")
  return ranks

