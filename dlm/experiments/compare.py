"""The diffusion families side by side, and beside their autoregressive twin: train all at equal
tokens, evaluate them on the same held-out windows, write one report.

  python -m dlm.experiments.compare --config configs/quickstart.py --workdir runs/compare \
      --preset=cpu [--families=gaussian,masked,hybrid] [--scorer_workdir=runs/scorer] \
      [--scorer=gpt2-large] [--config.data.path=...]

Order: the scorer (configs/scorer.py's rule: a larger AR model) is trained first, unless an
existing one is given; every run reads its prepared tokens in place (`data.path` set to the
scorer's prepared directory), so all read the same tokens with the same tokenizer (checked
before scoring). With `--scorer` (a GPT-2-family checkpoint, `dlm.gpt2`) no scorer is
trained: the data is prepared alone in workdir/shared_data, every gen-PPL is GPT-2's on the
retokenised text, and each quality figure carries MAUVE against the held-out windows
(docs/scoring.md). Then each listed diffusion family (the config with `model.family` set) and the
AR twin (`ar_configs.ar_twin` of the Gaussian config, matched non-embedding parameters) train on the
same data, optimiser and budget (counted over all of a run's stages, `at_budget`: the latent
family splits it between its autoencoder and its diffusion model), each in workdir/<family>
(the twin in workdir/ar); a finished
run is reused, an interrupted one resumed.

For every family, on the same held-out windows: bits/byte at every kept checkpoint (exact for
the twin, an upper bound with its errors for the others; none for a family without a
likelihood, which reports its reconstruction accuracy instead) and the discrete T-step bound; the
held-out cross-entropy against the family's corruption level (`heldout_ce_vs_level`); the
context gain (`context_probe`: cross-entropy of probe tokens with the rest of the window
corrupted at the same level minus with it clean, at CONTEXT_LEVELS); samples over a temperature
sweep (of the score temperature for a family without a softmax temperature), with gen-PPL read
both at temperature 1 and at the unigram entropy of held-out text
(`matched_entropy`: low-entropy text scores a low gen-PPL, so families are only compared at
equal entropy); for the families that take `num_steps`, a sweep of sampling steps at
temperature 1 for each of their samplers; sampling speed at batch 1 and a full batch; one
example. `workdir/report.md`, its PNG plots and `results.json` hold everything; a bound whose
Monte-Carlo error is too large for its comparison with the twin to mean anything is flagged
(`significance`).
"""

import functools
import math
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from dlm import checkpoint, data, families, metrics, quality, sampling, sharding
from dlm.errors import DlmError, run_cli
from dlm.experiments import common, report
from dlm.families import ar
from dlm.model import count_params

CONTEXT_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)  # corruption levels of the context probe


def matched_entropy(sweep: list[dict], entropy: float) -> dict:
  """gen-PPL and temperature at unigram entropy `entropy` (held-out text's), read off a
  temperature sweep (quality dicts in temperature order): log gen-PPL and temperature
  interpolated linearly in entropy on the first segment between consecutive points that
  brackets it. bracketed=False when none does: then the point nearest in entropy, and `side`
  says whether held-out text lies above or below the sweep's entropies."""
  for q0, q1 in zip(sweep, sweep[1:]):
    h0, h1 = q0['unigram_entropy'], q1['unigram_entropy']
    if min(h0, h1) <= entropy <= max(h0, h1):
      w = (entropy - h0) / (h1 - h0) if h1 != h0 else 0.0
      log_ppl = (1 - w) * math.log(q0['gen_ppl']) + w * math.log(q1['gen_ppl'])
      return {'unigram_entropy': entropy, 'gen_ppl': math.exp(log_ppl),
              'temperature': (1 - w) * q0['temperature'] + w * q1['temperature'],
              'bracketed': True}
  q = min(sweep, key=lambda q: abs(q['unigram_entropy'] - entropy))
  return {'unigram_entropy': q['unigram_entropy'], 'gen_ppl': q['gen_ppl'],
          'temperature': q['temperature'], 'bracketed': False,
          'side': 'above' if entropy > q['unigram_entropy'] else 'below'}


