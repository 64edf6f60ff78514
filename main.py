"""dlm command line: train, sample from or evaluate a diffusion language model.

  python main.py --config configs/quickstart.py                  # train (resumes if possible)
  python main.py --mode=sample --workdir=runs/quickstart --num_samples=4 --num_steps=100
  python main.py --mode=eval --workdir=runs/quickstart --eval_tokens=16384 --batch_size=32
  python main.py --mode=sample --workdir=runs/quickstart --prompt="Once upon a time"
  python main.py --mode=sample --workdir=runs/quickstart \
      --infill="Once upon a time [MASK:24] and they lived happily ever after."
  python main.py --mode=sample --workdir=runs/guided --label=yes --guidance=2
  python main.py --mode=prepare --config configs/d12.py --workdir=gs://bucket/d12   # data only
"""

import json
import os
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags


def _fail(message: str) -> None:
  sys.stderr.write(f'error: {message}\n')  # one write: whole lines when processes share a tty
  sys.exit(1)


def _unknown_key(e: Exception) -> None:
  """An override of a field the config lacks: name it and the nearest real one."""
  from dlm import config as config_lib
  for arg in sys.argv[1:]:
    key = arg.partition('=')[0].removeprefix('--config.')
    if arg.startswith('--config.') and key not in config_lib.RULES:
      _fail(f'{config_lib.unknown_key_message(key)} (--config.{key} override)')
  _fail(f'cannot load the config: {" ".join(str(e).split())}')  # e.g. a file without get_config


try:  # config_flags reads the --config.* overrides from sys.argv while defining the flag
  _CONFIG = config_flags.DEFINE_config_file(
      'config', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'quickstart.py'),
      'Experiment config file (train mode).')
except (KeyError, AttributeError) as e:
  _unknown_key(e)
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval', 'prepare'],
                          'What to do (prepare: tokenizer and token shards only, one process).')
_WORKDIR = flags.DEFINE_string('workdir', '', 'Run directory or URL (gs://...); default '
                               'runs/<config name>.')
_CHECKPOINT = flags.DEFINE_integer('checkpoint', None, 'Checkpoint step (default: latest).')
_OUTPUT = flags.DEFINE_string('output', '', 'sample: write JSONL here; eval: write JSON here.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling / evaluation seed.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 0, 'Samples to draw (0: config).')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 0, 'Tokens per sample (0: config).')
_NUM_STEPS = flags.DEFINE_integer('num_steps', 0, 'Denoising steps (0: config).')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, 'Denoiser softmax temperature (0: config).')
_EVAL_TOKENS = flags.DEFINE_integer('eval_tokens', 0, 'Held-out tokens to evaluate (0: config).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 0, 'Evaluation batch size (0: config).')
_BOUND_SAMPLES = flags.DEFINE_integer('bound_samples', 0, 'eval: log-SNR draws per sequence for '
                                      'the bounds (0: config); more draws, less Monte-Carlo error.')
_EVAL_DATA = flags.DEFINE_string('eval_data', '', 'Evaluate on this text file instead.')
_SCORER = flags.DEFINE_string('scorer', '', 'eval: the gen-PPL scorer: a GPT-2-family checkpoint '
                              '(gpt2-large, another hub name or a local directory in the hub\'s '
                              'layout; adds MAUVE against held-out text, docs/scoring.md) or the '
                              'workdir of an AR run (configs/scorer.py); without it samples get '
                              'statistics only.')
_TOP_P = flags.DEFINE_float('top_p', 0.0, 'Nucleus mass for autoregressive runs (0: config).')
_SAMPLER = flags.DEFINE_string('sampler', '', 'ancestral | ddim | dpm++2m (empty: config).')
_SCORE_TEMPERATURE = flags.DEFINE_float('score_temperature', 0.0,
                                        'Divides the implied score (Plaid; 0: config).')
_SELF_CONDITION = flags.DEFINE_string('self_condition', '', 'previous | fresh (empty: config).')
_ORDER = flags.DEFINE_string('order', '', 'masked / hybrid: random | confidence: which positions '
                             'a step reveals (empty: config).')
_CACHE = flags.DEFINE_bool('cache', None, 'masked: reuse the last forward pass when no token '
                           'changed (default: config).')
_PROMPT = flags.DEFINE_string('prompt', '', 'sample: text every sample continues.')
_INFILL = flags.DEFINE_string('infill', '', 'sample (diffusion): a template whose [MASK:n] / '
                              '[MASK] placeholders the samples fill; the rest is kept verbatim.')
_LABEL = flags.DEFINE_string('label', '', 'sample (diffusion): a value of the run\'s data.label '
                             'to steer towards (e.g. yes for keyword:WORD).')
_GUIDANCE = flags.DEFINE_float('guidance', None, 'Classifier-free guidance scale with --label '
                               '(0: unconditional, 1: conditional; default: config).')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Join a multi-process run (launch/).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', '', 'host:port of process 0 '
                                   '(default: detected on TPU pods, SLURM, Open MPI).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'Processes in the run (0: detected).')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'This process (-1: detected).')


def _given() -> set[str]:
  """The names of the flags on the command line (absl's own flags aside)."""
  from dlm import config as config_lib
  return {n for names in config_lib.MODE_FLAGS.values() for n in names if flags.FLAGS[n].present}


def _flag_values() -> dict:
  """{name: value} of the flags the mode reads, unset ones at their defaults."""
  from dlm import config as config_lib
  return {n: flags.FLAGS[n].value for n in config_lib.MODE_FLAGS[_MODE.value] if n != 'config'}


def _workdir() -> str:
  from dlm import storage
  if _WORKDIR.value:
    storage.check_reachable(_WORKDIR.value)
    return _WORKDIR.value
  name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS['config'])))[0]
  return os.path.join('runs', name)


