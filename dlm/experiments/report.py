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

from dlm import sampling  # noqa: E402
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


# With a GPT-2-family scorer: the entropy of the samples in its tokens, and MAUVE vs held-out text.
SCORER_QUALITY = ('scorer_unigram_entropy', 'mauve')


def _quality_keys(qs) -> tuple[str, ...]:
  return QUALITY + tuple(k for k in SCORER_QUALITY if any(k in q for q in qs))


def _quality_row(label: str, q: dict, keys=QUALITY) -> list:
  return [label] + [_f(q.get(k), '.2f' if k in ('gen_ppl', 'first_document_length') else '.3f')
                    for k in keys]


def _scorer_sentence(s: dict) -> str:
  """Which model gave gen-PPL: a GPT-2-family checkpoint (`name`) or the self-trained scorer."""
  if 'name' in s:
    return (f"The scorer for gen-PPL is the GPT-2-family checkpoint `{s['name']}` ({s['n_layer']} "
            f"layers × {s['n_embd']}): each sample is decoded to text and re-encoded by its "
            "tokenizer, and MAUVE compares the samples with held-out text on its features "
            "(docs/scoring.md); it is none of the models compared.")
  return (f"The scorer for gen-PPL is a separate AR model ({s['n_layer']} layers × "
          f"{s['n_embd']}, {s['non_embedding_params']:,} non-embedding parameters) trained on "
          "the same split; it is none of the models compared.")


def _settings(q: dict) -> str:
  """How samples were drawn: the sampling options a quality dict records (its family's own),
  and the noise allocation where the run has one."""
  swept = ('temperature', q.get('knob'))  # the sweep's own knob is in each row's label
  out = ', '.join(f'{k} `{q[k]}`' for k in sampling.OPTIONS if k in q and k not in swept)
  return out + (f', allocation `{q["allocation"]}`' if 'allocation' in q else '')


def _bound(f: dict, prefix: str = '', per_byte: bool = False) -> str:
  """'x ± se (MC ±mc)' of an evaluate() dict, in bits per token or per byte."""
  scale = f['eval_tokens'] / f['eval_bytes'] if per_byte else 1.0
  x = f[f'{prefix}bits_per_byte' if per_byte else f'{prefix}bits_per_token']
  se = f[f'{prefix}bits_per_token_stderr'] * scale
  mc = f.get(f'{prefix}bits_per_token_mc_stderr')
  return f'{x:.3f} ± {se:.3f}' + ('' if mc is None else f' (MC ±{mc * scale:.3f})')


def has_bound(f: dict) -> bool:
  """Whether an evaluate() dict holds a likelihood figure (a family without one, the latent
  family, gives `likelihood` saying why instead)."""
  return 'bits_per_byte' in f


def no_bound(f: dict) -> str:
  """'no bound (why)' for an evaluate() dict without a likelihood: the first clause of its
  `likelihood` text ('none: the autoencoder is deterministic, so ...')."""
  why = f.get('likelihood', '').removeprefix('none: ').split(',')[0].split(';')[0].strip()
  return f'no bound ({why})' if why else 'no bound'


def _bound_or_dash(f: dict, prefix: str = '', per_byte: bool = False, sign: str = '≤ ') -> str:
  return sign + _bound(f, prefix, per_byte) if f'{prefix}bits_per_byte' in f else '—'


def _percent(x) -> str:
  return '—' if x is None else f'{100 * x:.2f} %'


def _reconstruction(f: dict) -> list[str]:
  """Clean and noisy token accuracy and the noise std of an evaluate() dict's
  `reconstruction_accuracy` (a family with an autoencoder), '—' without one."""
  r = f.get('reconstruction_accuracy') or {}
  return [_percent(r.get('clean')), _percent(r.get('noisy')), _f(r.get('sigma'))]


def _knob(q: dict) -> str:
  """How a sweep point's temperature is labelled: T for the softmax temperature, 'score T' for
  a family swept over its score temperature (`compare.temperature_knob`)."""
  return 'score T' if q.get('knob') == 'score_temperature' else 'T'