def context_gain(run, windows: np.ndarray, batch: int, levels=CONTEXT_LEVELS,
                 seed: int = 0) -> dict | None:
  """What the family learns from context (`context_probe`): the probe tokens' mean
  cross-entropy (nats) with the rest of the window corrupted at the same level and clean, per
  level, over `windows` in batches; gain = corrupted - clean, with its standard error over
  batches. Both conditions use the same draws (paired). None for a family without a probe (the
  AR twin always reads a clean left context)."""
  family = families.of(run.model_config)
  if family.context_probe is None:
    return None
  c = ml_collections.FrozenConfigDict(run.config)
  levels_K = jnp.asarray(levels, jnp.float32)
  n = len(windows) // batch * batch
  key = jax.random.key(seed)
  ce = {True: [], False: []}
  for i in range(0, n, batch):
    tokens = sharding.global_rows(windows[i:i + batch])
    k = jax.random.fold_in(key, i)
    for clean in ce:
      ce[clean].append(sharding.fetch(family.context_probe(
          run.params, run.model, c, tokens, k, run.proposal, levels_K, clean)))
  clean, corrupted = np.stack(ce[True]), np.stack(ce[False])
  gain = corrupted - clean
  se = ((gain.std(0, ddof=1) / math.sqrt(len(gain))).tolist() if len(gain) > 1
        else [None] * len(levels))
  return {'level': list(levels), 'clean': clean.mean(0).tolist(),
          'corrupted': corrupted.mean(0).tolist(), 'gain': gain.mean(0).tolist(),
          'gain_stderr': se}


def temperature_sweep(run, n: int, temperatures, scorer, reference) -> list[dict]:
  """Sample quality at each temperature of the family's knob (`common.temperature_knob`), each
  recorded under `temperature` (the value, what `matched_entropy` reads) and `knob`."""
  knob = common.temperature_knob(run)
  return [{**quality.sample_quality(run, n, seed=1, scorer=scorer, reference=reference,
                                    **{knob: t}), 'temperature': t, 'knob': knob}
          for t in temperatures]


def steps_sweep(run, n: int, steps, scorer, reference: np.ndarray) -> list[dict]:
  """Sample quality at temperature 1 (of its knob) over step counts, for each of the family's
  samplers (its default where it has no choice); [] for a family without `num_steps` (the AR
  twin)."""
  family = families.of(run.model_config)
  if 'num_steps' not in family.SAMPLE_OPTIONS:
    return []
  knob = common.temperature_knob(run)
  samplers = [{'sampler': s} for s in getattr(family, 'SAMPLERS', ())] or [{}]
  return [{**quality.sample_quality(run, n, seed=1, scorer=scorer, reference=reference,
                                    num_steps=s, **sampler, **{knob: 1.0}), 'temperature': 1.0}
          for sampler in samplers for s in steps]


def measure(name: str, trained: dict, scorer, windows: np.ndarray, batch: int, held_out: dict,
            p: dict, log, reference: np.ndarray | None = None) -> dict:
  """Every figure of one family's trained run (see the module docstring); `reference`: the
  held-out rows MAUVE compares samples with (GPT-2-family scorers only)."""
  log(f'== evaluating {name}')
  wd = trained['workdir']
  run = checkpoint.load_run(wd)
  family = families.of(run.model_config)
  quality.check_scorer(run, scorer, run.model_config.sequence_len)
  n = p['num_samples']
  curve = common.evaluate_checkpoints(wd, windows, batch, trained['tokens_per_step'])
  sweep = temperature_sweep(run, n, p['temperatures'], scorer, reference)
  example = run.tokenizer.decode_documents(sampling.sample_array(run, 1, seed=2)[0][0])
  return {
      **trained, 'family': name, 'summary': family.SUMMARY, 'exact': family.EXACT,
      'n_layer': run.model_config.n_layer, 'n_embd': run.model_config.n_embd,
      'diffusion_dim': run.model_config.diffusion_dim,
      'non_embedding_params': count_params(run.params, True), 'params': count_params(run.params),
      'final': curve[-1], 'checkpoints': curve, 'temperature_sweep': sweep,
      'matched_entropy': matched_entropy(sweep, held_out['unigram_entropy']),
      'steps_sweep': steps_sweep(run, n, p['num_steps'], scorer, reference),
      'context': context_gain(run, windows, batch),
      'speed': {f'samples_per_sec_batch_{b}': quality.samples_per_second(run, b) for b in (1, n)},
      'loss_curve': common.loss_curve(wd), 'example': '\n\n'.join(example)}


