"""8 fake CPU devices in a subprocess: data-parallel training follows the 1-device run,
evaluation and sampling split their batches over the devices, and checkpoints move between 8
devices, 4, 1, FSDP and two processes joined through gloo on the same loss curve."""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

_RUN = '''
import json, sys, time
sys.path.insert(0, 'tests')
import jax, numpy as np
from ml_collections import FrozenConfigDict
from conftest import tiny_config
from dlm import checkpoint, data, families, sampling, sharding, train
from dlm.experiments import common
workdir, out, stop, fsdp, data_path = sys.argv[1:6]
stop, fsdp = int(stop), int(fsdp)
process, processes, port, full, rows = (int(a) for a in sys.argv[6:11])
if processes > 1:
  sharding.initialize_distributed(f'localhost:{port}', processes, process)
n = jax.device_count()
c = tiny_config(**{'train.device_batch_size': rows or 8 // n, 'train.num_iterations': 5,
                   'train.checkpoint_every': 5, 'train.total_batch_size': 8 * 16})
c.train.checkpoint_every = stop or 5
c.train.fsdp = fsdp
not_prepared = None
if processes > 1:  # without prepared data every process stops at once
  began = time.perf_counter()
  try:
    train.train(c, workdir + '-empty', log=lambda *a, **k: None)
  except data.NotPrepared as e:
    not_prepared = {'message': str(e), 'seconds': time.perf_counter() - began}
  c.data.path = data_path if process == 0 else ''  # as if process 1 saw other storage
  try:
    train.train(c, workdir + '-unshared', log=lambda *a, **k: None)
  except Exception as e:
    not_prepared['unshared'] = f'{type(e).__name__}: {e}'
c.data.path = data_path
train.train(c, workdir, log=lambda *a, **k: None, stop_after=stop or None)
losses = [r['loss'] for r in common.loss_curve(workdir) if 'loss' in r] if process == 0 else []
report = {'devices': n, 'processes': jax.process_count(), 'not_prepared': not_prepared,
          'losses': losses}
if full:  # evaluation, sampling and memory on this topology (compilations: only where tested)
  run = checkpoint.load_run(workdir)
  rows = sharding.global_rows(np.zeros((8, 16), np.int32))
  kw, _ = sampling.prepare(run, 8, num_steps=3)
  samples = families.of(run.model_config).sample_tokens(run.params, jax.random.key(0),
                                                        run.proposal, model=run.model, **kw)
  from dlm import state as state_lib
  def held(f):  # bytes of parameters + optimiser state on device 0 with fsdp = f
    sharding.use_fsdp(f)
    mesh = sharding.make_mesh()
    _, _, init_fn = state_lib.create(run.model_config, c)
    target = checkpoint.abstract_state(init_fn, mesh)
    st = jax.jit(init_fn, out_shardings=jax.tree.map(lambda x: x.sharding, target))(
        jax.random.key(0))
    return sum(train.bytes_per_device(st).values())
  memory = {'replicated': held(1), 'fsdp': held(n)} if fsdp > 1 else None
  sharding.use_fsdp(fsdp)
  report.update(
      memory=memory, eval_rows_on=len(rows.sharding.device_set),
      eval_rows_replicated=rows.sharding.is_fully_replicated,
      samples_replicated=samples.sharding.is_fully_replicated,
      samples_shard_rows=samples.addressable_shards[0].data.shape[0],
      bits=train.evaluate.evaluate(run.params, run.model, FrozenConfigDict(run.config),
                                   np.zeros((8, 16), np.int32) + 5, run.tokenizer.token_bytes(),
                                   8, proposal=run.proposal, discrete=False)['bits_per_token'])
json.dump(report, open(f'{out}.{process}', 'w'))
'''


