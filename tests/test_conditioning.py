"""Controllable generation: known tokens in training and sampling, labels and guidance."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import tiny_config
from dlm import checkpoint, conditioning, labels, samplers, sampling, train
from dlm.families import gaussian
from dlm.errors import DlmError

quiet = lambda *a, **k: None


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny diffusion run trained with known tokens and a keyword label."""
  workdir = tmp_path_factory.mktemp('cond')
  train.train(tiny_config(**{'data.label': 'keyword:the', 'diffusion.condition_fraction': 0.25}),
              str(workdir), log=quiet)
  return checkpoint.load_run(str(workdir))


@pytest.fixture(scope='module')
def plain_run(tmp_path_factory):
  """Trained without conditioning: known tokens are held by replacement."""
  workdir = tmp_path_factory.mktemp('plain')
  train.train(tiny_config(**{'diffusion.condition_fraction': 0.0}), str(workdir), log=quiet)
  return checkpoint.load_run(str(workdir))


@pytest.fixture(scope='module')
def ar_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('ar')
  train.train(tiny_config(**{'model.family': 'ar'}), str(workdir), log=quiet)
  return checkpoint.load_run(str(workdir))


# ---- training masks and labels ------------------------------------------------------------

def test_random_known_conditions_a_fraction_of_rows_and_never_a_whole_row():
  known = np.asarray(conditioning.random_known(jax.random.key(0), 4000, 32, 0.3))
  conditioned = known.any(-1)
  assert abs(conditioned.mean() - 0.3) < 0.03
  assert not known.all(-1).any()
  rows = known[conditioned]
  prefix_only = [r for r in rows if r[0] and r.sum() == np.argmin(r)]
  assert len(prefix_only) > 0.2 * len(rows)  # prefixes, spans and both all occur
  assert (~rows[:, 0]).mean() > 0.2
  none = np.asarray(conditioning.random_known(jax.random.key(0), 100, 32, 0.0))
  assert not none.any()


def test_keyword_label_matches_the_words_token_sequences(run):
  label = labels.build('keyword:the', run.tokenizer)
  tok = run.tokenizer
  rows = [tok.encode('once the cat sat'), tok.encode('The end of it'),
          tok.encode('a cat sat on a mat')]
  L = max(map(len, rows))
  batch = np.array([r + [tok.pad_id] * (L - len(r)) for r in rows], np.int32)
  assert labels.of_tokens(jnp.asarray(batch), label.patterns).tolist() == [1, 1, 0]


@pytest.mark.parametrize('spec', ['keyword', 'keyword:', 'colour:red', 'keyword:two words'])
def test_a_bad_label_spec_is_one_line(spec):
  with pytest.raises(DlmError, match='data.label'):
    labels.check_spec(spec)


# ---- known positions in sampling ------------------------------------------------------------

WORDS = ['a', 'the', 'cat', 'sat', 'on', 'mat', 'one', 'day', '.', ',', 'Tom', 'and']


@st.composite
def templates(draw):
  parts = []
  for _ in range(draw(st.integers(1, 3))):
    parts.append(' '.join(draw(st.lists(st.sampled_from(WORDS), min_size=0, max_size=2))))
    parts.append(draw(st.sampled_from(['[MASK]', '[MASK:1]', '[MASK:2]', '[MASK:3]'])))
  parts.append(' '.join(draw(st.lists(st.sampled_from(WORDS), min_size=0, max_size=2))))
  return ' '.join(parts)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=templates(), sampler=st.sampled_from(samplers.SAMPLERS), seed=st.integers(0, 99),
       trained=st.booleans())
def test_known_positions_are_exactly_the_given_tokens_in_every_sample(run, plain_run, text,
                                                                      sampler, seed, trained):
  r = run if trained else plain_run
  run.config.sample.mask_len = 2
  plain_run.config.sample.mask_len = 2
  try:
    cond = conditioning.template(r.tokenizer, text, 16, 2)
  except DlmError:  # too long for the 16-token sequence
    return
  tokens, used = sampling.sample_array(r, 3, num_steps=4, seed=seed, sampler=sampler, infill=text)
  assert used['known_by'] == ('trained' if trained else 'replace')
  assert (tokens[:, cond.known] == cond.tokens[cond.known]).all()
  for rec in sampling.records(r, tokens, used, seed):
    assert len(rec['fills']) == len(cond.spans)


