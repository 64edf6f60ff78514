"""Infilling: blank the middle of held-out windows and fill it, diffusion vs its AR twin.

  python -m dlm.experiments.infill --config configs/quickstart.py --workdir runs/infill \
      --preset=cpu [--scorer_workdir=runs/scorer] [--diffusion_workdir=runs/compare/diffusion \
      --ar_workdir=runs/compare/autoregressive] [--gaps=8,16,32] [--num_windows=64]

The windows are L tokens of the validation split, each starting at a document's `<|bos|>`
(the AR sampler always starts there), taken in order without overlap. For a gap of n tokens
the window keeps [0, a) and [a + n, L), a = (L - n) // 2, so both sides carry context. The
diffusion model fills the gap seeing both sides (`sampling.sample_tokens` with the window as
known tokens, held the way the run was trained for: `trained` with conditioning, `replace`
otherwise); the AR twin sees only the left side and continues for n tokens
(`sampling.sample_ar_tokens` with [0, a) as its prompt), after which the original right
side is put back verbatim. Both at temperature 1 (the AR without nucleus truncation), one
sample per window, the same windows and seed; diffusion with the run's sampler and steps.

The independent AR scorer (`common.ensure_scorer`) then scores every restored window, and the
original windows the same way: per window, the mean NLL per token over the whole window
(tokens 1 .. L - 1, each given the ones before it), over the gap, and over the n tokens after
the gap (where an AR fill pays for never having seen the right side), so each figure has its
standard error over windows; the diffusion - AR differences are paired (same windows).
Also the fraction of gap tokens equal to the original's. `workdir/report.md`, its plot,
`results.json` and the restored windows (`fills.npz`) hold everything.

Training as in `compare` (the preset applied to --config; finished runs are reused), unless
--diffusion_workdir / --ar_workdir name trained runs; the scorer must share their tokenizer.
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

from dlm import checkpoint, data, families, quality, sampling
from dlm.errors import DlmError
from dlm.families import ar
from dlm.experiments import common, report, twin

plt = report.plt  # the Agg backend, as report.py sets it

FAMILIES = ('diffusion', 'autoregressive')
ROWS = ('original',) + FAMILIES
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
  B = min(batch, N)
  # The run's own sample settings (sampler, steps, self-conditioning), as `sample_array` takes
  # them, with the known tokens set below.
  family = families.of(run.model_config)
  kwargs, settings = sampling.prepare(run, B, L, temperature=temperature)
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
  return out, dict(family='autoregressive', temperature=temperature, top_p=1.0)


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


def difference(x: np.ndarray, y: np.ndarray, lower_is_better: bool = True) -> dict:
  """The paired difference x - y (diffusion - AR) over windows, with its standard error, z and
  verdict (a result beyond Z standard errors)."""
  d = _mean_se(np.asarray(x) - np.asarray(y))
  if d['se'] > 0:
    d['z'] = d['mean'] / d['se']
    signed = -d['z'] if lower_is_better else d['z']
    d['verdict'] = ('diffusion better' if signed >= Z else 'autoregressive better'
                    if signed <= -Z else 'no significant difference')
  else:  # the same difference in every window (e.g. neither recovers any gap token)
    d['z'] = None
    better = d['mean'] < 0 if lower_is_better else d['mean'] > 0
    d['verdict'] = ('no difference' if d['mean'] == 0 else
                    'diffusion better' if better else 'autoregressive better')
  return d


def _load(workdir: str, causal: bool, what: str):
  run = checkpoint.load_run(workdir)
  if families.of(run.model_config).EXACT != causal:
    raise DlmError(f'the {what} run in {workdir} is '
                   f'{"not " if causal else ""}autoregressive (model.family)')
  return run


def _runs(c, workdir: str, preset: str, scorer_workdir: str, diffusion_workdir: str,
          ar_workdir: str, log) -> tuple[dict, str]:
  """({family: workdir}, scorer workdir): given runs as they are, the others trained (or
  resumed) under workdir, on the data and tokenizer of the scorer (or given diffusion run)."""
  workdirs = {'diffusion': diffusion_workdir, 'autoregressive': ar_workdir}
  if all(workdirs.values()) and scorer_workdir:
    return workdirs, scorer_workdir
  if diffusion_workdir:  # the twin and scorer of the given run, on its data
    dc = common.on_data_of(checkpoint.load_run(diffusion_workdir).config, diffusion_workdir)
  else:
    if c is None:
      raise DlmError('--config is required to train the runs not given (e.g. '
                     'configs/quickstart.py)')
    dc = common.apply(c, common.preset(preset)['config'])
    if dc.model.family == 'ar':
      dc.model.family = 'gaussian'
  configs = {'diffusion': dc, 'autoregressive': twin.ar_twin(dc)}
  scorer_workdir = common.ensure_scorer(dc, workdir, scorer_workdir, log)
  for family in FAMILIES:
    if not workdirs[family]:
      workdirs[family] = os.path.join(workdir, family)
      log(f'== training the {family} model')
      common.train_run(common.on_data_of(configs[family], scorer_workdir), workdirs[family], log)
  return workdirs, scorer_workdir


def infill(c, workdir: str, preset: str = 'cpu', scorer_workdir: str = '',
           diffusion_workdir: str = '', ar_workdir: str = '', gaps: tuple = (),
           num_windows: int = 0, temperature: float = 1.0, seed: int = 0, log=print,
           command: str = '') -> dict:
  common.preset(preset)
  gaps = tuple(gaps) or GAPS[preset]
  num_windows = num_windows or NUM_WINDOWS[preset]
  if num_windows < 1:
    raise DlmError(f'--num_windows={num_windows}: must be >= 1')
  if temperature <= 0:
    raise DlmError(f'--temperature={temperature}: must be > 0')
  os.makedirs(workdir, exist_ok=True)
  workdirs, scorer_workdir = _runs(c, workdir, preset, scorer_workdir, diffusion_workdir,
                                   ar_workdir, log)
  scorer = _load(scorer_workdir, True, 'scorer')
  runs = {'diffusion': _load(workdirs['diffusion'], False, 'diffusion'),
          'autoregressive': _load(workdirs['autoregressive'], True, 'autoregressive')}
  L = runs['diffusion'].model_config.sequence_len
  for run in runs.values():
    quality.check_scorer(run, scorer, L)
  used = [n for n in gaps if fits(L, n)]
  skipped = [n for n in gaps if not fits(L, n)]
  if skipped:
    log(f'note: skipping gaps {skipped}: a gap must be shorter than L - 2 = {L - 2} tokens')
  if max(used, default=0) and gap_start(L, max(used)) + max(used) > \
      runs['autoregressive'].model_config.sequence_len:
    raise DlmError(f'the AR run in {workdirs["autoregressive"]} reads '
                   f'{runs["autoregressive"].model_config.sequence_len} tokens, fewer than '
                   'the windows need')

  windows = bos_windows(data.val_tokens(workdirs['diffusion']), L, scorer.tokenizer.bos_id,
                        num_windows)
  N = len(windows)
  if N < num_windows:
    log(f'note: the validation split holds only {N} non-overlapping windows from a document '
        f'start, fewer than the {num_windows} asked for')
  if not runs['diffusion'].model_config.conditioning:
    log('note: the diffusion run was trained without conditioning (diffusion.condition_fraction'
        '=0): the known tokens are held by replacement (RePaint-style), which follows them less '
        'closely')
  batch = runs['diffusion'].config.eval.batch_size
  original_nll = quality.token_nll(scorer, windows, batch)
  key = jax.random.key(seed)
  results = {'preset': preset, 'command': command, 'seq_len': L, 'num_windows': N,
             'num_windows_asked': num_windows, 'temperature': temperature, 'seed': seed,
             'gaps_skipped': skipped, 'z': Z,
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
    restored = {}
    restored['diffusion'], d_settings = diffusion_fill(
        runs['diffusion'], windows, np.broadcast_to(~gap, windows.shape), jax.random.fold_in(k, 0),
        temperature, batch)
    restored['autoregressive'], a_settings = ar_fill(
        runs['autoregressive'], windows, a, n, jax.random.fold_in(k, 1), temperature, batch)
    entry = {'gap': n, 'start': a, 'regions': {r: list(s) for r, s in spans.items()},
             'settings': {'diffusion': d_settings, 'autoregressive': a_settings}, 'rows': {}}
    values = {}
    entry['rows']['original'], values['original'] = measure(original_nll, spans, None)
    for family in FAMILIES:
      nll = quality.token_nll(scorer, restored[family], batch)
      entry['rows'][family], values[family] = measure(
          nll, spans, restored[family][:, a:a + n] == windows[:, a:a + n])
      fills[f'{family}_gap_{n}'] = restored[family]
    entry['diffusion_minus_ar'] = {
        r: difference(values['diffusion'][r], values['autoregressive'][r], r != 'exact')
        for r in REGIONS + ('exact',)}
    results['gaps'].append(entry)
    examples[n] = _example(scorer.tokenizer, windows[0], restored, a, n)
    rows = entry['rows']
    log(f'gap {n:>3} at {a}: window NLL original {rows["original"]["window"]["mean"]:.3f}, '
        f'diffusion {rows["diffusion"]["window"]["mean"]:.3f} '
        f'± {rows["diffusion"]["window"]["se"]:.3f}, autoregressive '
        f'{rows["autoregressive"]["window"]["mean"]:.3f} '
        f'± {rows["autoregressive"]["window"]["se"]:.3f}; exact tokens diffusion '
        f'{rows["diffusion"]["exact"]["mean"]:.3f}, autoregressive '
        f'{rows["autoregressive"]["exact"]["mean"]:.3f}; '
        f'{entry["diffusion_minus_ar"]["window"]["verdict"]}')
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
          **{f: text(restored[f][0, a:a + n]) for f in FAMILIES}}


LABEL = {'window': 'window', 'gap': 'gap', 'after': 'after the gap', 'gap_after': 'gap + after'}


def _pm(x: dict, fmt='.3f') -> str:
  return f'{x["mean"]:{fmt}} ± {x["se"]:{fmt}}'


def _plot(workdir: str, r: dict) -> str:
  ns = [g['gap'] for g in r['gaps']]
  fig, axes = plt.subplots(1, 3, figsize=(13, 4))
  for ax, region in zip(axes[:2], ('window', 'gap_after')):
    for i, row in enumerate(ROWS):
      ys = [g['rows'][row][region] for g in r['gaps']]
      ax.errorbar(ns, [y['mean'] for y in ys], yerr=[y['se'] for y in ys], fmt='o-' if i else 'k*--',
                  capsize=3, label=row if i else 'original text')
    ax.set(xlabel='gap (tokens)', ylabel='scorer NLL (nats/token)', xscale='log',
           title=f'Restored windows: {LABEL[region]}')
  ax = axes[2]
  for family in FAMILIES:
    ys = [g['rows'][family]['exact'] for g in r['gaps']]
    ax.errorbar(ns, [y['mean'] for y in ys], yerr=[y['se'] for y in ys], fmt='o-', capsize=3,
                label=family)
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


def write_report(workdir: str, r: dict) -> None:
  gaps = r['gaps']
  plot = _plot(workdir, r) if gaps else '(no gap fits)'
  rows, diffs, headline = [], [], []
  for g in gaps:
    for row in ROWS:
      x = g['rows'][row]
      rows.append([g['gap'], row, _pm(x['window']), f'{x["window"]["ppl"]:.2f}', _pm(x['gap']),
                   f'{x["gap"]["ppl"]:.2f}', _pm(x['after']), _pm(x['gap_after']),
                   _pm(x['exact']) if 'exact' in x else '–'])
    d = g['diffusion_minus_ar']
    diffs.append([g['gap']] + [_verdict(d[k]) for k in REGIONS + ('exact',)])
    headline.append(f'gap {g["gap"]}: {d["window"]["verdict"]}')
  settings = gaps[0]['settings']['diffusion'] if gaps else {}
  skipped = (f'Skipped gaps {r["gaps_skipped"]}: a gap must be shorter than L - 2 = '
             f'{r["seq_len"] - 2} tokens.' if r['gaps_skipped'] else '')
  held = {'trained': 'held as the model was trained to hold them (clean embeddings marked '
                     'as known)',
          'replace': 'held by RePaint-style replacement: this run was trained without '
                     'conditioning (diffusion.condition_fraction = 0), so it never learnt to '
                     'read known tokens and only follows them through the noisy state'
          }.get(settings.get('known_by'), '')
  examples = '\n\n'.join(
      f'**gap {n}**\n\n```\nleft:           {e["left"]!r}\noriginal:       {e["original"]!r}\n'
      f'diffusion:      {e["diffusion"]!r}\nautoregressive: {e["autoregressive"]!r}\n'
      f'right:          {e["right"]!r}\n```' for n, e in r['examples'].items())
  fewer = (f' (the validation split held only these; {r["num_windows_asked"]} were asked for)'
           if r['num_windows'] < r['num_windows_asked'] else '')
  text = f"""# Infilling: diffusion vs autoregressive