def _print_samples(records) -> None:
  for r in records:
    how = (f'{r["num_steps"]} {r.get("sampler", r.get("order"))} steps' if 'num_steps' in r
           else f'top-p {r["top_p"]}')
    if 'label' in r:
      how += f', label {r["label"]} at guidance {r["guidance"]:g}'
    if 'attribute' in r:
      how += f'; reads as {r["attribute"]}'
    print(f'--- sample {r["index"]} (seed {r["seed"]}, {how}) ---')
    print(r['text'])
    if 'fills' in r:
      print('fills: ' + ' | '.join(repr(f) for f in r['fills']))


def _sample(workdir: str) -> None:
  from dlm import checkpoint, sampling, train
  from dlm import config as config_lib
  config_lib.check_output(_OUTPUT.value, workdir)
  run = checkpoint.load_run(workdir, _CHECKPOINT.value)
  train.enable_compilation_cache(run.config.train.compilation_cache)
  config_lib.check_sample_flags(run, _flag_values())
  records = sampling.generate(run, num_samples=_NUM_SAMPLES.value or run.config.sample.num_samples,
                              seq_len=_SEQ_LEN.value, seed=_SEED.value, prompt=_PROMPT.value,
                              infill=_INFILL.value, label=_LABEL.value, guidance=_GUIDANCE.value,
                              **_sampler_flags())
  _print_samples(records)
  _print_stats(run, records)
  if _OUTPUT.value:
    _write(_OUTPUT.value, ''.join(json.dumps(r) + '\n' for r in records))


def _sampler_flags() -> dict:
  """The sampling options given on the command line (`sampling.OPTIONS`; unset ones empty,
  for the run's config to fill); one the run's family does not take is refused there."""
  return dict(num_steps=_NUM_STEPS.value, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
              sampler=_SAMPLER.value, score_temperature=_SCORE_TEMPERATURE.value,
              self_condition=_SELF_CONDITION.value, order=_ORDER.value,
              cache=None if _CACHE.value is None else _CACHE.value)


def _print_stats(run, records) -> None:
  """Word statistics of the samples beside held-out text of the same number of words."""
  from dlm import data, metrics
  s = metrics.stats([r['text'] for r in records])
  val = data.val_tokens(run.workdir, 20 * s['words'] + 100)
  ref = metrics.reference_stats(run.tokenizer.decode(val[:20 * s['words'] + 100]), s['words'])
  print(f'samples: {s["words"]} words, word entropy {s["word_entropy"]:.2f} bits, '
        f'distinct-2 {s["distinct_2"]:.2f} | held-out text, same length: '
        f'{ref["word_entropy"]:.2f} bits, distinct-2 {ref["distinct_2"]:.2f}')


