"""The compute multiplier: iso-FLOP scaling of each diffusion family against the AR twin.

  python -m dlm.experiments.scaling --config configs/quickstart.py --preset=cpu \
      [--families=gaussian,masked] [--epochs_family=masked] --workdir runs/scaling \
      [--config.data.path=...]

How much more training compute does a diffusion family need to reach the loss of an
autoregressive model on the same backbone and data? For each family (and the AR twin, always)
the preset's model sizes are trained with a warmup-stable-decay schedule (Hägele et al. 2024):
one run per size holds the learning rate constant, and each budget T of the preset is a
cool-down branch taken from its checkpoint at step T - 20% T and decayed linearly to zero over
the last 20 %, so one stable run yields every budget (the longest budget is the stable run
itself, continued). Each point is (training FLOPs, held-out bits/byte): the FLOPs counted from
the model's shapes for every stage the family trains (`train_flops` of the family: forward and
backward of every matmul, the output layer, attention and the self-conditioning pass), the
loss on the same held-out windows for every point (the AR twin's exact NLL, a diffusion
family's upper bound from `eval.bound_samples` draws, with its Monte-Carlo error).

`fits` then takes each family's lower envelope, fits L(C) = E + A C^-alpha with bootstrap
intervals over the points, and reads the multiplier C_family(L) / C_AR(L) at matched loss with
its interval, flagged wherever it is read outside the loss range both families measured. The
epochs axis trains AR and the best diffusion family (the lowest multiplier, or
--epochs_family) at one size on a fixed set of unique windows repeated 1 / 4 / 16 times
(`data.train_windows`; cool-down branches again), for the data-constrained regime.

Everything lands in --workdir: the shared data (`data/`), one directory per run, one JSON per
finished point (`points/`), `results.json`, `report.md` and its plots. Re-running the command
resumes: finished points are read back, not retrained, and an interrupted run resumes from its
last checkpoint. Families without a likelihood (the latent family) have no point on this axis
and are refused.
"""

import copy
import functools
import json
import math
import os
import shutil
import sys

import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from dlm import checkpoint, data, evaluate, families, train
from dlm.errors import DlmError, run_cli
from dlm.experiments import common, fits, scaling_report
from dlm.families import ar

# Hägele et al. 2024: a linear cool-down over the last 20 % of a run matches a cosine schedule
# tuned to that length, so branches off one constant-rate run stand for runs of every budget.
COOLDOWN = 0.2
PUBLISHED = [  # the figures researchers quote, beside ours in the report
    {'family': 'gaussian', 'multiplier': 64, 'source': 'Plaid (Gulrajani & Hashimoto 2023), '
     'continuous diffusion vs AR, OpenWebText'},
    {'family': 'gaussian', 'multiplier': 20, 'source': 'RePlaid (2026), same backbone; 27x '
     'without self-conditioning'},
    {'family': 'masked', 'multiplier': 14, 'source': 'RePlaid (2026), masked diffusion'},
    {'family': 'masked', 'multiplier': 16, 'source': 'Nie et al. 2024, masked diffusion '
     '(SlimPajama)'},
]
# Training settings every run of a grid shares: no periodic evaluations or samples (the grid
# evaluates each point itself), one step line per log_every.
QUIET = {'train.eval_every': 0, 'train.eval_samples': 0, 'train.eval_batches': 1,
         'train.warmup_ratio': 0.0, 'train.warmdown_ratio': COOLDOWN, 'train.final_lr_frac': 0.0}