Command: `{r['command'] or 'dlm.experiments.infill.infill(...)'}` (preset `{r['preset']}`)

{r['num_windows']} held-out windows of {r['seq_len']} tokens{fewer}, each starting at a
document's `<|bos|>`. For a gap of n tokens at [a, a + n), a = (L - n) // 2, the diffusion model
(`{r['workdirs']['diffusion']}`, step {r['steps']['diffusion']}) fills the gap seeing both
sides; the AR twin (`{r['workdirs']['autoregressive']}`, step {r['steps']['autoregressive']})
sees only the left side, continues for n tokens, and the original right side is put back
verbatim. Each restored window, and the original, is scored by the independent AR scorer
(`{r['workdirs']['scorer']}`). One fill per window and family, the same windows, temperature
{r['temperature']:g} for both (the AR without top-p truncation), seed {r['seed']}.
{skipped}

Diffusion: sampler `{settings.get('sampler', '–')}`, {settings.get('num_steps', '–')} steps,
self-conditioning `{settings.get('self_condition', '–')}`; the known tokens are {held}.

**Headline** (whole-window NLL, diffusion − AR, paired over windows, a result beyond
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

## Diffusion − autoregressive, paired over windows

Negative NLL differences favour diffusion; positive exact-token differences do.

{report._table(['gap'] + [f'{LABEL[k]} NLL' for k in REGIONS] + ['exact'], diffs)}

## The first window, each fill

{examples}
"""
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(text)


if __name__ == '__main__':  # flags only for the command, so the module imports cleanly
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'The diffusion config of the pair.')
  _WORKDIR = flags.DEFINE_string('workdir', 'runs/infill', 'Where the runs and report go.')
  _PRESET = flags.DEFINE_enum('preset', 'cpu', sorted(common.PRESETS), 'Experiment size.')
  _SCORER = flags.DEFINE_string('scorer_workdir', '', 'An already trained scorer run.')
  _DIFFUSION = flags.DEFINE_string('diffusion_workdir', '', 'An already trained diffusion run.')
  _AR = flags.DEFINE_string('ar_workdir', '', 'An already trained autoregressive run.')
  _GAPS = flags.DEFINE_string('gaps', '', 'Gap sizes, comma-separated (default per preset: '
                              + '; '.join(f'{k} {",".join(map(str, v))}' for k, v in GAPS.items())
                              + ').')
  _WINDOWS = flags.DEFINE_integer('num_windows', 0, 'Held-out windows (default per preset: '
                                  + ', '.join(f'{k} {v}' for k, v in NUM_WINDOWS.items()) + ').')
  _TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'Sampling temperature, both families.')
  _SEED = flags.DEFINE_integer('seed', 0, 'Seed of the fills.')
  common.run_cli(lambda: infill(
      _CONFIG.value, _WORKDIR.value, _PRESET.value, _SCORER.value, _DIFFUSION.value, _AR.value,
      parse_gaps(_GAPS.value), _WINDOWS.value, _TEMPERATURE.value, _SEED.value,
      log=functools.partial(print, flush=True),
      command='python -m dlm.experiments.infill ' + ' '.join(sys.argv[1:])))
