"""Muon for the hidden matrices, AdamW for everything else, as one optax transformation.

`optax.contrib.muon` on its own sends every 2-D leaf to Muon and everything else to Adam: for a
language model that puts the embeddings and head under Muon and lets the scanned (layer, in,
out) kernels fall to Adam. So the groups are chosen here by name, and Muon is told that axis 0
of a stacked kernel is the layer (a batch axis), axis 1 the input and axis 2 the output.

Learning rates follow nanochat: embedding 0.2, unembedding 0.004 and the rest 0.004 for AdamW,
scaled by (n_embd / 768)^-0.5, and 0.02 for Muon, scaled by sqrt(max(1, out / in)).
"""

import re

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P
from optax.contrib import MuonDimensionNumbers, scale_by_muon

from dlm import sharding

# (regex on the '/'-joined parameter path, group). First match wins.
GROUP_RULES = (
    (r'(^|/)(embed|wte)$', 'embedding'),
    (r'(^|/)head/', 'unembedding'),
    (r'(^|/)blocks/(q|k|v|attn_out|mlp_in|mlp_out)/kernel$', 'matrix'),
    (r'.*', 'other'),  # input projection, time MLP, per-layer modulation
)


def param_path(path) -> str:
  return '/'.join(str(getattr(p, 'key', p)) for p in path)


def param_groups(params):
  """Same tree as params, each leaf replaced by its group name."""
  def group(path, _):
    name = param_path(path)
    return next(g for pattern, g in GROUP_RULES if re.search(pattern, name))
  return jax.tree_util.tree_map_with_path(group, params)


def lr_schedule(peak: float, num_iterations: int, warmup_ratio: float, warmdown_ratio: float,
                final_lr_frac: float):
  """Linear warmup, constant, linear warmdown to final_lr_frac * peak (nanochat's shape)."""
  warmup = int(round(warmup_ratio * num_iterations))
  warmdown = int(round(warmdown_ratio * num_iterations))

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    up = jnp.minimum(1.0, (step + 1) / max(warmup, 1)) if warmup else 1.0
    frac_left = (num_iterations - step) / max(warmdown, 1)
    down = jnp.where(step >= num_iterations - warmdown,
                     final_lr_frac + (1 - final_lr_frac) * jnp.clip(frac_left, 0.0, 1.0), 1.0)
    return peak * up * down
  return schedule


def _stacked_kernel_dims(updates):
  return jax.tree.map(lambda _: MuonDimensionNumbers(reduction_axis=1, output_axis=2), updates)


def _layer_kernel_dims(updates):  # one layer's (in, out) slice of a stacked kernel
  return jax.tree.map(lambda _: MuonDimensionNumbers(reduction_axis=0, output_axis=1), updates)


def _one_layer_at_a_time(muon: optax.GradientTransformation) -> optax.GradientTransformation:
  """Muon over stacked (layers, in, out) kernels applied to one layer's matrices at a time
  (lax.map over the layer axis), for FSDP: there each matrix is split within its layer
  (`dlm.sharding`), and Newton-Schulz needs it whole, so XLA gathers the layer being
  orthogonalised rather than the whole stack (docs/fsdp.md measures both). The same
  arithmetic as the batched form; with data parallelism the batched form runs instead (one
  larger matmul per iteration instead of a loop)."""
  def update(updates, state, params=None):
    del params
    mesh = sharding.make_mesh()
    whole = NamedSharding(mesh, P())
    split = jax.tree.map(lambda s: NamedSharding(mesh, P(*s.spec[1:])),  # one layer's shards
                         sharding.state_shardings(updates, mesh))

    def one(xs):
      # One layer gathered, and its results split again before the loop stacks them (else
      # the stacked updates are whole). Between the two XLA may still split Newton-Schulz's
      # matmuls over the shards (at fsdp 2 on 8 devices it does, with all-reduces and
      # collective-permutes of layer slices; at fsdp 8 it does not); pinning the results
      # whole first removed those and cost more peak memory than it saved (docs/fsdp.md)
      u, mu = jax.lax.with_sharding_constraint(xs, whole)
      out, new = muon.update(u, state._replace(mu=mu))
      out, mu = jax.lax.with_sharding_constraint((out, new.mu), (split, split))
      return out, mu, new.count
    out, mu, count = jax.lax.map(one, (updates, state.mu))
    return out, state._replace(mu=mu, count=count[0])
  return optax.GradientTransformation(muon.init, update)


def _scale_by_shape():
  """Muon's update has unit spectral norm; sqrt(max(1, out/in)) keeps its RMS per entry fair."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: u * max(1.0, u.shape[-1] / u.shape[-2]) ** 0.5, updates), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(tc, n_embd: int, learn_embeddings: bool = True):
  """tc: the config's `train` section. Frozen embeddings get no update at all (not even weight
  decay)."""
  sched = lambda lr: lr_schedule(lr, tc.num_iterations, tc.warmup_ratio, tc.warmdown_ratio,
                                 tc.final_lr_frac)
  adam_scale = (n_embd / 768) ** -0.5

  def adamw(lr):
    return optax.adamw(sched(lr * adam_scale), b1=0.8, b2=0.95, eps=1e-10,
                       weight_decay=tc.weight_decay)

  if getattr(tc, 'fsdp', 1) > 1:
    orthogonalise = _one_layer_at_a_time(
        scale_by_muon(beta=0.95, weight_dimension_numbers=_layer_kernel_dims))
  else:
    orthogonalise = scale_by_muon(beta=0.95, weight_dimension_numbers=_stacked_kernel_dims)
  muon = optax.chain(
      orthogonalise,
      _scale_by_shape(),
      optax.add_decayed_weights(tc.weight_decay),
      optax.scale_by_learning_rate(sched(tc.matrix_lr)),
  )
  transforms = {
      'matrix': muon,
      'embedding': adamw(tc.embedding_lr) if learn_embeddings else optax.set_to_zero(),
      'unembedding': adamw(tc.unembedding_lr),
      'other': adamw(tc.other_lr),
  }
  chain = [optax.partition(transforms, param_groups)]
  if tc.grad_clip > 0:
    chain.insert(0, optax.clip_by_global_norm(tc.grad_clip))
  return optax.chain(*chain)