def test_infill_text_appears_verbatim_around_each_fill(run):
  text = 'the cat [MASK:3] on the mat'
  recs = sampling.generate(run, num_samples=3, infill=text, seed=1)
  for rec in recs:
    assert rec['text'].startswith('the cat') and 'on the mat' in rec['text']
    assert rec['infill'] == text and rec['known_by'] == 'trained'
    assert rec['text'].startswith('the cat' + rec['fills'][0] + ' on the mat')


def test_a_prompt_starts_every_sample_and_a_seed_repeats_them(run):
  a = sampling.generate(run, num_samples=3, prompt='the cat', seed=3, label='yes', guidance=2.0)
  b = sampling.generate(run, num_samples=3, prompt='the cat', seed=3, label='yes', guidance=2.0)
  assert [r['tokens'] for r in a] == [r['tokens'] for r in b]
  assert all(r['text'].startswith('the cat') for r in a)
  assert a[0]['prompt'] == 'the cat' and a[0]['guidance'] == 2.0 and a[0]['label'] == 'yes'
  assert a[0]['attribute'] in ('yes', 'no')
  c = sampling.generate(run, num_samples=3, prompt='the cat', seed=4, label='yes', guidance=2.0)
  assert [r['tokens'] for r in a] != [r['tokens'] for r in c]


def test_guidance_zero_is_the_unconditional_sampler_bit_for_bit(run):
  plain, _ = sampling.sample_array(run, 4, seed=5)
  w0, used = sampling.sample_array(run, 4, seed=5, label='yes', guidance=0.0)
  np.testing.assert_array_equal(plain, w0)
  assert used['guidance'] == 0.0
  guided, _ = sampling.sample_array(run, 4, seed=5, label='yes', guidance=3.0)
  assert guided.shape == plain.shape


def test_the_guided_mixture_interpolates_the_branches(run):
  """Two branches at W = 0 give the unconditional estimate; W = 1 the conditional one."""
  kw, _ = sampling.prepare(run, 2, num_steps=4, label='yes', guidance=2.0)
  assert kw['branches'] == 2
  key = jax.random.key(0)
  out = {}
  for name, branches, W in (('u', 0, 0.0), ('c', 1, 1.0), ('mix0', 2, 0.0), ('mix1', 2, 1.0)):
    _, (ids, entropy) = gaussian.sample_tokens(
        run.params, key, run.proposal, **dict(kw, branches=branches, guidance=W),
        model=run.model, trajectory=True)
    out[name] = np.asarray(entropy)
  np.testing.assert_allclose(out['mix0'], out['u'], atol=1e-4)
  np.testing.assert_allclose(out['mix1'], out['c'], atol=1e-4)
  assert out['u'].shape == (4, 2, 16) and (out['u'] >= -1e-6).all()


def test_the_ar_twin_continues_a_prompt(ar_run):
  recs = sampling.generate(ar_run, num_samples=3, prompt='the cat', seed=0)
  prompt_ids = [ar_run.tokenizer.bos_id] + ar_run.tokenizer.encode('the cat')
  assert all(r['tokens'][:len(prompt_ids)] == prompt_ids for r in recs)
  assert all(r['text'].startswith('the cat') for r in recs)


# ---- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs, message', [
    (dict(infill='no placeholder here'), 'no placeholder'),
    (dict(infill='the cat ' * 12 + '[MASK:3]'), 'longer than the sequence'),
    (dict(prompt='the cat sat on the mat ' * 4), 'leaving no room'),
    (dict(infill='a [MASK:0] b'), 'n must be >= 1'),
    (dict(infill='a [MASK:two] b'), "malformed placeholder '[MASK:two]'"),
    (dict(infill='a [MASK b'), 'malformed placeholder'),
    (dict(label='maybe'), "not a value of this run's label"),
    (dict(label='yes', guidance=-1.0), 'must be >= 0'),
    (dict(prompt='hi <|bos|> there'), 'special token <|bos|>'),
    (dict(infill='a <|pad|> [MASK]'), 'special token <|pad|>'),
])
def test_bad_conditions_are_one_line_errors(run, kwargs, message):
  with pytest.raises(DlmError) as e:
    sampling.generate(run, num_samples=1, **kwargs)
  assert message in str(e.value) and '\n' not in str(e.value)