def _stage_tokens(v: dict) -> str:
  """Training tokens of a run, per stage where it trains several ('autoencoder 1,024 +
  diffusion 1,024')."""
  stages = v.get('stage_tokens') or {}
  if len(stages) > 1:
    return ' + '.join(f'{k} {n:,}' for k, n in stages.items())
  return f'{v["train_tokens"]:,}' if 'train_tokens' in v else '–'


def _error_bits_per_byte(f: dict) -> float:
  """Sequence and MC errors combined, in bits per byte (for error bars)."""
  mc = f.get('bits_per_token_mc_stderr') or 0.0
  return math.sqrt(f['bits_per_token_stderr'] ** 2 + mc ** 2) * f['eval_tokens'] / f['eval_bytes']


def _plot_losses(workdir, named_curves: dict, name='loss_curves.png') -> str:
  """Training loss, and beside it the validation figure of each evaluation in metrics.jsonl:
  bits/byte (a diffusion family's bound, the AR twin's exact NLL), comparable across steps
  and runs where the held-out training objective is not (it follows the moving proposal)."""
  fig, (ax, val) = plt.subplots(1, 2, figsize=(11, 4))
  for i, (label, curve) in enumerate(named_curves.items()):
    pts = [(r['step'], r['loss']) for r in curve if 'loss' in r]
    if pts:
      ax.plot(*zip(*pts), label=label, color=f'C{i}')
    pts = [(r['step'], r['bits_per_byte']) for r in curve
           if 'loss' not in r and 'bits_per_byte' in r]
    if pts:
      val.plot(*zip(*pts), label=label, color=f'C{i}', marker='.')
  ax.set(xlabel='step', ylabel='training loss (nats/token)', title='Training loss')
  val.set(xlabel='step', ylabel='bits/byte (bound or exact NLL)', title='Validation')
  ax.legend()
  return _save(fig, workdir, name)


def _values(xs) -> np.ndarray:
  return np.array([np.nan if x is None else x for x in xs], float)


# How each corruption level is drawn: a log-SNR per token (lambda + ln d), so that runs of
# different diffusion dims line up (`dlm.noise`); other levels as they are.
LEVEL_AXIS = {'logsnr': 'per-token log-SNR  λ + ln d'}


def _shift(level: str, diffusion_dim: int) -> float:
  return math.log(diffusion_dim) if level in LEVEL_AXIS else 0.0


def _ce_panel(ax, curves: dict, training: bool) -> None:
  """Held-out cross-entropy per token against the corruption level of each run on one axis
  (runs of one level kind), with the running training curve (training=True) and the noise
  proposal q on a twin axis where the run logs them (`ce_vs_logsnr` records, log-SNR runs).
  curves: label -> {'heldout': {level, ce}, 'level', 'train': a record or None,
  'diffusion_dim'}; colours follow each curve's 'color'."""
  qax = None
  for label, c in curves.items():
    shift, color = _shift(c['level'], c['diffusion_dim']), c['color']
    h, t = c['heldout'], c['train'] if c['level'] in LEVEL_AXIS else None
    ax.plot(_values(h['level']) + shift, _values(h['ce']), 'o-', ms=3, color=color,
            label=f'{label}: held-out (bound draws)')
    if t and training:
      ax.plot(_values(t['logsnr']) + shift, _values(t['ce']), '-', color=color, alpha=0.45,
              label=f'{label}: training (running)')
    if t:
      qax = qax or ax.twinx()
      qax.plot(_values(t['logsnr']) + shift, _values(t['q']), ':', color=color,
               label=f'{label}: proposal q')
  level = next(iter(curves.values()))['level']
  ax.set(xlabel=LEVEL_AXIS.get(level, level), ylabel='cross-entropy (nats/token)')
  handles = ax.get_legend_handles_labels()[0]
  if qax:
    qax.set_ylabel('proposal density q')
    handles += qax.get_legend_handles_labels()[0]
  ax.legend(handles=handles, fontsize=7)


def _ce_curve(f: dict, loss_curve: list, diffusion_dim: int, color: str) -> dict:
  """A run's curve for `_ce_panel`, from its final evaluation and metrics.jsonl."""
  return {'heldout': f['heldout_ce_vs_level'], 'level': f['level'], 'diffusion_dim': diffusion_dim,
          'train': common.last_ce_curve(loss_curve), 'color': color}


