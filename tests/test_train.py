"""Training end to end: resume exactness, and a decisive memorisation test."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dlm import checkpoint, sampling, train
from dlm.errors import DlmError


def _losses(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def test_resume_after_preemption_continues_the_same_loss_curve(tmp_path, quiet):
  c = tiny_config(**{'train.ema_decay': 0.9})
  full = train.train(c, str(tmp_path / 'full'), log=quiet)
  assert train.train(c, str(tmp_path / 'cut'), log=quiet, stop_after=5) is None  # killed at 5
  resumed_log = []
  resumed = train.train(c, str(tmp_path / 'cut'), log=resumed_log.append)  # same command again
  assert any('resuming from checkpoint 3' in m for m in resumed_log)
  a, b = _losses(tmp_path / 'full'), _losses(tmp_path / 'cut')
  assert sorted(a) == sorted(b) == list(range(1, 7))
  np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=1e-5)
  assert abs(full['val_loss'] - resumed['val_loss']) < 1e-5


def test_checkpoint_and_workdir_layout(tmp_path, quiet, capfd, caplog):
  train.train(tiny_config(), str(tmp_path), log=quiet)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'checkpoints', 'config.json', 'data', 'metrics.jsonl', 'tensorboard', 'tokenizer']
  capfd.readouterr()
  caplog.clear()
  run = checkpoint.load_run(str(tmp_path))
  assert run.step == 6
  # Loading a run (as in a notebook) prints nothing and logs no library warnings.
  assert capfd.readouterr() == ('', '')
  assert not [r for r in caplog.records if r.levelno >= 30], caplog.records
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(l) for l in f]
  assert all({'step', 'loss'} <= set(r) for r in records if 'loss' in r)
  assert any('tokens_per_sec' in r for r in records)
  assert 'bits_per_byte' in records[-1]


def test_memorises_a_handful_of_texts_and_samples_one_back_exactly(tmp_path, quiet):
  texts = ['the red fox jumps over the lazy dog.',
           'a small bird sings in the old tree.',
           'my sister likes warm bread with honey.',
           'we walked to the river after lunch.']
  corpus = tmp_path / 'texts.txt'
  corpus.write_text('\n<|endoftext|>\n'.join(texts * 40))
  c = tiny_config(**{
      'data.path': str(corpus), 'data.val_path': str(corpus), 'model.sequence_len': 32,
      'train.num_iterations': 1500, 'train.device_batch_size': 16, 'train.log_every': 500,
      'train.checkpoint_every': 10000, 'train.warmdown_ratio': 0.3, 'sample.num_steps': 200})
  train.train(c, str(tmp_path / 'run'), log=quiet)
  run = checkpoint.load_run(str(tmp_path / 'run'))
  samples = sampling.generate(run, num_samples=8, seed=0)
  # Whole documents only, and not the empty ones two end-of-text tokens in a row make.
  documents = [d.strip() for s in samples for d in s['documents'][1:-1] if d.strip()]
  exact = [d for d in documents if d in texts]
  assert exact, f'no training text sampled back; got {documents[:4]}'
  assert len(exact) >= len(documents) // 2


def test_loading_a_run_reads_weights_and_noise_only(tmp_path, quiet, monkeypatch):
  """Sampling needs no optimiser state: a run loads after the optimiser's layout changed, and a
  leaf the checkpoint lacks is named instead of silently left unrestored."""
  import optax
  import pytest
  from dlm import noise, state
  from dlm.errors import DlmError
  train.train(tiny_config(), str(tmp_path / 'run'), log=quiet)
  before = checkpoint.load_run(str(tmp_path / 'run'))
  monkeypatch.setattr(state, 'make_optimizer', lambda *a, **k: optax.sgd(0.1))
  after = checkpoint.load_run(str(tmp_path / 'run'))
  for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params)):
    np.testing.assert_array_equal(a, b)
  init_state = noise.init_state
  monkeypatch.setattr(noise, 'init_state', lambda *a: {**init_state(*a), 'extra': jnp.zeros(3)})
  with pytest.raises(DlmError, match='noise/extra is None there and'):
    checkpoint.load_run(str(tmp_path / 'run'))


def test_the_log_shows_progress_eta_and_memory_per_device(tmp_path):
  lines = []
  train.train(tiny_config(**{'train.num_iterations': 4}), str(tmp_path),
              log=lambda *a, **k: lines.append(' '.join(map(str, a))))
  memory = [l for l in lines if l.startswith('memory per device:')]
  assert len(memory) == 1 and 'parameters' in memory[0] and 'optimiser' in memory[0]
  steps = [l for l in lines if l.startswith('step ') and '/4 |' in l]
  assert [l.split()[1] for l in steps] == ['1/4', '2/4', '3/4', '4/4']
  assert all('elapsed' in l for l in steps) and 'ETA' in steps[-1]
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(l) for l in f if '"loss"' in l]
  assert records[-1]['eta_s'] == 0 and records[-1]['elapsed_s'] > 0


def test_the_persistent_compilation_cache_is_on_unless_one_is_set(tmp_path, monkeypatch):
  before = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update('jax_compilation_cache_dir', None)
    train.enable_compilation_cache(str(tmp_path / 'cache'))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'cache')
    train.enable_compilation_cache(str(tmp_path / 'other'))  # one set already is kept
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'cache')
  finally:
    jax.config.update('jax_compilation_cache_dir', before)


def test_resuming_with_other_windows_per_step_continues_the_stream_at_the_windows_consumed(
    tmp_path):
  """The data position is a count of windows, so a resumed run may change its batch size; an
  older checkpoint (grain's per-process batch count) is refused on another layout instead."""
  import shutil
  c = tiny_config()
  train.train(c, str(tmp_path / 'run'), log=lambda *a, **k: None, stop_after=3)
  old = tmp_path / 'old'
  shutil.copytree(tmp_path / 'run', old)
  shutil.rmtree(old / 'checkpoints' / '3' / 'position')  # as an older version wrote it,
  (old / 'checkpoints' / '3' / checkpoint.MANIFEST).unlink()  # without a manifest either
  (old / 'checkpoints' / '3' / 'data').mkdir()
  (old / 'checkpoints' / '3' / 'data' / 'process_0-of-1.json').write_text('{"next_index": 3}')
  c.train.device_batch_size = 2
  saved = (old / 'config.json').read_text()
  with pytest.raises(DlmError, match='windows_per_step 4 there, 2 here'):
    train.train(c, str(old), log=lambda *a, **k: None)
  assert (old / 'config.json').read_text() == saved  # written only after the checks
  assert checkpoint.Checkpoints(str(old), read_only=True)._position(3, 0) == 12
  train.train(c, str(tmp_path / 'run'), log=lambda *a, **k: None)
  ckpts = checkpoint.Checkpoints(str(tmp_path / 'run'), read_only=True)
  assert ckpts.steps() == [3, 6] and ckpts._position(6, 0) == 3 * 4 + 3 * 2


def _records(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return {r['step']: r for r in map(json.loads, f) if 'loss' in r}


def test_a_non_finite_step_is_skipped_and_counted(tmp_path, quiet, monkeypatch):
  """Step 2's gradient is NaN: the update is skipped inside the jitted step (the weights after
  step 2 are those after step 1), counted, and the run goes on to a finite result."""
  monkeypatch.setattr(train, 'FAULT_STEPS', (2,))
  c = tiny_config(**{'train.num_iterations': 4, 'train.checkpoint_every': 1,
                     'train.keep_checkpoints': 10})
  result = train.train(c, str(tmp_path), log=quiet)
  r = _records(tmp_path)
  assert [r[s]['skipped_steps'] for s in (1, 2, 3, 4)] == [0, 1, 1, 1]
  assert [r[s]['bad_streak'] for s in (1, 2, 3, 4)] == [0, 1, 0, 0]
  assert np.isnan(r[2]['grad_norm']) and np.isfinite(r[3]['grad_norm'])
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=10)
  _, _, init_fn = train.state_lib.create(train.config_lib.model_config(c, 320), c)
  target = checkpoint.abstract_state(init_fn, train.sharding.make_mesh())
  p1, p2, p3 = (ckpts.restore(s, target)['params'] for s in (1, 2, 3))
  ckpts.close()
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p2), jax.tree.leaves(p3)))
  assert np.isfinite(result['bits_per_token'])


def test_persistent_non_finite_steps_stop_the_run_with_the_last_good_checkpoint(
    tmp_path, quiet, monkeypatch):
  """From step 4 on every gradient is NaN: after train.max_bad_steps = 2 the run stops with a
  one-line error, nothing past checkpoint 3 is saved, and once the fault is gone the same
  command resumes from 3 on the uninterrupted run's curve."""
  c = tiny_config(**{'train.max_bad_steps': 2})
  train.train(c, str(tmp_path / 'full'), log=quiet)
  monkeypatch.setattr(train, 'FAULT_STEPS', tuple(range(4, 7)))
  with pytest.raises(DlmError, match=r'2 steps in a row had a non-finite .* checkpoint \(3\)'):
    train.train(c, str(tmp_path / 'cut'), log=quiet)
  assert checkpoint.Checkpoints(str(tmp_path / 'cut'), read_only=True).steps() == [3]
  monkeypatch.setattr(train, 'FAULT_STEPS', ())
  train.train(c, str(tmp_path / 'cut'), log=quiet)
  a, b = _losses(tmp_path / 'full'), _losses(tmp_path / 'cut')
  assert sorted(b) == list(range(1, 7))
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)
