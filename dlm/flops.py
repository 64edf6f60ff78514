"""Training FLOPs counted from a model's shapes: the compute axis of a scaling study.

Every count is matmul FLOPs, 2 m n k per (m, k) x (k, n) product, of what the model's code
runs, part by part (`forward`'s keys), per sequence; the families' `train_flops` turn them into
training FLOPs per token of each stage they train. Elementwise work (norms, rotary, softmax,
the loss) is left out: it is the 0.5-1.5 % by which the counts fall short of XLA's own
(tests/test_flops.py compares the two for every family).

Conventions (Kaplan et al. 2020; Hoffmann et al. 2022): a trained pass costs 3 forwards (the
backward pass is two matmuls per forward one, the gradients of the input and of the weight);
a pass without gradient (self-conditioning's first pass, a frozen encoder) costs one. (The
few matmuls of a trained pass whose input needs no gradient, the time MLP's first and the
latent denoiser's input projection, count 3 all the same: well under 1 %.) Counted
are the model's FLOPs, not the hardware's: the recompute of rematerialisation (`model.REMAT`,
the chunked cross-entropy's head, `losses.token_ce`) is an implementation choice and is not
counted, nor is the optimiser (Muon's Newton-Schulz iterations cost per step, not per token).
Attention counts the whole L x L score matrix even when causal, as XLA computes it.

Why not nanochat's 6N + 12 l h q t (the MFU's rule before): for a denoiser N holds the adaLN
modulation (4 D^2 per layer) and the time MLP, which run once per sequence, not per token, and
it misses the matmuls that are no parameter's over the tokens (prior logits, the
self-conditioning estimate) and knows no pass without gradient; it overstated the diffusion
families by 22-27 % on the quickstart at vocabulary 4096, where the head alone is a quarter of
the AR model's FLOPs (docs/compute.md, 'Counting FLOPs').

  python -m dlm.flops --config configs/quickstart.py   # per family: FLOPs per token, by part
  python -m dlm.flops --config configs/quickstart.py --xla   # beside XLA's count, at 1 layer
"""

import copy

import jax

from dlm import config as config_lib
from dlm import families, noise, streams
from dlm.model import TIME_FEATURES, ModelConfig, Transformer, dummy_input

TRAIN = 3    # a pass with gradient: forward + backward (twice the forward's matmuls)
NO_GRAD = 1  # a pass without gradient: its forward alone


def layers(cfg: ModelConfig, length: int) -> dict:
  """The `model.layers` stack (cfg.n_layer blocks) over one sequence of `length` positions:
  q, k, v and output projections, attention scores and their weighted sum (L x L x D each),
  the ReLU^2 MLP (D -> 4D -> D)."""
  L, D, n = length, cfg.n_embd, cfg.n_layer
  return {'attention_proj': n * 4 * 2 * L * D * D,
          'attention': n * 2 * 2 * L * L * D,
          'mlp': n * 2 * 2 * L * D * 4 * D}


def forward(cfg: ModelConfig, length: int, estimate: bool = False) -> dict:
  """Matmul FLOPs by part of one `Transformer` forward over one sequence of `length` positions.
  A denoiser (not causal) adds the input projection (noisy input and self-conditioning
  estimate, 2E -> D), the time MLP and the adaLN modulation (both once per sequence), and
  with prior_logits the z E^T of `diffusion.prior_logits`. estimate: the softmax(logits) @ E
  that turns token logits into an x0 estimate (`diffusion.x0_from_logits`)."""
  L, D, E, V = length, cfg.n_embd, cfg.diffusion_dim, cfg.vocab_size
  parts = layers(cfg, L)
  if not cfg.causal:
    parts['in_proj'] = 2 * L * 2 * E * D
    parts['time'] = 2 * TIME_FEATURES * D + 2 * D * D
    parts['modulation'] = cfg.n_layer * 2 * D * 4 * D
  parts['head'] = 2 * L * D * (cfg.out_dim or V)
  if not cfg.causal and cfg.prior_logits:
    parts['prior'] = 2 * L * E * V
  if estimate and not cfg.out_dim:
    parts['estimate'] = 2 * L * V * E
  return parts


def encoder(backbone: ModelConfig, length: int, chunk: int, dim: int) -> dict:
  """`autoencoder.Autoencoder.encode` of one sequence: every chunk alone through the encoder
  stack, then each chunk's c x D states to one latent of `dim`."""
  chunks = length // chunk
  return {'encoder': chunks * sum(layers(backbone, chunk).values()),
          'to_latent': 2 * chunks * chunk * backbone.n_embd * dim}