def _eval(workdir: str) -> None:
  from tqdm import tqdm
  from dlm import checkpoint, data, evaluate, quality, train
  from dlm import config as config_lib
  import ml_collections
  config_lib.check_output(_OUTPUT.value, workdir)
  run = checkpoint.load_run(workdir, _CHECKPOINT.value)
  train.enable_compilation_cache(run.config.train.compilation_cache)
  c, L = run.config, run.model_config.sequence_len
  config_lib.check_sample_flags(run, _flag_values())  # the samples come last: checked first
  config_lib.check_eval_flags(_flag_values())
  if _BOUND_SAMPLES.value:
    c.eval.bound_samples = _BOUND_SAMPLES.value
  scorer = quality.load_scorer(_SCORER.value) if _SCORER.value else None
  if scorer is not None:
    quality.check_scorer(run, scorer, _SEQ_LEN.value or c.sample.seq_len or L)
  eval_tokens = _EVAL_TOKENS.value or c.eval.eval_tokens
  batch_size = _BATCH_SIZE.value or c.eval.batch_size
  if _EVAL_DATA.value:
    stream, source = run.tokenizer.encode_documents(data.load_documents(_EVAL_DATA.value)), _EVAL_DATA.value
  else:
    stream, source = data.val_tokens(workdir), 'validation split'
  windows = data.eval_windows(stream, L, eval_tokens)
  config_lib.check_eval_windows(len(windows), batch_size, source, L, len(stream))
  result = evaluate.evaluate(run.params, run.model, ml_collections.FrozenConfigDict(c), windows,
                             run.tokenizer.token_bytes(), batch_size, seed=_SEED.value,
                             progress=lambda it: tqdm(it, desc='eval', unit='batch'),
                             proposal=run.proposal)
  result.update(step=run.step, data=source, weights='ema' if c.train.ema_decay else 'raw',
                bound_samples=c.eval.bound_samples)
  result.update(_eval_samples(run, stream, scorer))
  if 'heldout_ce_vs_level' in result:  # the table first, so stdout ends with the JSON object
    _print_curve(result['heldout_ce_vs_level'], result['level'], run.proposal)
  print(json.dumps(result, indent=2))
  if _OUTPUT.value:
    _write(_OUTPUT.value, json.dumps(result, indent=2) + '\n')


