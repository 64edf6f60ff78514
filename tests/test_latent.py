"""The latent family: its autoencoder stage, the two-stage run (resumable, reusable), known
chunks, determinism, the evaluation without a likelihood, and its one-line refusals."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from dlm import autoencoder, checkpoint, config as config_lib, data, evaluate, sampling, train
from dlm.errors import DlmError
from dlm.families import latent

STORY = ('The cat sat on the mat. The dog ran to the park. A bird sang in the tree. '
         'The sun was warm and the sky was blue.\n\n')


def latent_config(**overrides):
  """A tiny two-stage run (conftest's tiny_config): 40 autoencoder steps, 6 diffusion steps,
  with known chunks and a label in training."""
  c = tiny_config(**{'model.family': 'latent', 'diffusion.parameterization': 'x0',
                     'diffusion.condition_fraction': 0.25, 'latent.iterations': 40,
                     'latent.stat_batches': 2, 'latent.dim': 16, 'latent.noise': 0.1,
                     'data.label': 'keyword:cat'})
  for key, value in overrides.items():
    section, name = key.split('.')
    c[section][name] = value
  return c


def _records(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _losses(path):
  return {r['step']: r['loss'] for r in _records(path) if 'loss' in r}


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp('corpus') / 'stories.txt'
  path.write_text(STORY * 40)
  return str(path)


@pytest.fixture(scope='module')
def latent_run(tmp_path_factory, corpus):
  """(workdir, final evaluation) of one tiny two-stage run on a tiny corpus, trained once."""
  workdir = tmp_path_factory.mktemp('latent')
  result = train.train(latent_config(**{'data.path': corpus}), str(workdir),
                       log=lambda *a, **k: None)
  return workdir, result


def test_the_autoencoder_reconstructs_a_tiny_corpus_exactly(latent_run):
  workdir = str(latent_run[0])
  run = checkpoint.load_run(workdir)
  frozen = run.proposal['frozen']
  windows = data.eval_windows(data.val_tokens(workdir), 16, 16 * 64)
  shape = autoencoder.shape_of(run.config, run.tokenizer.vocab_size)
  x = autoencoder.encode(frozen, shape, windows)
  ids = np.asarray(np.argmax(autoencoder.decode(frozen, shape, x), -1))
  assert np.mean(ids == windows) == 1.0
  # the standardised latents of the data: near zero mean and unit variance per coordinate
  x = np.asarray(x).reshape(-1, shape.dim)
  assert np.all(np.abs(x.mean(0)) < 0.5) and np.all(np.abs(x.std(0) - 1) < 0.5)


def test_a_resumed_two_stage_run_equals_an_uninterrupted_one(latent_run, corpus, tmp_path,
                                                             quiet):
  full, _ = latent_run
  c = latent_config(**{'data.path': corpus})
  cut = tmp_path / 'cut'
  tok, data_dir, manifest = data.for_training(c, str(cut), quiet)
  assert autoencoder.train(c, str(cut / 'autoencoder'), tok, data_dir, manifest, quiet,
                           stop_after=20) is None  # killed inside the autoencoder stage
  assert train.train(c, str(cut), log=quiet, stop_after=4) is None  # then inside diffusion
  train.train(c, str(cut), log=quiet)
  a, b = _losses(full / 'autoencoder' / 'metrics.jsonl'), _losses(cut / 'autoencoder' /
                                                                    'metrics.jsonl')
  assert sorted(a) == sorted(b) == list(range(1, 41))
  np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=1e-5)
  a, b = _losses(full / 'metrics.jsonl'), _losses(cut / 'metrics.jsonl')
  assert sorted(a) == sorted(b) == list(range(1, 7))
  np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=1e-5)
  # the latent statistics, measured after the autoencoder stage, are in its checkpoint and in
  # the diffusion run's state, identical in both runs
  stats = []
  for workdir in (full, cut):
    loaded = autoencoder.load(str(workdir / 'autoencoder'), c, tok)
    run = checkpoint.load_run(str(workdir))
    for k in ('mean', 'std'):
      np.testing.assert_array_equal(loaded[k], run.proposal['frozen'][k])
    stats.append(np.asarray(loaded['std']))
  assert np.all(stats[0] > 0) and not np.allclose(stats[0], 1.0)
  np.testing.assert_allclose(stats[0], stats[1], rtol=1e-6)


def test_known_chunks_stay_verbatim_and_sampling_is_deterministic(latent_run):
  run = checkpoint.load_run(str(latent_run[0]))
  # a prompt (with <|bos|>) that does not end on a chunk boundary (4 tokens)
  prompt = next(p for p in ('The cat', 'The cat sat', 'The dog ran', 'A bird sang in')
                if sampling.condition(run, 16, p).length % 4)
  cond = sampling.condition(run, 16, prompt)
  a = sampling.generate(run, num_samples=2, seq_len=16, num_steps=4, prompt=prompt, seed=3)
  b = sampling.generate(run, num_samples=2, seq_len=16, num_steps=4, prompt=prompt, seed=3)
  assert [r['tokens'] for r in a] == [r['tokens'] for r in b]
  for r in a:
    assert r['tokens'][:cond.length] == cond.tokens[:cond.length].tolist()
    assert r['text'].startswith(prompt)
  other = sampling.generate(run, num_samples=2, seq_len=16, num_steps=4, prompt=prompt, seed=4)
  assert [r['tokens'] for r in other] != [r['tokens'] for r in a]
  template = 'The cat [MASK:5] the mat.'
  cond = sampling.condition(run, 16, infill=template)
  for r in sampling.generate(run, num_samples=2, seq_len=16, num_steps=4, infill=template,
                             sampler='dpm++2m', self_condition='fresh'):
    t = np.asarray(r['tokens'])
    assert np.array_equal(t[cond.known], cond.tokens[cond.known]) and 'the mat.' in r['text']
  tokens, _, (ids, entropy) = sampling.sample_array(run, 2, 16, seed=1, num_steps=4,
                                                    trajectory=True)
  assert ids.shape == entropy.shape == (4, 2, 16) and np.all(entropy >= 0)
  with pytest.raises(DlmError, match='--temperature does not apply to a latent run'):
    sampling.generate(run, num_samples=1, temperature=0.5)


def test_the_evaluation_gives_reconstruction_and_no_likelihood(latent_run):
  _, result = latent_run
  assert not [k for k in result if 'bits' in k]
  assert result['likelihood'].startswith('none: the autoencoder is deterministic')
  acc = result['reconstruction_accuracy']
  assert set(acc) == {'clean', 'noisy', 'sigma'} and acc['sigma'] > 0
  assert 0 <= acc['noisy'] <= 1 and 0 <= acc['clean'] <= 1
  assert any(x is not None for x in result['heldout_ce_vs_level']['ce'])
  # the evaluation of the loaded run agrees with the one at the end of training
  run = checkpoint.load_run(str(latent_run[0]))
  c = run.config
  windows = data.eval_windows(data.val_tokens(str(latent_run[0]), 4 * 16), 16, 4 * 16)
  again = evaluate.evaluate(run.params, run.model, ml_collections.FrozenConfigDict(c), windows, run.tokenizer.token_bytes(), 4,
                            seed=c.seed, proposal=run.proposal)
  assert again['reconstruction_accuracy'] == acc
  # what the denoiser learns from context: the probe chunks' CE with a noisy context
  probe = latent.context_probe(run.params, run.model, ml_collections.FrozenConfigDict(c),
                               windows, jax.random.key(0), run.proposal,
                               jax.numpy.array([0.1, 0.9]), False)
  assert probe.shape == (2,) and np.all(np.isfinite(probe)) and probe[1] > probe[0]


def test_bad_inputs_are_one_line_errors(latent_run, tmp_path, quiet):
  with pytest.raises(DlmError, match='model.sequence_len=18 is not divisible by latent.chunk=4'):
    config_lib.validate(latent_config(**{'model.sequence_len': 18}))
  with pytest.raises(DlmError, match='sample.seq_len=6 is not divisible by latent.chunk=4'):
    config_lib.validate(latent_config(**{'sample.seq_len': 6}))
  missing = tmp_path / 'nothing'
  with pytest.raises(DlmError, match=f'latent.autoencoder={missing}: no autoencoder there'):
    train.train(latent_config(**{'latent.autoencoder': str(missing)}), str(tmp_path / 'a'),
                log=quiet)
  ae = latent_run[0] / 'autoencoder'
  with pytest.raises(DlmError, match=f'latent.autoencoder={ae} was trained with latent.dim=16, '
                                     'this run has 8'):
    train.train(latent_config(**{'latent.autoencoder': str(ae), 'latent.dim': 8}),
                str(tmp_path / 'b'), log=quiet)
  with pytest.raises(DlmError, match='was trained with another tokenizer'):
    train.train(latent_config(**{'latent.autoencoder': str(ae),
                                 'data.tokenizer_vocab_size': 300}),
                str(tmp_path / 'c'), log=quiet)


def test_a_finished_autoencoder_is_reused(latent_run, corpus, tmp_path, quiet):
  ae = latent_run[0] / 'autoencoder'
  c = latent_config(**{'latent.autoencoder': str(ae), 'data.path': corpus})
  train.train(c, str(tmp_path / 'reuse'), log=quiet)
  assert not (tmp_path / 'reuse' / 'autoencoder').exists()
  run, base = checkpoint.load_run(str(tmp_path / 'reuse')), checkpoint.load_run(str(latent_run[0]))
  same = jax.tree.map(np.array_equal, run.proposal['frozen'], base.proposal['frozen'])
  assert all(jax.tree.leaves(same))


def test_guidance_steers_with_the_same_labels_as_the_other_families(latent_run):
  run = checkpoint.load_run(str(latent_run[0]))
  kw = dict(num_samples=2, seq_len=16, num_steps=4, label='yes', seed=0)
  conditional, guided = sampling.generate(run, guidance=1, **kw), sampling.generate(
      run, guidance=3, **kw)
  assert [r['tokens'] for r in conditional] != [r['tokens'] for r in guided]
  for r in conditional + guided:
    assert r['label'] == 'yes' and r['attribute'] in ('yes', 'no')
  with pytest.raises(DlmError, match='--guidance=-1'):
    sampling.generate(run, guidance=-1, **kw)
