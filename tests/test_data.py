"""Data preparation: sources, shards and manifest, re-runs, bad input, the offline default."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, tiny_config
from dlm import data, train
from dlm.data import prepare, shards, sources
from dlm.errors import DlmError
from dlm.tokenizer import BYTES_FILE, gpt2_tokenizer, train_tokenizer

STORIES = [f'Story {i}: the {"red blue green"[i % 3 * 5:][:5].strip()} fox ran {i} times.'
           for i in range(40)]


def _prepare(inp, out, **kw):
  kw = dict(vocab_size=300, progress=False, log=lambda *a: None, threads=2) | kw
  return prepare.prepare(str(inp), str(out), **kw)


@pytest.fixture
def stories_txt(tmp_path):
  path = tmp_path / 'stories.txt'
  path.write_text(''.join(s + '\n<|endoftext|>\n' for s in STORIES))
  return path


def test_documents_split_on_endoftext_or_blank_lines(tmp_path):
  assert data.split_documents('a b\n<|endoftext|>\nc\n<|endoftext|>\n') == ['a b', 'c']
  (tmp_path / 'a.txt').write_text('first\npara\n\n\nsecond\n')
  (tmp_path / 'b.txt').write_text('x\n<|endoftext|>\ny<|endoftext|>z\n<|endoftext|>\n')
  assert data.load_documents(str(tmp_path / 'a.txt')) == ['first\npara', 'second']
  assert data.load_documents(str(tmp_path / 'b.txt')) == ['x', 'y', 'z']


def test_prepare_writes_shards_a_manifest_and_the_tokenizer(stories_txt, tmp_path):
  out = tmp_path / 'out'
  m = _prepare(stories_txt, out, val_fraction=0.25)
  assert m['splits']['train']['documents'] == 30 and m['splits']['val']['documents'] == 10
  assert m['dtype'] == 'uint16' and m['tokenizer']['vocab_size'] % 64 == 0
  shards.verify_checksums(str(out), shards.read_manifest(str(out)))
  tok = prepare.Tokenizer.load(out / 'tokenizer')
  np.testing.assert_array_equal(np.load(out / 'tokenizer' / BYTES_FILE), tok.token_bytes())
  train_ids = np.load(out / 'train_00000.npy')
  val_ids = np.load(out / 'val_00000.npy')
  # every 4th document is held out; the shards decode back to the documents exactly
  assert tok.decode_documents(val_ids) == STORIES[3::4]
  assert tok.decode_documents(train_ids) == [s for i, s in enumerate(STORIES) if i % 4 != 3]


def test_jsonl_and_parquet_inputs_are_read_by_their_text_field(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  (tmp_path / 'd').mkdir()
  lines = [json.dumps({'body': s}) for s in STORIES[:20]]
  (tmp_path / 'd' / 'a.jsonl').write_text('\n'.join(lines) + '\n')
  pq.write_table(pa.table({'body': STORIES[20:]}), tmp_path / 'd' / 'b.parquet')
  m = _prepare(tmp_path / 'd', tmp_path / 'out', text_field='body', val_fraction=0.1)
  assert m['splits']['train']['documents'] + m['splits']['val']['documents'] == 40


def test_rerun_skips_finished_shards_and_refuses_other_settings(stories_txt, tmp_path):
  out = tmp_path / 'out'
  first = _prepare(stories_txt, out, shard_chars=300)
  names = [r['name'] for r in first['shards']]
  assert len(names) > 4
  mtimes = {n: os.stat(out / n).st_mtime_ns for n in names}
  os.remove(out / shards.MANIFEST)  # as if killed before the end
  os.remove(out / names[-1])
  time.sleep(0.01)
  again = _prepare(stories_txt, out, shard_chars=300)
  assert again == first
  last_chunk = names[-1][-9:]  # its other shard is written again with it
  assert all(os.stat(out / n).st_mtime_ns == mtimes[n] for n in names if last_chunk not in n)
  with pytest.raises(DlmError, match='other settings .*val_fraction'):
    _prepare(stories_txt, out, shard_chars=300, val_fraction=0.5)


def test_an_interrupted_run_leaves_only_whole_shards_and_no_manifest(stories_txt, tmp_path,
                                                                       monkeypatch):
  out = tmp_path / 'out'
  real, calls = prepare.encode_chunk, []

  def dies_on_the_fifth(*a, **k):
    calls.append(1)
    if len(calls) == 5:
      raise KeyboardInterrupt
    return real(*a, **k)
  monkeypatch.setattr(prepare, 'encode_chunk', dies_on_the_fifth)
  with pytest.raises(KeyboardInterrupt):
    _prepare(stories_txt, out, shard_chars=300)
  assert not (out / shards.MANIFEST).exists()
  assert not [p for p in os.listdir(out) if '.tmp' in p]
  for p in out.glob('*.npy'):
    np.load(p)  # every shard on disk is complete
  monkeypatch.setattr(prepare, 'encode_chunk', real)
  assert _prepare(stories_txt, out, shard_chars=300) == _prepare(stories_txt, tmp_path / 'fresh',
                                                                 shard_chars=300)


def _bad_jsonl(p):
  p.write_text('{"text": "fine"}\nnot json\n{"title": "no text"}\n')


@pytest.mark.parametrize('setup, message', [
    (lambda p: None, 'does not exist'),
    (lambda p: p.write_text(' \n\n '), 'holds no text'),
    (lambda p: (p.unlink(missing_ok=True), p.mkdir(), (p / 'notes.md').write_text('x')),
     'no .txt/.jsonl/.parquet files'),
    (lambda p: p.write_bytes(b'ok\n\xff\xfe bad\n'), 'line 2 is not UTF-8 text'),
    (lambda p: _bad_jsonl(p.with_suffix('.jsonl')), 'line 2 is not a JSON object'),
    (lambda p: p.with_suffix('.jsonl').write_text('{"title": "x"}\n'), 'no string field "text"'),
    (lambda p: p.with_suffix('.parquet').write_text('PAR1 nonsense'), 'not a readable Parquet'),
])
def test_bad_input_stops_with_one_line_and_writes_nothing(tmp_path, setup, message):
  path = tmp_path / 'corpus.txt'
  setup(path)
  target = next((str(p) for p in tmp_path.glob('corpus.*')), str(path))
  with pytest.raises(DlmError, match=message) as e:
    _prepare(target, tmp_path / 'out', on_error='stop')
  assert '\n' not in str(e.value)
  assert not (tmp_path / 'out' / shards.MANIFEST).exists()


def test_bad_bytes_and_lines_are_counted_and_skipped_by_default(tmp_path):
  (tmp_path / 'a.txt').write_bytes(b'\n\n'.join([s.encode() for s in STORIES] + [b'x \xff\xfe y']))
  _bad_jsonl(tmp_path / 'b.jsonl')
  messages = []
  m = _prepare(str(tmp_path / '*'), tmp_path / 'out', log=messages.append)
  assert m['splits']['train']['documents'] + m['splits']['val']['documents'] == 42
  assert '2 undecodable bytes' in m['problems'] and '2 unusable .jsonl lines' in m['problems']
  assert messages[0].startswith('warning: skipped bad input')


def test_command_line_prints_one_line_and_exits_nonzero(tmp_path, stories_txt):
  run = lambda *a: subprocess.run([sys.executable, '-m', 'dlm.data.prepare', *a], cwd=ROOT,
                                  capture_output=True, text=True)
  bad = run('--input', str(tmp_path / 'missing.txt'), '--output', str(tmp_path / 'o'))
  assert bad.returncode == 1 and bad.stderr.strip().count('\n') == 0
  assert bad.stderr.startswith('error: data path') and 'Traceback' not in bad.stderr
  ok = run('--input', str(stories_txt), '--output', str(tmp_path / 'o'), '--vocab_size', '300')
  assert ok.returncode == 0 and (tmp_path / 'o' / shards.MANIFEST).exists()


def test_corpus_smaller_than_one_batch_is_rejected(tmp_path):
  np.save(tmp_path / 's.npy', np.arange(100, dtype=np.uint16))
  with pytest.raises(DlmError, match='6 windows of 16 tokens, fewer than one step.s 8'):
    data.train_dataset([str(tmp_path / 's.npy')], 16, (2, 4), seed=0)


def test_a_tokenizer_that_does_not_match_the_shards_is_rejected(tmp_path, quiet):
  c = tiny_config()
  data.for_training(c, str(tmp_path / 'run'), quiet)
  other = train_tokenizer(['completely different text'] * 50, 300)
  other.save(tmp_path / 'run' / 'tokenizer')
  with pytest.raises(DlmError, match='does not match the one the shards'):
    data.for_training(c, str(tmp_path / 'run'), quiet)


def test_a_vocabulary_larger_than_the_models_is_rejected(tmp_path, quiet):
  with pytest.raises(DlmError, match="model.vocab_size=64 is smaller than the tokenizer's 320"):
    train.train(tiny_config(**{'model.vocab_size': 64}), str(tmp_path), log=quiet)


def test_gpt2_needs_tiktokens_cached_files(tmp_path, monkeypatch):
  monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(tmp_path))
  with pytest.raises(DlmError, match="GPT-2 tokenizer files are not in tiktoken's cache"):
    gpt2_tokenizer()


@pytest.fixture(scope='module')
def story_tok():
  return train_tokenizer(STORIES * 3, 300)


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=('Cs',))), max_size=4)
       .map(lambda docs: docs + ['emoji 👩‍👩‍👧 日本語 e\u0301 nul\x00 cr\r end']))
@settings(max_examples=100, deadline=None)
def test_shards_decode_to_the_exact_documents(story_tok, docs):
  ids = prepare.encode_chunk(story_tok, docs, shards.token_dtype(story_tok.vocab_size), 2)
  assert story_tok.decode_documents(ids) == docs


# ---- the offline default ---------------------------------------------------------------

def test_offline_default_is_the_generated_corpus_said_in_one_line(tmp_path, quiet):
  messages = []
  start = time.perf_counter()
  tok, directory, manifest = data.for_training(tiny_config(), str(tmp_path), messages.append)
  assert time.perf_counter() - start < 10
  assert messages[0].startswith('data: offline: the generated offline corpus')
  assert manifest['source'] == 'the generated offline corpus'
  assert (tmp_path / 'tokenizer' / 'tokenizer.json').exists() and directory == str(tmp_path / 'data')
  data.for_training(tiny_config(), str(tmp_path), messages.append)  # second time: reused
  assert messages[-1].startswith('data: prepared tokens in')


def test_a_hanging_network_probe_gives_up_within_its_timeout(monkeypatch):
  monkeypatch.delenv('HF_HUB_OFFLINE')
  def hangs(*a, **k):  # like a resolver that never answers, then fails long after
    time.sleep(3)
    raise OSError('timed out')
  monkeypatch.setattr(sources.socket, 'create_connection', hangs)
  start = time.perf_counter()
  assert not sources.online(timeout=1.0)
  assert time.perf_counter() - start < 2.5


def test_hub_offline_flag_skips_the_probe(monkeypatch):
  monkeypatch.setattr(sources.socket, 'create_connection', lambda *a, **k: pytest.fail('probed'))
  assert not sources.online()


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
  """huggingface_hub with a TinyStories-shaped repository on local disk."""
  import huggingface_hub
  import pyarrow as pa
  import pyarrow.parquet as pq
  repo = tmp_path / 'hub'
  (repo / 'data').mkdir(parents=True)
  for name, rows in [('train-00000-of-00002.parquet', STORIES[:30]),
                     ('train-00001-of-00002.parquet', ['never read']),
                     ('validation-00000-of-00001.parquet', STORIES[30:])]:
    pq.write_table(pa.table({'text': rows}), repo / 'data' / name)
  fetched = []
  monkeypatch.setattr(huggingface_hub, 'list_repo_files', lambda repo_id, repo_type: [
      'README.md', *sorted(f'data/{p.name}' for p in (repo / 'data').iterdir())])
  monkeypatch.setattr(huggingface_hub, 'hf_hub_download',
                      lambda repo_id, name, repo_type, cache_dir: fetched.append(name) or
                      str(repo / name))
  return fetched


def test_online_default_prepares_tinystories_from_the_hub(tmp_path, fake_hub, monkeypatch):
  monkeypatch.setattr(sources, 'online', lambda: True)
  messages = []
  _, _, manifest = data.for_training(tiny_config(), str(tmp_path / 'run'), messages.append)
  assert messages[0].startswith('data: the machine is online: TinyStories from the Hugging Face')
  assert fake_hub == ['data/train-00000-of-00002.parquet', 'data/validation-00000-of-00001.parquet']
  assert manifest['splits']['train']['documents'] == 30
  assert manifest['splits']['val']['documents'] == 10  # the hub's own validation split


def test_a_failed_download_falls_back_to_the_generated_corpus(tmp_path, monkeypatch):
  import huggingface_hub
  monkeypatch.setattr(sources, 'online', lambda: True)

  def unreachable(*a, **k):
    raise ConnectionError('Max retries exceeded\nwith url')
  monkeypatch.setattr(huggingface_hub, 'list_repo_files', unreachable)
  messages = []
  _, _, manifest = data.for_training(tiny_config(), str(tmp_path), messages.append)
  assert 'cannot download tinystories' in messages[1] and 'falling back' in messages[1]
  assert manifest['source'] == 'the generated offline corpus'


def test_prepared_data_is_not_reused_under_other_data_settings(stories_txt, tmp_path, quiet):
  """A first run that stopped after preparing its data leaves data/ but no config.json; the
  next run with another data.path must not train on the old tokens."""
  c = tiny_config(**{'data.path': str(stories_txt)})
  workdir = str(tmp_path / 'run')
  data.for_training(c, workdir, quiet)
  saved = json.loads((tmp_path / 'run' / 'data' / 'settings.json').read_text())
  assert saved['data.path'] == str(stories_txt)
  data.for_training(c, workdir, quiet)  # the same settings: reused
  other = tmp_path / 'other.txt'
  other.write_text(stories_txt.read_text())
  c.data.path = str(other)
  with pytest.raises(DlmError, match=r'holds data prepared with other settings \(data.path'):
    data.for_training(c, workdir, quiet)
