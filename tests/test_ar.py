"""The autoregressive baseline: KV-cache decoding, nucleus sampling, exact NLL, the twin."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from conftest import tiny_config
from dlm import evaluate
from dlm.families import ar as ar_family
from dlm import ar_configs as twin
from dlm.model import ModelConfig, Transformer, empty_cache

CFG = ModelConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, sequence_len=12, family='ar',
                  causal=True)


def _perturbed_params(model, tokens):
  params = model.init(jax.random.key(0), tokens)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def test_kv_cache_decoding_equals_the_full_causal_forward():
  model = Transformer(CFG)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (3, 12)), jnp.int32)
  params = _perturbed_params(model, tokens)  # zero-init projections would hide attention bugs
  full = model.apply(params, tokens)
  cache, steps = empty_cache(CFG, 3), []
  for pos in range(12):
    logits, cache = model.apply(params, tokens[:, pos], cache, pos,
                                method=Transformer.decode_step)
    steps.append(logits)
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_top_p_sampling_matches_the_truncated_softmax():
  probs = np.array([0.5, 0.3, 0.15, 0.05])
  logits = jnp.log(jnp.asarray(np.tile(probs, (20000, 1)), jnp.float32))
  draws = np.asarray(ar_family.top_p_sample(jax.random.key(0), logits))
  freq = np.bincount(draws, minlength=4) / len(draws)
  np.testing.assert_allclose(freq, probs, atol=0.012)
  # top_p = 0.7: {0.5, 0.3} reach it, renormalised to 5/8, 3/8.
  draws = np.asarray(ar_family.top_p_sample(jax.random.key(1), logits, top_p=0.7))
  freq = np.bincount(draws, minlength=4) / len(draws)
  np.testing.assert_allclose(freq, [5 / 8, 3 / 8, 0, 0], atol=0.012)


def test_temperature_sharpens_and_flattens():
  logits = jnp.log(jnp.asarray(np.tile([0.6, 0.4], (20000, 1)), jnp.float32))
  cold = np.asarray(ar_family.top_p_sample(jax.random.key(0), logits, temperature=0.5)).mean()
  hot = np.asarray(ar_family.top_p_sample(jax.random.key(0), logits, temperature=2.0)).mean()
  # p(1) = 0.4^(1/T) / (0.6^(1/T) + 0.4^(1/T))
  assert abs(cold - 0.16 / 0.52) < 0.012 and abs(hot - 0.4 ** .5 / (0.6 ** .5 + 0.4 ** .5)) < 0.012


def test_ar_samples_start_with_bos_and_have_the_requested_length():
  model = Transformer(CFG)
  params = _perturbed_params(model, jnp.zeros((1, 12), jnp.int32))
  out = ar_family.sample_tokens(params, jax.random.key(0), model=model, num_samples=3,
                                  seq_len=10, bos_id=7, temperature=1.0, top_p=0.9)
  assert out.shape == (3, 10) and np.all(np.asarray(out[:, 0]) == 7)


def test_untrained_ar_model_has_exact_nll_of_log2_vocab():
  model = Transformer(CFG)
  params = model.init(jax.random.key(0), jnp.zeros((1, 12), jnp.int32))
  windows = np.random.default_rng(0).integers(0, 64, (8, 12)).astype(np.int32)
  c = ml_collections.FrozenConfigDict(tiny_config(**{'model.family': 'ar'}))
  r = evaluate.evaluate(params, model, c, windows, np.full(64, 3, np.int32), batch_size=4)
  assert abs(r['bits_per_token'] - 6.0) < 1e-5 and abs(r['bits_per_byte'] - 2.0) < 1e-5
  assert r['likelihood'].startswith('exact')


def test_ar_nll_scores_the_first_token_given_the_one_before_the_window():
  windows = np.arange(12).reshape(3, 4)
  np.testing.assert_array_equal(evaluate.context_tokens(windows), [0, 3, 7])


def test_twin_parameter_formula_and_match():
  c = tiny_config(**{'model.family': 'ar', 'model.n_layer': 3, 'model.n_embd': 96,
                     'model.n_head': 2})
  assert twin.non_embedding_params(c) == twin.ar_non_embedding_params(3, 96, twin.planned_vocab(c))
  d = tiny_config()
  ar = twin.ar_twin(d)
  assert ar.model.family == 'ar'
  assert abs(twin.non_embedding_params(ar) / twin.non_embedding_params(d) - 1) < 0.05
