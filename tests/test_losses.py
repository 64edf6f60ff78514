"""The training losses: cross-entropy in chunks equals the whole-logits one, and the random
inputs of a batch do not depend on how it is split."""

import jax
import numpy as np
import pytest

from conftest import tiny_config
from dlm import config as config_lib, losses, state as state_lib


@pytest.mark.parametrize('causal', [False, True])
def test_chunked_cross_entropy_equals_whole_logits_in_value_and_gradient(causal):
  c = tiny_config(**{'model.family': 'ar' if causal else 'gaussian'})
  model, _, init_fn = state_lib.create(config_lib.model_config(c, 320), c)
  params = init_fn(jax.random.key(0))['params']
  # A trained head: zeros (the init) would make every chunk's logits trivially equal.
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape),
                        params)
  tokens = jax.random.randint(jax.random.key(2), (4, 16), 0, 320)

  def loss(p, chunk):
    c.train.logits_chunk = chunk
    return losses.loss_fn(p, model, tokens, jax.random.key(3), c, None if causal else
                          state_lib.proposal(init_fn(jax.random.key(0))))[0]
  whole, g_whole = jax.value_and_grad(loss)(params, 0)
  for chunk in (5, 8):  # 5: the last chunk is padded
    part, g_part = jax.value_and_grad(loss)(params, chunk)
    np.testing.assert_allclose(part, whole, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_part), jax.tree.leaves(g_whole)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert float(whole) > 0


def test_automatic_chunk_keeps_a_chunk_of_logits_under_budget():
  assert losses.logits_chunk(4, 16, 320) == 16  # fits: one chunk
  chunk = losses.logits_chunk(64, 1024, 32768)  # d12: 8.6 GB of float32 logits whole
  assert chunk < 1024 and 4 * 64 * chunk * 32768 <= 2**29
