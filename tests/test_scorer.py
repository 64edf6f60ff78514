"""The GPT-2-family scorer, offline: a tiny randomly initialised GPT-2 written in the hub's file
layout (config.json, model.safetensors, vocab.json, merges.txt), loaded through `gpt2.load` as a
user's checkpoint is, and checked against a numpy GPT-2 and a byte-pair encoder written here
from the paper's description; then the retokenised gen-PPL and MAUVE built on it."""

import collections
import json
import math

import numpy as np
import pytest

from dlm import corpus, gpt2, quality
from dlm.errors import DlmError

D, LAYERS, HEADS, CONTEXT, MERGES = 32, 2, 4, 64, 120


def _byte_chars() -> dict[int, str]:
  """GPT-2's vocab.json spelling of bytes: printable Latin-1 as itself, the rest from U+0100."""
  printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def _pretokens(text: str) -> list[str]:
  """Words with their leading space, punctuation runs, whitespace: enough of GPT-2's split for
  the ASCII stories used here."""
  import regex
  return regex.findall(gpt2.PATTERN, text)


def _learn_merges(texts: list[str], n: int) -> list[tuple[str, str]]:
  """n merges by pair frequency over the pre-tokens of `texts` (Sennrich et al. 2016)."""
  chars = _byte_chars()
  words = collections.Counter(tuple(chars[b] for b in w.encode()) for t in texts
                              for w in _pretokens(t))
  merges = []
  for _ in range(n):
    pairs = collections.Counter()
    for w, count in words.items():
      for pair in zip(w, w[1:]):
        pairs[pair] += count
    if not pairs:
      break
    best = max(pairs, key=lambda p: (pairs[p], p))
    merges.append(best)
    words = collections.Counter({tuple(_merge(list(w), best)): c for w, c in words.items()})
  return merges


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
  out, i = [], 0
  while i < len(symbols):
    if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
      out.append(symbols[i] + symbols[i + 1])
      i += 2
    else:
      out.append(symbols[i])
      i += 1
  return out


def _reference_encode(text: str, vocab: dict, merges: list) -> list[int]:
  """GPT-2's encoder as published: per pre-token, apply the best-ranked merge present until
  none applies."""
  rank = {m: i for i, m in enumerate(merges)}
  chars = _byte_chars()
  ids = []
  for w in _pretokens(text):
    symbols = [chars[b] for b in w.encode()]
    while len(symbols) > 1:
      pair = min(zip(symbols, symbols[1:]), key=lambda p: rank.get(p, math.inf))
      if pair not in rank:
        break
      symbols = _merge(symbols, pair)
    ids += [vocab[s] for s in symbols]
  return ids


def _texts(n: int, seed: int) -> list[str]:
  return corpus.generate_stories(n, seed=seed)


