"""Model families: one module per way of corrupting text, found by `model.family`.

  ar        the autoregressive twin: causal attention on token ids, exact likelihood
  gaussian  Gaussian noise on every token's embedding (CDCD / Plaid / LangFlow)
  masked    absorbing-state masking (MDLM, Sahoo et al. 2024; MD4, Shi et al. 2024)
  hybrid    masking decides which tokens are corrupted, Gaussian noise how much (CANDI,
            Pynadath et al. 2025)

Training, evaluation, sampling, the experiments and the bench look a family up here and call
the same functions on it; none of them tests which family it holds. Every module defines:

  NAME, SUMMARY                       its key and one line for logs and reports
  EXACT                               True when `bound` is the exact NLL (ar), else an upper bound
  SAMPLE_OPTIONS                      the sampling options it takes (`dlm.sampling.OPTIONS`)
  model_fields(c) -> dict             the `ModelConfig` fields the family fixes
  init_noise(c, mcfg) -> dict|None    its part of the train state (`state['noise']`), if any
  draw(key, tokens_BL, model, c, noise_state, patterns, condition) -> dict
                                      the random inputs of a batch's loss, at the global shape
  scored_positions(tokens_BL, d)      how many positions the loss averages over
  loss(params, model, tokens_BL, d, c, patterns, norm) -> (loss, (metrics, rows))
  update_noise(noise_state, rows, step, c) -> dict     after each step (if init_noise gives one)
  param_metrics(params, model) -> dict
  bound(params, model, c, tokens_BL, prev_B, key, proposal, num_steps) -> dict
                                      nats per sequence: {'nats': (B,), 'replicas': (B, 2) or
                                      None, 'parts': {name: (B,)}, 'level', 'ce': (B, S)}
  sample_tokens(params, key, proposal, *, model, num_samples, seq_len, options, cond_tokens,
                known, label, branches, guidance, trajectory, mesh) -> ids (N, L)
"""

import importlib

FAMILIES = ('ar', 'gaussian', 'masked', 'hybrid')


def get(name: str):
  """The module of family `name` (`dlm.families.<name>`)."""
  if name not in FAMILIES:
    raise ValueError(f'unknown model family {name!r}; expected one of {", ".join(FAMILIES)}')
  return importlib.import_module(f'dlm.families.{name}')


def of(model_config):
  """The family module of a `ModelConfig`."""
  return get(model_config.family)
