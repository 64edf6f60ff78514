"""A step's random inputs drawn row by row: any block of rows drawn apart equals the same rows
of the whole step drawn at once, for every family that draws (the train step draws each
device's rows of each micro-batch inside its accumulation scan)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dlm import config as config_lib, families, state as state_lib, streams


@pytest.mark.parametrize('family', ['gaussian', 'masked', 'hybrid'])
def test_a_block_of_rows_draws_what_the_whole_step_draws_for_them(family):
  c = tiny_config(**{'model.family': family, 'diffusion.condition_fraction': 0.5})
  mcfg = config_lib.model_config(c, 320)
  model, _, _ = state_lib.create(mcfg, c)
  fam = families.of(mcfg)
  noise_state = fam.init_noise(c, mcfg)
  q = None if noise_state is None else state_lib.proposal({'noise': noise_state})
  tokens = jnp.zeros((8, 16), jnp.int32)
  key = jax.random.key(3)
  draw = jax.jit(lambda t, index: fam.draw(key, t, model, c, q, rows=streams.Rows(index, 8)))
  whole = draw(tokens, jnp.arange(8))
  # rows 4..6 of the 8 (a device's block of a micro-batch), then row 7 alone
  part, last = draw(tokens[:3], jnp.arange(4, 7)), draw(tokens[:1], jnp.array([7]))
  alone = jax.jit(lambda: fam.draw(key, tokens, model, c, q))()  # rows=None: one whole batch
  for name in whole:
    np.testing.assert_array_equal(alone[name], whole[name], err_msg=name)
  assert 'known' in whole and set(part) == set(whole)
  for name in whole:
    joined = np.concatenate([np.asarray(part[name]), np.asarray(last[name])])
    np.testing.assert_array_equal(joined, np.asarray(whole[name])[4:], err_msg=name)
  assert not np.array_equal(np.asarray(whole['u' if 'u' in whole else 'eps'])[0],
                            np.asarray(whole['u' if 'u' in whole else 'eps'])[1])


def test_stratified_levels_cover_the_step_evenly_whatever_the_block():
  key = jax.random.key(0)
  u = np.concatenate([np.asarray(streams.stratified(key, streams.Rows(jnp.arange(a, a + 16), 64)))
                      for a in range(0, 64, 16)])
  np.testing.assert_allclose(u, np.asarray(streams.stratified(key, streams.whole(64))))
  offset = np.sort(u)[0]  # one random offset, spaced 1/64 apart: one point in each 1/64
  np.testing.assert_allclose(np.sort(u), offset + np.arange(64) / 64, atol=1e-6)
