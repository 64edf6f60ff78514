"""The denoiser's own pieces that the diffusion families share in training, evaluation and
sampling: the diffusion embedding table of a set of weights, the self-conditioning estimate fed
back to it, and the labels of the guidance branches."""

import jax
import jax.numpy as jnp

from dlm import diffusion
from dlm.model import Transformer


def embedding_table(model: Transformer, params):
  return model.apply(params, method=Transformer.embedding)


def self_condition(params, model: Transformer, z_BLE, lam_B, E_VE, training: bool,
                   enabled: bool, known_BL=None, label_B=None, rows_B=None):
  """The x0 estimate fed back to the model, or None when self-conditioning is off.

  Training: the model's own first-pass estimate (temperature 1, without gradient) for the even
  rows (`rows_B`, from `draw`) and zeros for the rest, so the model also works without one
  (Chen et al. 2023). The rows are independent random windows whose noise levels come in
  random order (`diffusion.stratified`), so the even rows are a uniformly random half of the
  (window, noise level) pairs, and the extra pass costs half a forward instead of a whole one.
  Even rows rather than the first half: a device's rows of a batch split over the mesh hold
  their own even rows whenever each device holds an even number, so the pass runs where the
  rows are, with no resharding (the first half lives on half the devices). With an odd number
  of rows the pass runs on every row and `rows_B` masks it, for the same values.
  Evaluation: always the first-pass estimate at the same z: the two-pass denoiser, whose bound
  this is (a function of z_t alone, hence a valid bound) and which the sampler's `fresh` mode
  runs; the `previous` mode feeds back the last step's estimate instead, a different process.
  """
  if not enabled:
    return None
  B = z_BLE.shape[0]
  if not training or B % 2:
    first = model.apply(params, z_BLE, lam_B, None, known_BL, label_B)
    x0_prev = jax.lax.stop_gradient(diffusion.x0_from_logits(first, E_VE))
    return x0_prev if not training else jnp.where(rows_B[:, None, None], x0_prev, 0.0)
  even = lambda x: None if x is None else x.reshape(B // 2, 2, *x.shape[1:])[:, 0]
  first = model.apply(params, even(z_BLE), even(lam_B), None, even(known_BL), even(label_B))
  x0_prev = jax.lax.stop_gradient(diffusion.x0_from_logits(first, E_VE))
  return jnp.stack([x0_prev, jnp.zeros_like(x0_prev)], 1).reshape(z_BLE.shape)


def branch_labels(model: Transformer, N: int, label, branches: int) -> list:
  """The label ids of each classifier-free guidance branch (Ho & Salimans 2022): the
  conditional one first, then "no label" (`model.cfg.num_labels`); [None] without a label."""
  if not branches:
    return [None]
  out = [jnp.full((N,), label, jnp.int32)]
  if branches == 2:
    out.append(jnp.full((N,), model.cfg.num_labels, jnp.int32))
  return out