PRESETS = {
    # The suite's smoke test: seconds per run, two sizes of one layer and a deeper one.
    'tiny': dict(config={'train.device_batch_size': 4, 'train.log_every': 100},
                 sizes=((1, 32), (1, 48), (2, 64)), budgets=(5, 10), ar_budgets=(5, 10),
                 epochs=(1, 2), unique_steps=5, eval_tokens=64, bound_samples=2, bootstrap=50),
    # A laptop: four sizes from 12k to 1.3M non-embedding parameters, steps of 1,024 tokens.
    # The AR twin reaches the diffusion families' losses some 10x sooner (at 25 steps its
    # smallest model is at 1.72 bits/byte on TinyStories, below every diffusion run of the
    # quickstart), so it trains 5 ... 160 steps and they 25 ... 800: the curves overlap in loss,
    # where the multiplier is read.
    'cpu': dict(config={'model.sequence_len': 64, 'model.diffusion_dim': 32,
                        'train.device_batch_size': 16, 'train.log_every': 100},
                sizes=((1, 32), (1, 64), (2, 128), (3, 192)),
                budgets=(25, 50, 100, 200, 400, 800), ar_budgets=(5, 10, 20, 40, 80, 160),
                epochs=(1, 4, 16), unique_steps=25, eval_tokens=4096, bound_samples=16,
                bootstrap=1000),
    # One 80 GB GPU, aimed at 10 minutes (not yet run on one): steps of 64 x 256 tokens, three
    # sizes x three budgets per family. Every run compiles its own train step (a branch's
    # schedule is part of it), so the 33 runs of two families' grid and the epochs axis are
    # the compilations to expect; the training itself is seconds per run at these sizes.
    'full': dict(config={'model.sequence_len': 256, 'train.device_batch_size': 64,
                         'train.log_every': 200, 'model.dtype': 'bfloat16'},
                 sizes=((4, 256), (6, 384), (8, 512)), budgets=(250, 500, 1000),
                 ar_budgets=(25, 50, 100), epochs=(1, 4, 16), unique_steps=60,
                 eval_tokens=65536, bound_samples=16, bootstrap=1000),
}


def preset(name: str) -> dict:
  if name not in PRESETS:
    raise DlmError(f'unknown preset {name!r}; expected one of {sorted(PRESETS)}')
  return PRESETS[name]


def parse_families(text: str) -> tuple[str, ...]:
  """The diffusion families of a scaling run: those with a likelihood to put on the loss axis."""
  names = common.parse_families(text)
  for name in names:
    if not families.get(name).LIKELIHOOD:
      raise DlmError(f'--families: {name} has no likelihood (the {name} family reports '
                     'reconstruction accuracy instead), so it has no point on the loss-vs-FLOPs '
                     'axis; its FLOPs per token are printed by python -m dlm.flops')
  return names


def branches(budgets) -> list[tuple[int, int]]:
  """(T, s) per budget: the branch's total steps and the stable step it leaves from."""
  out = []
  for T in sorted(budgets):
    s = T - round(COOLDOWN * T)
    if s < 1 or s == T:
      raise DlmError(f'a budget of {T} steps has no room for both a stable phase and a '
                     f'{COOLDOWN:.0%} cool-down: use budgets of 3 steps or more')
    out.append((T, s))
  return out