def decoder(backbone: ModelConfig, length: int, chunk: int, dim: int) -> dict:
  """`autoencoder.Autoencoder.decode` of one sequence: each latent to c x D states, the
  decoder stack over the whole window, the token head."""
  D = backbone.n_embd
  return {'from_latent': 2 * (length // chunk) * dim * chunk * D,
          'decoder': sum(layers(backbone, length).values()),
          'head': 2 * length * D * backbone.vocab_size}


def denoiser(cfg: ModelConfig, length: int, self_condition: bool, rows: int,
             estimate: bool) -> dict:
  """One trained pass of a denoiser over a sequence, plus with self-conditioning its first
  pass without gradient and its x0 estimate (`denoiser.self_condition`) on the even rows of a
  device's `rows` (all of them when that is odd). estimate: the trained pass turns its logits
  into an x0 estimate too (the Gaussian family's mse objective)."""
  parts = scale(forward(cfg, length, estimate), TRAIN)
  if self_condition:
    share = 0.5 if rows % 2 == 0 else 1.0
    parts = add(parts, scale(forward(cfg, length, estimate=True), share * NO_GRAD))
  return parts


def scale(parts: dict, k: float) -> dict:
  return {name: k * v for name, v in parts.items()}


def add(*parts: dict) -> dict:
  """The sum of part counts, part by part, in the order the parts first appear."""
  out = {}
  for p in parts:
    for name, v in p.items():
      out[name] = out.get(name, 0) + v
  return out


def stages(per_sequence: dict, length: int, by_part: bool) -> dict:
  """{stage: FLOPs per token} of {stage: {part: FLOPs per sequence of `length` tokens}};
  by_part: {stage: {part: FLOPs per token}}."""
  per_token = {s: scale(p, 1 / length) for s, p in per_sequence.items()}
  return per_token if by_part else {s: float(sum(p.values())) for s, p in per_token.items()}


def xla_per_token(c, vocab_size: int) -> float:
  """XLA's own FLOPs per token of the family's compiled training loss and gradient (its last
  stage): `draw` and `loss` under value_and_grad on `train.device_batch_size` rows, as
  `train.make_train_step` runs them per device and micro-batch. Nothing runs: the shapes are
  abstract. XLA's cost analysis counts the body of a loop once, not once per trip, so this
  measures the model only at one layer with an unchunked cross-entropy (`one_loop_trip`)."""
  mcfg = config_lib.model_config(c, vocab_size)
  family = families.of(mcfg)
  model = Transformer(mcfg)
  B, L = c.train.device_batch_size, mcfg.sequence_len
  params = jax.eval_shape(model.init, jax.random.key(0), *dummy_input(mcfg))
  state = jax.eval_shape(lambda: family.init_noise(c, mcfg))
  q = None if state is None else noise.proposal(state)

  def step(params, tokens_BL, key, q):
    d = family.draw(key, tokens_BL, model, c, q, None, rows=streams.whole(B))
    return jax.value_and_grad(lambda p: family.loss(p, model, tokens_BL, d, c), has_aux=True)(
        params)
  tokens = jax.ShapeDtypeStruct((B, L), jax.numpy.int32)
  compiled = jax.jit(step).lower(params, tokens, jax.random.key(1), q).compile()
  return float(compiled.cost_analysis()['flops']) / (B * L)


def one_loop_trip(c):
  """c with every loop that XLA's cost analysis would count once run once: one layer (the
  layer scan; the latent autoencoder's too), the cross-entropy in one chunk, no remat."""
  c = copy.deepcopy(c)
  c.model.n_layer, c.latent.layers = 1, 1
  c.train.logits_chunk = c.model.sequence_len
  c.model.remat = 'none'
  return c


def report(c, vocab_size: int, names, xla: bool = False) -> str:
  """Lines of training FLOPs per token of each family in `names` on config c's backbone: each
  stage's total and the share of its parts; xla: instead, at one layer (`one_loop_trip`), the
  last stage's count beside XLA's (`xla_per_token`)."""
  lines = []
  for name in names:
    fc = copy.deepcopy(c)
    fc.model.family = name
    if xla:
      fc = one_loop_trip(fc)
      ours = list(families.get(name).train_flops(fc, vocab_size).values())[-1]
      theirs = xla_per_token(fc, vocab_size)
      lines.append(f'{name:8s} ours {ours / 1e6:9.3f}  XLA {theirs / 1e6:9.3f} MFLOP/token  '
                   f'ratio {ours / theirs:.3f}')
      continue
    for stage, parts in families.get(name).train_flops(fc, vocab_size, by_part=True).items():
      total = sum(parts.values())
      shares = ', '.join(f'{p} {v / total:.1%}' for p, v in parts.items())
      lines.append(f'{name:8s} {stage:11s} {total / 1e6:9.3f} MFLOP/token  ({shares})')
  return '\n'.join(lines)


if __name__ == '__main__':
  from absl import flags
  from ml_collections import config_flags

  from dlm import ar_configs
  from dlm.errors import DlmError, run_cli

  _CONFIG = config_flags.DEFINE_config_file('config', None, 'The config whose shapes to count.')
  _FAMILIES = flags.DEFINE_string('families', ','.join(families.FAMILIES),
                                  'Comma-separated families to count (dlm.families).')
  _XLA = flags.DEFINE_bool('xla', False, 'Compare with XLA\'s count of the compiled training '
                           'loss and gradient, at one layer (XLA counts a loop\'s body once).')

  def main() -> None:
    if _CONFIG.value is None:
      raise DlmError('--config is required (e.g. configs/quickstart.py)')
    names = [n for n in _FAMILIES.value.split(',') if n]
    unknown = [n for n in names if n not in families.FAMILIES]
    if unknown or not names:
      raise DlmError(f'--families: {",".join(unknown) or "none given"}; expected some of '
                     f'{",".join(families.FAMILIES)}')
    c = _CONFIG.value
    print(report(c, ar_configs.planned_vocab(c), names, _XLA.value))

  run_cli(main)
