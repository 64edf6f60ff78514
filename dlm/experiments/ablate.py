"""Ablations of the diffusion recipe at equal tokens, each evaluated and written to a report.

  python -m dlm.experiments.ablate --config configs/quickstart.py --sweep=schedule \
      --workdir runs/ablate_schedule --preset=cpu [--scorer_workdir=runs/compare/scorer]

Sweeps (the seed's list): schedule (linear / cosine / sqrt), steps (diffusion steps 100 / 500 /
1000), depth (4 / 8 / 12), parameterization (eps / x0 / v, under the mse loss where it matters),
embed_norm (normalised embeddings on / off). Like `compare`, the scorer is trained first unless
given, and every variant reads its prepared tokens
(and so its tokenizer) in place.
"""

import functools
import os
import sys

from absl import flags
from ml_collections import config_flags

from dlm import checkpoint, data, quality
from dlm.errors import DlmError
from dlm.experiments import common, report

SWEEPS = {
    'schedule': [(s, {'diffusion.noise_schedule': s}) for s in ('linear', 'cosine', 'sqrt')],
    'steps': [(f'T={t}', {'diffusion.diffusion_steps': t}) for t in (100, 500, 1000)],
    'depth': [(f'depth {d}', {'model.depth': d}) for d in (4, 8, 12)],
    'parameterization': [(p, {'diffusion.loss': 'mse', 'diffusion.parameterization': p})
                         for p in ('eps', 'x0', 'v')],
    'embed_norm': [(f'normalize={v}', {'diffusion.normalize_embeddings': v}) for v in (True, False)],
}


def ablate(c, sweep: str, workdir: str, preset: str = 'cpu', scorer_workdir: str = '',
           log=print, command: str = '') -> dict:
  if sweep not in SWEEPS:
    raise DlmError(f'unknown sweep {sweep!r}; expected one of {sorted(SWEEPS)}')
  p = common.preset(preset)
  base = common.apply(c, p['config'])
  base.model.causal = False
  os.makedirs(workdir, exist_ok=True)
  scorer_workdir = common.ensure_scorer(base, workdir, scorer_workdir, log)
  scorer = checkpoint.load_run(scorer_workdir)
  variants = []
  for name, overrides in SWEEPS[sweep]:
    vc = common.on_data_of(common.apply(base, overrides), scorer_workdir)
    vc.sample.num_steps = min(vc.sample.num_steps, vc.diffusion.diffusion_steps)
    wd = os.path.join(workdir, name.replace(' ', '_').replace('=', '_'))
    log(f'== {sweep}: {name}')
    trained = common.train_run(vc, wd, log)
    run = checkpoint.load_run(wd)
    quality.check_scorer(run, scorer, vc.model.sequence_len)
    windows = data.eval_windows(data.val_tokens(wd), vc.model.sequence_len,
                                vc.eval.eval_tokens)
    final = common.evaluate_checkpoints(wd, windows, min(vc.eval.batch_size, len(windows)),
                                        trained['tokens_per_step'])[-1]
    variants.append({'name': name, 'overrides': overrides, **trained, 'final': final,
                     'quality': quality.sample_quality(run, p['num_samples'], seed=1,
                                                       scorer=scorer),
                     'loss_curve': common.loss_curve(wd)})
  results = {'sweep': sweep, 'preset': preset, 'command': command,
             'scorer_workdir': scorer_workdir, 'variants': variants}
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
  _SCORER = flags.DEFINE_string('scorer_workdir', '', 'An already trained scorer run.')
  common.run_cli(lambda: ablate(
      common.required_config(_CONFIG), _SWEEP.value,
      _WORKDIR.value or f'runs/ablate_{_SWEEP.value}', _PRESET.value, _SCORER.value,
      log=functools.partial(print, flush=True),
      command='python -m dlm.experiments.ablate ' + ' '.join(sys.argv[1:])))