def compare(c, workdir: str, preset: str = 'cpu', scorer_workdir: str = '',
            names: tuple = common.DIFFUSION, log=print, command: str = '',
            scorer: str = '') -> dict:
  """names: the diffusion families to train and measure beside the AR twin; scorer: a
  GPT-2-family checkpoint to score with instead of the self-trained AR scorer."""
  p = common.preset(preset)
  base = common.diffusion_config(c, preset)
  if base.eval.batch_size % jax.device_count():  # before hours of training, not after
    raise DlmError(f'eval.batch_size={base.eval.batch_size}: the context probe averages each '
                   f'batch on the devices, so it must be a multiple of the {jax.device_count()} '
                   'devices (evaluation and sampling pad theirs)')
  configs = common.family_configs(base, names)
  os.makedirs(workdir, exist_ok=True)
  scorer_workdir = common.ensure_scorer(base, workdir, scorer_workdir, log, scorer)
  trained = {}
  for name, fc in configs.items():
    log(f'== training {name}')
    trained[name] = common.train_run(common.on_data_of(fc, scorer_workdir),
                                     os.path.join(workdir, name), log)

  scorer = common.load_scorer(scorer, scorer_workdir)
  L = base.model.sequence_len
  val = data.val_tokens(trained[ar.NAME]['workdir'])
  windows = data.eval_windows(val, L, base.eval.eval_tokens)
  batch = min(base.eval.batch_size, len(windows))
  tokenizer = checkpoint.load_run(trained[ar.NAME]['workdir']).tokenizer
  reference = metrics.reference_windows(val, p['num_samples'], L)
  held_out = quality.row_quality(reference, tokenizer.bos_id, scorer, tokenizer)
  results = {'preset': preset, 'command': command,
             'scorer': {'workdir': scorer_workdir, **quality.describe_scorer(scorer)},
             'held_out': held_out, 'bound_samples': base.eval.bound_samples,
             'context_levels': list(CONTEXT_LEVELS),
             'families': {name: measure(name, t, scorer, windows, batch, held_out, p, log,
                                        reference) for name, t in trained.items()}}
  common.write_json(os.path.join(workdir, 'results.json'), results)
  report.write_compare(workdir, results)
  log(f'== wrote {os.path.join(workdir, "report.md")}')
  return results


if __name__ == '__main__':  # flags only for the command, so the module imports cleanly
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'The diffusion config compared.')
  _WORKDIR = flags.DEFINE_string('workdir', 'runs/compare', 'Where the runs and report go.')
  _PRESET = flags.DEFINE_enum('preset', 'cpu', sorted(common.PRESETS), 'Experiment size.')
  _SCORER = flags.DEFINE_string('scorer_workdir', '', 'An already trained scorer run (with '
                                 '--scorer: only the run whose prepared data to share).')
  _CHECKPOINT = flags.DEFINE_string('scorer', '', 'Score with this GPT-2-family checkpoint '
                                    '(gpt2-large, a hub id or a local directory; adds MAUVE) '
                                    'instead of a self-trained AR scorer.')
  _FAMILIES = flags.DEFINE_string('families', ','.join(common.DIFFUSION),
                                  'The diffusion families compared, comma-separated.')
  run_cli(lambda: compare(
      common.required_config(_CONFIG), _WORKDIR.value, _PRESET.value, _SCORER.value,
      common.parse_families(_FAMILIES.value), log=functools.partial(print, flush=True),
      command='python -m dlm.experiments.compare ' + ' '.join(sys.argv[1:]),
      scorer=_CHECKPOINT.value))
