"""Held-out numbers for every family: the training objective and the likelihood in bits.

Each family bounds a window in nats per sequence (`dlm.families.<family>.bound`): the exact
negative log-likelihood for the autoregressive twin, a variational upper bound for the diffusion
families (the Gaussian VDM bound, the masked and hybrid ELBOs; their modules derive them). A
bound is estimated from random draws in two independent replicas per sequence, so half their
difference measures the Monte-Carlo error of the draws (`*_mc_stderr`); the `*_stderr` beside
it is the spread over held-out sequences, which also holds the data's own variance and is what
an AR model's exact NLL is compared with. Bits per byte divide the total bits (boundary tokens
included) by the UTF-8 bytes of the same tokens, so families are compared on the same text
independently of the tokenizer. A diffusion family also gives the discrete T-step bound of its
T-step sampler (T = eval.discrete_steps or sample.num_steps), and its held-out cross-entropy
against the corruption level of each draw (`heldout_ce_vs_level`: log-SNR for the Gaussian
and hybrid families, the masked fraction for the masked family).

A family may have no likelihood to give (the latent family: a deterministic autoencoder assigns
no probability to text): its `bound` returns no nats, the JSON carries no bits, and its
`likelihood` field says why; what it reports instead (`means`, e.g. the latent family's
`reconstruction_accuracy`) is averaged over the held-out sequences.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dlm import families, noise, sharding
from dlm.model import Transformer

LN2 = float(np.log(2.0))


@functools.partial(jax.jit, static_argnames=('model', 'config', 'n'))
def _objective(params, tokens_PL, key, proposal, *, model, config, n: int):
  """The training objective (unconditional) of the first n rows of a batch padded to P >= n
  rows so that it splits over the devices: the random inputs drawn for those n rows alone, as
  an unpadded batch draws them, copied onto the padding, and each row's loss summed on its own
  so that the padding stays out of the total. Equal to the objective of the n rows as one
  batch, since a family's loss is a sum over rows over `scored_positions`."""
  family = families.of(model.cfg)
  P = tokens_PL.shape[0]
  d = family.draw(key, tokens_PL[:n], model, config, proposal, None, False)
  if P == n:  # nothing to leave out: one batch, as training computes it (the per-row form
    # below costs the quickstart's objective 20-30% more on CPU, docs/scaling.md)
    return family.loss(params, model, tokens_PL, d, config)[0]
  d = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], P - n, 0)]), d)

  def row(tokens_L, d_row):
    tokens_1L, d_1 = tokens_L[None], jax.tree.map(lambda x: x[None], d_row)
    total = family.loss(params, model, tokens_1L, d_1, config, None, 1.0)[0]
    return total, family.scored_positions(tokens_1L, d_1)
  total_P, count_P = jax.vmap(row)(tokens_PL, d)
  return jnp.sum(total_P[:n]) / jnp.sum(count_P[:n])


def _summary(prefix: str, nats_N, tokens: int, num_bytes: int, mc_var: float | None) -> dict:
  """bits per token / byte of per-sequence nats, with the standard error over sequences and,
  for a bound, the Monte-Carlo standard error of its draws."""
  n, total = len(nats_N), float(nats_N.sum())
  per_token = tokens / n
  out = {f'{prefix}bits_per_token': total / tokens / LN2,
         f'{prefix}bits_per_byte': total / LN2 / max(num_bytes, 1),
         f'{prefix}bits_per_token_stderr':
             float(nats_N.std(ddof=1) / np.sqrt(n) / per_token / LN2) if n > 1 else float('nan')}
  if mc_var is not None:
    out[f'{prefix}bits_per_token_mc_stderr'] = float(np.sqrt(mc_var) / tokens / LN2)
    out[f'{prefix}bits_per_byte_mc_stderr'] = float(np.sqrt(mc_var) / LN2 / max(num_bytes, 1))
  return out


def context_tokens(windows: np.ndarray) -> np.ndarray:
  """The token before each window of one consecutive stream (`data.eval_windows`): the last of
  the previous window. The first window opens the stream with `<|bos|>` and gets that same
  token as its context, which charges the AR model for one unpredictable token (conservative)."""
  return np.concatenate([windows[:1, 0], windows[:-1, -1]]).astype(np.int32)


class _Tally:
  """Per-sequence nats, Monte-Carlo variance, parts and (level, CE) draws of one bound, and the
  per-sequence values of a family without one (`means`)."""

  def __init__(self):
    self.nats, self.mc_var, self.parts, self.level, self.ce = [], 0.0, {}, [], []
    self.means = {}

  def add(self, b: dict, n: int) -> None:
    """The bound `b` of a batch whose first n rows are real (the rest padding)."""
    b = jax.tree.map(lambda x: x[:n], sharding.fetch(b))
    for name, values in b.get('means', {}).items():
      for k, v in values.items():
        self.means.setdefault(name, {}).setdefault(k, []).append(np.asarray(v).ravel())
    if b['nats'] is not None:
      self.nats.append(np.asarray(b['nats']))
    if b['replicas'] is not None:
      r = np.asarray(b['replicas'])
      self.mc_var += float(np.sum(np.square(r[:, 0] - r[:, 1])) / 4)
    for name, v in b['parts'].items():
      self.parts[name] = self.parts.get(name, 0.0) + float(np.sum(v))
    if 'level' in b:
      self.level.append(np.asarray(b['level']).ravel())
      self.ce.append(np.asarray(b['ce']).ravel())


