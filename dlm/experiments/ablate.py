"""Ablations of the diffusion recipe at equal tokens, each evaluated and written to a report.

  python -m dlm.experiments.ablate --config configs/quickstart.py --sweep=allocation \
      --workdir runs/ablate_allocation --preset=cpu [--scorer_workdir=runs/compare/scorer] \
      [--scorer=gpt2-large]

Sweeps: family (every diffusion family: gaussian / masked / hybrid, each with its own sample
settings), allocation (the seed's cosine schedule with uniform times / LangFlow's Gumbel /
the adaptive CE-following proposal), dim (diffusion_dim 16 / 32 / 64 / 128), path (vp / flow),
sampler (ancestral / ddim / dpm++2m), steps (sampling steps 8 / 32 / 128 / 512),
self_condition (off / previous / fresh), conditioning (0 / 10 / 25 / 50% of rows trained with
known tokens; the bound stays the unconditional one), latent (the latent family's chunk size 2 /
4 / 8 at width 32 and latent width 16 / 32 / 64 at chunk 4, each with its reconstruction
accuracy in place of a bound), and the seed's list: schedule (linear / cosine /
sqrt), diffusion_steps (T = 100 / 500 / 1000), depth (4 / 8 / 12), parameterization (eps / x0 /
v, under the mse loss where it matters), embed_norm (normalised embeddings on / off). schedule
and diffusion_steps set allocation=schedule: under the other allocations neither decides the
noise levels.

Every variant trains at the preset's step budget counted over all its stages (`at_budget`: a
latent run splits it between its autoencoder and its diffusion model). `--variants=a,b` runs
only the named variants. Variants that differ only in `sample.*` settings share one trained model:
each distinct set of training overrides trains once (its workdir is named after them, `base` for
none) and is evaluated once; each variant then samples with its own settings, those of them its
family takes (a `sample.sampler` means nothing to a family without samplers). Like `compare`, the
scorer is trained first unless given, and every run reads its prepared tokens (and so its tokenizer)
in place; with `--scorer` (a GPT-2-family checkpoint) none is trained, GPT-2 scores the retokenised
samples and each variant's quality carries MAUVE against held-out windows of the samples' shape
(docs/scoring.md).
"""

import functools
import os
import sys

from absl import flags
from ml_collections import config_flags

from dlm import checkpoint, data, gpt2, metrics, quality, samplers
from dlm.errors import DlmError, run_cli
from dlm.experiments import common, report

SCHEDULE = {'diffusion.allocation': 'schedule'}  # the seed's uniform times on a schedule
SWEEPS = {
    'family': [(f, {'model.family': f}) for f in common.DIFFUSION],
    'allocation': [('cosine-uniform', {**SCHEDULE, 'diffusion.noise_schedule': 'cosine'}),
                   ('gumbel', {'diffusion.allocation': 'gumbel'}),
                   ('adaptive', {'diffusion.allocation': 'adaptive'})],
    'dim': [(f'dim {d}', {'model.diffusion_dim': d}) for d in (16, 32, 64, 128)],
    'path': [(p, {'diffusion.path': p}) for p in ('vp', 'flow')],
    'sampler': [(s, {'sample.sampler': s}) for s in samplers.SAMPLERS],
    'steps': [(f'{s} steps', {'sample.num_steps': s}) for s in (8, 32, 128, 512)],
    'self_condition': [('off', {'diffusion.self_condition': False}),
                       ('previous', {'sample.self_condition': 'previous'}),
                       ('fresh', {'sample.self_condition': 'fresh'})],
    'schedule': [(s, {**SCHEDULE, 'diffusion.noise_schedule': s})
                 for s in ('linear', 'cosine', 'sqrt')],
    'diffusion_steps': [(f'T={t}', {**SCHEDULE, 'diffusion.diffusion_steps': t})
                        for t in (100, 500, 1000)],
    'depth': [(f'depth {d}', {'model.depth': d}) for d in (4, 8, 12)],
    'parameterization': [(p, {'diffusion.loss': 'mse', 'diffusion.parameterization': p})
                         for p in ('eps', 'x0', 'v')],
    'embed_norm': [(f'normalize={v}', {'diffusion.normalize_embeddings': v})
                   for v in (True, False)],
    'conditioning': [(f'{f:.0%} conditioned', {'diffusion.condition_fraction': f})
                     for f in (0.0, 0.1, 0.25, 0.5)],
    # Latent diffusion's compression: tokens per latent at width 32, then the width at 4
    # tokens per latent (CALM, Shao et al. 2025, compresses 4 tokens into one vector).
    'latent': [(f'chunk={k} dim={d}', {'model.family': 'latent', 'latent.chunk': k,
                                         'latent.dim': d})
               for k, d in ((2, 32), (4, 32), (8, 32), (4, 16), (4, 64))],
}


def run_name(train_overrides: dict) -> str:
  """The workdir of a trained variant, from what training depends on."""
  return '-'.join(f'{k.split(".")[1]}_{v}' for k, v in sorted(train_overrides.items())) or 'base'


def train_and_evaluate(c, wd: str, scorer, log) -> dict:
  """Train (or resume) the run in wd and bound its final checkpoint."""
  trained = common.train_run(c, wd, log)
  run = checkpoint.load_run(wd)
  quality.check_scorer(run, scorer, c.model.sequence_len)
  windows = data.eval_windows(data.val_tokens(wd), c.model.sequence_len, c.eval.eval_tokens)
  final = common.evaluate_step(wd, run.step, windows, min(c.eval.batch_size, len(windows)),
                               trained['tokens_per_step'])
  return {**trained, 'run': run, 'final': final,
          'diffusion_dim': run.model_config.diffusion_dim,  # the latent family's: latent.dim
          'loss_curve': common.loss_curve(wd)}


