"""report.md and the plots of `dlm.experiments.scaling`, from its results dict alone."""

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {'ar': 'black', 'gaussian': 'tab:blue', 'masked': 'tab:orange', 'hybrid': 'tab:green',
          'latent': 'tab:purple'}
MARKERS = 'osD^v<>p'


def _save(fig, workdir: str, name: str) -> str:
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, name), dpi=110)
  plt.close(fig)
  return name


def _num(x) -> float:
  """None (an infinite or undefined multiplier) as a gap in a plotted line."""
  return float('nan') if x is None else x


def _fmt(x, digits: int = 3) -> str:
  return '–' if x is None else f'{x:.{digits}g}'


def _interval(r: dict) -> str:
  """'12.3× [8.1, 19.0] at 2.100 bits/byte' (flagged when extrapolated), or why there is none."""
  if r.get('multiplier') is None:
    return 'none (' + (r.get('why_no_multiplier') or 'no fit') + ')'
  lo, hi = (_fmt(v) if v is not None else '∞' for v in r['interval'])
  flag = ' (extrapolated: outside the loss range both measured)' if r['extrapolated'] else ''
  return f'{r["multiplier"]:.3g}× [{lo}, {hi}] at {r["loss"]:.3f} bits/byte{flag}'


def plot_loss_vs_flops(workdir: str, results: dict) -> str:
  fig, ax = plt.subplots(figsize=(7, 4.5))
  sizes = results['sizes']
  for name, r in results['families'].items():
    color = COLORS.get(name, None)
    own = [x for x in results['points'] if x['family'] == name]
    for i, size in enumerate(sizes):
      pts = sorted((x for x in own if x['size'] == size), key=lambda x: x['flops'])
      ax.errorbar([x['flops'] for x in pts], [x['bits_per_byte'] for x in pts],
                  yerr=[2 * x['mc_stderr'] for x in pts], color=color,
                  marker=MARKERS[i % len(MARKERS)], ms=4, lw=0.6, alpha=0.7,
                  label=f'{name} {size}')
    band = r.get('band')
    if band:
      ax.plot(band['flops'], band['fit'], color=color, lw=2)
      ax.fill_between(band['flops'], band['lo'], band['hi'], color=color, alpha=0.15)
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('training FLOPs')
  ax.set_ylabel('held-out bits/byte (diffusion: upper bound)')
  ax.set_title('loss vs compute: points per size, envelope fit E + A C^-α, 95% band')
  ax.legend(fontsize=6, ncol=2)
  return _save(fig, workdir, 'loss_vs_flops.png')


def plot_multiplier(workdir: str, results: dict) -> str | None:
  curves = {n: r['multiplier_vs_loss'] for n, r in results['families'].items()
            if r.get('multiplier_vs_loss')}
  if not curves:
    return None
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, curve in curves.items():
    color = COLORS.get(name, None)
    L = [x['loss'] for x in curve]
    ax.plot(L, [_num(x['multiplier']) for x in curve], color=color, lw=2, label=name)
    ax.fill_between(L, [_num(x['interval'][0]) for x in curve],
                    [_num(x['interval'][1]) for x in curve], color=color, alpha=0.15)
    out = [x for x in curve if x['extrapolated']]
    if out:
      ax.scatter([x['loss'] for x in out], [_num(x['multiplier']) for x in out], color=color,
                 marker='x', s=14)
  points = [x['multiplier'] for c in curves.values() for x in c if x['multiplier']]
  lows = [x['interval'][0] for c in curves.values() for x in c if x['interval'][0]]
  if points:  # an upper band that runs off to 1e16 would flatten the curves: cut at 100x
    ax.set_ylim(min(lows + points + [p['multiplier'] for p in results['published']]) / 3,
                max(points) * 100)
  for p in results['published']:
    ax.axhline(p['multiplier'], color=COLORS.get(p['family'], 'gray'), ls=':', lw=0.8)
  ax.set_yscale('log')
  ax.set_xlabel('matched held-out bits/byte')
  ax.set_ylabel('compute multiplier C_family / C_AR')
  ax.set_title('multiplier vs loss (× = extrapolated; dotted: published)')
  ax.legend(fontsize=8)
  return _save(fig, workdir, 'multiplier_vs_loss.png')


def plot_epochs(workdir: str, epochs: dict) -> str:
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for name in ('ar', epochs['family']):
    pts = epochs[name]
    ax.errorbar([x['epochs'] for x in pts], [x['bits_per_byte'] for x in pts],
                yerr=[2 * x['mc_stderr'] for x in pts], color=COLORS.get(name), marker='o',
                label=name)
  ax.set_xscale('log', base=2)
  ax.set_xlabel(f'epochs over {epochs["unique_tokens"]:,} unique tokens')
  ax.set_ylabel('held-out bits/byte')
  ax.set_title(f'data-constrained: size {epochs["size"]}')
  ax.legend()
  return _save(fig, workdir, 'loss_vs_epochs.png')