def _plot_ce_vs_level(workdir, curves: dict, name='ce_vs_level.png') -> str:
  """One panel per kind of corruption level, every run of that kind in it (no training
  curves: with several runs they crowd the panel)."""
  kinds = list(dict.fromkeys(c['level'] for c in curves.values()))
  fig, axes = plt.subplots(1, len(kinds), figsize=(7 * len(kinds), 4.5), squeeze=False)
  for ax, kind in zip(axes[0], kinds):
    _ce_panel(ax, {k: c for k, c in curves.items() if c['level'] == kind}, training=False)
    ax.set_title(f'Denoiser cross-entropy vs {kind}')
  return _save(fig, workdir, name)


def _plot_families_ce(workdir, diffusion: dict, name='ce_vs_level.png') -> str:
  """One column per diffusion family: on top the held-out cross-entropy against the family's
  corruption level (with its training curve and proposal where it logs them), below the
  context probe's cross-entropy with clean and with corrupted context over the probe's level."""
  fig, axes = plt.subplots(2, len(diffusion), figsize=(6 * len(diffusion), 8), squeeze=False)
  for i, (k, v) in enumerate(diffusion.items()):
    top, bottom = axes[0, i], axes[1, i]
    _ce_panel(top, {k: _ce_curve(v['final'], v['loss_curve'], v['diffusion_dim'], f'C{i}')},
              training=True)
    top.set_title(f'{k}: held-out cross-entropy')
    probe = v['context']
    if probe:
      x = probe['level']
      bottom.plot(x, probe['clean'], 'o-', color=f'C{i}', label='clean context')
      bottom.plot(x, probe['corrupted'], 's--', color=f'C{i}', label='corrupted context')
      bottom.fill_between(x, probe['clean'], probe['corrupted'], color=f'C{i}', alpha=0.15,
                          label='context gain')
      bottom.legend(fontsize=7)
    bottom.set(xlabel='corruption level (0 clean … 1 fully corrupted)',
               ylabel='probe cross-entropy (nats/token)', title=f'{k}: context probe')
  return _save(fig, workdir, name)


def _reference_quality(v: dict) -> dict:
  """A family's sample quality at temperature 1 (else its last temperature)."""
  sweep = v['temperature_sweep']
  return next((q for q in sweep if q['temperature'] == 1.0), sweep[-1])


def _middle(levels: list) -> int:
  """The index of the context level the family table shows."""
  return len(levels) // 2


def _matched(m: dict, t: str = 'T') -> str:
  """gen-PPL at held-out text's entropy, its temperature (`t`: how the family's knob is
  labelled), and the flag of an unbracketed one."""
  if m['bracketed']:
    return f'{m["gen_ppl"]:.2f} ({t}*={m["temperature"]:.2f})'
  return (f'{m["gen_ppl"]:.2f} ({t}={m["temperature"]:g}) ⚠ held-out entropy {m["side"]} the '
          'sweep')


def _gain(probe: dict | None, i: int) -> str:
  if probe is None:
    return '–'
  se = probe['gain_stderr'][i]
  return f'{probe["gain"][i]:.3f}' + ('' if se is None else f' ± {se:.3f}')


def _family_rows(r: dict, flags: dict) -> list[list]:
  """The family table: one row per family, the twin's with an exact likelihood."""
  fam, h = r['families'], r['held_out']
  a = next(v for v in fam.values() if v['exact'])
  mid = _middle(r['context_levels'])
  rows = []
  for k, v in fam.items():
    f, q, s = v['final'], _reference_quality(v), v['speed']
    if has_bound(f):
      ratio = significance.bpb_ratio(f, a['final'])
      bound = [('= ' if v['exact'] else '≤ ') + _bound(f, per_byte=True),
               f'{ratio:.3f}×' + (' ⚠' if flags.get(k, {}).get('') else ''),
               '–' if v['exact'] else
               f'≤ {_bound(f, "discrete_", per_byte=True)} (T={f["discrete_steps"]})']
    else:
      bound = [no_bound(f), '—', '—']
    rows.append([
        k, *bound, f'{q["gen_ppl"]:.2f}', _matched(v['matched_entropy'], _knob(q)),
        f'{q["unigram_entropy"]:.3f}',
        _gain(v['context'], mid), f'{s["samples_per_sec_batch_1"]:.2f}',
        ' '.join(f'{x:.2f}' for b, x in s.items() if not b.endswith('_1'))])
  rows.append(['held-out text', '', '', '', f'{h["gen_ppl"]:.2f}', '',
               f'{h["unigram_entropy"]:.3f}', '', '', ''])
  return rows


