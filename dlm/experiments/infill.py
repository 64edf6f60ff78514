"""Infilling: blank the middle of held-out windows and fill it, each diffusion family vs the AR
twin.

  python -m dlm.experiments.infill --config configs/quickstart.py --workdir runs/infill \
      --preset=cpu [--families=gaussian,masked,hybrid] [--scorer_workdir=runs/compare/scorer] \
      [--run_workdirs=gaussian=runs/compare/gaussian,ar=runs/compare/ar] [--gaps=8,16,32] \
      [--num_windows=64]

The windows are L tokens of the validation split, each starting at a document's `<|bos|>`
(the AR sampler always starts there), taken in order without overlap. For a gap of n tokens
the window keeps [0, a) and [a + n, L), a = (L - n) // 2, so both sides carry context. Each
diffusion family fills the gap seeing both sides (its `sample_tokens` with the window as known
tokens, held the way the run was trained for: `trained` with conditioning, `replace`
otherwise); the AR twin sees only the left side and continues for n tokens (`ar.sample_tokens`
with [0, a) as its prompt), after which the original right side is put back verbatim. All at
temperature 1 (the AR without nucleus truncation), one sample per window, the same windows and
seed; each diffusion family with its run's own sample settings.

The independent AR scorer (`common.ensure_scorer`) then scores every restored window, and the
original windows the same way: per window, the mean NLL per token over the whole window
(tokens 1 .. L - 1, each given the ones before it), over the gap, and over the n tokens after
the gap (where an AR fill pays for never having seen the right side), so each figure has its
standard error over windows; each family's difference to the AR twin is paired (same windows).
Also the fraction of gap tokens equal to the original's. `workdir/report.md`, its plot,
`results.json` and the restored windows (`fills.npz`) hold everything.

Training as in `compare` (the preset applied to --config, each family in workdir/<family>, the
twin in workdir/ar; finished runs are reused), except for the runs --run_workdirs names; the
scorer must share their tokenizer.
"""

import functools
import math
import os
import sys

import jax
import jax.numpy as jnp
import matplotlib.ticker
import numpy as np
from absl import flags
from ml_collections import config_flags

from dlm import checkpoint, data, families, quality, sampling, sharding
from dlm.errors import DlmError, run_cli
from dlm.families import ar
from dlm.experiments import common, report

plt = report.plt  # the Agg backend, as report.py sets it

REGIONS = ('window', 'gap', 'after', 'gap_after')
GAPS = {'tiny': (2, 4), 'cpu': (8, 16, 32), 'full': (8, 16, 32)}
NUM_WINDOWS = {'tiny': 8, 'cpu': 64, 'full': 256}
Z = 3.0  # a difference is read as a result beyond this many standard errors


def parse_gaps(text: str) -> tuple[int, ...]:
  """'8,16,32' -> (8, 16, 32); '' -> ()."""
  try:
    gaps = tuple(int(x) for x in text.split(',') if x.strip())
  except ValueError:
    raise DlmError(f'--gaps={text!r}: expected comma-separated positive integers, e.g. 8,16,32'
                   ) from None
  if any(n < 1 for n in gaps):
    raise DlmError(f'--gaps={text!r}: every gap must be >= 1 token')
  return tuple(dict.fromkeys(gaps))


def parse_workdirs(text: str) -> dict:
  """'gaussian=runs/g,ar=runs/a' -> {'gaussian': 'runs/g', 'ar': 'runs/a'}; '' -> {}."""
  out = {}
  for item in filter(None, (x.strip() for x in text.split(','))):
    name, _, path = item.partition('=')
    if name.strip() not in families.FAMILIES or not path.strip():
      raise DlmError(f'--run_workdirs={text!r}: expected family=workdir pairs, families among '
                     f'{",".join(families.FAMILIES)}')
    out[name.strip()] = path.strip()
  return out


def gap_start(L: int, n: int) -> int:
  return (L - n) // 2


def fits(L: int, n: int) -> bool:
  """A gap of n leaves context on both sides: <|bos|> and at least one token to the left,
  one to the right (n < L - 2)."""
  return n < L - 2


