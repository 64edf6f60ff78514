"""`python -m dlm.bench`: how fast each model family and the AR twin run on this machine.

  python -m dlm.bench --config configs/d12.py [--families=gaussian,masked,hybrid,ar]
      [--batch=64] [--steps=10] [--output=bench.json]

For each diffusion family on the config's backbone and its AR twin (`ar_configs.ar_twin`: same
data shapes, matched non-embedding parameters) it compiles and then times, after a warm-up call:
- the train step (one micro-batch of `--batch` sequences, no accumulation): tokens/s and MFU
  (the model's matmul FLOPs counted from its shapes by the family's `train_flops`, `dlm.flops`:
  every pass, head and self-conditioning pass included, rematerialisation not; peak from
  `train.PEAK_FLOPS`, none on CPU);
- the evaluation step (the family's bound with `eval.bound_samples` draws per sequence, the
  AR model's exact NLL) on `eval.batch_size` sequences;
- sampling `sequence_len` tokens at batch 1 and at `--batch`: each diffusion family's sampler
  in `sample.num_steps` steps with the config's options, the AR twin's key/value-cache decoding.
With `--fsdp_sizes=1,2,8` it measures instead the diffusion train step with the state split
over each number of devices (`fsdp_costs`, docs/fsdp.md): peak memory per device, collectives
and step time.
Each figure is the median of `--steps` timed calls; compile time is lowering plus compilation;
peak device memory comes from the runtime where it reports one (GPUs, TPUs; not CPUs). Random
tokens stand in for data: speed does not depend on them. Side-by-side ratios (family ÷ AR)
are printed at the end; on a shared machine only they mean much.
"""

import functools
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from dlm import config as config_lib
from dlm import families, sampling, sharding, state as state_lib
from dlm.errors import DlmError, run_cli
from dlm import ar_configs
from dlm.model import count_params
from dlm.train import make_train_step, peak_flops


