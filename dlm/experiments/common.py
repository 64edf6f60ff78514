"""What the experiment commands share: presets, training a run, evaluating its checkpoints.

A preset scales an experiment without changing its code: `tiny` (the smoke test, seconds),
`cpu` (a laptop, minutes; it shrinks the model too), `full` (the config as given, for a GPU).
Overrides are `section.field` keys applied on top of the user's config.
"""

import copy
import json
import os
import time

import jax
import ml_collections
import numpy as np

from dlm import checkpoint, data, evaluate, families, train
from dlm.ar_configs import ar_twin, scorer_config
from dlm import config as config_lib
from dlm.errors import DlmError
from dlm.families import ar

SWEEP_STEPS = (8, 16, 32, 64, 128, 256, 512, 1024)  # sampling steps, for every sampler
# The families read against the AR twin: every one but the twin's own.
DIFFUSION = tuple(f for f in families.FAMILIES if f != ar.NAME)
PRESETS = {
    'tiny': dict(config={'train.num_iterations': 6, 'train.checkpoint_every': 3,
                         'train.keep_checkpoints': 5, 'train.eval_every': 0,
                         'eval.eval_tokens': 128, 'eval.batch_size': 4, 'eval.bound_samples': 2,
                         'sample.num_steps': 4, 'latent.stat_batches': 2},
                 num_samples=4, temperatures=(0.8, 1.0), num_steps=(2, 4)),
    'cpu': dict(config={'model.depth': 2, 'model.sequence_len': 64, 'model.diffusion_dim': 32,
                        'train.num_iterations': 500, 'train.device_batch_size': 16,
                        'train.log_every': 20, 'train.eval_every': 0,
                        'train.checkpoint_every': 125, 'train.keep_checkpoints': 5,
                        'eval.eval_tokens': 8192, 'eval.batch_size': 32, 'eval.bound_samples': 32,
                        'sample.num_steps': 64},
                # Temperatures down to 0.6, so the sweep usually brackets held-out text's
                # unigram entropy (`compare.matched_entropy`); steps to 256 (with 32, the
                # headline's pair), which keeps several families affordable on a laptop.
                num_samples=32, temperatures=(0.6, 0.7, 0.8, 0.9, 1.0),
                num_steps=(16, 32, 64, 256)),
    'full': dict(config={}, num_samples=64, temperatures=(0.6, 0.7, 0.8, 0.9, 1.0, 1.1),
                 num_steps=SWEEP_STEPS),
}


def preset(name: str) -> dict:
  if name not in PRESETS:
    raise DlmError(f'unknown preset {name!r}; expected one of {sorted(PRESETS)}')
  return PRESETS[name]


def apply(c, overrides: dict):
  c = copy.deepcopy(c)
  for key, value in overrides.items():
    section, field = key.split('.')
    c[section][field] = value
  return c


def diffusion_config(c, preset_name: str):
  """c under the preset, with the default diffusion family where c is the AR twin's (exact):
  the experiments read diffusion configs against their twin."""
  c = apply(c, preset(preset_name)['config'])
  if families.of(c.model).EXACT:
    c.model.family = 'gaussian'
  return c


def parse_families(text: str) -> tuple[str, ...]:
  """'gaussian,masked' -> ('gaussian', 'masked'); '' -> every diffusion family."""
  names = tuple(dict.fromkeys(x.strip() for x in text.split(',') if x.strip())) or DIFFUSION
  for name in names:
    if name not in DIFFUSION:
      raise DlmError(f'--families={text!r}: {name!r} is not a diffusion family; expected some '
                     f'of {",".join(DIFFUSION)} (the AR twin is always trained)')
  return names


def at_budget(c):
  """c spending its train.num_iterations batches in all, however many stages its family trains
  (`at_budget` of the family): every run of an experiment reads the same number of tokens."""
  return families.of(c.model).at_budget(c)


def whole_budget(c):
  """c with train.num_iterations its run's whole budget, the steps of all its stages
  (`stage_steps`): the inverse of `at_budget`, for configs read back from a trained run."""
  c = copy.deepcopy(c)
  c.train.num_iterations = sum(families.of(c.model).stage_steps(c).values())
  return c


def family_configs(c, names) -> dict:
  """{family: c with model.family set, at c's budget} for each of `names`, and under `ar` the AR
  twin of c's Gaussian config (`ar_configs.ar_twin`): one yardstick, whichever families are
  compared. Every run reads train.num_iterations batches of tokens in all (`at_budget`)."""
  out = {}
  for name in names:
    fc = copy.deepcopy(c)
    fc.model.family = name
    out[name] = at_budget(fc)
  gaussian = copy.deepcopy(c)
  gaussian.model.family = 'gaussian'
  out[ar.NAME] = at_budget(ar_twin(gaussian))
  return out


def sample_options(run, settings: dict) -> dict:
  """The sample settings the run's family takes (its SAMPLE_OPTIONS): a sweep's `sample.*`
  overrides apply to the families they mean something to, and `sampling` refuses the rest."""
  takes = families.of(run.model_config).SAMPLE_OPTIONS
  return {k: v for k, v in settings.items() if k in takes}


