"""report.md and its PNG plots, from the results dicts of the experiment commands.

Every diffusion bound is printed with its standard error over sequences (±) and the
Monte-Carlo error of its draws (MC ±); a bound whose MC error is too large for the comparison
it is part of carries `significance`'s flag instead of a verdict.
"""

import math
import os

import matplotlib
import matplotlib.ticker
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from dlm.experiments import common, significance  # noqa: E402

QUALITY = ('gen_ppl', 'unigram_entropy', 'distinct_1', 'distinct_2', 'distinct_3', 'distinct_4',
           'repetition_rate', 'boundary_rate', 'first_document_length')


def _f(x, fmt='.3f') -> str:
  return '–' if x is None else f'{x:{fmt}}'


def _table(header: list[str], rows: list[list]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
  return '\n'.join(lines)


def _save(fig, workdir: str, name: str) -> str:
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, name), dpi=110)
  plt.close(fig)
  return f'![{name}]({name})'


def _quality_row(label: str, q: dict) -> list:
  return [label] + [_f(q.get(k), '.2f' if k in ('gen_ppl', 'first_document_length') else '.3f')
                    for k in QUALITY]


def _settings(q: dict) -> str:
  """How diffusion samples were drawn, from a quality dict's settings."""
  return (f'sampler `{q["sampler"]}`, {q["num_steps"]} steps, self-conditioning '
          f'`{q["self_condition"]}`, allocation `{q["allocation"]}`')


def _bound(f: dict, prefix: str = '', per_byte: bool = False) -> str:
  """'x ± se (MC ±mc)' of an evaluate() dict, in bits per token or per byte."""
  scale = f['eval_tokens'] / f['eval_bytes'] if per_byte else 1.0
  x = f[f'{prefix}bits_per_byte' if per_byte else f'{prefix}bits_per_token']
  se = f[f'{prefix}bits_per_token_stderr'] * scale
  mc = f.get(f'{prefix}bits_per_token_mc_stderr')
  return f'{x:.3f} ± {se:.3f}' + ('' if mc is None else f' (MC ±{mc * scale:.3f})')


def _error_bits_per_byte(f: dict) -> float:
  """Sequence and MC errors combined, in bits per byte (for error bars)."""
  mc = f.get('bits_per_token_mc_stderr') or 0.0
  return math.sqrt(f['bits_per_token_stderr'] ** 2 + mc ** 2) * f['eval_tokens'] / f['eval_bytes']


def _plot_losses(workdir, named_curves: dict, name='loss_curves.png') -> str:
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, curve in named_curves.items():
    pts = [(r['step'], r['loss']) for r in curve if 'loss' in r]
    if pts:
      ax.plot(*zip(*pts), label=label)
  ax.set(xlabel='step', ylabel='training loss (nats/token)', title='Training loss')
  ax.legend()
  return _save(fig, workdir, name)


def _values(xs) -> np.ndarray:
  return np.array([np.nan if x is None else x for x in xs], float)


def _plot_ce_vs_logsnr(workdir, curves: dict, training: bool, name='ce_vs_logsnr.png') -> str:
  """Cross-entropy per token vs per-token log-SNR (lambda + ln d, so runs of different
  diffusion dims line up, `dlm.noise`), with each run's proposal density q on a twin axis.
  curves: label -> {'heldout': {logsnr, ce}, 'train': a ce_vs_logsnr record or None,
  'diffusion_dim'}. training: also draw the running training curve."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  qax = ax.twinx()
  for i, (label, c) in enumerate(curves.items()):
    shift, color = math.log(c['diffusion_dim']), f'C{i}'
    h, t = c['heldout'], c['train']
    ax.plot(_values(h['logsnr']) + shift, _values(h['ce']), 'o-', ms=3, color=color,
            label=f'{label}: held-out (bound draws)')
    if t and training:
      ax.plot(_values(t['logsnr']) + shift, _values(t['ce']), '-', color=color, alpha=0.45,
              label=f'{label}: training (running)')
    if t:
      qax.plot(_values(t['logsnr']) + shift, _values(t['q']), ':', color=color,
               label=f'{label}: proposal q')
  ax.set(xlabel='per-token log-SNR  λ + ln d', ylabel='cross-entropy (nats/token)',
         title='Denoiser cross-entropy vs log-SNR')
  qax.set_ylabel('proposal density q(λ)')
  handles = [h for a in (ax, qax) for h in a.get_legend_handles_labels()[0]]
  ax.legend(handles=handles, fontsize=7)
  return _save(fig, workdir, name)


def _reference_quality(ar: dict) -> dict:
  """The AR twin's sample quality at temperature 1 (else its last temperature)."""
  sweep = ar['temperature_sweep']
  return next((q for q in sweep if q['temperature'] == 1.0), sweep[-1])