def bos_windows(val: np.ndarray, L: int, bos_id: int, num: int) -> np.ndarray:
  """Up to `num` windows (num, L) int32 of the stream, each starting at a `<|bos|>`, in order
  and not overlapping."""
  starts, end = [], -1
  for s in np.flatnonzero(np.asarray(val[:max(0, len(val) - L + 1)]) == bos_id):
    if s >= end:
      starts.append(s)
      end = s + L
      if len(starts) == num:
        break
  if not starts:
    raise DlmError(f'the validation split has no document start with {L} tokens after it')
  return np.stack([np.asarray(val[s:s + L]) for s in starts]).astype(np.int32)


def _batches(rows: np.ndarray, batch: int):
  """(index, rows padded to `batch` by repeating the last, count) for fixed-shape jitted calls."""
  for i in range(0, len(rows), batch):
    part = rows[i:i + batch]
    pad = np.repeat(part[-1:], batch - len(part), 0)
    yield i, np.concatenate([part, pad]), len(part)


def diffusion_fill(run, windows: np.ndarray, known: np.ndarray, key, temperature: float,
                   batch: int) -> tuple[np.ndarray, dict]:
  """(the windows with their unknown positions drawn by the diffusion run, its settings)."""
  N, L = windows.shape
  B = sharding.padded(min(batch, N))  # rows that split over the devices (`_batches` pads)
  # The run's own sample settings (sampler, steps, self-conditioning), as `sample_array` takes
  # them, with the known tokens set below.
  family = families.of(run.model_config)
  # a family without a softmax temperature (latent) takes it as its score temperature
  kwargs, settings = sampling.prepare(run, B, L, **{common.temperature_knob(run): temperature})
  settings.update(known_by='trained' if run.model_config.conditioning else 'replace')
  out = np.zeros_like(windows)
  both = np.concatenate([windows, known.astype(np.int32)], 1)
  for i, rows, count in _batches(both, B):
    tokens = family.sample_tokens(
        run.params, jax.random.fold_in(key, i), run.proposal, model=run.model,
        **{**kwargs, 'cond_tokens': jnp.asarray(rows[:, :L]),
           'known': jnp.asarray(rows[:, L:].astype(bool))})
    out[i:i + count] = np.asarray(tokens)[:count]
  return out, settings


def ar_fill(run, windows: np.ndarray, a: int, n: int, key, temperature: float,
            batch: int) -> tuple[np.ndarray, dict]:
  """(the windows with [a, a + n) drawn by the AR run from [0, a) and the original right side
  put back, its settings). The prefix is the sampler's own output (it forces the prompt)."""
  N, L = windows.shape
  B = min(batch, N)
  T = a + n  # nothing after the gap is drawn
  known = np.broadcast_to(np.arange(T) < a, (B, T))
  out = windows.copy()
  for i, rows, count in _batches(windows[:, :T], B):
    tokens = ar.sample_tokens(
        run.params, jax.random.fold_in(key, i), model=run.model, num_samples=B, seq_len=T,
        bos_id=run.tokenizer.bos_id, temperature=temperature, top_p=1.0,
        cond_tokens=jnp.asarray(rows), known=jnp.asarray(known))
    out[i:i + count, :T] = np.asarray(tokens)[:count]
  return out, dict(family=ar.NAME, temperature=temperature, top_p=1.0)


def _mean_se(x: np.ndarray) -> dict:
  x = np.asarray(x, np.float64)
  se = float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float('nan')
  return {'mean': float(np.mean(x)), 'se': se}


def regions(L: int, a: int, n: int) -> dict:
  """Token positions scored in each region: the window (1 .. L - 1), the gap, the (up to) n
  tokens after it, and both."""
  after = min(L, a + 2 * n)
  return {'window': (1, L), 'gap': (a, a + n), 'after': (a + n, after), 'gap_after': (a, after)}


def per_window(nll: np.ndarray, spans: dict) -> dict:
  """Each region's mean NLL per token, one value per window (nll[:, j] scores token j + 1)."""
  return {k: nll[:, s - 1:e - 1].mean(1) for k, (s, e) in spans.items()}


def measure(nll: np.ndarray, spans: dict, gap_equal: np.ndarray | None) -> tuple[dict, dict]:
  """(the summary of one row kind, its per-window values)."""
  values = per_window(nll, spans)
  if gap_equal is not None:
    values['exact'] = gap_equal.mean(1)
  out = {k: _mean_se(v) for k, v in values.items()}
  out['window']['ppl'] = math.exp(out['window']['mean'])
  out['gap']['ppl'] = math.exp(out['gap']['mean'])
  return out, values


