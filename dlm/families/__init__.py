"""Model families: one module per way of corrupting text, found by `model.family`.

  ar        the autoregressive twin: causal attention on token ids, exact likelihood
  gaussian  Gaussian noise on every token's embedding (CDCD / Plaid / LangFlow)
  masked    absorbing-state masking (MDLM, Sahoo et al. 2024; MD4, Shi et al. 2024)
  hybrid    masking decides which tokens are corrupted, Gaussian noise how much (CANDI,
            Pynadath et al. 2025)
  latent    Gaussian diffusion on the latents of a text autoencoder trained first (LD4LG,
            Lovelace et al. 2023; CALM, Shao et al. 2025)

Training, evaluation, sampling, the experiments and the bench look a family up here and call
the same functions on it; none of them tests which family it holds. Every module defines:

  NAME, SUMMARY          its key and one line for logs and reports
  EXACT                  True when `bound` is the exact NLL (ar), False for an upper bound
  LIKELIHOOD             whether `bound` gives nats at all (False: latent, which reports what
                         it measures instead; it has no point on a loss-vs-FLOPs axis)
  INFILL                 whether it can fill gaps between known tokens (ar cannot)
  LEVEL                  the corruption axis of its held-out CE curve (diffusion families)
  SAMPLE_OPTIONS         the sampling options it takes (`dlm.sampling.OPTIONS`); SAMPLERS, where
                         it takes `sampler`, the update rules it knows
  model_fields(c)        the `ModelConfig` fields it fixes (causal, conditioning, ...); raises
                         DlmError for a config it cannot run (`config.validate` calls it)
  prepare(c, workdir, tok, data_dir, manifest, log)   the stage a run trains before the model's
                         own (the latent family's autoencoder), whose arrays the run keeps frozen
                         in `state['noise']['frozen']`; None: no such stage (`no_stage`)
  at_budget(c) -> c      c spending train.num_iterations batches in all, over every stage it
                         trains (the experiments compare families at equal total tokens);
                         unchanged for a one-stage family (`one_budget`)
  stage_steps(c) -> {stage: steps}   the optimiser steps of each stage c trains, in order
                         ({'model': train.num_iterations} for one stage, `one_stage_steps`)
  train_flops(c, vocab_size, by_part=False) -> {stage: FLOPs}   training FLOPs per token of
                         each stage's batches, the keys and order of stage_steps (a run's
                         compute: sum over stages of steps x tokens per step x FLOPs); matmuls
                         counted from the shapes by `dlm.flops`; by_part: {stage: {part: FLOPs}}
  init_noise(c, mcfg)    its part of the train state (`state['noise']`) or None;
  update_noise(noise_state, rows, step, c)   that part after each step
  draw(key, tokens_BL, model, c, proposal, patterns, condition, rows=None) -> d
                         the random inputs of a batch's loss. rows (`streams.Rows`): which
                         rows of the step tokens_BL holds (their global row numbers and the
                         step's row count; None: all of one batch). Every value of row r must
                         be a function of (key, r) alone, and anything coupling the rows (a
                         stratification) a function of the key and r given the count: the
                         train step draws each device's rows of each micro-batch inside its
                         accumulation scan, and the loss curve must not depend on that split
                         (use the helpers of `dlm.streams`; a family that delegates to another's
                         draw passes rows on)
  scored_positions(tokens_BL, d)             how many positions the loss averages over
  loss(params, model, tokens_BL, d, c, patterns, norm) -> (loss, (metrics, rows))
                         norm: the positions to divide the sum by (default this batch's
                         scored ones); the train step passes a fixed scale and divides by the
                         whole step's scored positions afterwards, so the loss and every metric
                         must be sums over positions divided by norm
  param_metrics(params, model) -> dict       metrics of the weights alone
  bound(params, model, c, tokens_BL, prev_B, key, proposal, num_steps=0) -> dict
                         nats per sequence: {'nats': (B,), 'replicas': (B, 2) or None (two
                         independent Monte-Carlo estimates), 'parts': {name: (B,)}, and for
                         diffusion 'level', 'ce': (B, draws)}; num_steps = T: the T-step sampler's
  describe_bound(c), level_edges(proposal)   what the bound is; bins of its CE curve. A family
                         without a likelihood (latent) returns 'nats': None from `bound`, says
                         why in describe_bound, and gives per-sequence values to average instead
                         ('means': {report name: {key: (B,)}})
  context_probe(params, model, c, tokens_BL, key, proposal, levels_K, clean_context) -> (K,)
                         CE at probe positions with a corrupted or a clean context (None for ar)
  sample_tokens(params, key, proposal, *, model, num_samples, seq_len, cond_tokens, known, label,
                branches, guidance, trajectory, mesh, bos_id, **its options) -> ids (N, L)
"""

import importlib

FAMILIES = ('ar', 'gaussian', 'masked', 'hybrid', 'latent')


def get(name: str):
  """The module of family `name` (`dlm.families.<name>`)."""
  if name not in FAMILIES:
    raise ValueError(f'unknown model family {name!r}; expected one of {", ".join(FAMILIES)}')
  return importlib.import_module(f'dlm.families.{name}')


def of(model_config):
  """The family module of a `ModelConfig`."""
  return get(model_config.family)


def no_stage(c, workdir, tok, data_dir, manifest, log) -> None:
  """The `prepare` of a family that trains in one stage: nothing to do, nothing frozen."""
  del c, workdir, tok, data_dir, manifest, log


def one_budget(c):
  """The `at_budget` of a one-stage family: its model spends the whole budget."""
  return c


def one_stage_steps(c) -> dict:
  """The `stage_steps` of a one-stage family."""
  return {'model': c.train.num_iterations}
