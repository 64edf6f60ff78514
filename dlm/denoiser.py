"""The denoiser's own pieces that the diffusion families share in training, evaluation and
sampling: the diffusion embedding table of a set of weights, the self-conditioning estimate fed
back to it, the labels of the guidance branches and their mixture, and how a Gaussian-path
sampler holds known positions."""

import jax
import jax.numpy as jnp

from dlm import conditioning, diffusion
from dlm.model import Transformer


def embedding_table(model: Transformer, params):
  return model.apply(params, method=Transformer.embedding)


def estimate(out, E_VE):
  """The x0 estimate of a denoiser's output: softmax(logits) @ E for token logits (CDCD's
  score interpolation), the output itself when E_VE is None (a denoiser that predicts x0, the
  latent family's)."""
  return out if E_VE is None else diffusion.x0_from_logits(out, E_VE)


def self_condition(params, model: Transformer, z_BLE, lam_B, E_VE, training: bool,
                   enabled: bool, known_BL=None, label_B=None, rows_B=None):
  """The x0 estimate fed back to the model, or None when self-conditioning is off (E_VE: as
  in `estimate`).

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
    x0_prev = jax.lax.stop_gradient(estimate(first, E_VE))
    return x0_prev if not training else jnp.where(rows_B[:, None, None], x0_prev, 0.0)
  even = lambda x: None if x is None else x.reshape(B // 2, 2, *x.shape[1:])[:, 0]
  first = model.apply(params, even(z_BLE), even(lam_B), None, even(known_BL), even(label_B))
  x0_prev = jax.lax.stop_gradient(estimate(first, E_VE))
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


def branches(params, model: Transformer, z, lam_N, x0_prev, known, labels_G, self_condition: str,
             E_VE):
  """The denoiser's output at z for each guidance branch's labels (`branch_labels`), fed back
  (self_condition) nothing (''), x0_prev ('previous': the last step's estimate) or its own
  first pass at the same z ('fresh'); E_VE as in `estimate`.

  The branches run as separate forwards of N rows rather than one of 2N, which was faster on
  CPU (docs/results.md, 'Guidance branches as separate forwards')."""
  outs = []
  for label_N in labels_G:
    fed = x0_prev if self_condition else None
    if self_condition == 'fresh':
      fed = estimate(model.apply(params, z, lam_N, None, known, label_N), E_VE)
    outs.append(model.apply(params, z, lam_N, fed, known, label_N))
  return outs


def guided(xs: list, guidance):
  """The classifier-free guidance mixture of the branches' values (conditional first):
  x_u + guidance (x_c - x_u); the value itself with one branch."""
  return xs[0] if len(xs) == 1 else xs[1] + guidance * (xs[0] - xs[1])


def known_by(model: Transformer, cond_tokens) -> str:
  """How a sampler holds known positions: '' (none given), 'trained' (the run was trained with
  them: clean values marked as known) or 'replace' (RePaint, Lugmayr et al. 2022)."""
  return '' if cond_tokens is None else 'trained' if model.cfg.conditioning else 'replace'


def holder(how: str, x0_known, known, path: str):
  """hold(z, lam, key): z with the known positions (known, (N, L)) held at their clean values
  x0_known the way `how` (`known_by`) says: injected as they are ('trained'), or overwritten
  before each step by a fresh draw of q(z_t | x0) ('replace')."""
  def hold(z, lam_t, k):
    if how == 'trained':
      return conditioning.inject(z, x0_known, known)
    if how == 'replace':
      a, s = diffusion.alpha_sigma(lam_t, path)
      return conditioning.inject(z, a * x0_known + s * jax.random.normal(k, z.shape), known)
    return z
  return hold