def _write_checkpoint(directory, seed: int = 0, prefix: str = '', out_scale: float = 0.3) -> dict:
  """A random GPT-2 in the hub's layout, its blocks' output projections drawn at `out_scale`;
  returns its tensors, vocab and merges."""
  from safetensors.numpy import save_file
  rng = np.random.default_rng(seed)
  merges = _learn_merges(_texts(60, seed=100), MERGES)
  chars = _byte_chars()
  order = rng.permutation(256)  # single bytes need not come first in byte order
  vocab = {chars[int(b)]: i for i, b in enumerate(order)}
  for a, b in merges:
    vocab.setdefault(a + b, len(vocab))
  vocab['<|endoftext|>'] = len(vocab)
  V = len(vocab)
  w = lambda *shape, s=0.3: (s * rng.standard_normal(shape)).astype(np.float32)
  t = {'wte.weight': w(V, D, s=1.0), 'wpe.weight': w(CONTEXT, D, s=0.05),
       'ln_f.weight': 1 + w(D, s=0.1), 'ln_f.bias': w(D, s=0.1)}
  for i in range(LAYERS):
    t.update({f'h.{i}.ln_1.weight': 1 + w(D, s=0.1), f'h.{i}.ln_1.bias': w(D, s=0.1),
              f'h.{i}.attn.c_attn.weight': w(D, 3 * D), f'h.{i}.attn.c_attn.bias': w(3 * D),
              f'h.{i}.attn.c_proj.weight': w(D, D, s=out_scale), f'h.{i}.attn.c_proj.bias': w(D),
              f'h.{i}.ln_2.weight': 1 + w(D, s=0.1), f'h.{i}.ln_2.bias': w(D, s=0.1),
              f'h.{i}.mlp.c_fc.weight': w(D, 4 * D), f'h.{i}.mlp.c_fc.bias': w(4 * D),
              f'h.{i}.mlp.c_proj.weight': w(4 * D, D, s=out_scale), f'h.{i}.mlp.c_proj.bias': w(D),
              # the causal-mask buffer older GPT-2 files carry: not a parameter
              f'h.{i}.attn.bias': np.tril(np.ones((1, 1, CONTEXT, CONTEXT), np.float32))})
  save_file({prefix + k: v for k, v in t.items()}, str(directory / 'model.safetensors'))
  (directory / 'config.json').write_text(json.dumps({
      'model_type': 'gpt2', 'architectures': ['GPT2LMHeadModel'], 'vocab_size': V,
      'n_positions': CONTEXT, 'n_ctx': CONTEXT, 'n_embd': D, 'n_layer': LAYERS,
      'n_head': HEADS, 'activation_function': 'gelu_new', 'layer_norm_epsilon': 1e-5}))
  (directory / 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False), encoding='utf-8')
  (directory / 'merges.txt').write_text(
      '#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in merges), encoding='utf-8')
  return {'tensors': t, 'vocab': vocab, 'merges': merges}


def _reference_nll(t: dict, ids: list[int]) -> np.ndarray:
  """NLL (nats) of ids[1:] each given the ones before, by GPT-2's equations in float64, one
  head at a time."""
  f = {k: v.astype(np.float64) for k, v in t.items()}

  def norm(x, g, b):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * g + b

  def gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

  T, K = len(ids), D // HEADS
  x = f['wte.weight'][ids] + f['wpe.weight'][:T]
  for i in range(LAYERS):
    p = lambda name: f[f'h.{i}.{name}']
    h = norm(x, p('ln_1.weight'), p('ln_1.bias'))
    qkv = h @ p('attn.c_attn.weight') + p('attn.c_attn.bias')
    heads = []
    for j in range(HEADS):
      q, k, v = (qkv[:, s * D + j * K:s * D + (j + 1) * K] for s in range(3))
      scores = q @ k.T / math.sqrt(K)
      scores[np.triu_indices(T, 1)] = -np.inf
      a = np.exp(scores - scores.max(-1, keepdims=True))
      heads.append(a / a.sum(-1, keepdims=True) @ v)
    x = x + np.concatenate(heads, -1) @ p('attn.c_proj.weight') + p('attn.c_proj.bias')
    h = norm(x, p('ln_2.weight'), p('ln_2.bias'))
    x = x + gelu(h @ p('mlp.c_fc.weight') + p('mlp.c_fc.bias')) @ p('mlp.c_proj.weight') \
        + p('mlp.c_proj.bias')
  logits = norm(x, f['ln_f.weight'], f['ln_f.bias']) @ f['wte.weight'].T
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  return -logp[np.arange(T - 1), ids[1:]]


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  directory = tmp_path_factory.mktemp('tiny-gpt2')
  written = _write_checkpoint(directory, prefix='transformer.')
  return directory, written


@pytest.fixture(scope='module')
def scorer(checkpoint):
  return gpt2.load(str(checkpoint[0]), batch_size=4)


def test_tokenizer_matches_the_reference_bpe(checkpoint, scorer):
  _, w = checkpoint
  for text in [*_texts(3, seed=7), "Tom's dog  can't   swim!!  Zoë? 42 1999 \n\n end"]:
    ids = scorer.tokenizer.encode(text)
    assert ids.tolist() == _reference_encode(text, w['vocab'], w['merges'])
    assert scorer.tokenizer.decode(ids) == text
  story = _texts(1, seed=7)[0]
  assert len(scorer.tokenizer.encode(story)) < len(story.encode()) / 1.5  # the merges apply


def test_nll_equals_the_numpy_reference(checkpoint, scorer):
  """Rows of several lengths in one call (padding and the length buckets), one longer than the
  context (scored in windows whose first token is context only)."""
  _, w = checkpoint
  texts = _texts(3, seed=3)
  rows = [np.asarray(_reference_encode(t, w['vocab'], w['merges']), np.int32)[:n]
          for t, n in zip(texts, (9, 40, 150))]
  assert len(rows[2]) == 150
  nll, features = scorer.score(rows)
  for row, got in zip(rows, nll):
    want = np.concatenate([_reference_nll(w['tensors'], row[i:i + CONTEXT].tolist())
                           for i in range(0, len(row), CONTEXT)])
    assert got.shape == (len(row) - math.ceil(len(row) / CONTEXT),)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
  assert features.shape == (3, D) and np.all(np.isfinite(features))
  assert 1 < float(np.concatenate(nll).mean()) < 20


def test_retokenised_gen_ppl_of_a_runs_rows(checkpoint, scorer):
  """Rows of another tokenizer (a dlm one, with <|bos|> boundaries) become the scorer's tokens
  with <|endoftext|> at each boundary; gen-PPL is exp of the pooled mean NLL."""
  from dlm import tokenizer as tokenizer_lib
  _, w = checkpoint
  texts = _texts(40, seed=5)
  tok = tokenizer_lib.train_tokenizer(texts, 320)
  stream = tok.encode_documents(texts)
  rows = np.stack([stream[i:i + 24] for i in (0, 50, 100)])
  rows[1, [0, 12]] = tok.bos_id  # a row opening with a boundary, as AR samples do
  rows[2, [5, 15]] = tok.bos_id
  scorer_rows = quality.retokenize(rows, tok, scorer)
  eot = scorer.tokenizer.eot_id
  for row, got in zip(rows, scorer_rows):
    docs = np.split(row, np.flatnonzero(row == tok.bos_id))
    want = _reference_encode(tok.decode(docs[0]), w['vocab'], w['merges'])
    for d in docs[1:]:
      want += [eot] + _reference_encode(tok.decode(d[1:]), w['vocab'], w['merges'])
    assert got.tolist() == want
  assert scorer_rows[1][0] == eot
  q = quality.row_quality(rows, tok.bos_id, scorer, tok)
  # every token from the second on but an <|endoftext|> after the row's first (MDLM's count)
  pooled = np.concatenate([
      _reference_nll(w['tensors'], r.tolist())[[t != eot or (r[:i + 1] == eot).sum() == 1
                                               for i, t in enumerate(r[1:], 1)]]
      for r in scorer_rows])
  assert sum((r == eot).sum() > 1 for r in scorer_rows) >= 2  # the rule is exercised
  assert q['scored_tokens'] == len(pooled)
  assert q['gen_nll'] == pytest.approx(pooled.mean(), abs=2e-4)
  assert q['gen_ppl'] == pytest.approx(math.exp(pooled.mean()), rel=1e-3)
  assert q['gen_ppl_sample_mean'] > q['gen_ppl']  # Jensen, rows of unequal NLL
  assert 0 < q['scorer_unigram_entropy'] <= math.log2(max(len(r) for r in scorer_rows))
  with_reference = quality.row_quality(rows, tok.bos_id, scorer, tok, reference=rows)
  assert with_reference["mauve"] == pytest.approx(1, abs=1e-6)
  assert {k: v for k, v in with_reference.items() if "mauve" not in k} == q


def test_load_refuses_what_it_cannot_read(checkpoint, tmp_path, monkeypatch):
  assert gpt2.is_checkpoint_spec(str(checkpoint[0])) and gpt2.is_checkpoint_spec('gpt2-large')
  assert not gpt2.is_checkpoint_spec(str(tmp_path))  # a directory without a HF config.json
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'llama'}))
  for f in ('vocab.json', 'merges.txt', 'model.safetensors'):
    (tmp_path / f).write_bytes((checkpoint[0] / f).read_bytes())
  with pytest.raises(DlmError, match='model_type .llama. is not gpt2'):
    gpt2.load(str(tmp_path))
  (tmp_path / 'merges.txt').unlink()
  with pytest.raises(DlmError, match='lacks merges.txt'):
    gpt2.load(str(tmp_path))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
  with pytest.raises(DlmError, match=r"'gpt2-large'.*not in the Hugging Face cache.*offline"):
    gpt2.load('gpt2-large')