def write_compare(workdir: str, r: dict) -> None:
  fam = r['families']
  d, a = fam['diffusion'], fam['autoregressive']
  h = r['held_out']
  plots = {'loss': _plot_losses(workdir, {k: v['loss_curve'] for k, v in fam.items()})}

  fig, ax = plt.subplots(figsize=(6, 4))
  for k, v in fam.items():
    ax.plot([c['tokens'] for c in v['checkpoints']], [c['bits_per_byte'] for c in v['checkpoints']],
            'o-', label=f'{k} ({"exact" if k == "autoregressive" else "upper bound"})')
  ax.set(xlabel='training tokens', ylabel='bits per byte', title='Held-out likelihood vs tokens')
  ax.legend()
  plots['bound'] = _save(fig, workdir, 'bound_vs_tokens.png')

  fig, ax = plt.subplots(figsize=(6, 4))
  for k, v in fam.items():
    s = v['temperature_sweep']
    ax.plot([q['unigram_entropy'] for q in s], [q['gen_ppl'] for q in s], 'o-', label=k)
    for q in s:
      ax.annotate(f'T={q["temperature"]}', (q['unigram_entropy'], q['gen_ppl']), fontsize=7)
  ax.plot([h['unigram_entropy']], [h['gen_ppl']], 'k*', markersize=12, label='held-out text')
  ax.set(xlabel='unigram entropy per sample (bits)', ylabel='gen-PPL under the scorer',
         yscale='log', title='Quality vs diversity (temperature sweep)')
  ax.legend()
  plots['frontier'] = _save(fig, workdir, 'genppl_vs_entropy.png')

  steps = d['steps_sweep']
  ar_q = _reference_quality(a)
  fig, ax = plt.subplots(figsize=(6, 4))
  for name in dict.fromkeys(q['sampler'] for q in steps):
    qs = [q for q in steps if q['sampler'] == name]
    ax.plot([q['num_steps'] for q in qs], [q['gen_ppl'] for q in qs], 'o-', label=name)
  ax.axhline(ar_q['gen_ppl'], color='k', ls='--',
             label=f'autoregressive, T={ar_q["temperature"]:g}')
  ax.axhline(h['gen_ppl'], color='k', ls=':', label='held-out text')
  ax.set(xlabel='sampling steps', ylabel='gen-PPL', xscale='log', yscale='log',
         title='Diffusion sample quality vs sampling steps (T = 1)')
  ax.set_xticks(sorted({q['num_steps'] for q in steps}))
  ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  ax.legend()
  plots['steps'] = _save(fig, workdir, 'quality_vs_steps.png')

  plots['ce'] = _plot_ce_vs_logsnr(workdir, {'diffusion': {
      'heldout': d['final']['heldout_ce_vs_logsnr'], 'train': common.last_ce_curve(d['loss_curve']),
      'diffusion_dim': d['diffusion_dim']}}, training=True)

  fig, ax = plt.subplots(figsize=(6, 4))
  names = list(fam)
  ax.bar(names, [fam[k]['train_wall_s'] for k in names])
  ax.set(ylabel='seconds', title='Training wall time (same tokens)')
  plots['wall'] = _save(fig, workdir, 'wall_time.png')

  df, af = d['final'], a['final']
  flags = {p: significance.vs_exact(df, af, p) for p in ('', 'discrete_')}
  lik_rows = [
      ['autoregressive', f'= {_bound(af)}', f'= {_bound(af, per_byte=True)}', '–',
       f'{af["val_loss"]:.3f}', 'exact'],
      ['diffusion', f'≤ {_bound(df)}', f'≤ {_bound(df, per_byte=True)}',
       f'≤ {_bound(df, "discrete_", per_byte=True)} (T={df["discrete_steps"]})'
       + (' ⚠ (below)' if flags['discrete_'] else ''),
       f'{df["val_loss"]:.3f}', flags[''] or 'significant']]
  ratio = significance.bpb_ratio(df, af)
  headline = (f'{ratio:.3f}× — {flags[""]}' if flags[''] else
              f'{ratio:.3f}× (target ≤ {significance.BPB_TARGET}×: '
              f'{"met" if ratio <= significance.BPB_TARGET else "not met"})')
  few, many = significance.STEPS_PAIR
  step_ratios = '; '.join(
      f'`{k}` ' + ('not swept' if v is None else
                   f'{v:.2f} ({"met" if abs(v - 1) <= significance.STEPS_TARGET else "not met"})')
      for k, v in significance.steps_ratios(steps).items())

  q_rows = [_quality_row(f'{k}, T={q["temperature"]}', q) for k, v in fam.items()
            for q in v['temperature_sweep']]
  q_rows.append(_quality_row('held-out text', h))
  s_rows = [[q['sampler']] + _quality_row(f'{q["num_steps"]}', q) for q in steps]
  speed_rows = [[k, f'{v["n_layer"]} × {v["n_embd"]}', f'{v["non_embedding_params"]:,}',
                 f'{v["params"]:,}', f'{v["tokens_per_sec"]:,.0f}', f'{v["train_wall_s"]:.0f}',
                 f'{v["speed"]["samples_per_sec_batch_1"]:.2f}',
                 ' '.join(f'{x:.2f}' for b, x in v['speed'].items() if not b.endswith('_1'))]
                for k, v in fam.items()]
  text = f"""# Diffusion vs autoregressive: report

Command: `{r['command'] or 'dlm.experiments.compare.compare(...)'}` (preset `{r['preset']}`)

Both models share the backbone, data, tokenizer, optimiser and token budget
({d['tokens_per_step']:,} tokens per step, {df['step']} steps). The scorer for
gen-PPL is a separate AR model ({r['scorer']['n_layer']} layers × {r['scorer']['n_embd']},
{r['scorer']['non_embedding_params']:,} non-embedding parameters) trained on the same split;
it is neither of the two models compared.

**Headline.** Diffusion bits/byte ÷ AR bits/byte: {headline}.
Sampling steps, gen-PPL at {few} steps ÷ at {many} steps (target: within
{significance.STEPS_TARGET:.0%}): {step_ratios}.

## Model sizes and speed

{_table(['model', 'layers × width', 'non-embedding params', 'all params', 'train tokens/s',
         'train wall s', 'samples/s (batch 1)', 'samples/s (full batch)'], speed_rows)}

Diffusion samples use {_settings(d['temperature_sweep'][0])} (each step one forward pass over
the whole sequence, two with `fresh` self-conditioning); the AR model decodes with a key/value
cache, one token per forward.

{plots['wall']}

## Likelihood on the same held-out tokens

{df['eval_tokens']:,} tokens ({df['eval_bytes']:,} UTF-8 bytes). Each figure carries its
standard error over sequences (±); the diffusion bounds also the Monte-Carlo error of their
draws (MC ±, {r.get('bound_samples', '?')} draws per sequence). A diffusion bound is only read
as a result when its MC error is under a quarter of its gap to the AR NLL and, if below it, by
at least three combined standard errors; otherwise it is flagged.

{_table(['model', 'bits/token', 'bits/byte', 'discrete bound bits/byte', 'val loss (nats)',
         'verdict'], lik_rows)}

What each number is:

- autoregressive: {af['likelihood']}
- diffusion: {df['likelihood']}; the discrete bound is that of the {df['discrete_steps']}-step
  ancestral sampler{' — ' + flags['discrete_'] if flags['discrete_'] else ''}

{plots['loss']}

{plots['bound']}

## Cross-entropy vs log-SNR

The diffusion run's denoiser cross-entropy per log-SNR bin: on the training rows (running
average, the last record of metrics.jsonl that holds it) and on the held-out windows (the
bound's draws), with the noise proposal q the run trained, sampled and bounded with.

{plots['ce']}

## Sample quality

gen-PPL under the scorer, mean per-sample unigram entropy (bits), distinct-n over all samples,
seq-rep-4, the fraction of boundary tokens and the tokens before the first boundary; held-out
text in windows of the same number and length for reference. Read gen-PPL only together with
the entropy: low-entropy, repetitive text scores a low gen-PPL.

{_table(['samples'] + list(QUALITY), q_rows)}

{plots['frontier']}

### Diffusion: quality vs sampling steps (T = 1), every sampler

Self-conditioning `{steps[0]['self_condition'] if steps else '–'}`, allocation
`{steps[0]['allocation'] if steps else '–'}`. The AR twin at T = {ar_q['temperature']:g} scores
gen-PPL {ar_q['gen_ppl']:.2f}, held-out text {h['gen_ppl']:.2f}.

{_table(['sampler', 'steps'] + list(QUALITY), s_rows)}

{plots['steps']}

## One sample each

**diffusion**

```
{d['example']}
```

**autoregressive**

```
{a['example']}
```
"""
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(text)