def test_a_label_on_a_run_without_labels_and_infill_on_ar_are_errors(plain_run, ar_run):
  with pytest.raises(DlmError, match='trained without labels'):
    sampling.generate(plain_run, num_samples=1, label='yes')
  with pytest.raises(DlmError, match='autoregressive model writes left to right'):
    sampling.generate(ar_run, num_samples=1, infill='a [MASK:2] b')
  with pytest.raises(DlmError, match='autoregressive run'):
    sampling.generate(ar_run, num_samples=1, label='yes')


# ---- guidance works -------------------------------------------------------------------------

def _two_style_corpus(path, n=3000, share=0.15, seed=0):
  """Documents of five words in one of two vocabularies; those of the first (15%) contain
  'zebra', so whether a window contains it is a deterministic function of its text."""
  rng = random.Random(seed)
  warm, cold = ['red', 'sun', 'hot', 'fire', 'sand'], ['blue', 'moon', 'cold', 'ice', 'snow']
  docs = []
  for _ in range(n):
    if rng.random() < share:
      words = [rng.choice(warm) for _ in range(5)]
      words[rng.randrange(5)] = 'zebra'
    else:
      words = [rng.choice(cold) for _ in range(5)]
    docs.append(' '.join(words) + '.')
  path.write_text('\n\n'.join(docs))


def test_guidance_raises_the_attribute_rate_from_its_base_rate_to_90_percent(tmp_path):
  corpus = tmp_path / 'zebra.txt'
  _two_style_corpus(corpus)
  c = tiny_config(**{'data.label': 'keyword:zebra', 'data.path': str(corpus),
                     'train.num_iterations': 200, 'train.device_batch_size': 16,
                     'train.checkpoint_every': 1000})
  train.train(c, str(tmp_path / 'run'), log=quiet)
  run = checkpoint.load_run(str(tmp_path / 'run'))
  rate = lambda W: np.mean([r['attribute'] == 'yes' for r in sampling.generate(
      run, num_samples=64, label='yes', guidance=W, seed=1)])
  base, guided = rate(0.0), rate(4.0)
  assert base < 0.6, base  # the unconditional model: about the corpus's share of windows
  assert guided >= 0.9, (base, guided)


def test_training_with_known_tokens_fills_a_gap_its_context_determines(tmp_path):
  """Documents repeat one word: the gap's words are the context's. The model trained with known
  tokens fills the gap with that word far more often than replacement in an unconditional one."""
  rng = random.Random(0)
  words = ['apple', 'river', 'stone', 'cloud', 'tiger', 'music', 'green', 'paper', 'light', 'dream']
  corpus = tmp_path / 'repeat.txt'
  corpus.write_text('\n\n'.join(' '.join([rng.choice(words)] * 8) for _ in range(3000)))
  accuracy = {}
  for fraction in (0.5, 0.0):
    c = tiny_config(**{'data.path': str(corpus), 'train.num_iterations': 300,
                       'train.device_batch_size': 16, 'train.checkpoint_every': 1000,
                       'model.sequence_len': 32, 'diffusion.condition_fraction': fraction})
    workdir = str(tmp_path / f'run_{fraction}')
    train.train(c, workdir, log=quiet)
    r = checkpoint.load_run(workdir)
    hits = []
    for w in words:
      for rec in sampling.generate(r, num_samples=8, infill=f'{w} {w} [MASK:4] {w} {w}', seed=1):
        assert rec['known_by'] == ('trained' if fraction else 'replace')
        fill = rec['fills'][0].split()
        hits.append(bool(fill) and fill == [w] * len(fill))
    accuracy[fraction] = np.mean(hits)
  assert accuracy[0.5] >= 0.5 and accuracy[0.5] >= accuracy[0.0] + 0.3, accuracy