def chosen(sweep: str, names: tuple = ()) -> list:
  """The sweep's (name, overrides) variants, restricted to `names` when given (in the sweep's
  order); an unknown name is refused."""
  if sweep not in SWEEPS:
    raise DlmError(f'unknown sweep {sweep!r}; expected one of {sorted(SWEEPS)}')
  known = [n for n, _ in SWEEPS[sweep]]
  unknown = [n for n in names if n not in known]
  if unknown:
    raise DlmError(f'--variants: {unknown[0]!r} is not a variant of the {sweep} sweep; '
                   f'expected some of {", ".join(known)}')
  return [(n, o) for n, o in SWEEPS[sweep] if not names or n in names]


def parse_variants(text: str) -> tuple[str, ...]:
  """'chunk=2 dim=32, chunk=4 dim=16' -> its names; '' -> () (every variant)."""
  return tuple(x.strip() for x in text.split(',') if x.strip())


def ablate(c, sweep: str, workdir: str, preset: str = 'cpu', scorer_workdir: str = '',
           log=print, command: str = '', scorer: str = '', variants: tuple = ()) -> dict:
  """variants: the names of the sweep's variants to run (all when empty)."""
  todo = chosen(sweep, variants)
  p = common.preset(preset)
  base = common.diffusion_config(c, preset)
  os.makedirs(workdir, exist_ok=True)
  scorer_workdir = common.ensure_scorer(base, workdir, scorer_workdir, log, scorer)
  scorer = common.load_scorer(scorer, scorer_workdir)
  n = p['num_samples']
  reference = held_out = None
  if isinstance(scorer, gpt2.Scorer):  # MAUVE's reference: held-out rows shaped like samples
    reference = metrics.reference_windows(data.val_tokens(scorer_workdir), n,
                                          base.sample.seq_len or base.model.sequence_len)
  runs, variants = {}, []
  for name, overrides in todo:
    train_overrides, settings = common.split_overrides(overrides)
    key = run_name(train_overrides)
    if key not in runs:
      log(f'== {sweep}: training {key}')
      # every variant at the preset's budget over all its stages (`families.*.at_budget`)
      vc = common.on_data_of(common.at_budget(common.apply(base, train_overrides)),
                             scorer_workdir)
      runs[key] = train_and_evaluate(vc, os.path.join(workdir, key), scorer, log)
    log(f'== {sweep}: sampling {name}')
    g = runs[key]
    options = common.sample_options(g['run'], settings)
    variants.append({
        'name': name, 'overrides': overrides, 'run': key, 'final': g['final'],
        **{k: g[k] for k in ('workdir', 'train_wall_s', 'tokens_per_sec', 'tokens_per_step',
                             'stage_tokens', 'train_tokens')},
        'quality': quality.sample_quality(g['run'], n, seed=1, scorer=scorer,
                                          reference=reference, **options),
        'samples_per_sec': quality.samples_per_second(g['run'], n, **options)})
    if reference is not None and held_out is None:
      tokenizer = g['run'].tokenizer
      held_out = quality.row_quality(reference, tokenizer.bos_id, scorer, tokenizer)
  results = {'sweep': sweep, 'preset': preset, 'command': command,
             'variant_names': [n for n, _ in todo],
             'scorer_workdir': scorer_workdir, 'scorer': quality.describe_scorer(scorer),
             'held_out': held_out, 'variants': variants,
             'runs': {k: {'workdir': g['workdir'], 'final': g['final'],
                          'diffusion_dim': g['diffusion_dim'], 'loss_curve': g['loss_curve'],
                          'stage_tokens': g['stage_tokens'],
                          'variants': [v['name'] for v in variants if v['run'] == k]}
                      for k, g in runs.items()}}
  common.write_json(os.path.join(workdir, 'results.json'), results)
  report.write_ablation(workdir, results)
  log(f'== wrote {os.path.join(workdir, "report.md")}')
  return results


if __name__ == '__main__':  # flags only for the command, so the module imports cleanly
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'The diffusion config to ablate.')
  _SWEEP = flags.DEFINE_enum('sweep', 'schedule', sorted(SWEEPS), 'What to vary.')
  _WORKDIR = flags.DEFINE_string('workdir', '', 'Where the runs and report go '
                                 '(default runs/ablate_<sweep>).')
  _PRESET = flags.DEFINE_enum('preset', 'cpu', sorted(common.PRESETS), 'Experiment size.')
  _SCORER = flags.DEFINE_string('scorer_workdir', '', 'An already trained scorer run (with '
                                 '--scorer: only the run whose prepared data to share).')
  _CHECKPOINT = flags.DEFINE_string('scorer', '', 'Score with this GPT-2-family checkpoint '
                                    '(gpt2-large, a hub id or a local directory; adds MAUVE) '
                                    'instead of a self-trained AR scorer.')
  _VARIANTS = flags.DEFINE_string('variants', '', 'Only these variants of the sweep, by name, '
                                  'comma-separated (default: all).')
  run_cli(lambda: ablate(
      common.required_config(_CONFIG), _SWEEP.value,
      _WORKDIR.value or f'runs/ablate_{_SWEEP.value}', _PRESET.value, _SCORER.value,
      log=functools.partial(print, flush=True),
      command='python -m dlm.experiments.ablate ' + ' '.join(sys.argv[1:]),
      scorer=_CHECKPOINT.value, variants=parse_variants(_VARIANTS.value)))
