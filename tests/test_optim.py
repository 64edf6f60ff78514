"""Optimiser groups: Muon on the hidden matrices only, AdamW elsewhere; the lr schedule shape."""

import jax
import numpy as np

from conftest import tiny_config
from dlm import config as config_lib, state as state_lib
from dlm.optim import lr_schedule, param_groups, param_path


def _state(causal=False):
  c = tiny_config(**{'model.family': 'ar' if causal else 'gaussian'})
  mcfg = config_lib.model_config(c, 128)
  model, tx, init_fn = state_lib.create(mcfg, c)
  return tx, init_fn(jax.random.key(0))


def test_groups_are_chosen_by_name_not_by_rank():
  _, state = _state()
  groups = {param_path(p): g for p, g in
            jax.tree_util.tree_flatten_with_path(param_groups(state['params']))[0]}
  assert groups['params/embed'] == 'embedding'  # 2-D, but not Muon
  assert groups['params/head/kernel'] == 'unembedding'  # 2-D, but not Muon
  for name in ('q', 'k', 'v', 'attn_out', 'mlp_in', 'mlp_out'):
    assert groups[f'params/blocks/{name}/kernel'] == 'matrix'  # 3-D stacked, still Muon
  for name in ('in_proj/kernel', 'time_in/kernel', 'time_out/kernel', 'blocks/modulation/kernel'):
    assert groups[f'params/{name}'] == 'other'
  _, ar_state = _state(causal=True)
  ar_groups = jax.tree.leaves(param_groups(ar_state['params']))
  assert sorted(set(ar_groups)) == ['embedding', 'matrix', 'unembedding']


def test_muon_update_of_each_layer_is_orthogonalised():
  tx, state = _state()
  grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(3), x.shape), state['params'])
  updates, _ = tx.update(grads, state['opt_state'], state['params'])
  u = np.asarray(updates['params']['blocks']['mlp_in']['kernel'][0])  # layer 0, (64, 256)
  s = np.linalg.svd(u, compute_uv=False)
  assert s.max() / s.min() < 2.0  # Newton-Schulz flattens the spectrum
  g = np.linalg.svd(np.asarray(grads['params']['blocks']['mlp_in']['kernel'][0]), compute_uv=False)
  assert g.max() / g.min() > 2.5  # which the raw gradient does not have


def test_lr_schedule_warms_up_holds_and_warms_down():
  f = lr_schedule(1.0, 100, warmup_ratio=0.1, warmdown_ratio=0.2, final_lr_frac=0.0)
  values = np.array([float(f(s)) for s in range(100)])
  assert values[0] < 0.2 and values[9] == 1.0 and values[50] == 1.0
  assert values[99] < 0.1 and (np.diff(values[80:]) < 0).all()


def _steps(learn: bool, weight_decay: float, n: int = 3):
  """The embedding table before and after n train steps, and whether anything else moved."""
  from dlm import train
  c = tiny_config(**{'diffusion.learn_embeddings': learn, 'train.weight_decay': weight_decay})
  mcfg = config_lib.model_config(c, 128)
  model, tx, init_fn = state_lib.create(mcfg, c)
  state = init_fn(jax.random.key(0))
  before = np.asarray(state['params']['params']['embed'])
  head_before = np.asarray(state['params']['params']['in_proj']['kernel'])
  step = jax.jit(train.make_train_step(model, tx, c, 1))
  tokens = np.random.default_rng(0).integers(0, 128, (n, 1, 4, 16)).astype(np.int32)
  for i in range(n):
    state, _ = step(state, tokens[i], jax.random.key(1))
  return (before, np.asarray(state['params']['params']['embed']),
          not np.array_equal(head_before, np.asarray(state['params']['params']['in_proj']['kernel'])))


def test_frozen_embeddings_get_exactly_zero_updates():
  """learn_embeddings=False: no gradient through the targets, the prior logits or x0_hat, and
  no weight decay either; the rest of the model still trains."""
  before, after, others_moved = _steps(learn=False, weight_decay=0.1)
  np.testing.assert_array_equal(before, after)
  assert others_moved
  before, after, _ = _steps(learn=True, weight_decay=0.0)
  assert np.abs(after - before).max() > 1e-4  # the control: learned embeddings do move


def test_frozen_embeddings_receive_no_gradient_through_the_prior_logits():
  from dlm import losses, noise
  c = tiny_config(**{'diffusion.learn_embeddings': False})
  mcfg = config_lib.model_config(c, 128)
  model, _, init_fn = state_lib.create(mcfg, c)
  state = init_fn(jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, 128, (4, 16)).astype(np.int32)
  grads = jax.grad(lambda p: losses.loss_fn(p, model, tokens, jax.random.key(1), c,
                                            noise.proposal(state['noise']))[0])(state['params'])
  assert not np.any(np.asarray(grads['params']['embed']))
  assert np.any(np.asarray(grads['params']['head']['kernel']))  # zero-init head: it moves first