def difference(x: np.ndarray, y: np.ndarray, name: str, lower_is_better: bool = True) -> dict:
  """The paired difference x - y (family `name` - the AR twin) over windows, with its standard
  error, z and verdict (a result beyond Z standard errors)."""
  d = _mean_se(np.asarray(x) - np.asarray(y))
  if d['se'] > 0:
    d['z'] = d['mean'] / d['se']
    signed = -d['z'] if lower_is_better else d['z']
    better = True if signed >= Z else False if signed <= -Z else None
  else:  # the same difference in every window (e.g. neither recovers any gap token)
    d['z'] = None
    better = None if d['mean'] == 0 else (d['mean'] < 0) == lower_is_better
  d['verdict'] = {True: f'{name} better', False: 'AR better',
                  None: 'no significant difference' if d['se'] > 0 else 'no difference'}[better]
  return d


def _load(workdir: str, name: str):
  """The run in workdir, checked to be of family `name`."""
  run = checkpoint.load_run(workdir)
  if run.model_config.family != name:
    raise DlmError(f'the {name} run in {workdir} is model.family={run.model_config.family}')
  return run


def _runs(c, workdir: str, preset: str, scorer_workdir: str, names: tuple, given: dict,
          log) -> tuple[dict, str]:
  """({family: workdir} for names and the twin, scorer workdir): given runs as they are, the
  others trained (or resumed) under workdir, on the data and tokenizer of the scorer (or of the
  first given diffusion run)."""
  workdirs = {name: given.get(name, '') for name in names + (ar.NAME,)}
  if all(workdirs.values()) and scorer_workdir:
    return workdirs, scorer_workdir
  source = next((workdirs[name] for name in names if workdirs[name]), '')
  if source:  # the other families, twin and scorer of the given run, on its data
    base = common.on_data_of(common.whole_budget(checkpoint.load_run(source).config), source)
  else:
    if c is None:
      raise DlmError('--config is required to train the runs not given (e.g. '
                     'configs/quickstart.py)')
    base = common.diffusion_config(c, preset)
  configs = common.family_configs(base, names)
  scorer_workdir = common.ensure_scorer(base, workdir, scorer_workdir, log)
  for name, wd in workdirs.items():
    if not wd:
      workdirs[name] = os.path.join(workdir, name)
      log(f'== training {name}')
      common.train_run(common.on_data_of(configs[name], scorer_workdir), workdirs[name], log)
  return workdirs, scorer_workdir


def _check(runs: dict, names: tuple, L: int, used: list, workdirs: dict) -> None:
  """Every family fills gaps and reads the windows; the twin reads up to the widest gap's end."""
  for name in names:
    if not families.of(runs[name].model_config).INFILL:
      raise DlmError(f'model.family={name} cannot fill a gap')
    if runs[name].model_config.sequence_len != L:
      raise DlmError(f'the {name} run reads {runs[name].model_config.sequence_len}-token '
                     f'windows, the {names[0]} run {L}: compare runs of one sequence length')
  widest = max(used, default=0)
  twin_len = runs[ar.NAME].model_config.sequence_len
  if widest and gap_start(L, widest) + widest > twin_len:
    raise DlmError(f'the AR run in {workdirs[ar.NAME]} reads {twin_len} tokens, fewer than the '
                   'windows need')