def temperature_knob(run) -> str:
  """The sampling option the temperature sweep turns: `temperature` (the token softmax's), or,
  for a family without one, `score_temperature` (Plaid's, Gulrajani & Hashimoto 2023; the
  latent family: nothing is a softmax until its decoder's single pass, and scaling the score
  of the latents is what trades diversity for fidelity there)."""
  takes = families.of(run.model_config).SAMPLE_OPTIONS
  knob = next((k for k in ('temperature', 'score_temperature') if k in takes), None)
  if knob is None:
    raise DlmError(f'the {run.model_config.family} family takes neither temperature nor '
                   'score_temperature: nothing to sweep for a matched-entropy reading')
  return knob


def split_overrides(overrides: dict) -> tuple[dict, dict]:
  """(what training depends on, the sample settings as `sampling.sample_array` arguments):
  variants differing only in the second share one trained model."""
  train = {k: v for k, v in overrides.items() if not k.startswith('sample.')}
  sample = {k.split('.')[1]: v for k, v in overrides.items() if k.startswith('sample.')}
  return train, sample


def on_data_of(c, source_workdir: str):
  """c reading the prepared tokens of `source_workdir` in place (tokenizer included), so all
  runs of an experiment see the same tokens with the same tokenizer (checked before scoring)."""
  c = copy.deepcopy(c)
  c.data.path = data.prepared_dir(source_workdir)
  return c


def ensure_scorer(c, workdir: str, scorer_workdir: str, log, scorer: str = '') -> str:
  """The run whose prepared data (tokenizer included) every compared run reads: the given
  scorer run, or else one made now under workdir. Without a `scorer` checkpoint that is the
  self-trained scorer (`scorer_config` of c, trained in workdir/scorer), which also scores.
  With one (a GPT-2-family name or directory, `quality.load_scorer`) nothing needs training:
  workdir/shared_data holds the data alone (`train.prepare`), and the checkpoint scores."""
  if scorer_workdir:
    return scorer_workdir
  if scorer:
    source = os.path.join(workdir, 'shared_data')
    log('== preparing the shared data')
    train.prepare(c, source, log=log)
    return source
  scorer_workdir = os.path.join(workdir, 'scorer')
  log('== training the scorer')
  train_run(scorer_config(c), scorer_workdir, log)
  return scorer_workdir


def load_scorer(scorer: str, scorer_workdir: str):
  """The scorer of an experiment: the GPT-2-family checkpoint `scorer` when given, else the AR
  run in scorer_workdir."""
  from dlm import quality
  return quality.load_scorer(scorer or scorer_workdir)


def train_run(c, workdir: str, log) -> dict:
  """Train (or resume) and return the wall time, the median logged tokens/s and the training
  tokens of each stage the family trains (`stage_steps`; all stages take batches of one size)."""
  start = time.perf_counter()
  train.train(c, workdir, log=log)
  wall = time.perf_counter() - start
  curve = loss_curve(workdir)
  tps = [r['tokens_per_sec'] for r in curve if 'tokens_per_sec' in r]
  per_step = tokens_per_step(c)
  stages = {k: n * per_step for k, n in families.of(c.model).stage_steps(c).items()}
  return {'workdir': workdir, 'train_wall_s': wall,
          'tokens_per_sec': float(np.median(tps)) if tps else float('nan'),
          'tokens_per_step': per_step, 'stage_tokens': stages,
          'train_tokens': sum(stages.values())}


def config_accumulation(c) -> int:
  return config_lib.accumulation_steps(c, jax.device_count())


def windows_per_step(c) -> int:
  """Training windows in one optimiser step of c on this machine's devices."""
  return c.train.device_batch_size * jax.device_count() * config_accumulation(c)


def tokens_per_step(c) -> int:
  return windows_per_step(c) * c.model.sequence_len


def loss_curve(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def evaluate_step(workdir: str, step: int, windows: np.ndarray, batch_size: int,
                  tokens_per_step: int) -> dict:
  """The likelihood of the checkpoint at `step`, with the tokens seen."""
  run = checkpoint.load_run(workdir, step)
  r = evaluate.evaluate(run.params, run.model, ml_collections.FrozenConfigDict(run.config),
                        windows, run.tokenizer.token_bytes(), batch_size, proposal=run.proposal)
  return {'step': step, 'tokens': step * tokens_per_step, **r}


def evaluate_checkpoints(workdir: str, windows: np.ndarray, batch_size: int,
                         tokens_per_step: int) -> list[dict]:
  """The likelihood at every kept checkpoint, oldest first, each with the tokens seen."""
  steps = sorted(checkpoint.Checkpoints(workdir, read_only=True).steps())
  return [evaluate_step(workdir, s, windows, batch_size, tokens_per_step) for s in steps]


def last_ce_curve(curve: list[dict]) -> dict | None:
  """The running training CE vs log-SNR (and the proposal q) of the last record holding one."""
  return next((r['ce_vs_logsnr'] for r in reversed(curve) if 'ce_vs_logsnr' in r), None)


def write_json(path: str, obj) -> None:
  with open(path, 'w') as f:
    json.dump(obj, f, indent=2)


def required_config(flag):
  if flag.value is None:
    raise DlmError('--config is required (e.g. configs/quickstart.py)')
  return flag.value