def sized(c, family: str, n_layer: int, n_embd: int):
  """c as `family` at one size of the grid (heads of 64 channels, at least one)."""
  c = copy.deepcopy(c)
  c.model.family = family
  c.model.n_layer, c.model.n_embd = n_layer, n_embd
  c.model.n_head = max(1, n_embd // 64)
  return c


def compute(c, vocab_size: int, tokens_per_step: int) -> float:
  """Training FLOPs of the run c describes: every stage's steps x tokens x FLOPs per token."""
  family = families.of(c.model)
  steps, per_token = family.stage_steps(c), family.train_flops(c, vocab_size)
  return float(sum(steps[k] * tokens_per_step * per_token[k] for k in steps))


def _reached(workdir: str, step: int) -> None:
  """Stop the grid when a run ended before `step` (a preemption: it checkpointed and returned)."""
  latest = checkpoint.Checkpoints(workdir, read_only=True).latest_step()
  if latest != step:
    raise DlmError(f'{workdir} stopped at step {latest}, before {step} (preempted): run the same '
                   'command to resume; finished points are kept')


class Grid:
  """The runs of one scaling experiment in `root`: the shared data, the held-out windows every
  point is scored on, and the finished points (one JSON each, read back on a resumed run)."""

  def __init__(self, c, root: str, p: dict, log):
    self.root, self.p, self.log = root, p, log
    os.makedirs(os.path.join(root, 'points'), exist_ok=True)
    source = os.path.join(root, 'data')
    if not os.path.exists(os.path.join(source, 'config.json')):
      log('== preparing the shared data')
      train.prepare(c, source, log=log)
    self.c = common.on_data_of(c, source)
    L = c.model.sequence_len
    self.windows = data.eval_windows(data.val_tokens(source, p['eval_tokens']), L,
                                     p['eval_tokens'])
    self.batch = min(c.eval.batch_size, len(self.windows))

  def point_path(self, key: str) -> str:
    return os.path.join(self.root, 'points', key + '.json')

  def done(self, key: str) -> dict | None:
    path = self.point_path(key)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def wsd(self, c, label: str, budgets, extra: dict) -> list[dict]:
    """Every budget of `budgets` for config c (one size of one family): the stable run in
    root/label/stable, the branches beside it; the points, finished ones read back."""
    plan = branches(budgets)
    keys = {T: f'{label.replace("/", "_")}_{T}' for T, _ in plan}
    points = {T: self.done(keys[T]) for T, _ in plan}
    if all(points.values()):
      return [points[T] for T, _ in plan]
    T_max, s_max = plan[-1]
    every = functools.reduce(math.gcd, [s for _, s in plan])
    base = common.apply(c, {**QUIET, 'train.num_iterations': T_max,
                            'train.checkpoint_every': every,
                            'train.keep_checkpoints': T_max // every + 2})
    stable = os.path.join(self.root, label, 'stable')
    quiet = lambda *a, **k: None
    latest = checkpoint.Checkpoints(stable, read_only=True).latest_step() if os.path.isdir(
        os.path.join(stable, 'checkpoints')) else None
    if latest is None or latest < s_max:
      self.log(f'-- {label}: the stable phase, {s_max} steps')
      train.train(base, stable, log=quiet, stop_after=s_max, final_eval=False)
      _reached(stable, s_max)
    for T, s in plan:
      if points[T]:
        continue
      if T == T_max:
        workdir, run_c = stable, base
      else:
        workdir = os.path.join(self.root, label, f'cooldown{T}')
        run_c = common.apply(base, {'train.num_iterations': T})
        if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
          # copied aside and renamed, so a kill mid-copy leaves no half checkpoint to resume
          partial = os.path.join(workdir, 'checkpoints.partial')
          shutil.rmtree(partial, ignore_errors=True)
          shutil.copytree(os.path.join(stable, 'checkpoints', str(s)),
                          os.path.join(partial, str(s)))
          os.replace(partial, os.path.join(workdir, 'checkpoints'))
      self.log(f'-- {label}: cool-down {s} -> {T} steps')
      train.train(run_c, workdir, log=quiet, final_eval=False)
      _reached(workdir, T)
      points[T] = self.measure(run_c, workdir, T, {**extra, 'steps': T})
      path = self.point_path(keys[T])  # whole or absent, whenever the process is killed
      common.write_json(path + '.tmp', points[T])
      os.replace(path + '.tmp', path)
    return [points[T] for T, _ in plan]

  def measure(self, c, workdir: str, T: int, extra: dict) -> dict:
    """The point of the checkpoint at step T: its FLOPs and held-out bits/byte."""
    run = checkpoint.load_run(workdir, T)
    # The budget is the only setting in which a size's branches differ, and nothing evaluated
    # reads it: one value for all, so the evaluation compiles once per size, not per point.
    cfg = ml_collections.FrozenConfigDict(common.apply(
        run.config, {'eval.bound_samples': self.p['bound_samples'], 'train.num_iterations': 1}))
    r = evaluate.evaluate(run.params, run.model, cfg, self.windows,
                          run.tokenizer.token_bytes(), self.batch, proposal=run.proposal,
                          discrete=False)
    tokens_per_step = common.tokens_per_step(c)
    point = {**extra, 'family': c.model.family, 'n_layer': c.model.n_layer,
             'n_embd': c.model.n_embd, 'workdir': workdir,
             'tokens': T * tokens_per_step,
             'flops': compute(c, run.model_config.vocab_size, tokens_per_step),
             'bits_per_byte': r['bits_per_byte'],
             'mc_stderr': r.get('bits_per_byte_mc_stderr', 0.0)}
    self.log(f'   {point["family"]} {c.model.n_layer}x{c.model.n_embd} {T} steps: '
             f'{point["flops"]:.3g} FLOPs, {point["bits_per_byte"]:.4f} bits/byte')
    return point


def grid(g: Grid, names, log) -> list[dict]:
  """Every size and budget of the preset for the AR twin and each family in `names`."""
  points = []
  for name in (ar.NAME, *names):
    for n_layer, n_embd in g.p['sizes']:
      c = sized(g.c, name, n_layer, n_embd)
      budgets = g.p['ar_budgets' if name == ar.NAME else 'budgets']
      points += g.wsd(c, f'{name}/{n_layer}x{n_embd}', budgets,
                      {'axis': 'compute', 'size': f'{n_layer}x{n_embd}'})
  return points


def band(fit: dict, boot: dict, C) -> dict:
  """The fitted curve over compute C and its 95 % bootstrap band (for the plot)."""
  C = np.asarray(C, dtype=float)
  curve = lambda E, A, a: E + A * C[None, :] ** -a
  draws = curve(*(np.asarray(boot[k], dtype=float)[:, None] for k in ('E', 'A', 'alpha')))
  return {'flops': C.tolist(), 'fit': curve(fit['E'], fit['A'], fit['alpha'])[0].tolist(),
          'lo': np.quantile(draws, 0.025, axis=0).tolist(),
          'hi': np.quantile(draws, 0.975, axis=0).tolist()}


def analyse(points: list[dict], names, p: dict) -> dict:
  """Per family: its envelope fit with bootstrap draws, and (diffusion) the multiplier at
  matched loss against the AR twin, along the loss range and at the headline loss."""
  out, boots = {}, {}
  for name in (ar.NAME, *names):
    own = [x for x in points if x['family'] == name and x['axis'] == 'compute']
    C, L = [x['flops'] for x in own], [x['bits_per_byte'] for x in own]
    out[name] = {'points': len(own)}
    try:
      fit = fits.fit(C, L)
      boots[name] = fits.bootstrap(C, L, n=p['bootstrap'], seed=0)
    except DlmError as e:
      out[name].update(fit=None, why=str(e))
      continue
    grid_C = np.geomspace(min(C) / 1.5, max(C) * 1.5, 40)
    out[name].update(fit=fit, losses=fit['loss_range'], band=band(fit, boots[name], grid_C),
                     bootstrap={k: boots[name][k] for k in boots[name]
                                if k not in ('E', 'A', 'alpha')})
  for name in names:
    r = out[name]
    why = r.get('why') or out[ar.NAME].get('why')
    if why:
      r.update(multiplier=None, interval=None, why_no_multiplier=why)
      continue
    try:
      r.update(fits.headline(r['fit'], out[ar.NAME]['fit'], boots[name], boots[ar.NAME]))
    except DlmError as e:
      r.update(multiplier=None, interval=None, why_no_multiplier=str(e))
      continue
    # across the loss range both measured, and a quarter of it beyond each end (flagged):
    # further out one of the curves is a power law with no run under it
    both = r['overlap'] or sorted([r['loss'], r['loss']])
    margin = max(0.25 * (both[1] - both[0]), 0.02)
    lo = max(min(r['losses'][0], out[ar.NAME]['losses'][0]), both[0] - margin)
    hi = min(max(r['losses'][1], out[ar.NAME]['losses'][1]), both[1] + margin)
    r['multiplier_vs_loss'] = fits.multiplier(
        r['fit'], out[ar.NAME]['fit'], boots[name], boots[ar.NAME],
        np.geomspace(lo, hi, 25).tolist())
  ranked = {n: out[n] for n in names if out[n].get('multiplier') is not None}
  return {'families': out, 'ranking': fits.rank(ranked) if len(ranked) > 1 else None}


def best_family(analysis: dict, names) -> str:
  """The diffusion family with the lowest headline multiplier (the first listed without one)."""
  have = [(analysis['families'][n]['multiplier'], n) for n in names
          if analysis['families'][n].get('multiplier') is not None]
  return min(have)[1] if have else names[0]


def epochs_axis(g: Grid, family: str, log) -> dict:
  """AR and `family` at the middle size on preset['unique_steps'] steps' worth of unique windows,
  repeated preset['epochs'] times (each a cool-down branch of one run per family)."""
  p = g.p
  n_layer, n_embd = p['sizes'][len(p['sizes']) // 2]
  out = {'family': family, 'size': f'{n_layer}x{n_embd}', 'epochs': list(p['epochs'])}
  for name in (ar.NAME, family):
    c = sized(g.c, name, n_layer, n_embd)
    c = common.apply(c, {'data.train_windows': p['unique_steps'] * common.windows_per_step(c)})
    budgets = [e * p['unique_steps'] for e in p['epochs']]
    pts = g.wsd(c, f'epochs/{name}', budgets, {'axis': 'epochs', 'size': out['size']})
    for x in pts:
      x['epochs'] = x['steps'] / p['unique_steps']
    out[name] = pts
  out['unique_tokens'] = p['unique_steps'] * out[ar.NAME][0]['tokens'] // out[ar.NAME][0]['steps']
  out['crossover'] = fits.crossover(out['epochs'], [x['bits_per_byte'] for x in out[ar.NAME]],
                                    [x['bits_per_byte'] for x in out[family]])
  return out


def scaling(c, workdir: str, preset_name: str, names, epochs_family: str = '', log=print,
            command: str = '', prepare_only: bool = False) -> dict | None:
  """Train the grid (resuming), fit, run the epochs axis, write results.json and report.md.
  prepare_only: tokenize the shared data into workdir/data and stop (to carry it to a GPU)."""
  p = preset(preset_name)
  if epochs_family and epochs_family not in names:
    raise DlmError(f'--epochs_family={epochs_family} is not one of --families '
                   f'({",".join(names)})')
  c = common.apply(c, p['config'])
  os.makedirs(workdir, exist_ok=True)
  g = Grid(c, workdir, p, log)
  if prepare_only:
    log(f'== the shared data is in {os.path.join(workdir, "data")}; run the same command '
        'without --prepare_only to train')
    return None
  log(f'== the grid: {1 + len(names)} families x {len(p["sizes"])} sizes x '
      f'{len(p["budgets"])} budgets (steps {",".join(map(str, p["ar_budgets"]))} for ar, '
      f'{",".join(map(str, p["budgets"]))} for the others)')
  points = grid(g, names, log)
  analysis = analyse(points, names, p)
  family = epochs_family or best_family(analysis, names)
  log(f'== the epochs axis: ar and {family}, {"/".join(map(str, p["epochs"]))} epochs')
  epochs = epochs_axis(g, family, log)
  results = {'preset': preset_name, 'command': command, 'cooldown': COOLDOWN,
             'bound_samples': p['bound_samples'], 'eval_tokens': int(g.windows.size),
             'sizes': [f'{a}x{b}' for a, b in p['sizes']], 'budgets': list(p['budgets']),
             'ar_budgets': list(p['ar_budgets']),
             'points': points, **analysis, 'epochs': epochs, 'published': PUBLISHED}
  common.write_json(os.path.join(workdir, 'results.json'), results)
  scaling_report.write(workdir, results)
  log(f'== wrote {os.path.join(workdir, "report.md")}')
  return results


if __name__ == '__main__':  # flags only for the command, so the module imports cleanly
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'The config whose backbone, data '
                                            'and optimiser every run shares.')
  _WORKDIR = flags.DEFINE_string('workdir', 'runs/scaling', 'Where the runs and report go.')
  _PRESET = flags.DEFINE_enum('preset', 'cpu', sorted(PRESETS), 'Experiment size.')
  _FAMILIES = flags.DEFINE_string('families', 'gaussian,masked',
                                  'The diffusion families measured against the AR twin.')
  _EPOCHS = flags.DEFINE_string('epochs_family', '', 'The diffusion family of the epochs axis '
                                '(default: the one with the lowest multiplier).')
  _PREPARE = flags.DEFINE_bool('prepare_only', False, 'Only tokenize the shared data (e.g. here, '
                               'before carrying the workdir to a GPU machine).')
  run_cli(lambda: scaling(
      common.required_config(_CONFIG), _WORKDIR.value, _PRESET.value,
      parse_families(_FAMILIES.value), _EPOCHS.value, log=functools.partial(print, flush=True),
      command='python -m dlm.experiments.scaling ' + ' '.join(sys.argv[1:]),
      prepare_only=_PREPARE.value))