def infill(c, workdir: str, preset: str = 'cpu', scorer_workdir: str = '',
           names: tuple = common.DIFFUSION, run_workdirs: dict | None = None, gaps: tuple = (),
           num_windows: int = 0, temperature: float = 1.0, seed: int = 0, log=print,
           command: str = '') -> dict:
  """names: the diffusion families that fill the gaps beside the AR twin; run_workdirs:
  {family or ar: workdir} of runs already trained."""
  common.preset(preset)
  gaps = tuple(gaps) or GAPS[preset]
  num_windows = num_windows or NUM_WINDOWS[preset]
  if num_windows < 1:
    raise DlmError(f'--num_windows={num_windows}: must be >= 1')
  if temperature <= 0:
    raise DlmError(f'--temperature={temperature}: must be > 0')
  os.makedirs(workdir, exist_ok=True)
  workdirs, scorer_workdir = _runs(c, workdir, preset, scorer_workdir, names,
                                   run_workdirs or {}, log)
  scorer = checkpoint.load_run(scorer_workdir)
  runs = {name: _load(wd, name) for name, wd in workdirs.items()}
  L = runs[names[0]].model_config.sequence_len
  for run in runs.values():
    quality.check_scorer(run, scorer, L)
  used = [n for n in gaps if fits(L, n)]
  skipped = [n for n in gaps if not fits(L, n)]
  if skipped:
    log(f'note: skipping gaps {skipped}: a gap must be shorter than L - 2 = {L - 2} tokens')
  _check(runs, names, L, used, workdirs)

  windows = bos_windows(data.val_tokens(workdirs[names[0]]), L, scorer.tokenizer.bos_id,
                        num_windows)
  N = len(windows)
  if N < num_windows:
    log(f'note: the validation split holds only {N} non-overlapping windows from a document '
        f'start, fewer than the {num_windows} asked for')
  for name in names:
    if not runs[name].model_config.conditioning:
      log(f'note: the {name} run was trained without conditioning (diffusion.condition_fraction'
          '=0): the known tokens are held by replacement (RePaint-style), which follows them '
          'less closely')
  batch = runs[names[0]].config.eval.batch_size
  original_nll = quality.token_nll(scorer, windows, batch)
  key = jax.random.key(seed)
  results = {'preset': preset, 'command': command, 'seq_len': L, 'num_windows': N,
             'num_windows_asked': num_windows, 'temperature': temperature, 'seed': seed,
             'gaps_skipped': skipped, 'z': Z, 'families': list(names), 'twin': ar.NAME,
             'workdirs': {**workdirs, 'scorer': scorer_workdir},
             'steps': {k: r.step for k, r in runs.items()}, 'gaps': []}
  fills = {'original': windows}
  examples = {}
  try:
    from tqdm import tqdm
    bar = tqdm(used, desc='gaps', unit='gap', disable=None)
  except ImportError:
    bar = used
  for n in bar:
    a = gap_start(L, n)
    spans = regions(L, a, n)
    gap = (np.arange(L) >= a) & (np.arange(L) < a + n)
    k = jax.random.fold_in(key, n)
    restored, settings = {}, {}
    # Each run's key by its family, so a family's fills do not depend on the others compared.
    keys = {name: jax.random.fold_in(k, families.FAMILIES.index(name)) for name in runs}
    for name in names:
      restored[name], settings[name] = diffusion_fill(
          runs[name], windows, np.broadcast_to(~gap, windows.shape), keys[name], temperature,
          batch)
    restored[ar.NAME], settings[ar.NAME] = ar_fill(runs[ar.NAME], windows, a, n, keys[ar.NAME],
                                                   temperature, batch)
    entry = {'gap': n, 'start': a, 'regions': {r: list(s) for r, s in spans.items()},
             'settings': settings, 'rows': {}}
    values = {}
    entry['rows']['original'], values['original'] = measure(original_nll, spans, None)
    for name, rows in restored.items():
      nll = quality.token_nll(scorer, rows, batch)
      entry['rows'][name], values[name] = measure(
          nll, spans, rows[:, a:a + n] == windows[:, a:a + n])
      fills[f'{name}_gap_{n}'] = rows
    entry['minus_ar'] = {
        name: {r: difference(values[name][r], values[ar.NAME][r], name, r != 'exact')
               for r in REGIONS + ('exact',)} for name in names}
    results['gaps'].append(entry)
    examples[n] = _example(scorer.tokenizer, windows[0], restored, a, n)
    rows = entry['rows']
    log(f'gap {n:>3} at {a}: window NLL original {rows["original"]["window"]["mean"]:.3f}, '
        + ', '.join(f'{name} {rows[name]["window"]["mean"]:.3f} ± '
                    f'{rows[name]["window"]["se"]:.3f}' for name in restored)
        + '; ' + ', '.join(f'{name}: {entry["minus_ar"][name]["window"]["verdict"]}'
                           for name in names))
  results['examples'] = {str(n): e for n, e in examples.items()}
  np.savez_compressed(os.path.join(workdir, 'fills.npz'), **fills)
  common.write_json(os.path.join(workdir, 'results.json'), results)
  write_report(workdir, results)
  log(f'== wrote {os.path.join(workdir, "report.md")}')
  return results


def _example(tokenizer, window: np.ndarray, restored: dict, a: int, n: int) -> dict:
  """The first window's left side, each fill and the right side, as text."""
  text = lambda ids: tokenizer.decode(np.asarray(ids))  # noqa: E731
  return {'left': text(window[1:a]), 'right': text(window[a + n:]),
          'original': text(window[a:a + n]),
          'fills': {name: text(rows[0, a:a + n]) for name, rows in restored.items()}}


