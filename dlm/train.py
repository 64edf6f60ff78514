"""The training loop: config -> data -> state on the mesh -> jitted steps -> checkpoints.

Reads top to bottom in the order things happen. Re-running the same command on the same
workdir resumes from the latest checkpoint and, because the data iterator's state is saved in
every checkpoint and the noise of step N is a function of (seed, N), continues the exact loss
curve of an uninterrupted run.
"""

import contextlib
import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from dlm import (checkpoint, data, evaluate, families, labels, noise, preemption, runlock,
                 sampling, sharding, storage, streams, tracking)
from dlm import config as config_lib
from dlm import metrics_log as metrics_log_lib
from dlm import state as state_lib
from dlm.errors import DlmError
from dlm.model import count_params

# Dense bf16 peak FLOP/s per device, for MFU. None (CPU, unknown chips): MFU is not reported.
PEAK_FLOPS = {
    'H100': 989e12, 'H200': 989e12, 'B200': 2250e12, 'A100': 312e12, 'L4': 121e12,
    'A10': 125e12, 'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12,
    'TPU v5p': 459e12, 'TPU v6 lite': 918e12, 'TPU v6e': 918e12,
}


def peak_flops(device) -> float | None:
  kind = device.device_kind
  matches = [v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()]
  return max(matches) if matches and device.platform != 'cpu' else None