def _plot_frontier(workdir: str, r: dict) -> str:
  fam, h = r['families'], r['held_out']
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for i, (k, v) in enumerate(fam.items()):
    s, m, color = v['temperature_sweep'], v['matched_entropy'], f'C{i}'
    ax.plot([q['unigram_entropy'] for q in s], [q['gen_ppl'] for q in s], 'o-', color=color,
            label=k)
    for q in s:
      ax.annotate(f'{_knob(q)}={q["temperature"]}', (q['unigram_entropy'], q['gen_ppl']),
                  fontsize=6)
    ax.plot([m['unigram_entropy']], [m['gen_ppl']], 'D', ms=8, color=color,
            mfc=color if m['bracketed'] else 'none',
            label=f'{k} at held-out entropy' + ('' if m['bracketed'] else ' (not bracketed)'))
  ax.plot([h['unigram_entropy']], [h['gen_ppl']], 'k*', markersize=12, label='held-out text')
  ax.axvline(h['unigram_entropy'], color='k', ls=':', lw=0.8)
  ax.set(xlabel='unigram entropy per sample (bits)', ylabel='gen-PPL under the scorer',
         yscale='log', title='Quality vs diversity (temperature sweep)')
  ax.legend(fontsize=7)
  return _save(fig, workdir, 'genppl_vs_entropy.png')


def _curve_name(family: str, q: dict) -> str:
  """A steps-sweep curve: the family and, where it has a choice, its sampler."""
  return f'{family} {q["sampler"]}' if 'sampler' in q else family


def _plot_steps(workdir: str, r: dict) -> str:
  fam, h = r['families'], r['held_out']
  a = _reference_quality(next(v for v in fam.values() if v['exact']))
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  swept = set()
  for k, v in fam.items():
    curves = {}
    for q in v['steps_sweep']:
      curves.setdefault(_curve_name(k, q), []).append(q)
    for name, qs in curves.items():
      ax.plot([q['num_steps'] for q in qs], [q['gen_ppl'] for q in qs], 'o-', label=name)
      swept.update(q['num_steps'] for q in qs)
  ax.axhline(a['gen_ppl'], color='k', ls='--', label=f'AR twin, T={a["temperature"]:g}')
  ax.axhline(h['gen_ppl'], color='k', ls=':', label='held-out text')
  ax.set(xlabel='sampling steps', ylabel='gen-PPL', xscale='log', yscale='log',
         title='Sample quality vs sampling steps (T = 1)')
  ax.set_xticks(sorted(swept))
  ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  ax.legend(fontsize=7)
  return _save(fig, workdir, 'quality_vs_steps.png')