def write_ablation(workdir: str, r: dict) -> None:
  variants, runs = r['variants'], r['runs']
  label = {k: ' / '.join(v['variants']) for k, v in runs.items()}  # a trained run's variants
  loss = _plot_losses(workdir, {label[k]: v['loss_curve'] for k, v in runs.items()})
  ce = _plot_ce_vs_logsnr(workdir, {label[k]: {
      'heldout': v['final']['heldout_ce_vs_logsnr'], 'train': common.last_ce_curve(v['loss_curve']),
      'diffusion_dim': v['diffusion_dim']} for k, v in runs.items()}, training=False)

  names = [v['name'] for v in variants]
  fig, (ax, gax) = plt.subplots(1, 2, figsize=(9, 4))
  ax.bar(names, [v['final']['bits_per_byte'] for v in variants],
         yerr=[_error_bits_per_byte(v['final']) for v in variants], capsize=4)
  ax.set(ylabel='bits per byte (upper bound)', title='Bound (± sequences and MC)')
  gax.bar(names, [v['quality']['gen_ppl'] for v in variants], color='C1')
  gax.set(ylabel='gen-PPL (T = 1)', yscale='log', title='Sample quality')
  for a in (ax, gax):
    a.tick_params(axis='x', labelrotation=30, labelsize=8)
  fig.suptitle(f'Ablation: {r["sweep"]}')
  bars = _save(fig, workdir, 'bits_per_byte.png')

  finals = {k: v['final'] for k, v in runs.items()}
  rows = []
  for v in variants:
    f, q = v['final'], v['quality']
    others = [x for k, x in finals.items() if k != v['run']]
    rows.append([v['name'], f'`{v["run"]}`', q['sampler'], q['num_steps'], q['self_condition'],
                 f'≤ {_bound(f, per_byte=True)}', f'≤ {_bound(f)}',
                 f'≤ {_bound(f, "discrete_", per_byte=True)} (T={f["discrete_steps"]})',
                 significance.vs_others(f, others) or ('–' if not others else 'significant'),
                 _f(q.get('gen_ppl'), '.2f'), f'{q["unigram_entropy"]:.3f}',
                 f'{q["repetition_rate"]:.3f}', f'{v["tokens_per_sec"]:,.0f}',
                 f'{v["train_wall_s"]:.0f}', f'{v["samples_per_sec"]:.2f}'])
  shared = [f'{label[k]} (`{k}`)' for k, v in runs.items() if len(v['variants']) > 1]
  text = f"""# Ablation: {r['sweep']}

Command: `{r['command'] or 'dlm.experiments.ablate.ablate(...)'}` (preset `{r['preset']}`)

Every trained variant sees the same data and number of tokens and is evaluated on the same
held-out windows; samples at temperature 1 are scored by the same AR scorer
(`{r['scorer_workdir']}`). {len(runs)} trained run(s) for {len(variants)} variants: variants
that differ only in sample settings share one trained model, and so its bound
{'(' + '; '.join(shared) + ')' if shared else ''}. Bits are upper bounds with the
standard error over sequences (±) and the Monte-Carlo error of the bound's draws (MC ±); the
discrete bound is at the trained run's sampling step count T. A bound within three combined
Monte-Carlo errors of the nearest other trained variant's bound is flagged: that ranking is noise.

{_table(['variant', 'trained run', 'sampler', 'steps', 'self-cond.', 'bits/byte',
         'bits/token', 'discrete bits/byte', 'verdict', 'gen-PPL', 'unigram entropy',
         'seq-rep-4', 'train tokens/s', 'train wall s', 'samples/s'], rows)}

What each trained run's bound describes:

{chr(10).join(f'- `{k}`: {v["final"]["likelihood"]}' for k, v in runs.items())}

{bars}

{loss}

## Cross-entropy vs log-SNR

Held-out denoiser cross-entropy per log-SNR bin of each trained run (the bound's draws), with
its noise proposal q (dotted, twin axis); per-token log-SNR, so runs of different diffusion
dims line up.

{ce}
"""
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(text)
