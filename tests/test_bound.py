"""The likelihood bound: log2(V) bits per token for the untrained model (i.i.d. uniform tokens)."""

import jax
import ml_collections
import numpy as np

from conftest import tiny_config
from dlm import evaluate
from dlm.model import ModelConfig, Transformer


def test_bound_at_initialisation_is_log2_vocab_bits_per_token():
  V, L = 256, 16
  model = Transformer(ModelConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=32, sequence_len=L,
                                  diffusion_dim=16))
  params = model.init(jax.random.key(0), np.zeros((1, L, 16), np.float32), np.zeros((1,)))
  windows = np.random.default_rng(0).integers(0, V, (32, L)).astype(np.int32)
  token_bytes = np.full(V, 2, np.int32)
  c = ml_collections.FrozenConfigDict(tiny_config(**{'eval.bound_samples': 32}))
  result = evaluate.evaluate(params, model, c, windows, token_bytes, batch_size=16)
  assert abs(result['bits_per_token'] - np.log2(V)) < 0.03 * np.log2(V), result
  assert abs(result['bits_per_byte'] - result['bits_per_token'] / 2) < 1e-4
  assert 0 < result['bits_per_token_stderr'] < 0.3
  terms = result['bound_terms_bits_per_token']
  assert terms['diffusion'] > 0.9 * np.log2(V)  # nearly all information enters through diffusion
  assert terms['prior'] < 0.01