def _run(tmp_path, devices: int, workdir: str, stop: int = 0, fsdp: int = 1,
         processes: int = 1, data_path: str = '', full: bool = True, rows: int = 0) -> dict:
  """Train (or resume) workdir on `devices` devices in each of `processes` processes (joined
  through gloo on localhost); stop > 0 stops after that step. Every step is 8 windows of 16
  tokens: `rows` per device (default 8 / devices) in as many micro-steps as that takes.
  Process 0's report (full: with evaluation, sampling and memory)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT),
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  out = tmp_path / f'{workdir}.json'
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, '-c', _RUN, str(tmp_path / workdir), str(out),
                             str(stop), str(fsdp), data_path, str(i), str(processes), str(port),
                             str(int(full)), str(rows)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True) for i in range(processes)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  return json.loads(pathlib.Path(f'{out}.0').read_text())


@pytest.fixture(scope='module')
def one(tmp_path_factory):
  """The reference: the same tiny run, uninterrupted, on one device."""
  path = tmp_path_factory.mktemp('one')
  return dict(_run(path, 1, 'one'), data=str(path / 'one' / 'data'))


def test_eight_devices_train_like_one_split_eval_and_sampling_and_resume_on_one_and_four(
    tmp_path, one):
  """Data parallel on 8 devices for 3 steps (its checkpoint there), then resumed on 1 and,
  from a copy of the same checkpoint, on 4."""
  eight = _run(tmp_path, 8, 'moved', stop=3)
  assert (one['devices'], eight['devices']) == (1, 8)
  np.testing.assert_allclose(eight['losses'], one['losses'][:3], rtol=1e-4)
  assert eight['eval_rows_on'] == 8 and not eight['eval_rows_replicated']
  assert not eight['samples_replicated'] and eight['samples_shard_rows'] == 1
  shutil.copytree(tmp_path / 'moved', tmp_path / 'moved4')
  for devices, workdir in ((1, 'moved'), (4, 'moved4')):
    resumed = _run(tmp_path, devices, workdir)
    assert resumed['devices'] == devices
    np.testing.assert_allclose(resumed['losses'], one['losses'], rtol=1e-4)
    np.testing.assert_allclose(resumed['bits'], one['bits'], rtol=1e-4)


def test_two_processes_of_two_devices_train_like_one_and_one_process_resumes_them(tmp_path, one):
  """Two processes joined through gloo, each with 2 devices and its rows of every batch,
  follow the 1-device curve; one process on one device resumes their checkpoint. Without
  prepared data the two stop at once (a 2-process run never tokenizes), and together when only
  one of them sees it."""
  two = _run(tmp_path, 2, 'two', stop=3, processes=2, data_path=one['data'], full=False)
  assert (two['processes'], two['devices']) == (2, 4)
  assert 'a 2-process run does not tokenize' in two['not_prepared']['message']
  assert two['not_prepared']['seconds'] < 30
  assert two['not_prepared']['unshared'].startswith('DlmError: processes 1 do not see the '
                                                    'prepared data')
  np.testing.assert_allclose(two['losses'], one['losses'][:3], rtol=1e-4)
  resumed = _run(tmp_path, 1, 'two', data_path=one['data'])
  assert resumed['processes'] == 1
  np.testing.assert_allclose(resumed['losses'], one['losses'], rtol=1e-4)
  np.testing.assert_allclose(resumed['bits'], one['bits'], rtol=1e-4)


def test_one_curve_for_every_split_of_the_batch_and_fsdp_holds_an_eighth_of_the_state(
    tmp_path, one):
  """One run whose every segment splits its 8-row steps another way: 1 device x 4 rows x 2
  micro-steps (steps 1-2), 8 devices with the state split 8 ways (FSDP, ZeRO-3; steps 3-4,
  killed there), then 2 devices x 2 rows x 2 micro-steps (step 5). Each follows the curve of
  1 device x 8 rows: the random inputs of a step are functions of (seed, step, global row)."""
  accumulated = _run(tmp_path, 1, 'split', stop=2, full=False, rows=4)
  np.testing.assert_allclose(accumulated['losses'], one['losses'][:2], atol=1e-4)
  fsdp = _run(tmp_path, 8, 'split', stop=4, fsdp=8)
  np.testing.assert_allclose(fsdp['losses'], one['losses'][:4], atol=1e-4)
  assert fsdp['memory']['fsdp'] <= fsdp['memory']['replicated'] / 6, fsdp['memory']
  resumed = _run(tmp_path, 2, 'split', full=False, rows=2)
  np.testing.assert_allclose(resumed['losses'], one['losses'], atol=1e-4)


_COMPILED = '''
import json, sys
sys.path.insert(0, 'tests')
import jax, jax.numpy as jnp
from conftest import tiny_config
from dlm import checkpoint, config as config_lib, hlo, sharding, state as state_lib, train

def compiled(fsdp):
  """The compiled train step with 2 micro-batches per step on 8 devices, for a model whose
  state outweighs its activations (depth 8, width 128, 2 rows of 16 tokens per device)."""
  c = tiny_config(**{'train.device_batch_size': 2, 'train.total_batch_size': 2 * 8 * 16 * 2,
                     'train.fsdp': fsdp, 'model.depth': 8, 'model.n_embd': 128})
  sharding.use_fsdp(fsdp)
  mesh = sharding.make_mesh()
  A = config_lib.accumulation_steps(c, 8)
  model, tx, init_fn = state_lib.create(config_lib.model_config(c, 320), c)
  target = checkpoint.abstract_state(init_fn, mesh)
  state_sh = jax.tree.map(lambda x: x.sharding, target)
  batch = sharding.batch_sharding(mesh, batch_axis=1)
  rep = sharding.replicated(mesh)
  step = jax.jit(train.make_train_step(model, tx, c, A, None, mesh),
                 in_shardings=(state_sh, batch, rep), out_shardings=(state_sh, rep),
                 donate_argnums=(0,))
  out = step.lower(target, jax.ShapeDtypeStruct((A, 16, 16), jnp.int32, sharding=batch),
                   jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)).compile()
  text = out.as_text()
  leaves = jax.tree.leaves(target['params'])
  return {'accumulation': A, 'while_loops': hlo.while_loops(text),
          'ops': hlo.collectives(text), 'peak': hlo.peak_bytes(out),
          'param_bytes': sum(4 * x.size for x in leaves),
          'stacked_shapes': [list(x.shape) for x in leaves if x.ndim == 3],
          'largest_layer_bytes': max(4 * x.size // (x.shape[0] if x.ndim == 3 else 1)
                                     for x in leaves)}

json.dump({'dp': compiled(1), 'fsdp': compiled(8)}, open(sys.argv[1], 'w'))
'''


def test_compiled_steps_data_parallel_reduces_once_and_fsdp_gathers_one_layer_at_a_time(tmp_path):
  """The compiled train step with 2 micro-batches on 8 devices. Data parallel: no collective
  inside any while loop (the accumulation scan, the layer scan, the self-conditioning pass),
  one gradient all-reduce after them, nothing moving rows between devices. FSDP over the 8
  (ZeRO-3): every all-gather is of one layer's matrix or smaller, the gradients are
  reduce-scattered inside the loops, no all-reduce is gradient-sized, and the peak memory per
  device is at most a quarter of data parallelism's."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT),
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  out = tmp_path / 'hlo.json'
  proc = subprocess.run([sys.executable, '-c', _COMPILED, str(out)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  for mode in ('dp', 'fsdp'):
    assert r[mode]['accumulation'] == 2 and r[mode]['while_loops'] >= 2, r[mode]
    kinds = {op['kind'] for op in r[mode]['ops']}
    assert not {'all-to-all', 'collective-permute'} & kinds, (mode, kinds)
  dp, fsdp = r['dp'], r['fsdp']
  assert [op for op in dp['ops'] if op['looped']] == [], dp['ops']
  reduces = [op for op in dp['ops'] if op['kind'] == 'all-reduce']
  assert len(reduces) == 1 and reduces[0]['bytes'] >= dp['param_bytes'], reduces
  moved = [op for op in fsdp['ops'] if op['kind'] in ('all-gather', 'all-reduce')]
  assert any(op['kind'] == 'all-gather' for op in moved), fsdp['ops']
  # each one layer's matrix at most (Muon's gathers too), never a stack of layers
  assert all(op['bytes'] <= fsdp['largest_layer_bytes'] for op in moved), moved
  assert not {tuple(op['shape']) for op in moved} & {tuple(s) for s in fsdp['stacked_shapes']}
  assert any(op['kind'] == 'reduce-scatter' and op['looped'] for op in fsdp['ops'])
  assert fsdp['peak'] <= dp['peak'] / 4, (fsdp['peak'], dp['peak'])


# Evaluation and sampling of 3 rows: padded to the devices' multiple, the padding dropped.
_PADDED = '''
import json, re, sys
sys.path.insert(0, 'tests')
import conftest, jax, numpy as np
from ml_collections import FrozenConfigDict
from dlm import checkpoint, evaluate, sampling, sharding
run = checkpoint.load_run(sys.argv[1])
c = FrozenConfigDict({**run.config.to_dict(), 'eval': {**run.config.eval.to_dict(),
                                                       'bound_samples': 2}})
windows = np.random.default_rng(0).integers(1, 300, (3, 16)).astype(np.int32)
out = evaluate.evaluate(run.params, run.model, c, windows, run.tokenizer.token_bytes(), 3,
                        proposal=run.proposal, discrete=False)
out['samples'] = sampling.sample_array(run, 3, seed=1, num_steps=2)[0].tolist()
if jax.device_count() > 1:  # what each device computes: its row of the padded batch
  tokens = sharding.global_rows(sharding.pad_rows(windows, sharding.padded(3)))
  hlo = evaluate._objective.lower(run.params, tokens, jax.random.key(0), run.proposal,
                                  model=run.model, config=c, n=3).compile().as_text()
  out['device_tokens'] = re.findall(r's32\\[\\d+,16\\]', hlo[hlo.index('ENTRY'):].split('\\n')[0])
  out['shard_rows'] = [s.data.shape[0] for s in tokens.addressable_shards]
json.dump(out, open(sys.argv[2], 'w'))
'''


def test_a_batch_of_three_on_eight_devices_is_padded_and_equals_one_device(
    tmp_path, trained_workdir):
  """Evaluating and sampling 3 rows on 8 devices runs one row per device (5 of them padding,
  never all 3 rows on each device) and gives what 1 device gives: the same val_loss, bound
  and Monte-Carlo error, the same sampled tokens."""
  procs = {devices: subprocess.Popen(
      [sys.executable, '-c', _PADDED, str(trained_workdir), str(tmp_path / f'{devices}.json')],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT),
               XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}'))
      for devices in (1, 8)}
  for p in procs.values():
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  one, eight = (json.loads((tmp_path / f'{d}.json').read_text()) for d in (1, 8))
  assert eight['shard_rows'] == [1] * 8 and eight['device_tokens'] == ['s32[1,16]']
  assert eight['eval_tokens'] == one['eval_tokens'] == 48
  for key in ('val_loss', 'bits_per_token', 'bits_per_token_mc_stderr', 'bits_per_byte'):
    np.testing.assert_allclose(eight[key], one[key], rtol=1e-5, err_msg=key)
  assert eight['samples'] == one['samples'] and len(one['samples']) == 3
