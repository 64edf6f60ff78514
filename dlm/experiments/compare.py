"""Diffusion vs its autoregressive twin: train both at equal tokens, evaluate, write a report.

  python -m dlm.experiments.compare --config configs/quickstart.py --workdir runs/compare \
      --preset=cpu [--scorer_workdir=runs/scorer] [--config.data.path=...]

Order: the scorer (configs/scorer.py's rule: a larger AR model) is trained first, unless an
existing one is given; the two runs read its prepared tokens in place (`data.path` set to
the scorer's prepared directory), so all three read the same tokens with the same tokenizer
(checked before scoring). Then the diffusion model and its AR twin (`twin.ar_twin`, matched
non-embedding parameters) train on the same data, optimiser and budget. Every kept
checkpoint of both is evaluated on the same held-out windows; samples are drawn over a
temperature sweep (and, for diffusion, every sampler of `dlm.samplers` over a sweep of
sampling steps at temperature 1) and measured beside held-out windows of the same shape.
`workdir/report.md`, its PNG plots and `results.json` hold everything; the report flags a
diffusion bound whose Monte-Carlo error is too large for its comparison with the AR twin to
mean anything (`significance`).
"""

import functools
import os
import sys

from absl import flags
from ml_collections import config_flags

from dlm import checkpoint, data, metrics, quality, samplers, sampling
from dlm.experiments import common, report, twin
from dlm.model import count_params

FAMILIES = ('diffusion', 'autoregressive')


def compare(c, workdir: str, preset: str = 'cpu', scorer_workdir: str = '', log=print,
            command: str = '') -> dict:
  p = common.preset(preset)
  configs = {'diffusion': common.apply(c, p['config'])}
  if configs['diffusion'].model.family == 'ar':
    configs['diffusion'].model.family = 'gaussian'
  configs['autoregressive'] = twin.ar_twin(configs['diffusion'])
  os.makedirs(workdir, exist_ok=True)
  scorer_workdir = common.ensure_scorer(configs['diffusion'], workdir, scorer_workdir, log)
  runs = {}
  for family in FAMILIES:
    configs[family] = common.on_data_of(configs[family], scorer_workdir)
    log(f'== training the {family} model')
    runs[family] = common.train_run(configs[family], os.path.join(workdir, family), log)

  scorer = checkpoint.load_run(scorer_workdir)
  L = configs['diffusion'].model.sequence_len
  val = data.val_tokens(runs['diffusion']['workdir'])
  windows = data.eval_windows(val, L, configs['diffusion'].eval.eval_tokens)
  batch = min(configs['diffusion'].eval.batch_size, len(windows))
  n = p['num_samples']
  held_out = quality.row_quality(metrics.reference_windows(val, n, L), scorer.tokenizer.bos_id,
                                 scorer)
  results = {'preset': preset, 'command': command, 'scorer': {
      'workdir': scorer_workdir, 'non_embedding_params': count_params(scorer.params, True),
      'n_layer': scorer.model_config.n_layer, 'n_embd': scorer.model_config.n_embd},
      'held_out': held_out, 'bound_samples': configs['diffusion'].eval.bound_samples,
      'families': {}}
  for family in FAMILIES:
    log(f'== evaluating the {family} model')
    wd = runs[family]['workdir']
    run = checkpoint.load_run(wd)
    quality.check_scorer(run, scorer, L)
    curve = common.evaluate_checkpoints(wd, windows, batch, runs[family]['tokens_per_step'])
    sweep = [quality.sample_quality(run, n, seed=1, scorer=scorer, temperature=t)
             for t in p['temperatures']]
    # Every sampler at every step count, at temperature 1 (the model's own distribution).
    steps = [quality.sample_quality(run, n, seed=1, scorer=scorer, temperature=1.0,
                                    sampler=name, num_steps=s)
             for name in samplers.SAMPLERS for s in p['num_steps']
             ] if family == 'diffusion' else []
    speed = {f'samples_per_sec_batch_{b}': quality.samples_per_second(run, b) for b in (1, n)}
    example = run.tokenizer.decode_documents(sampling.sample_array(run, 1, seed=2)[0][0])
    results['families'][family] = {
        **runs[family], 'n_layer': run.model_config.n_layer, 'n_embd': run.model_config.n_embd,
        'diffusion_dim': run.model_config.diffusion_dim,
        'non_embedding_params': count_params(run.params, True),
        'params': count_params(run.params), 'final': curve[-1], 'checkpoints': curve,
        'temperature_sweep': sweep, 'steps_sweep': steps, 'speed': speed,
        'loss_curve': common.loss_curve(wd), 'example': '\n\n'.join(example)}
  common.write_json(os.path.join(workdir, 'results.json'), results)
  report.write_compare(workdir, results)
  log(f'== wrote {os.path.join(workdir, "report.md")}')
  return results


if __name__ == '__main__':  # flags only for the command, so the module imports cleanly
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'The diffusion config of the pair.')
  _WORKDIR = flags.DEFINE_string('workdir', 'runs/compare', 'Where the runs and report go.')
  _PRESET = flags.DEFINE_enum('preset', 'cpu', sorted(common.PRESETS), 'Experiment size.')
  _SCORER = flags.DEFINE_string('scorer_workdir', '', 'An already trained scorer run.')
  common.run_cli(lambda: compare(
      common.required_config(_CONFIG), _WORKDIR.value, _PRESET.value, _SCORER.value,
      log=functools.partial(print, flush=True),
      command='python -m dlm.experiments.compare ' + ' '.join(sys.argv[1:])))