def enable_compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache in `path` (a restart or a resumed run skips
  recompiling the step, minutes for large models on accelerators), unless a cache directory
  is set already (by the user, or by the tests)."""
  if path and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(path))


# The samples drawn at each evaluation: at most this many sampler steps (fewer when
# sample.num_steps is) and tokens (the AR twin takes a step per token): a glance at the text,
# not its best quality, for a fraction of the evaluation's cost.
EVAL_SAMPLE_STEPS = 32
EVAL_SAMPLE_TOKENS = 128


# Test hook (not a setting): optimiser steps whose gradients are replaced by NaN, to exercise
# the skipping of non-finite updates.
FAULT_STEPS: tuple[int, ...] = ()


def make_train_step(model, tx, c, accumulation: int, patterns=None, mesh=None):
  """One optimiser update over `accumulation` micro-batches, all inside one jit. patterns:
  the run's label (`labels.Label.patterns`), None without one.

  Under shard_map each device runs a lax.scan over the micro-batches of its own rows. Each
  micro-step draws its random inputs inside the scan (the family's `draw` for this device's
  rows, keyed by the step and the global row number, `dlm.streams`), so the draws of one
  micro-batch are all that is ever held, and the values, hence the loss curve, are the same
  on any number of devices, processes and micro-steps. The loss is the step's sum over all
  scored positions divided by their count over the whole step (not a mean of micro-batch
  means, which would weight the micro-batches by their split).

  Data parallel (fsdp = 1): the parameters enter whole, each device sums its gradients over
  the micro-batches without communication, and one psum per optimiser step adds the devices'
  sums (under plain jit, XLA reduced the gradients inside every micro-step and resharded the
  self-conditioning half of the batch; a test inspects the compiled step). FSDP (fsdp > 1,
  ZeRO-3, `dlm.sharding`): the parameters enter as their shards; each layer's are gathered
  inside the layer scan and its gradient reduce-scattered back, so the gradients summed over
  the micro-batches are shards too, and only the 'data' axis needs the psum. The optimiser
  update runs on the shards. Gradients are summed by a lax.scan, so a checkpoint never holds
  half an accumulation.

  A step whose loss or gradient is not finite changes nothing but the step count and the
  fault counters (`state['faults']`: skipped steps, and the current run of them); after
  `train.max_bad_steps` in a row every later step is skipped too, until the loop sees it and
  stops (`check_faults`), so nothing after the fault reaches a checkpoint.
  """
  mesh = mesh or sharding.make_mesh()
  family = families.of(model.cfg)
  ema_decay, max_bad = c.train.ema_decay, c.train.max_bad_steps
  rows_spec = P(None, sharding.AXES)
  faults = jnp.asarray(FAULT_STEPS or (-1,), jnp.int32)
  n_dev, fsdp = mesh.size, mesh.shape['fsdp']

  def device_grads(params, batch_ABL, key, q, specs):
    A, b, L = batch_ABL.shape
    B = b * n_dev  # rows of one micro-batch over all devices
    first = jax.lax.axis_index(sharding.AXES) * b  # this device's first row of each
    positions = jnp.float32(A * B * L)  # a fixed scale; the true count divides at the end
    flat_specs = jax.tree.structure(params).flatten_up_to(specs)
    if fsdp > 1:
      paths = [_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
      blocks = {p.split('blocks/', 1)[1]: s for p, s in zip(paths, flat_specs) if '/blocks/' in p}
      net = model.clone(layer_params=sharding.layer_gather(blocks))
      whole = lambda p: jax.tree.unflatten(jax.tree.structure(p), [
          x if '/blocks/' in name else sharding.gather(x, s)
          for name, x, s in zip(paths, jax.tree.leaves(p), flat_specs)])
    else:
      net, whole = model, lambda p: p

    def micro(carry, xs):
      grad_sum, count = carry
      a, tokens_BL = xs
      rows = streams.Rows(a * B + first + jnp.arange(b), A * B)
      d = family.draw(key, tokens_BL, model, c, q, patterns, rows=rows)
      loss = lambda p: family.loss(whole(p), net, tokens_BL, d, c, patterns, positions)
      (_, (metrics, rows_out)), grads = jax.value_and_grad(loss, has_aux=True)(params)
      return ((jax.tree.map(jnp.add, grad_sum, grads),
               count + family.scored_positions(tokens_BL, d)), (metrics, rows_out))

    (grads, count), (metrics, rows) = jax.lax.scan(
        micro, (jax.tree.map(jnp.zeros_like, params), jnp.float32(0)),
        (jnp.arange(A), batch_ABL))
    metrics = jax.tree.map(lambda m: jnp.sum(m, 0), metrics)
    leaves, tree = jax.tree.flatten(grads)
    split = [sharding.fsdp_dim(s) is not None for s in flat_specs]
    whole_grads = [g for g, s in zip(leaves, split) if not s]
    # the step's one reduction: the replicated gradients, the metrics and the count
    whole_grads, metrics, count = jax.lax.psum((whole_grads, metrics, count), sharding.AXES)
    shards = [g for g, s in zip(leaves, split) if s]
    if shards and n_dev > fsdp:  # already summed over 'fsdp' by the reduce-scatters
      shards = jax.lax.psum(shards, 'data')
    it_whole, it_shards = iter(whole_grads), iter(shards)
    grads = jax.tree.unflatten(tree, [next(it_shards) if s else next(it_whole) for s in split])
    renorm = positions / count  # sums over `positions` -> means over the scored positions
    return (jax.tree.map(lambda g: g * renorm, grads),
            jax.tree.map(lambda m: m * renorm, metrics), rows)

  def train_step(state, batch_ABL, key):
    params = state['params']
    q = state_lib.proposal(state)
    specs = jax.tree.map(lambda s: s.spec, sharding.state_shardings(params, mesh))
    grads, metrics, rows = jax.shard_map(
        functools.partial(device_grads, specs=specs), mesh=mesh,
        in_specs=(specs, rows_spec, P(), P()), out_specs=(specs, P(), rows_spec),
        check_vma=False)(params, batch_ABL, jax.random.fold_in(key, state['step']), q)
    poison = jnp.where(jnp.any(faults == state['step'] + 1), jnp.nan, 1.0)
    grads = jax.tree.map(lambda g: g * poison, grads)
    metrics = {**metrics, **family.param_metrics(params, model),
               'grad_norm': optax.tree.norm(grads)}
    updates, opt_state = tx.update(grads, state['opt_state'], params)
    new = dict(state, params=optax.apply_updates(params, updates), opt_state=opt_state)
    if ema_decay:
      new['ema'] = state_lib.ema_update(state['ema'], new['params'], ema_decay)
    if 'noise' in state:  # e.g. the running CE curve, and at refresh steps a new proposal
      new['noise'] = family.update_noise(state['noise'], rows, state['step'] + 1, c)
    ok = (jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
          & (state['faults']['streak'] < max_bad))
    new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)  # a bad step: no update
    new['step'] = state['step'] + 1
    new['faults'] = {'skipped': state['faults']['skipped'] + (~ok).astype(jnp.int32),
                     'streak': jnp.where(ok, 0, state['faults']['streak'] + 1)}
    metrics.update(skipped_steps=new['faults']['skipped'], bad_streak=new['faults']['streak'])
    return new, metrics
  return train_step


def _path(path) -> str:
  return '/' + '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def _check_workdir_config(c, workdir: str) -> None:
  """Refuse to resume a workdir whose saved config differs from this one in anything but
  `config.MAY_CHANGE_ON_RESUME`."""
  path = storage.join(workdir, 'config.json')
  if storage.exists(path):
    diff = config_lib.resume_conflicts(config_lib.load_json(path), c)
    if diff:
      raise DlmError(f'{workdir} holds a run with other settings ({"; ".join(diff)}): use a new '
                     '--workdir or the original config')


def _make_workdir(workdir: str) -> None:
  if storage.is_remote(workdir):
    storage.makedirs(workdir)
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise DlmError(f'the workdir {workdir} is a file, not a directory')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise DlmError(f'cannot create the workdir {workdir}: {e.strerror}')


def prepare(c: ml_collections.ConfigDict, workdir: str,
            log=functools.partial(print, flush=True)) -> dict:
  """The data of a run only (tokenizer, token shards, config.json), in one process: what a
  multi-process run needs ready before it starts (`data.NotPrepared`). Returns the manifest."""
  if sharding.process_count() > 1:
    raise DlmError('preparing data runs in one process (a multi-process run does not tokenize)')
  config_lib.validate(c, num_devices=None)  # the devices are the training run's, not ours
  _check_workdir_config(c, workdir)
  storage.makedirs(workdir)
  _, directory, manifest = data.for_training(c, workdir, log)
  config_lib.save_json(c, storage.join(workdir, 'config.json'))
  t = manifest['splits']['train']
  log(f'prepared: {t["tokens"]:,} train tokens in {directory}; start the training with the '
      'same command without --mode=prepare')
  return manifest


def train(c: ml_collections.ConfigDict, workdir: str, log=functools.partial(print, flush=True),
          stop_after: int | None = None, final_eval: bool = True):
  """Train (or resume) the run in `workdir`; returns the final evaluation dict, or None when
  stopped early by a signal (`dlm.preemption`), with a checkpoint at the step it stopped.

  `stop_after` simulates a preemption: the loop ends after that step with no final save or
  evaluation (returns None), as if the process had been killed. final_eval=False: no
  evaluation at the end (returns None), for a caller that evaluates the checkpoint itself
  (`dlm.experiments.scaling`).
  """
  with contextlib.ExitStack() as held:  # the workdir's lock, once taken
    return _train(c, workdir, log, stop_after, held, final_eval)


def _train(c, workdir, log, stop_after, held: contextlib.ExitStack, final_eval: bool = True):
  # ---- config and mesh -------------------------------------------------------------
  if not sharding.is_main_process():
    log = lambda *a, **k: None
  n_dev = jax.device_count()
  config_lib.validate(c, n_dev)
  enable_compilation_cache(c.train.compilation_cache)
  sharding.use_fsdp(c.train.fsdp)
  mesh = sharding.make_mesh()
  accumulation = config_lib.accumulation_steps(c, n_dev)
  _check_workdir_config(c, workdir)
  _make_workdir(workdir)
  if sharding.is_main_process() and not storage.is_remote(workdir):  # one run per workdir
    held.enter_context(runlock.hold(workdir))  # (object stores have no locks)

  # ---- data ------------------------------------------------------------------------
  tok, data_dir, manifest = data.for_training(c, workdir, log)
  mcfg = config_lib.model_config(c, tok.vocab_size)
  L, B = mcfg.sequence_len, c.train.device_batch_size * n_dev
  val_budget = c.train.eval_batches * B * L
  val_stream = data.val_tokens(workdir, val_budget)
  if len(val_stream) < L:
    raise DlmError(f'the validation split has {len(val_stream)} tokens, fewer than one window '
                   f'of sequence_len={L}: give more text or a shorter model.sequence_len')
  val_windows = data.eval_windows(val_stream, L, val_budget)
  batch_sh = sharding.batch_sharding(mesh, batch_axis=1)
  train_iter = data.TrainBatches(  # this process's rows of each step's batch, one step ahead
      data.shard_paths(data_dir, manifest, 'train'), L, (accumulation, B), c.seed,
      *sharding.process_block(batch_sh, (accumulation, B, L), 1), c.data.num_workers,
      put=functools.partial(sharding.to_device, sharding=batch_sh),
      unique_windows=c.data.train_windows)

  # ---- the family's own stage before this one (the latent family's autoencoder) -----------
  family = families.of(mcfg)
  frozen = family.prepare(c, workdir, tok, data_dir, manifest, log)

  # ---- model, optimiser, state -------------------------------------------------------
  model, tx, init_fn = state_lib.create(mcfg, c, frozen)
  rep = sharding.replicated(mesh)
  target = checkpoint.abstract_state(init_fn, mesh)
  state_sh = jax.tree.map(lambda x: x.sharding, target)
  ckpts = checkpoint.Checkpoints(workdir, keep=c.train.keep_checkpoints)
  layout = {'windows_per_step': B * accumulation, 'processes': jax.process_count()}
  start, state = ckpts.restore_latest(target, train_iter, layout)
  if start is None:
    # Initialised in place: each device computes only its own shards.
    state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.key(c.seed))
    start = 0
  else:
    log(f'resuming from checkpoint {start} in {workdir}')
  if sharding.is_main_process():  # after the checks a resume makes: a refused one changes nothing
    config_lib.save_json(c, storage.join(workdir, 'config.json'))
  n_params = count_params(state['params'])
  # training FLOPs per token of the stage this loop trains: the last one (`dlm.flops`)
  fpt = list(family.train_flops(c, tok.vocab_size).values())[-1]
  log(f'model: {family.NAME} ({family.SUMMARY}), {mcfg.n_layer} layers, width {mcfg.n_embd}, {mcfg.n_head} heads, '
      f'{n_params / 1e6:.2f}M parameters, vocab {mcfg.vocab_size}, length {L}, '
      f'{mcfg.dtype} matmuls, {mcfg.attention} attention, remat {mcfg.remat}')
  log(memory_report(state, n_dev, c.train.fsdp))
  log(f'batch: {B} sequences x {accumulation} accumulation x {L} tokens = '
      f'{B * accumulation * L:,} tokens per step on {n_dev} {jax.devices()[0].platform} device(s)')

  label = labels.build(c.data.label, tok) if mcfg.num_labels else None
  if label is not None:
    log(f'label: {label.spec}, values {", ".join(label.values)} (dropped from '
        f'{c.diffusion.label_dropout:.0%} of rows for guidance)')
  step_fn = jax.jit(make_train_step(model, tx, c, accumulation,
                                    None if label is None else jnp.asarray(label.patterns), mesh),
                    in_shardings=(state_sh, batch_sh, rep), out_shardings=(state_sh, rep),
                    donate_argnums=(0,))
  eval_config = ml_collections.FrozenConfigDict(c)
  # The evaluations before the final one bound with fewer draws (train.eval_bound_samples): on
  # configs/quickstart.py 8 draws cost 15 times the objective alone (docs/tracking.md).
  val_config = c.copy_and_resolve_references()
  val_config.eval.bound_samples = c.train.eval_bound_samples
  val_config = ml_collections.FrozenConfigDict(val_config)
  train_key = jax.random.key(c.seed + 1)
  peak = peak_flops(jax.devices()[0])
  tokens_per_step = B * accumulation * L
  tracker = tracking.Tracker(c, workdir)
  held.callback(tracker.close)  # whatever ends the run: event files flushed, W&B run finished
  metrics_log = metrics_log_lib.MetricsLog(workdir, start, c.train.num_iterations, tracker)

  def get_batch():
    return next(train_iter)

  def evaluate_now(state, final: bool) -> dict:
    return evaluate.evaluate(state_lib.sampling_params(state), model,
                             eval_config if final else val_config, val_windows,
                             tok.token_bytes(), batch_size=min(B, len(val_windows)), seed=c.seed,
                             bound=True, proposal=state_lib.proposal(state), discrete=final)

  def curve_record(state) -> dict:
    return {'ce_vs_logsnr': noise.summary(state['noise'], c.diffusion)} if 'noise' in state else {}

  def samples(state, done: int) -> dict:
    """A few short samples of the weights at step `done`, the same seed every time, so two
    evaluations differ by what the model learnt (`train.eval_samples`; few sampler steps)."""
    if not c.train.eval_samples:
      return {}
    run = checkpoint.Run(eval_config, mcfg, model, state_lib.sampling_params(state),
                         state_lib.proposal(state), tok, done, workdir)
    options = ({'num_steps': min(c.sample.num_steps, EVAL_SAMPLE_STEPS)}
               if 'num_steps' in family.SAMPLE_OPTIONS else {})
    n = -(-c.train.eval_samples // n_dev) * n_dev  # whole rows per device
    out = sampling.generate(run, num_samples=n, seq_len=min(L, EVAL_SAMPLE_TOKENS), seed=c.seed,
                            **options)
    return {'samples': [r['text'] for r in out[:c.train.eval_samples]]}

  def validate(state, done: int, final: bool = False) -> dict:
    """The held-out evaluation at step `done` into metrics.jsonl (and the trackers): the
    likelihood in bits, comparable across steps and runs (a diffusion family's bound from
    train.eval_bound_samples draws fixed by the seed, with its Monte-Carlo error; at the final
    evaluation from eval.bound_samples draws, with the discrete bound too; the AR twin's exact
    NLL), the training objective on held-out windows as val_loss, the CE curves, samples."""
    r = evaluate_now(state, final)
    curves = {k: r[k] for k in ('heldout_ce_vs_level', 'level') if k in r}
    metrics_log.write({'step': done, **{k: v for k, v in r.items() if isinstance(v, float)},
                       **curves, **curve_record(state), **samples(state, done)})
    return r

  if start == 0:  # the sanity check: an untrained model sits at log2(V)
    init = validate(state, 0)
    log(f'init: {_val_line(init, family.EXACT)}'
        + (f' (log2 V = {np.log2(mcfg.vocab_size):.3f} bits/token)' if 'bits_per_token' in init
           else ''))

  # ---- the loop: dispatch step N, then read back step N-1's metrics -------------------
  T = c.train.num_iterations
  last_logged = (start, time.perf_counter())
  began = last_logged[1]

  def report(done: int, metrics) -> None:
    nonlocal last_logged
    if not (done % c.train.log_every == 0 or done == T or done == start + 1):
      return
    record = {'step': done, **{k: float(v) for k, v in metrics.items()}}  # blocks on step done
    now = time.perf_counter()
    if last_logged[0] > start:  # intervals that include step start+1 also include compilation
      record['tokens_per_sec'] = (done - last_logged[0]) * tokens_per_step / (now - last_logged[1])
      if peak:
        record['mfu'] = record['tokens_per_sec'] * fpt / (peak * n_dev)
    record['elapsed_s'] = now - began
    if 'tokens_per_sec' in record:  # the rate of the last interval, compilation excluded
      record['eta_s'] = (T - done) * tokens_per_step / record['tokens_per_sec']
    last_logged = (done, now)
    _log_step(log, record, T)
    metrics_log.write(record)
    check_faults(record['bad_streak'])

  def check_faults(streak) -> None:
    """Stop once train.max_bad_steps steps in a row were skipped (`make_train_step`), before
    anything after the fault is saved: the last checkpoint stays the last good state."""
    streak = int(streak)
    if streak >= c.train.max_bad_steps:
      ckpts.close()
      last = ckpts.latest_step()
      raise DlmError(f'{streak} steps in a row had a non-finite loss or gradient and were '
                     f'skipped: stopping. The last checkpoint ({last if last is not None else "none"}'
                     f') is from before the fault; lower the learning rate or check the data, '
                     f'then run the same command to resume from it')

  pending = None

  def flush() -> None:  # report the step whose metrics are pending, if any
    nonlocal pending
    if pending is not None:
      report(*pending)
      pending = None

  guard = preemption.Guard()
  for step in guard.steps(start, T):  # SIGTERM & co. handled while the loop runs
    state, metrics = step_fn(state, get_batch(), train_key)
    flush()
    pending = (step + 1, metrics)
    if c.train.eval_every and (step + 1) % c.train.eval_every == 0 and step + 1 < T:
      log(f'step {step + 1}: {_val_line(validate(state, step + 1), family.EXACT)}')
    if (step + 1) % c.train.checkpoint_every == 0 and step + 1 < T:
      flush()  # the step's line before its checkpoint: a kill after the save loses no line
      check_faults(state['faults']['streak'])
      ckpts.save(step + 1, state, train_iter, layout=layout)
    if stop_after is not None and step + 1 >= stop_after:
      flush()
      ckpts.close()
      return None
    if guard.should_stop(step + 1):
      flush()
      check_faults(state['faults']['streak'])
      if ckpts.latest_step() != step + 1:
        ckpts.save(step + 1, state, train_iter, force=True, layout=layout)
      ckpts.close()
      log(f'preempted at step {step + 1}: checkpoint saved in {ckpts.directory}; run the same '
          'command to resume')
      return None
  flush()
  check_faults(state['faults']['streak'])
  if ckpts.latest_step() != T:
    ckpts.save(T, state, train_iter, force=True, layout=layout)
  ckpts.close()

  # ---- final evaluation and a look at the samples --------------------------------------
  return validate(state, T, final=True) if final_eval else None


def _val_line(r: dict, exact: bool) -> str:
  """The validation figure of an evaluation: bits/byte (exact, or an upper bound with its
  Monte-Carlo error), bits/token, then the held-out training objective."""
  if 'bits_per_byte' not in r:  # a family without a likelihood (its `likelihood` says why)
    rec = r.get('reconstruction_accuracy')
    return (f'val_loss {r["val_loss"]:.4f} (no bound)'
            + (f' | reconstruction {rec["clean"]:.2%} clean, {rec["noisy"]:.2%} noisy'
               if rec else ''))
  rel = '=' if exact else '<='
  mc = r.get('bits_per_byte_mc_stderr')
  return (f'val bits/byte {rel} {r["bits_per_byte"]:.4f}'
          + (f' (Monte-Carlo error ±{mc:.4f})' if mc is not None else '')
          + f' | bits/token {rel} {r["bits_per_token"]:.3f} | val_loss {r["val_loss"]:.4f}')


def _log_step(log, r: dict, total: int) -> None:
  parts = [f'step {r["step"]}/{total}', f'loss {r["loss"]:.4f}']
  for name, fmt in (('embed_norm', '.3f'), ('grad_norm', '.3f'), ('tokens_per_sec', ',.0f'),
                    ('mfu', '.1%')):
    if name in r:
      parts.append(f'{name} {r[name]:{fmt}}')
  if r.get('skipped_steps'):
    parts.append(f'{r["skipped_steps"]:.0f} steps skipped (non-finite)')
  parts.append(f'{_clock(r["elapsed_s"])} elapsed'
               + (f', ETA {_clock(r["eta_s"])}' if 'eta_s' in r else ''))
  log(' | '.join(parts))


def _clock(seconds: float) -> str:
  s = int(round(seconds))
  return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}'


def bytes_per_device(state) -> dict:
  """{parameters, optimiser[, EMA]: bytes the first device holds}."""
  device = jax.devices()[0]

  def on_device(tree) -> int:
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
               if s.device == device)

  out = {'parameters': on_device(state['params']), 'optimiser': on_device(state['opt_state'])}
  if 'ema' in state:
    out['EMA'] = on_device(state['ema'])
  return out


def memory_report(state, num_devices: int, fsdp: int = 1) -> str:
  """Bytes of the parameters, optimiser state and EMA that the first device holds: what FSDP
  divides and data parallelism replicates."""
  parts = [f'{name} {n / 2**20:.1f} MiB' for name, n in bytes_per_device(state).items()]
  how = (f'state split over {fsdp} devices (FSDP), replicated over {num_devices // fsdp}'
         if fsdp > 1 else f'state replicated over {num_devices} device(s)')
  return f'memory per device: {", ".join(parts)} ({how})'
