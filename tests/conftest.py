"""Shared fixtures: tiny configs and a tiny corpus, and JAX's persistent compilation cache.

Many tests build the same small computations from fresh closures; the persistent cache lets
them share compiled executables within and across runs (CI starts cold, local runs warm).
"""

import os
import pathlib

import jax
import pytest

# Tests never touch the network: the default corpus is the generated one, decided at once.
os.environ['HF_HUB_OFFLINE'] = '1'

ROOT = pathlib.Path(__file__).resolve().parents[1]

jax.config.update('jax_compilation_cache_dir', str(ROOT / '.jax_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def tiny_config(**overrides):
  """A config small enough to train in seconds on one CPU core."""
  from dlm.config import base_config
  c = base_config()
  c.model.depth = 2
  c.model.n_embd = 64
  c.model.n_head = 2
  c.model.sequence_len = 16
  c.model.diffusion_dim = 16
  c.data.tokenizer_vocab_size = 320
  c.data.num_generated_stories = 300
  c.train.num_iterations = 6
  c.train.device_batch_size = 4
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.eval_batches = 1
  c.train.eval_samples = 0  # a sampler compile per run: only tests/test_tracking.py reads them
  c.train.checkpoint_every = 3
  c.sample.num_steps = 10
  c.eval.batch_size = 4
  c.eval.bound_samples = 4
  for key, value in overrides.items():
    section, name = key.split('.')
    c[section][name] = value
  return c


@pytest.fixture
def quiet():
  return lambda *a, **k: None


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory):
  """A tiny diffusion run (tiny_config(): 6 steps, checkpoints 3 and 6), trained once per
  session. Tests only read it; one that must change a run works on a copy."""
  from dlm import train
  workdir = tmp_path_factory.mktemp('trained')
  train.train(tiny_config(), str(workdir), log=lambda *a, **k: None)
  return workdir