def write_compare(workdir: str, r: dict) -> None:
  fam, h = r['families'], r['held_out']
  a = next(v for v in fam.values() if v['exact'])
  af = a['final']
  diffusion = {k: v for k, v in fam.items() if not v['exact']}
  plots = {'loss': _plot_losses(workdir, {k: v['loss_curve'] for k, v in fam.items()})}

  fig, ax = plt.subplots(figsize=(6, 4))
  for k, v in fam.items():  # a family without a likelihood has no point here (its table says why)
    if not has_bound(v['final']):
      continue
    ax.plot([c['tokens'] for c in v['checkpoints']], [c['bits_per_byte'] for c in v['checkpoints']],
            'o-', label=f'{k} ({"exact" if v["exact"] else "upper bound"})')
  ax.set(xlabel='training tokens', ylabel='bits per byte', title='Held-out likelihood vs tokens')
  ax.legend()
  plots['bound'] = _save(fig, workdir, 'bound_vs_tokens.png')
  plots['frontier'] = _plot_frontier(workdir, r)
  plots['steps'] = _plot_steps(workdir, r)
  plots['ce'] = _plot_families_ce(workdir, diffusion)

  fig, ax = plt.subplots(figsize=(6, 4))
  ax.bar(list(fam), [v['train_wall_s'] for v in fam.values()])
  ax.set(ylabel='seconds', title='Training wall time (same tokens)')
  plots['wall'] = _save(fig, workdir, 'wall_time.png')

  flags = {k: {p: significance.vs_exact(v['final'], af, p) for p in ('', 'discrete_')}
           for k, v in diffusion.items() if has_bound(v['final'])}
  headline, lik_rows = [], []
  for k, v in fam.items():
    f = v['final']
    if v['exact']:
      lik_rows.append([k, f'= {_bound(f)}', f'= {_bound(f, per_byte=True)}', '–',
                       f'{f["val_loss"]:.3f}', 'exact'])
      continue
    if not has_bound(f):
      headline.append(f'`{k}` {no_bound(f)}')
      lik_rows.append([k, '—', '—', '—', f'{f["val_loss"]:.3f}', no_bound(f)])
      continue
    flag = flags[k]
    ratio = significance.bpb_ratio(f, af)
    headline.append(f'`{k}` ' + (f'{ratio:.3f}× — {flag[""]}' if flag[''] else
                                 f'{ratio:.3f}× (target ≤ {significance.BPB_TARGET}×: '
                                 f'{"met" if ratio <= significance.BPB_TARGET else "not met"})'))
    lik_rows.append([k, f'≤ {_bound(f)}', f'≤ {_bound(f, per_byte=True)}',
                     f'≤ {_bound(f, "discrete_", per_byte=True)} (T={f["discrete_steps"]})'
                     + (' ⚠ (below)' if flag['discrete_'] else ''),
                     f'{f["val_loss"]:.3f}', flag[''] or 'significant'])
  few, many = significance.STEPS_PAIR
  step_ratios = '; '.join(
      f'`{_curve_name(k, {} if s is None else {"sampler": s})}` ' + (
          'not swept' if x is None else
          f'{x:.2f} ({"met" if abs(x - 1) <= significance.STEPS_TARGET else "not met"})')
      for k, v in diffusion.items() for s, x in significance.steps_ratios(v['steps_sweep']).items())
  levels = r['context_levels']
  mid = _middle(levels)
  context_rows = [[k] + [_gain(v['context'], i) for i in range(len(levels))]
                  for k, v in diffusion.items()]
  keys = _quality_keys([q for v in fam.values() for q in v['temperature_sweep']])
  q_rows = [_quality_row(f'{k}, {_knob(q)}={q["temperature"]}', q, keys) for k, v in fam.items()
            for q in v['temperature_sweep']]
  q_rows.append(_quality_row('held-out text', h, keys))
  m_rows = [[k, f'{m["temperature"]:.3f}', f'{m["unigram_entropy"]:.3f}', f'{m["gen_ppl"]:.2f}',
             'yes' if m['bracketed'] else f'no: held-out entropy {m["side"]} the sweep',
             v['temperature_sweep'][0].get('knob', 'temperature')]
            for k, v in fam.items() for m in [v['matched_entropy']]]
  s_rows = [[_curve_name(k, q)] + _quality_row(f'{q["num_steps"]}', q, keys)
            for k, v in diffusion.items() for q in v['steps_sweep']]
  speed_rows = [[k, f'{v["n_layer"]} × {v["n_embd"]}', f'{v["non_embedding_params"]:,}',
                 f'{v["params"]:,}', f'{v["tokens_per_sec"]:,.0f}', f'{v["train_wall_s"]:.0f}',
                 f'{v["speed"]["samples_per_sec_batch_1"]:.2f}',
                 ' '.join(f'{x:.2f}' for b, x in v['speed'].items() if not b.endswith('_1')),
                 _stage_tokens(v)]
                for k, v in fam.items()]
  recon_rows = [[k, *_reconstruction(v['final'])] for k, v in fam.items()
                if 'reconstruction_accuracy' in v['final']]
  knobs = [(k, v['temperature_sweep'][0]['knob']) for k, v in fam.items()
           if v['temperature_sweep'] and v['temperature_sweep'][0].get('knob', 'temperature')
           != 'temperature']
  knob_note = ''.join(
      f' `{k}` takes no softmax temperature (its tokens come from one decoder pass at the end):'
      f' its sweep turns `{knob}` over the same values instead (score T), the knob that trades'
      ' its diversity for fidelity, and its T* is a value of that knob.' for k, knob in knobs)
  settings = '\n'.join(f'- `{k}`: {_settings(v["temperature_sweep"][0])}'
                       for k, v in fam.items())
  described = '\n'.join(f'- `{k}` ({v["summary"]}): {v["final"]["likelihood"]}'
                        + ('' if v['exact'] or not has_bound(v['final'])
                           else f'; the discrete bound is that of its '
                           f'{v["final"]["discrete_steps"]}-step sampler')
                        + (' — ' + flags[k]['discrete_'] if flags.get(k, {}).get('discrete_')
                           else '') for k, v in fam.items())
  examples = '\n\n'.join(f'**{k}**\n\n```\n{v["example"]}\n```' for k, v in fam.items())
  text = f"""# Diffusion families vs the autoregressive twin: report

Command: `{r['command'] or 'dlm.experiments.compare.compare(...)'}` (preset `{r['preset']}`)

Every model shares the backbone, data, tokenizer, optimiser and token budget
({a['tokens_per_step']:,} tokens per step, {af['step']} steps, counted over all of a run's
stages: a family that trains an autoencoder first splits the same steps between the two): the
diffusion families {', '.join(f'`{k}`' for k in diffusion)} and the AR twin.
{_scorer_sentence(r['scorer'])}

**Headline.** Bits/byte ÷ the AR twin's: {'; '.join(headline)}.
Sampling steps, gen-PPL at {few} steps ÷ at {many} steps (target: within
{significance.STEPS_TARGET:.0%}): {step_ratios or 'no family takes sampling steps'}.

## Families side by side

Bits/byte on the same held-out tokens (= exact, ≤ upper bound; ± over sequences, MC ± the
bound's Monte-Carlo error; ⚠: that error is too large for the ratio to be read, see below), its
ratio to the AR twin's, the discrete bound of the family's sampler, gen-PPL of samples at
temperature 1 and at the unigram entropy of held-out text (T*: the temperature that reaches it,
interpolated over the sweep), the samples' unigram entropy at temperature 1, the context gain
(nats per probe token, at level {levels[mid]:g}) and samples per second.

{_table(['family', 'bits/byte', '÷ AR', 'discrete bound bits/byte', 'gen-PPL T=1',
         'gen-PPL at held-out entropy (T*)', 'unigram entropy T=1',
         f'context gain at {levels[mid]:g}', 'samples/s (batch 1)', 'samples/s (full batch)'],
        _family_rows(r, flags))}

## Model sizes and speed

{_table(['model', 'layers × width', 'non-embedding params', 'all params', 'train tokens/s',
         'train wall s', 'samples/s (batch 1)', 'samples/s (full batch)', 'training tokens'],
        speed_rows)}

Samples are drawn with each run's own settings:

{settings}

{plots['wall']}

## Likelihood on the same held-out tokens

{af['eval_tokens']:,} tokens ({af['eval_bytes']:,} UTF-8 bytes). Each figure carries its
standard error over sequences (±); the diffusion bounds also the Monte-Carlo error of their
draws (MC ±, {r.get('bound_samples', '?')} draws per sequence). A diffusion bound is only read
as a result when its MC error is under a quarter of its gap to the AR NLL and, if below it, by
at least three combined standard errors; otherwise it is flagged.

{_table(['model', 'bits/token', 'bits/byte', 'discrete bound bits/byte', 'val loss (nats)',
         'verdict'], lik_rows)}

What each number is:

{described}
{_reconstruction_section(recon_rows)}
{plots['loss']}

{plots['bound']}

## Cross-entropy vs corruption level

Top: each family's held-out denoiser cross-entropy against its own corruption level (the bound's
draws), with the running training curve and noise proposal q where the run logs them. Bottom:
the context probe (`context_probe` of each family): probe tokens of a window corrupted at a
level (0: clean, 1: fully corrupted), the rest of the window corrupted at the same level or left
clean; the gap between the two is what the family learns from context. Context gain (nats per
probe token) ± its standard error over batches:

{_table(['family'] + [f'level {x:g}' for x in levels], context_rows)}

{plots['ce']}

## Sample quality

gen-PPL under the scorer, mean per-sample unigram entropy (bits), distinct-n over all samples,
seq-rep-4, the fraction of boundary tokens and the tokens before the first boundary; held-out
text in windows of the same number and length for reference. Read gen-PPL only together with
the entropy: low-entropy, repetitive text scores a low gen-PPL.

{_table(['samples'] + list(keys), q_rows)}

At the held-out text's unigram entropy ({h['unigram_entropy']:.3f} bits), log gen-PPL and the
temperature interpolated linearly in entropy between the sweep's points (where the sweep does
not reach it, the nearest point, flagged).{knob_note}

{_table(['family', 'T*', 'unigram entropy', 'gen-PPL', 'bracketed', 'swept option'], m_rows)}

{plots['frontier']}

### Quality vs sampling steps (T = 1)

Each family that takes a number of steps, with each of its samplers. The AR twin at
T = {_reference_quality(a)['temperature']:g} scores gen-PPL {_reference_quality(a)['gen_ppl']:.2f},
held-out text {h['gen_ppl']:.2f}.

{_table(['sampler', 'steps'] + list(keys), s_rows)}

{plots['steps']}

## One sample each

{examples}
"""
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(text)