def evaluate(params, model: Transformer, c, windows: np.ndarray, token_bytes: np.ndarray,
             batch_size: int, seed: int = 0, progress=None, bound: bool = True,
             proposal=None, discrete: bool = True) -> dict:
  """val_loss (the training objective on held-out windows) and (unless bound=False) the
  likelihood of `windows` in bits per token / byte.

  windows: consecutive slices of one token stream, (n, L). The AR model scores every token of
  every window (the first with the token before it as context, `context_tokens`), a diffusion
  model bounds each window as a whole: the same tokens, the same bytes. proposal: the run's
  noise proposal q (`state.proposal`) for the families that keep one. It decides the training
  objective's noise levels too, so for those families val_loss is only comparable between
  runs, or steps of one run, with the same proposal (it rises while the proposal moves towards
  the hard levels); the bound bounds the held-out NLL of the model as it stands whatever the
  proposal, which is why training reports it as its validation figure. The draws come from
  `seed` alone: the same weights and proposal give the same numbers at every call.
  discrete=False skips the discrete T-step bound.
  """
  family = families.of(model.cfg)
  n = (len(windows) // batch_size) * batch_size
  if n == 0:
    raise ValueError(f'{len(windows)} evaluation windows are fewer than batch_size={batch_size}')
  if proposal is None and family.init_noise(c, model.cfg) is not None:  # built only to ask
    raise ValueError(f'a {family.NAME} run is evaluated with its noise proposal (state.proposal)')
  prev = context_tokens(windows)[:n]
  windows = windows[:n]
  key = jax.random.key(seed)
  discrete_steps = (c.eval.discrete_steps or c.sample.num_steps) if discrete and not family.EXACT else 0
  objective, tallies = [], {'': _Tally(), 'discrete_': _Tally()}
  batches = range(0, n, batch_size)
  # Data-parallel over the mesh: a batch that does not split over the devices is padded with
  # copies of its last window, which are left out of every sum (`_objective`, `_Tally.add`).
  rows = sharding.padded(batch_size)
  for i in (progress(batches) if progress else batches):
    tokens = sharding.global_rows(sharding.pad_rows(windows[i:i + batch_size], rows))
    k = jax.random.fold_in(key, i)
    objective.append(float(_objective(params, tokens, k, proposal, model=model, config=c,
                                      n=batch_size)))
    if not bound:
      continue
    context = sharding.global_rows(sharding.pad_rows(prev[i:i + batch_size], rows))
    tallies[''].add(family.bound(params, model, c, tokens, context, k, proposal), batch_size)
    if discrete_steps:
      tallies['discrete_'].add(family.bound(params, model, c, tokens, context, k, proposal,
                                            num_steps=discrete_steps), batch_size)
  tokens_total = windows.size
  result = {'val_loss': float(np.mean(objective)), 'eval_tokens': int(tokens_total),
            'eval_bytes': int(token_bytes[windows].sum())}
  if not bound:
    return result
  b = result['eval_bytes']
  for prefix, t in tallies.items():
    if t.nats:
      result.update(_summary(prefix, np.concatenate(t.nats), tokens_total, b,
                             None if family.EXACT else t.mc_var))
  if family.EXACT:
    result['likelihood'] = 'exact negative log-likelihood (autoregressive)'
    return result
  t = tallies['']
  result.update({name: {k: float(np.mean(np.concatenate(v))) for k, v in values.items()}
                 for name, values in t.means.items()})
  result.update(heldout_ce_vs_level=binned_curve(np.concatenate(t.level), np.concatenate(t.ce),
                                                 family.level_edges(proposal)),
                level=family.LEVEL)
  if not t.nats:  # a family without a likelihood says why instead of giving a number
    result['likelihood'] = family.describe_bound(c)
    return result
  if discrete_steps:
    result['discrete_steps'] = int(discrete_steps)
  result.update(
      bound_terms_bits_per_token={k: v / tokens_total / LN2 for k, v in t.parts.items()},
      likelihood=f'upper bound ({family.describe_bound(c)}; the true NLL is lower)')
  return result


def binned_curve(level, ce, edges) -> dict:
  """Mean cross-entropy per token in bins of the corruption level (None where no draw fell)."""
  edges = np.asarray(edges)
  finite = np.isfinite(ce)  # a draw that corrupted no position has no CE
  level, ce = np.asarray(level)[finite], np.asarray(ce)[finite]
  centers = np.asarray(noise.centers(edges))
  b = np.asarray(noise.bin_index(edges, level))
  total, count = np.bincount(b, ce, len(centers)), np.bincount(b, minlength=len(centers))
  return {'level': [round(float(x), 4) for x in centers],
          'ce': [round(float(t / n), 5) if n else None for t, n in zip(total, count)]}