LABEL = {'window': 'window', 'gap': 'gap', 'after': 'after the gap', 'gap_after': 'gap + after'}
# How each family's known tokens were held (`settings['known_by']`).
HELD = {'trained': 'held as the run was trained to hold them (marked as known)',
        'replace': 'held by RePaint-style replacement: the run was trained without '
                   'conditioning (diffusion.condition_fraction = 0), so it never learnt to read '
                   'known tokens and only follows them through the corrupted state'}


def rows_of(r: dict) -> tuple[str, ...]:
  """The row kinds of a results dict: the original text, each family, the twin."""
  return ('original', *r['families'], r['twin'])


def _pm(x: dict, fmt='.3f') -> str:
  return f'{x["mean"]:{fmt}} ± {x["se"]:{fmt}}'


def _plot(workdir: str, r: dict) -> str:
  ns = [g['gap'] for g in r['gaps']]
  fig, axes = plt.subplots(1, 3, figsize=(13, 4))
  for ax, region in zip(axes[:2], ('window', 'gap_after')):
    for i, row in enumerate(rows_of(r)):
      ys = [g['rows'][row][region] for g in r['gaps']]
      ax.errorbar(ns, [y['mean'] for y in ys], yerr=[y['se'] for y in ys], fmt='o-' if i else 'k*--',
                  capsize=3, label=row if i else 'original text')
    ax.set(xlabel='gap (tokens)', ylabel='scorer NLL (nats/token)', xscale='log',
           title=f'Restored windows: {LABEL[region]}')
  ax = axes[2]
  for name in rows_of(r)[1:]:
    ys = [g['rows'][name]['exact'] for g in r['gaps']]
    ax.errorbar(ns, [y['mean'] for y in ys], yerr=[y['se'] for y in ys], fmt='o-', capsize=3,
                label=name)
  ax.set(xlabel='gap (tokens)', ylabel='fraction of gap tokens = original', xscale='log',
         title='Exact-token recovery')
  for ax in axes:
    ax.set_xticks(ns)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.legend(fontsize=8)
  return report._save(fig, workdir, 'infill_vs_gap.png')


def _verdict(d: dict) -> str:
  z = '–' if d['z'] is None else f'{d["z"]:+.1f}'
  return f'{d["mean"]:+.3f} ± {d["se"]:.3f} (z = {z}): {d["verdict"]}'


def _how(name: str, s: dict) -> str:
  """One family's fill settings: its sample options and how its known tokens were held."""
  options = ', '.join(f'{k} `{s[k]}`' for k in sampling.OPTIONS if k in s and k != 'temperature')
  return f'- `{name}`: {options or "its defaults"}; the known tokens {HELD.get(s["known_by"], "")}'