@pytest.fixture(scope='module')
def feature_scorer(tmp_path_factory):
  """The tiny GPT-2 with quieter blocks (output projections at 0.1), so that its final state
  is mostly the last tokens' embeddings: the features MAUVE reads."""
  directory = tmp_path_factory.mktemp('tiny-gpt2-features')
  _write_checkpoint(directory, out_scale=0.1)
  return gpt2.load(str(directory), batch_size=16)


def test_mauve_of_held_out_text_against_itself_and_shuffled_tokens(feature_scorer):
  """MAUVE on the scorer's features (its last hidden state at each text's final token): held-out
  sentences against themselves and against other held-out sentences near 1, against the same
  sentences with their tokens shuffled low. The texts are whole first sentences of stories: this
  random model's final state mostly tells which tokens end a text, and a sentence ends in its
  punctuation while a shuffled one rarely does (a trained GPT-2 Large also reads the order).
  Measured: 0.99 and 0.016 (mauve-text 0.4.0, its default seed; 0.99-1.0 and 0.007-0.019 over
  seeds 1-4)."""
  scorer = feature_scorer
  import re
  texts = [re.split(r'(?<=[.!?])\s', t)[0] for t in _texts(120, seed=11)]
  rows = [scorer.tokenizer.encode(t)[:CONTEXT] for t in texts]
  rng = np.random.default_rng(0)
  held, other = rows[:60], rows[60:]
  f_held, f_other, f_shuffled = (scorer.score(r)[1] for r in (
      held, other, [rng.permutation(r) for r in other]))
  assert quality.mauve_score(f_held, f_held)['mauve'] == pytest.approx(1, abs=1e-6)
  same = quality.mauve_score(f_held, f_other)
  assert same['mauve'] > 0.95 and same['mauve_buckets'] == 6  # n / 10 buckets
  assert quality.mauve_score(f_held, f_shuffled)['mauve'] < 0.1