def write(workdir: str, results: dict) -> None:
  fams = results['families']
  diffusion = [n for n in fams if n != 'ar']
  plots = [plot_loss_vs_flops(workdir, results), plot_multiplier(workdir, results),
           plot_epochs(workdir, results['epochs'])]
  lines = ['# Compute multiplier: diffusion vs the AR twin at matched loss', '',
           f'Command: `{results["command"]}`', '']
  lines += ["**Headline** (training compute to reach the AR twin's held-out loss, as a "
            'multiple of the twin\'s; 95% bootstrap interval; the loss it is read at): '
            + '; '.join(f'**{n}** {_interval(fams[n])}' for n in diffusion) + '.', '']
  if results.get('ranking'):
    lines += ['**Ranking.** ' + '; '.join(p['verdict'] for p in results['ranking']['pairs'])
              + '.', '']
  lines += ['| family | ours (95% bootstrap interval) | published |', '|---|---|---|']
  for n in diffusion:
    pub = '; '.join(f'{p["multiplier"]}× ({p["source"]})' for p in results['published']
                    if p['family'] == n) or '–'
    lines.append(f'| {n} | {_interval(fams[n])} | {pub} |')
  lines += ['', 'A diffusion loss is an upper bound on its NLL (the AR twin\'s is exact), so a '
            'multiplier read from bounds is an upper bound on the multiplier of the true '
            'likelihoods. Published figures come from other data, tokenizers and scales: they '
            'place ours, they do not check it.', '',
            '## Fits of the lower envelope: L(C) = E + A·C^(−α)', '',
            'rms: the fit\'s root-mean-square residual on the envelope, in bits/byte; a parameter '
            '"at bound" sits on its constraint (E = 0, α at an end), where the points do not '
            'pin it: the curve is then not a power law over the measured range, and its '
            'multipliers rest on the form more than on the points.', '',
            '| family | E | A | α | rms | at bound | points | loss range (bits/byte) |',
            '|---|---|---|---|---|---|---|---|']
  for n, r in fams.items():
    f = r.get('fit')
    if f is None:
      lines.append(f'| {n} | no fit: {r["why"]} | | | | | {r["points"]} | |')
      continue
    lines.append(f'| {n} | {_fmt(f["E"])} | {_fmt(f["A"])} | {_fmt(f["alpha"])} | '
                 f'{f["rms"]:.3f} | {", ".join(f["at_bound"]) or "–"} | {r["points"]} | '
                 f'{r["losses"][0]:.3f} – {r["losses"][1]:.3f} |')
  lines += ['', f'Sizes {", ".join(results["sizes"])} (layers x width); budgets '
            f'{", ".join(map(str, results["budgets"]))} steps (the AR twin: '
            f'{", ".join(map(str, results["ar_budgets"]))}), each the last '
            f'{results["cooldown"]:.0%} a linear cool-down branched off one constant-rate run '
            f'per size; every point scored on the same {results["eval_tokens"]:,} held-out '
            f'tokens ({results["bound_samples"]} bound draws per window for diffusion).', '']
  lines += [f'![loss vs FLOPs]({plots[0]})', '']
  if plots[1]:
    lines += [f'![multiplier vs loss]({plots[1]})', '']
  e = results['epochs']
  lines += ['## Repeated data', '',
            f'{e["unique_tokens"]:,} unique tokens, size {e["size"]}, repeated '
            f'{"/".join(map(str, e["epochs"]))} times.', '',
            '| epochs | ar bits/byte | ' + e['family'] + ' bits/byte |', '|---|---|---|']
  for a, d in zip(e['ar'], e[e['family']]):
    lines.append(f'| {a["epochs"]:g} | {a["bits_per_byte"]:.4f} ± {a["mc_stderr"]:.4f} | '
                 f'{d["bits_per_byte"]:.4f} ± {d["mc_stderr"]:.4f} |')
  x = e['crossover']
  lines += ['', (f'Crossover: {e["family"]} falls below the AR twin at about {x["epochs"]:.3g} '
                 'epochs.' if x['epochs'] is not None else f'Crossover: none ({x["note"]}).'),
            '',
            f'![loss vs epochs]({plots[2]})', '',
            '## Points', '', '| family | size | steps | tokens | FLOPs | bits/byte |',
            '|---|---|---|---|---|---|']
  for p in results['points']:
    lines.append(f'| {p["family"]} | {p["size"]} | {p["steps"]} | {p["tokens"]:,} | '
                 f'{p["flops"]:.3g} | {p["bits_per_byte"]:.4f} ± {p["mc_stderr"]:.4f} |')
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
