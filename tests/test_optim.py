"""Optimiser groups: Muon on the hidden matrices only, AdamW elsewhere; the lr schedule shape."""

import jax
import numpy as np

from conftest import tiny_config
from dlm import config as config_lib, state as state_lib
from dlm.optim import lr_schedule, param_groups, param_path


def _state(causal=False):
  c = tiny_config(**{'model.causal': causal})
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