def test_eval_command_scores_with_a_gpt2_checkpoint(trained_workdir, checkpoint, scorer):
  """`main.py --mode=eval --scorer=<checkpoint directory>`: gen-PPL of samples and held-out
  windows under the GPT-2 checkpoint (the held-out figure equal to the library's on the same
  windows), its tokens' entropy and MAUVE beside."""
  import os
  import subprocess
  import sys
  from conftest import ROOT
  from dlm import checkpoint as checkpoint_lib, data, metrics

  proc = subprocess.run([sys.executable, str(ROOT / 'main.py'), '--mode=eval',
                         f'--workdir={trained_workdir}', '--eval_tokens=64', '--batch_size=4',
                         '--num_samples=6', '--seed=3', f'--scorer={checkpoint[0]}'],
                        env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  r = json.loads(proc.stdout[proc.stdout.rindex('\n{') + 1:])
  assert r['scorer']['name'] == str(checkpoint[0]) and r['scorer']['n_layer'] == LAYERS
  for part in ('samples', 'held_out'):
    q = r[part]
    assert q['scorer'] == str(checkpoint[0]) and q['gen_ppl'] == pytest.approx(
        math.exp(q['gen_nll'])) and q['scorer_unigram_entropy'] > 0
  assert 0 <= r['samples']['mauve'] <= 1 and r['samples']['mauve_buckets'] == 2
  run = checkpoint_lib.load_run(str(trained_workdir))
  windows = metrics.reference_windows(data.val_tokens(str(trained_workdir)), 6, 16, 3)
  want = quality.row_quality(windows, run.tokenizer.bos_id, scorer, run.tokenizer)
  assert r['held_out']['gen_nll'] == pytest.approx(want['gen_nll'], abs=1e-4)


def test_ablate_scores_with_a_gpt2_checkpoint(trained_workdir, checkpoint, tmp_path):
  """An experiment command with `scorer=`: no scorer trained (the runs share the given run's
  data), every variant's gen-PPL is the checkpoint's with MAUVE against held-out windows, and
  the report says which scorer it used and shows both."""
  from dlm.experiments import ablate
  from conftest import tiny_config
  r = ablate.ablate(tiny_config(), 'sampler', str(tmp_path), preset='tiny',
                    scorer_workdir=str(trained_workdir), scorer=str(checkpoint[0]),
                    log=lambda *a, **k: None)
  assert r['scorer']['name'] == str(checkpoint[0]) and not (tmp_path / 'scorer').exists()
  assert r['held_out']['scorer'] == str(checkpoint[0]) and r['held_out']['gen_ppl'] > 1
  for v in r['variants']:
    q = v['quality']
    assert q['scorer'] == str(checkpoint[0]) and 0 <= q['mauve'] <= 1
    assert q['gen_ppl'] == pytest.approx(math.exp(q['gen_nll']))
  report = (tmp_path / 'report.md').read_text()
  assert f'GPT-2-family checkpoint `{checkpoint[0]}`' in report
  assert '| mauve |' in report and 'nan' not in report.lower()