def _timed(fn, args, repeats: int) -> tuple[float, float]:
  """(compile seconds, median seconds per call) of a jitted fn, after one warm-up call."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return compile_s, float(np.median(times))


def _peak_memory() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def bench_family(c, batch: int, repeats: int, log=print) -> dict:
  """Train / eval / sampling timings of the model that config c describes."""
  c.train.total_batch_size = 0  # one micro-batch per step: the step's own speed
  c.train.device_batch_size = max(1, batch // jax.device_count())
  config_lib.validate(c, jax.device_count())
  mcfg = config_lib.model_config(c, ar_configs.planned_vocab(c))
  family = families.of(mcfg)
  model, tx, init_fn = state_lib.create(mcfg, c)
  mesh = sharding.make_mesh()
  rep = sharding.replicated(mesh)
  state = jax.jit(init_fn, out_shardings=rep)(jax.random.key(0))
  L, V, B = mcfg.sequence_len, mcfg.vocab_size, c.train.device_batch_size * jax.device_count()
  rng = np.random.default_rng(0)
  tokens = lambda n: jnp.asarray(rng.integers(0, V, (n, L)), jnp.int32)
  name = family.NAME
  out = {'family': name, 'n_layer': mcfg.n_layer, 'n_embd': mcfg.n_embd,
         'non_embedding_params': count_params(state['params'], exclude_embeddings=True),
         'batch': B, 'sequence_len': L, 'dtype': mcfg.dtype, 'attention': mcfg.attention}

  step = jax.jit(make_train_step(model, tx, c, 1, None, mesh),
                 in_shardings=(rep, sharding.batch_sharding(mesh, batch_axis=1), rep),
                 out_shardings=(rep, rep))
  batch_1BL = tokens(B)[None]
  compile_s, step_s = _timed(step, (state, batch_1BL, jax.random.key(1)), repeats)
  fpt = list(family.train_flops(c, V).values())[-1]  # the stage make_train_step trains
  peak = peak_flops(jax.devices()[0])
  tps = B * L / step_s
  out['train'] = {'compile_s': compile_s, 'step_s': step_s, 'tokens_per_sec': tps,
                  'flops_per_token': fpt,
                  'mfu': tps * fpt / (peak * jax.device_count()) if peak else None}
  log(f'{name}: train step {step_s * 1e3:.1f} ms, {tps:,.0f} tokens/s (compile {compile_s:.1f} s)')

  params, q = state['params'], state_lib.proposal(state)
  eb = c.eval.batch_size
  frozen = ml_collections.FrozenConfigDict(c)
  # all the bound's outputs: a family without a likelihood (latent) gives no nats, and its
  # evaluation (reconstruction, the held-out CE curve) is what is timed
  fn = jax.jit(lambda p, t, prev, k, q: family.bound(p, model, frozen, t, prev, k, q))
  compile_s, eval_s = _timed(fn, (params, tokens(eb), jnp.zeros((eb,), jnp.int32),
                                  jax.random.key(2), q), repeats)
  out['eval'] = {'compile_s': compile_s, 'step_s': eval_s, 'tokens_per_sec': eb * L / eval_s,
                 'batch': eb}
  log(f'{name}: eval step {eval_s * 1e3:.1f} ms at batch {eb}')

  out['sample'] = {}
  options = {o: c.sample[o] for o in sampling.OPTIONS if o in family.SAMPLE_OPTIONS}
  if 'self_condition' in options and not c.diffusion.self_condition:
    options['self_condition'] = ''
  for n in sorted({1, B}):
    fn = jax.jit(lambda p, k, q, n=n: family.sample_tokens(
        p, k, q, model=model, num_samples=n, seq_len=L, bos_id=0, **options))
    compile_s, sample_s = _timed(fn, (params, jax.random.key(3), q), max(1, repeats // 3))
    out['sample'][f'batch_{n}'] = {'compile_s': compile_s, 'seconds': sample_s,
                                   'samples_per_sec': n / sample_s}
    how = f'{options["num_steps"]} steps' if 'num_steps' in options else 'KV-cache decoding'
    log(f'{name}: {L} tokens at batch {n} ({how}) in {sample_s:.3f} s')
  out['peak_memory_bytes'] = _peak_memory()
  return out


def fsdp_costs(c, sizes: tuple[int, ...], batch: int, repeats: int, log=print) -> dict:
  """{fsdp: {peak_bytes, collectives, seconds}} of the diffusion train step with the state
  split over each of `sizes` devices (1: data parallel) on all the devices there are, with
  `train.total_batch_size` as the config sets it (its accumulation micro-steps): the peak
  memory per device from the compiled step's own accounting (`hlo.peak_bytes`), its
  collectives by kind, each counted as often as a step runs it (`hlo.summary`), and the median
  time of `repeats` steps after a warm-up; then each size's ratios to the first."""
  from dlm import checkpoint, hlo
  from dlm.train import make_train_step
  c = ml_collections.ConfigDict(c)
  if families.get(c.model.family).EXACT:  # a twin's config: time the diffusion side
    c.model.family = 'gaussian'
  n = jax.device_count()
  if batch:
    c.train.device_batch_size = max(1, batch // n)
  out = {}
  for f in sizes:
    c.train.fsdp = f
    config_lib.validate(c, n)
    A = config_lib.accumulation_steps(c, n)
    sharding.use_fsdp(f)
    mesh = sharding.make_mesh()
    mcfg = config_lib.model_config(c, c.data.tokenizer_vocab_size)
    model, tx, init_fn = state_lib.create(mcfg, c)
    target = checkpoint.abstract_state(init_fn, mesh)
    state_sh = jax.tree.map(lambda x: x.sharding, target)
    batch_sh = sharding.batch_sharding(mesh, batch_axis=1)
    rep = sharding.replicated(mesh)
    step = jax.jit(make_train_step(model, tx, c, A, None, mesh),
                   in_shardings=(state_sh, batch_sh, rep), out_shardings=(state_sh, rep),
                   donate_argnums=(0,))
    B = c.train.device_batch_size * n
    tokens = jax.device_put(np.ones((A, B, mcfg.sequence_len), np.int32), batch_sh)
    state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.key(0))
    compiled = step.lower(state, tokens, jax.random.key(1)).compile()
    times = []
    for i in range(repeats + 1):  # the first call warms up
      began = time.perf_counter()
      state, metrics = compiled(state, tokens, jax.random.key(1))
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - began)
    ops = hlo.summary(hlo.collectives(compiled.as_text()))
    out[f] = {'peak_bytes': hlo.peak_bytes(compiled), 'seconds': float(np.median(times[1:])),
              'collectives': ops, 'accumulation': A, 'loss': float(metrics['loss'])}
    counts = ', '.join(f'{k} {v["per_step"]} ({v["bytes"] / 2**20:.2f} MiB, {v["in_loops"]} '
                       'in loops)' for k, v in sorted(ops.items())) or 'none'
    log(f'fsdp {f}: peak {out[f]["peak_bytes"] / 2**20:.2f} MiB per device, step '
        f'{out[f]["seconds"] * 1e3:.1f} ms, collectives per step: {counts}')
  first = out[sizes[0]]
  for f in sizes[1:]:
    out[f]['memory_ratio'] = out[f]['peak_bytes'] / first['peak_bytes']
    out[f]['time_ratio'] = out[f]['seconds'] / first['seconds']
    log(f'fsdp {f} / fsdp {sizes[0]}: memory {out[f]["memory_ratio"]:.3f}x, step time '
        f'{out[f]["time_ratio"]:.2f}x')
  return out