def write_report(workdir: str, r: dict) -> None:
  gaps, names, twin = r['gaps'], r['families'], r['twin']
  plot = _plot(workdir, r) if gaps else '(no gap fits)'
  rows, diffs, headline = [], [], []
  for g in gaps:
    for row in rows_of(r):
      x = g['rows'][row]
      rows.append([g['gap'], row, _pm(x['window']), f'{x["window"]["ppl"]:.2f}', _pm(x['gap']),
                   f'{x["gap"]["ppl"]:.2f}', _pm(x['after']), _pm(x['gap_after']),
                   _pm(x['exact']) if 'exact' in x else '–'])
    for name in names:
      d = g['minus_ar'][name]
      diffs.append([g['gap'], name] + [_verdict(d[k]) for k in REGIONS + ('exact',)])
    headline.append(f'gap {g["gap"]}: ' + ', '.join(
        f'{name} {g["minus_ar"][name]["window"]["verdict"]}' for name in names))
  skipped = (f'Skipped gaps {r["gaps_skipped"]}: a gap must be shorter than L - 2 = '
             f'{r["seq_len"] - 2} tokens.' if r['gaps_skipped'] else '')
  how = '\n'.join(_how(name, gaps[0]['settings'][name]) for name in names) if gaps else ''
  width = max(len(x) for x in rows_of(r) + ('left', 'right')) + 2
  examples = '\n\n'.join(
      f'**gap {n}**\n\n```\n' + '\n'.join(
          f'{k + ":":<{width}}{v!r}' for k, v in
          [('left', e['left']), ('original', e['original']), *e['fills'].items(),
           ('right', e['right'])]) + '\n```' for n, e in r['examples'].items())
  fewer = (f' (the validation split held only these; {r["num_windows_asked"]} were asked for)'
           if r['num_windows'] < r['num_windows_asked'] else '')
  runs = ', '.join(f'`{name}` (`{r["workdirs"][name]}`, step {r["steps"][name]})'
                   for name in names)
  text = f"""# Infilling: diffusion families vs the autoregressive twin

Command: `{r['command'] or 'dlm.experiments.infill.infill(...)'}` (preset `{r['preset']}`)

{r['num_windows']} held-out windows of {r['seq_len']} tokens{fewer}, each starting at a
document's `<|bos|>`. For a gap of n tokens at [a, a + n), a = (L - n) // 2, each diffusion
family ({runs}) fills the gap seeing both sides; the AR twin (`{r['workdirs'][twin]}`, step
{r['steps'][twin]}) sees only the left side, continues for n tokens, and the original right
side is put back verbatim. Each restored window, and the original, is scored by the independent
AR scorer (`{r['workdirs']['scorer']}`). One fill per window and model, the same windows,
temperature {r['temperature']:g} for all (the AR without top-p truncation; a family without a
softmax temperature takes it as its score temperature), seed {r['seed']}.
{skipped}

How each family filled:

{how}

**Headline** (whole-window NLL, each family − AR, paired over windows, a result beyond
{r['z']:g} standard errors): {'; '.join(headline) or 'no gap fits'}.

## Scorer NLL of the restored windows

Mean NLL per token (nats) ± its standard error over windows: over the whole window
(tokens 1 .. L − 1), the gap, the (up to) n tokens after the gap, where an AR fill pays for
never having seen the right side, and the two together; PPL = exp(mean NLL). "exact" is
the fraction of gap tokens equal to the original's. The original text is the reference:
a fill drawn from the data's distribution would score about as it does. Read a lower NLL
than the original's with the exact-token column and the examples: bland, repetitive fills
score low too.

{report._table(['gap', 'text', 'window NLL', 'window PPL', 'gap NLL', 'gap PPL',
                'after-gap NLL', 'gap + after NLL', 'exact'], rows)}

{plot}

## Each family − autoregressive, paired over windows

Negative NLL differences favour the family; positive exact-token differences do.

{report._table(['gap', 'family'] + [f'{LABEL[k]} NLL' for k in REGIONS] + ['exact'], diffs)}

## The first window, each fill

{examples}
"""
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(text)


if __name__ == '__main__':  # flags only for the command, so the module imports cleanly
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'The diffusion config compared.')
  _WORKDIR = flags.DEFINE_string('workdir', 'runs/infill', 'Where the runs and report go.')
  _PRESET = flags.DEFINE_enum('preset', 'cpu', sorted(common.PRESETS), 'Experiment size.')
  _SCORER = flags.DEFINE_string('scorer_workdir', '', 'An already trained scorer run.')
  _FAMILIES = flags.DEFINE_string('families', ','.join(common.DIFFUSION),
                                  'The diffusion families that fill, comma-separated.')
  _RUNS = flags.DEFINE_string('run_workdirs', '', 'Already trained runs, family=workdir pairs, '
                              'comma-separated (the twin as ar=...); the others are trained.')
  _GAPS = flags.DEFINE_string('gaps', '', 'Gap sizes, comma-separated (default per preset: '
                              + '; '.join(f'{k} {",".join(map(str, v))}' for k, v in GAPS.items())
                              + ').')
  _WINDOWS = flags.DEFINE_integer('num_windows', 0, 'Held-out windows (default per preset: '
                                  + ', '.join(f'{k} {v}' for k, v in NUM_WINDOWS.items()) + ').')
  _TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'Sampling temperature, every model.')
  _SEED = flags.DEFINE_integer('seed', 0, 'Seed of the fills.')
  run_cli(lambda: infill(
      _CONFIG.value, _WORKDIR.value, _PRESET.value, _SCORER.value,
      common.parse_families(_FAMILIES.value), parse_workdirs(_RUNS.value),
      parse_gaps(_GAPS.value), _WINDOWS.value, _TEMPERATURE.value, _SEED.value,
      log=functools.partial(print, flush=True),
      command='python -m dlm.experiments.infill ' + ' '.join(sys.argv[1:])))
