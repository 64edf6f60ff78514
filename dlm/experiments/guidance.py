"""Classifier-free guidance at work: how often samples have the attribute asked for, and what
it costs in sample quality and speed.

  python -m dlm.experiments.guidance --config configs/quickstart.py --label=keyword:dog \
      --workdir runs/guidance --preset=cpu [--scorer_workdir=runs/compare/scorer]

Trains (or resumes) a diffusion run with `data.label` set (on the scorer's prepared data, like
`compare`), then for each guidance scale W (0: the unconditional model, 1: the conditional
one, more: pushed further) draws samples with the label's target value and measures the
control success rate (the share of samples whose own label, read off their tokens by the
function training used, is the target, with its binomial standard error), gen-PPL under the
scorer and the token statistics, beside held-out windows (whose success rate is the base rate).
Speed: samples/s of the guided sampler (two forward passes per step) against the unguided one
at the same batch, measured side by side. Writes report.md, guidance.png and results.json.
"""

import functools
import math
import os
import sys

import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from dlm import checkpoint, data, labels, metrics, quality, sampling
from dlm.errors import DlmError, run_cli
from dlm.experiments import common, report

SCALES = (0.0, 1.0, 2.0, 4.0)


def success(rows: np.ndarray, label, target: int) -> dict:
  """Share of rows whose label is `target`, with its binomial standard error."""
  hit = np.asarray(labels.of_tokens(jnp.asarray(rows), label.patterns)) == target
  p = float(hit.mean())
  return {'success_rate': p, 'success_stderr': math.sqrt(max(p * (1 - p), 1e-12) / len(hit))}


def guidance(c, label_spec: str, workdir: str, preset: str = 'cpu', scorer_workdir: str = '',
             value: str = 'yes', scales=SCALES, log=print, command: str = '',
             scorer: str = '') -> dict:
  if not label_spec:
    raise DlmError('--label is required, e.g. --label=keyword:dog')
  if any(w < 0 for w in scales):
    raise DlmError('guidance scales must be >= 0')
  p = common.preset(preset)
  c = common.diffusion_config(c, preset)
  c.data.label = label_spec
  labels.check_spec(label_spec)
  os.makedirs(workdir, exist_ok=True)
  scorer_workdir = common.ensure_scorer(c, workdir, scorer_workdir, log, scorer)
  c = common.on_data_of(c, scorer_workdir)
  log(f'== training the diffusion model with data.label={label_spec}')
  trained = common.train_run(c, os.path.join(workdir, 'diffusion'), log)
  run = checkpoint.load_run(trained['workdir'])
  scorer = common.load_scorer(scorer, scorer_workdir)
  quality.check_scorer(run, scorer, c.model.sequence_len)
  label = labels.build(label_spec, run.tokenizer)
  target = label.index(value)
  n, L = p['num_samples'], c.model.sequence_len
  val = data.val_tokens(run.workdir)
  ref_rows = metrics.reference_windows(val, max(n, 512), L)
  held_out = {**quality.row_quality(ref_rows[:n], run.tokenizer.bos_id, scorer, run.tokenizer),
              **success(ref_rows, label, target)}
  log(f'held-out windows: {held_out["success_rate"]:.1%} have {label_spec}={value}')
  rows = []
  for W in scales:
    tokens, used = sampling.sample_array(run, n, seed=1, label=value, guidance=W)
    q = quality.row_quality(tokens, run.tokenizer.bos_id, scorer, run.tokenizer,
                            reference=ref_rows[:n])
    rows.append({**used, 'guidance': W, **q, **success(tokens, label, target)})
    log(f'W={W:g}: success {rows[-1]["success_rate"]:.1%}, gen-PPL {q["gen_ppl"]:.1f}, '
        f'unigram entropy {q["unigram_entropy"]:.2f}')
  # The unguided and the guided sampler, alternated twice so drift on a shared machine
  # falls on both.
  speed = {'unguided': [], 'guided': []}
  for _ in range(2):
    speed['unguided'].append(quality.samples_per_second(run, n))
    speed['guided'].append(quality.samples_per_second(run, n, label=value, guidance=2.0))
  speed = {k: float(np.mean(v)) for k, v in speed.items()}
  speed['guided_cost_ratio'] = speed['unguided'] / speed['guided']
  results = {'preset': preset, 'command': command, 'label': label_spec, 'value': value,
             'workdir': trained['workdir'], 'scorer_workdir': scorer_workdir,
             'scorer': quality.describe_scorer(scorer),
             'train_wall_s': trained['train_wall_s'], 'num_samples': n,
             'held_out': held_out, 'scales': rows, 'speed': speed,
             'examples': _examples(run, value, scales)}
  common.write_json(os.path.join(workdir, 'results.json'), results)
  write_report(workdir, results)
  log(f'== wrote {os.path.join(workdir, "report.md")}')
  return results