def bench(c, batch: int = 0, repeats: int = 10, log=print,
          names: tuple[str, ...] = ('gaussian', 'ar')) -> dict:
  """The families `names` of config c (each diffusion family on c's backbone, `ar` as c's
  twin with matched non-embedding parameters), then each one's ratios to the AR twin."""
  import copy
  if repeats < 1:
    raise DlmError('--steps must be >= 1')
  unknown = [n for n in names if n not in families.FAMILIES]
  if unknown or not names:
    raise DlmError(f'--families: {",".join(unknown) or "none given"}; expected some of '
                   f'{",".join(families.FAMILIES)}')
  c = copy.deepcopy(c)
  if families.get(c.model.family).EXACT:  # a twin's config: time the diffusion side
    c.model.family = 'gaussian'
  batch = batch or c.train.device_batch_size * jax.device_count()
  if batch < 1:
    raise DlmError('--batch must be >= 1')
  result = {'device': jax.devices()[0].device_kind, 'platform': jax.devices()[0].platform,
            'num_devices': jax.device_count(), 'families': {}, 'ratios': {}}
  for name in names:
    fc = ar_configs.ar_twin(c) if name == 'ar' else copy.deepcopy(c)
    fc.model.family = name
    result['families'][name] = bench_family(fc, batch, repeats, log)
  if 'ar' not in names:
    return result
  a = result['families']['ar']
  for name, d in result['families'].items():
    if name == 'ar':
      continue
    r = result['ratios'][name] = {
        'train_time_per_token': a['train']['tokens_per_sec'] / d['train']['tokens_per_sec'],
        **{f'sample_time_{k}': d['sample'][k]['seconds'] / a['sample'][k]['seconds']
           for k in d['sample']}}
    log(f'{name} / AR twin: train time per token {r["train_time_per_token"]:.2f}x; '
        + ', '.join(f'sampling {k.split("_", 2)[2].replace("_", " ")} {v:.2f}x'
                    for k, v in r.items() if k.startswith('sample')))
  return result


if __name__ == '__main__':
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'The diffusion config to time.')
  _BATCH = flags.DEFINE_integer('batch', 0, 'Sequences per train step and the full sampling '
                                'batch (0: device_batch_size x devices).')
  _STEPS = flags.DEFINE_integer('steps', 10, 'Timed calls per figure (median).')
  _OUTPUT = flags.DEFINE_string('output', '', 'Write the figures here as JSON.')
  _FAMILIES = flags.DEFINE_string('families', 'gaussian,masked,hybrid,ar',
                                  'Comma-separated families to time (dlm.families).')
  _FSDP_SIZES = flags.DEFINE_string('fsdp_sizes', '', 'Measure only the train step with the '
                                    'state split over each of these comma-separated numbers '
                                    'of devices (1: data parallel): memory, collectives, time.')

  def main() -> None:
    if _CONFIG.value is None:
      raise DlmError('--config is required (e.g. configs/d12.py)')
    log = functools.partial(print, flush=True)
    if _FSDP_SIZES.value:
      sizes = tuple(int(x) for x in _FSDP_SIZES.value.split(',') if x)
      result = fsdp_costs(_CONFIG.value, sizes, _BATCH.value, _STEPS.value, log)
    else:
      result = bench(_CONFIG.value, _BATCH.value, _STEPS.value, log=log,
                     names=tuple(n for n in _FAMILIES.value.split(',') if n))
    if _OUTPUT.value:
      with open(_OUTPUT.value, 'w') as f:
        json.dump(result, f, indent=2)

  run_cli(main)