def _print_curve(curve: dict, level: str, proposal) -> None:
  """The held-out cross-entropy against the corruption level, beside the run's noise proposal
  q where it keeps one, as text: where the curve falls is where the model decides tokens, and
  where q should put its mass."""
  import numpy as np
  from dlm import noise
  q = None if proposal is None else np.asarray(noise.bin_densities(proposal))
  print(f'held-out cross-entropy (nats/token) vs {level}'
        + (', and the noise proposal q:' if q is not None else ':'))
  n = len(curve['ce'])
  for i in range(0, n, max(1, n // 16)):
    ce = curve['ce'][i]
    line = f'  {level} {curve["level"][i]:7.2f}  CE {"   -  " if ce is None else f"{ce:6.3f}"}'
    if q is not None:
      line += f'  q {q[i]:.3f} {"#" * int(round(40 * q[i] / q.max()))}'
    print(line)


def _eval_samples(run, stream, scorer) -> dict:
  """Sample quality at the flags' settings beside held-out windows of the same shape (with a
  GPT-2-family scorer, MAUVE of the samples against those windows too)."""
  from dlm import gpt2, metrics, quality, storage
  n = _NUM_SAMPLES.value or run.config.sample.num_samples
  L = _SEQ_LEN.value or run.config.sample.seq_len or run.model_config.sequence_len  # sampling's
  windows = metrics.reference_windows(stream, n, L, _SEED.value)
  samples = quality.sample_quality(run, n, seed=_SEED.value, scorer=scorer, seq_len=L,
                                   reference=windows, **_sampler_flags())
  held_out = quality.row_quality(windows, run.tokenizer.bos_id, scorer, run.tokenizer)
  if isinstance(scorer, gpt2.Scorer):
    return {'samples': samples, 'held_out': held_out, 'scorer': scorer.describe()}
  return {'samples': samples, 'held_out': held_out,
          'scorer': storage.absolute(_SCORER.value) if scorer else None}


def _config():
  from dlm.errors import DlmError
  path = config_flags.get_config_filename(flags.FLAGS['config'])
  if not os.path.exists(path):
    raise DlmError(f'config file {path} does not exist')
  c = _CONFIG.value
  try:
    c.model
  except OSError as e:  # config_flags defers a failed load until the config is used
    raise DlmError(f'cannot load the config: {" ".join(str(e).split())}')
  return c


def _prepare(workdir: str) -> None:
  from dlm import train
  train.prepare(_config(), workdir)


def _prepare_command(workdir: str) -> str:
  """This command line as one process that only prepares the data (`--mode=prepare`)."""
  drop = ('distributed', 'nodistributed', 'coordinator_address', 'num_processes', 'process_id',
          'mode', 'workdir')
  args, words = [], iter(sys.argv[1:])
  for a in words:
    name = a.lstrip('-').split('=')[0]
    if not a.startswith('-') or name not in drop:
      args.append(a)
    elif '=' not in a and name not in ('distributed', 'nodistributed'):
      next(words, None)  # the flag's value, given as the next word
  return shlex.join(['python', sys.argv[0], '--mode=prepare', f'--workdir={workdir}', *args])


def _train(workdir: str) -> None:
  from dlm import checkpoint, data, sampling, sharding, train
  from dlm.errors import DlmError
  c = _config()
  try:
    result = train.train(c, workdir)
  except data.NotPrepared as e:
    raise DlmError(f'{e.reason}: {_prepare_command(workdir)}') from None
  if result is None:  # stopped by a signal, with a checkpoint: the same command resumes
    return
  rel = '=' if result.get('likelihood', '').startswith('exact') else '<='
  if sharding.is_main_process():
    mc = result.get('bits_per_token_mc_stderr')
    print(f'final: val_loss {result["val_loss"]:.4f}' + (
        f' | bits/token {rel} {result["bits_per_token"]:.3f}'
        + (f' (Monte-Carlo error ±{mc:.3f})' if mc is not None else '')
        + f' | bits/byte {rel} {result["bits_per_byte"]:.3f}' if 'bits_per_byte' in result else ''))
    if mc is not None or 'bits_per_byte' not in result and 'likelihood' in result:
      print(f'       {result["likelihood"]}')
    if 'reconstruction_accuracy' in result:
      r = result['reconstruction_accuracy']
      print(f'       reconstruction: {r["clean"]:.2%} of tokens from clean latents, '
            f'{r["noisy"]:.2%} at the sampler\'s last noise level (std {r["sigma"]:.3f})')
  run = checkpoint.load_run(workdir)
  records = sampling.generate(run, num_samples=c.sample.num_samples, seed=c.seed)
  if sharding.is_main_process():  # every process samples (collectives), one prints
    _print_samples(records)
    _print_stats(run, records)


def _write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)


def _parse_flags(argv):
  """absl's parser, with config-file and override problems reported in one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [l for l in str(e).splitlines() if l.strip()]
    if 'Traceback (most recent call last):' in lines:  # the config file raised while loading
      _fail(f'{lines[0]} {lines[-1]}')
    _fail(' '.join(lines))
  except (KeyError, AttributeError) as e:
    _unknown_key(e)
  except Exception as e:  # the config file is missing or raises while loading
    _fail(f'cannot load the config: {" ".join(str(e).split())}')


def main(argv) -> None:
  from dlm import config as config_lib
  from dlm.errors import DlmError
  logging.set_verbosity(logging.ERROR)  # Orbax logs every save and restore at INFO
  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]}', file=sys.stderr)
    sys.exit(2)
  try:
    config_lib.check_command(_MODE.value, _given(),
                             any(a.startswith('--config') for a in sys.argv[1:]),
                             _DISTRIBUTED.value)
    if _DISTRIBUTED.value:
      from dlm import sharding
      sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    {'train': _train, 'sample': _sample, 'eval': _eval,
     'prepare': _prepare}[_MODE.value](_workdir())
  except DlmError as e:
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