def _examples(run, value: str, scales) -> dict:
  """One sample per scale, same seed, as text."""
  return {f'{W:g}': sampling.generate(run, 1, seed=2, label=value, guidance=W)[0]['text']
          for W in scales}


def write_report(workdir: str, r: dict) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  h = r['held_out']
  mauve = any('mauve' in x for x in r['scales'])  # with a GPT-2-family scorer
  table = report._table(
      ['guidance W', f'success ({r["label"]}={r["value"]})', 'gen-PPL', 'unigram entropy',
       'distinct-2', 'repetition'] + ['MAUVE'] * mauve,
      [[f'{x["guidance"]:g}', f'{x["success_rate"]:.1%} ± {x["success_stderr"]:.1%}',
        f'{x["gen_ppl"]:.1f}', f'{x["unigram_entropy"]:.3f}', f'{x["distinct_2"]:.3f}',
        f'{x["repetition_rate"]:.3f}'] + [report._f(x.get('mauve'))] * mauve for x in r['scales']]
      + [['held-out text', f'{h["success_rate"]:.1%} ± {h["success_stderr"]:.1%} (base rate)',
          f'{h["gen_ppl"]:.1f}', f'{h["unigram_entropy"]:.3f}', f'{h["distinct_2"]:.3f}',
          f'{h["repetition_rate"]:.3f}'] + ['–'] * mauve])
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
  W = [x['guidance'] for x in r['scales']]
  a1.errorbar(W, [x['success_rate'] for x in r['scales']],
              [x['success_stderr'] for x in r['scales']], marker='o', capsize=3, label='samples')
  a1.axhline(h['success_rate'], color='gray', ls='--', label='held-out (base rate)')
  a1.set(xlabel='guidance scale W', ylabel=f'share with {r["label"]}={r["value"]}', ylim=(0, 1.02))
  a1.legend()
  a2.plot(W, [x['gen_ppl'] for x in r['scales']], marker='o', label='samples')
  a2.axhline(h['gen_ppl'], color='gray', ls='--', label='held-out')
  a2.set(xlabel='guidance scale W', ylabel='gen-PPL (scorer)', yscale='log')
  a2.legend()
  plot = report._save(fig, workdir, 'guidance.png')
  s = r['speed']
  scorer = r.get('scorer', {})
  scored_by = (f"the GPT-2-family checkpoint `{scorer['name']}` on the retokenised text, MAUVE "
               "against the held-out windows (docs/scoring.md)" if 'name' in scorer
               else f"the scorer in `{r['scorer_workdir']}`")
  examples = '\n\n'.join(f'**W = {k}**\n\n> ' + v.replace('\n', ' ') for k, v in
                         r['examples'].items())
  text = f"""# Classifier-free guidance: {r['label']} = {r['value']}

`{r['command']}`

{r['num_samples']} samples per scale, temperature 1, the run's sampler and steps; success is
the label read off each sample's tokens by the function training used (± binomial standard
error); gen-PPL under {scored_by}.

{table}

{plot}

Speed at a batch of {r['num_samples']}: unguided {s['unguided']:.2f} samples/s, guided (W = 2,
two forward passes per step) {s['guided']:.2f} samples/s: guidance costs
**{s['guided_cost_ratio']:.2f}×** (W = 0 and W = 1 run one pass).

## One sample per scale (seed 2)

{examples}
"""
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(text)


if __name__ == '__main__':  # flags only for the command, so the module imports cleanly
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'The diffusion config.')
  _LABEL = flags.DEFINE_string('label', '', 'data.label to train with, e.g. keyword:dog.')
  _VALUE = flags.DEFINE_string('value', 'yes', 'The label value to steer towards.')
  _SCALES = flags.DEFINE_list('scales', [f'{w:g}' for w in SCALES], 'Guidance scales.')
  _WORKDIR = flags.DEFINE_string('workdir', 'runs/guidance', 'Where the run and report go.')
  _PRESET = flags.DEFINE_enum('preset', 'cpu', sorted(common.PRESETS), 'Experiment size.')
  _SCORER = flags.DEFINE_string('scorer_workdir', '', 'An already trained scorer run (with '
                                 '--scorer: only the run whose prepared data to share).')
  _CHECKPOINT = flags.DEFINE_string('scorer', '', 'Score with this GPT-2-family checkpoint '
                                    '(gpt2-large, a hub id or a local directory; adds MAUVE) '
                                    'instead of a self-trained AR scorer.')

  def _scales():
    try:
      return tuple(float(w) for w in _SCALES.value)
    except ValueError:
      raise DlmError(f'--scales={",".join(_SCALES.value)}: give numbers, e.g. 0,1,2,4')

  run_cli(lambda: guidance(
      common.required_config(_CONFIG), _LABEL.value, _WORKDIR.value, _PRESET.value,
      _SCORER.value, _VALUE.value, _scales(), log=functools.partial(print, flush=True),
      command='python -m dlm.experiments.guidance ' + ' '.join(sys.argv[1:]),
      scorer=_CHECKPOINT.value))
