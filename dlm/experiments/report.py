"""report.md and its PNG plots, from the results dicts of the experiment commands."""

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

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


def _plot_losses(workdir, named_curves: dict, name='loss_curves.png') -> str:
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, curve in named_curves.items():
    pts = [(r['step'], r['loss']) for r in curve if 'loss' in r]
    if pts:
      ax.plot(*zip(*pts), label=label)
  ax.set(xlabel='step', ylabel='training loss (nats/token)', title='Training loss')
  ax.legend()
  return _save(fig, workdir, name)


def write_compare(workdir: str, r: dict) -> None:
  fam = r['families']
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
  h = r['held_out']
  ax.plot([h['unigram_entropy']], [h['gen_ppl']], 'k*', markersize=12, label='held-out text')
  ax.set(xlabel='unigram entropy per sample (bits)', ylabel='gen-PPL under the scorer',
         yscale='log', title='Quality vs diversity (temperature sweep)')
  ax.legend()
  plots['frontier'] = _save(fig, workdir, 'genppl_vs_entropy.png')

  steps = fam['diffusion']['steps_sweep']
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([q['num_steps'] for q in steps], [q['gen_ppl'] for q in steps], 'o-', label='diffusion')
  ax.axhline(fam['autoregressive']['temperature_sweep'][-1]['gen_ppl'], color='C1', ls='--',
             label='autoregressive, T=%g' % fam['autoregressive']['temperature_sweep'][-1][
                 'temperature'])
  ax.axhline(h['gen_ppl'], color='k', ls=':', label='held-out text')
  ax.set(xlabel='sampling steps', ylabel='gen-PPL', xscale='log', yscale='log',
         title='Sample quality vs sampling steps')
  ax.legend()
  plots['steps'] = _save(fig, workdir, 'quality_vs_steps.png')

  fig, ax = plt.subplots(figsize=(6, 4))
  names = list(fam)
  ax.bar(names, [fam[k]['train_wall_s'] for k in names])
  ax.set(ylabel='seconds', title='Training wall time (same tokens)')
  plots['wall'] = _save(fig, workdir, 'wall_time.png')

  d, a = fam['diffusion'], fam['autoregressive']
  lik_rows = []
  for k, v in fam.items():
    f = v['final']
    rel = '=' if k == 'autoregressive' else '≤'
    lik_rows.append([k, f'{rel} {f["bits_per_token"]:.3f} ± {f["bits_per_token_stderr"]:.3f}',
                     f'{rel} {f["bits_per_byte"]:.3f}',
                     _f(f.get('bits_per_token_mc_stderr'), '.4f'),
                     _f(f.get('discrete_bits_per_byte')) + (
                         f' (T={f["discrete_steps"]})' if 'discrete_steps' in f else ''),
                     f'{f["val_loss"]:.3f}'])
  q_rows = [_quality_row(f'{k}, T={q["temperature"]}', q) for k, v in fam.items()
            for q in v['temperature_sweep']]
  q_rows.append(_quality_row('held-out text', h))
  s_rows = [_quality_row(f'{q["num_steps"]} steps', q) for q in steps]
  speed_rows = [[k, f'{v["n_layer"]} × {v["n_embd"]}', f'{v["non_embedding_params"]:,}',
                 f'{v["params"]:,}', f'{v["tokens_per_sec"]:,.0f}', f'{v["train_wall_s"]:.0f}',
                 f'{v["speed"]["samples_per_sec_batch_1"]:.2f}',
                 ' '.join(f'{x:.2f}' for b, x in v['speed'].items() if not b.endswith('_1'))]
                for k, v in fam.items()]
  text = f"""# Diffusion vs autoregressive: report

Command: `{r['command'] or 'dlm.experiments.compare.compare(...)'}` (preset `{r['preset']}`)

Both models share the backbone, data, tokenizer, optimiser and token budget
({d['tokens_per_step']:,} tokens per step, {d['final']['step']} steps). The scorer for
gen-PPL is a separate AR model ({r['scorer']['n_layer']} layers × {r['scorer']['n_embd']},
{r['scorer']['non_embedding_params']:,} non-embedding parameters) trained on the same split;
it is neither of the two models compared.

## Model sizes and speed

{_table(['model', 'layers × width', 'non-embedding params', 'all params', 'train tokens/s',
         'train wall s', 'samples/s (batch 1)', 'samples/s (full batch)'], speed_rows)}

Diffusion samples use {d['temperature_sweep'][0].get('num_steps')} denoising steps
(each one forward pass over the whole sequence; self-conditioning reuses the previous step's estimate); the AR model
decodes with a key/value cache, one token per forward.

{plots['wall']}

## Likelihood on the same held-out tokens

{d['final']['eval_tokens']:,} tokens ({d['final']['eval_bytes']:,} UTF-8 bytes). AR: exact NLL.
Diffusion: the continuous-time variational bound (an upper bound on its NLL, ≤), with the
standard error over sequences (±) and the Monte-Carlo error of its low-discrepancy draws, and
the discrete bound of the T-step sampler.

{_table(['model', 'bits/token', 'bits/byte', 'MC stderr (bits/token)',
         'discrete bound bits/byte', 'val loss (nats)'], lik_rows)}

{plots['loss']}

{plots['bound']}

## Sample quality

gen-PPL under the scorer, mean per-sample unigram entropy (bits), distinct-n over all samples,
seq-rep-4, the fraction of boundary tokens and the tokens before the first boundary; held-out
text in windows of the same number and length for reference. Read gen-PPL only together with
the entropy: low-entropy, repetitive text scores a low gen-PPL.

{_table(['samples'] + list(QUALITY), q_rows)}

{plots['frontier']}

### Diffusion: quality vs sampling steps (T = 1)

{_table(['steps'] + list(QUALITY), s_rows)}

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
  variants = r['variants']
  loss = _plot_losses(workdir, {v['name']: v['loss_curve'] for v in variants})
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.bar([v['name'] for v in variants], [v['final']['bits_per_byte'] for v in variants])
  ax.set(ylabel='bits per byte (upper bound)', title=f'Ablation: {r["sweep"]}')
  bars = _save(fig, workdir, 'bits_per_byte.png')
  rows = [[v['name'], f'{v["final"]["bits_per_byte"]:.3f}',
           f'{v["final"]["bits_per_token"]:.3f} ± {v["final"]["bits_per_token_stderr"]:.3f}',
           _f(v['final'].get('discrete_bits_per_byte')), _f(v['quality'].get('gen_ppl'), '.2f'),
           f'{v["quality"]["unigram_entropy"]:.3f}', f'{v["quality"]["repetition_rate"]:.3f}',
           f'{v["tokens_per_sec"]:,.0f}', f'{v["train_wall_s"]:.0f}'] for v in variants]
  text = f"""# Ablation: {r['sweep']}

Command: `{r['command'] or 'dlm.experiments.ablate.ablate(...)'}` (preset `{r['preset']}`)

Every variant trains on the same data and number of tokens and is evaluated on the same held-out
windows; samples at temperature 1 are scored by the same AR scorer
(`{r['scorer_workdir']}`). Bits are upper bounds (continuous-time; the discrete bound is at the
variant's sampling step count).

{_table(['variant', 'bits/byte ≤', 'bits/token ≤', 'discrete bits/byte ≤', 'gen-PPL',
         'unigram entropy', 'seq-rep-4', 'train tokens/s', 'train wall s'], rows)}

{loss}

{bars}
"""
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(text)