def _reconstruction_section(rows: list[list]) -> str:
  """The autoencoder's reconstruction, for the families that have one (nothing otherwise)."""
  if not rows:
    return ''
  return f"""
### Reconstruction (families with an autoencoder)

Held-out tokens the decoder gets back (argmax) from their clean latents, and from latents noised
to the log-SNR of the sampler's last step (noise std in standardised units), where diffusion
hands over to the decoder: what such a family reports in place of a likelihood.

{_table(['family', 'clean', 'noisy (last step)', 'noise std'], rows)}
"""


def write_ablation(workdir: str, r: dict) -> None:
  variants, runs = r['variants'], r['runs']
  label = {k: ' / '.join(v['variants']) for k, v in runs.items()}  # a trained run's variants
  loss = _plot_losses(workdir, {label[k]: v['loss_curve'] for k, v in runs.items()})
  ce = _plot_ce_vs_level(workdir, {label[k]: _ce_curve(v['final'], v['loss_curve'],
                                                       v['diffusion_dim'], f'C{i}')
                                    for i, (k, v) in enumerate(runs.items())})

  names = [v['name'] for v in variants]
  bounded = [v for v in variants if has_bound(v['final'])]
  rebuilt = [v for v in variants if 'reconstruction_accuracy' in v['final']]
  # One panel per kind of figure the variants have: the bound (families with a likelihood),
  # the autoencoder's reconstruction (families with one), gen-PPL and sampling speed.
  panels = (['bound'] if bounded else []) + (['reconstruction'] if rebuilt else []) + [
      'gen_ppl', 'speed']
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
  for ax, panel in zip(axes[0], panels):
    if panel == 'bound':
      ax.bar([v['name'] for v in bounded], [v['final']['bits_per_byte'] for v in bounded],
             yerr=[_error_bits_per_byte(v['final']) for v in bounded], capsize=4)
      ax.set(ylabel='bits per byte (upper bound)', title='Bound (± sequences and MC)')
    elif panel == 'reconstruction':
      x = np.arange(len(rebuilt))
      for j, (k, label) in enumerate((('clean', 'clean latents'),
                                      ('noisy', "sampler's last noise"))):
        ax.bar(x + (j - 0.5) * 0.4, [100 * v['final']['reconstruction_accuracy'][k]
                                     for v in rebuilt], 0.4, label=label, color=f'C{2 + j}')
      ax.set_xticks(x, [v['name'] for v in rebuilt])
      ax.set(ylabel='tokens reconstructed (%)', title='Autoencoder reconstruction')
      ax.legend(fontsize=7)
    elif panel == 'gen_ppl':
      ax.bar(names, [v['quality'].get('gen_ppl', np.nan) for v in variants], color='C1')
      ax.set(ylabel='gen-PPL (T = 1)', yscale='log', title='Sample quality')
    else:
      ax.bar(names, [v['samples_per_sec'] for v in variants], color='C4')
      ax.set(ylabel='samples / s', title='Sampling speed (full batch)')
    ax.tick_params(axis='x', labelrotation=30, labelsize=8)
  fig.suptitle(f'Ablation: {r["sweep"]}')
  bars = _save(fig, workdir, 'bits_per_byte.png')

  finals = {k: v['final'] for k, v in runs.items() if has_bound(v['final'])}
  extra = _quality_keys([v['quality'] for v in variants])[len(QUALITY):]
  recon = ['reconstruction clean', 'reconstruction noisy', 'noise std'] if rebuilt else []
  scored_by = (f"the GPT-2-family checkpoint `{r['scorer']['name']}` on the retokenised text, "
               "with MAUVE against held-out windows (docs/scoring.md)"
               + (f"; held-out windows of the samples' shape score gen-PPL "
                  f"{r['held_out']['gen_ppl']:.2f} at unigram entropy "
                  f"{r['held_out']['unigram_entropy']:.3f} bits" if r.get('held_out') else '')
               if 'name' in r.get('scorer', {})
               else f"the same AR scorer (`{r['scorer_workdir']}`)")
  rows = []
  for v in variants:
    f, q = v['final'], v['quality']
    others = [x for k, x in finals.items() if k != v['run']]
    if has_bound(f):
      bound = [f'≤ {_bound(f, per_byte=True)}', f'≤ {_bound(f)}',
               f'≤ {_bound(f, "discrete_", per_byte=True)} (T={f["discrete_steps"]})',
               significance.vs_others(f, others) or ('–' if not others else 'significant')]
    else:
      bound = ['—', '—', '—', no_bound(f)]
    rows.append([v['name'], f'`{v["run"]}`', q['family'], _settings(q), *bound,
                 *(_reconstruction(f) if recon else []),
                 _f(q.get('gen_ppl'), '.2f'), f'{q["unigram_entropy"]:.3f}',
                 f'{q["repetition_rate"]:.3f}', f'{v["tokens_per_sec"]:,.0f}',
                 f'{v["train_wall_s"]:.0f}', f'{v["samples_per_sec"]:.2f}',
                 _stage_tokens(v)]
                + [_f(q.get(k)) for k in extra])
  shared = [f'{label[k]} (`{k}`)' for k, v in runs.items() if len(v['variants']) > 1]
  text = f"""# Ablation: {r['sweep']}

Command: `{r['command'] or 'dlm.experiments.ablate.ablate(...)'}` (preset `{r['preset']}`)

Every trained variant sees the same data and number of tokens and is evaluated on the same
held-out windows; samples at temperature 1 are scored by {scored_by}.
{len(runs)} trained run(s) for {len(variants)} variants: variants
that differ only in sample settings share one trained model, and so its bound
{'(' + '; '.join(shared) + ')' if shared else ''}. Bits are upper bounds with the
standard error over sequences (±) and the Monte-Carlo error of the bound's draws (MC ±); the
discrete bound is at the trained run's sampling step count T. A bound within three combined
Monte-Carlo errors of the nearest other trained variant's bound is flagged: that ranking is noise.

{_table(['variant', 'trained run', 'family', 'sample settings', 'bits/byte',
         'bits/token', 'discrete bits/byte', 'verdict', *recon, 'gen-PPL', 'unigram entropy',
         'seq-rep-4', 'train tokens/s', 'train wall s', 'samples/s', 'training tokens', *extra],
        rows)}

What each trained run's bound describes:

{chr(10).join(f'- `{k}`: {v["final"]["likelihood"]}' for k, v in runs.items())}

{bars}

{loss}

## Cross-entropy vs corruption level

Held-out denoiser cross-entropy per bin of the corruption level of each trained run (the
bound's draws), one panel per kind of level, with the noise proposal q (dotted, twin axis)
where the run keeps one; log-SNR per token, so runs of different diffusion dims line up.

{ce}
"""
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(text)
