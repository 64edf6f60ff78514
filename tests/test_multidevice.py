"""8 fake CPU devices in a subprocess: data-parallel training follows the 1-device run, and
evaluation and sampling split their batches over the devices."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT

_RUN = '''
import json, sys
sys.path.insert(0, 'tests')
import jax, numpy as np
from ml_collections import FrozenConfigDict
from conftest import tiny_config
from dlm import checkpoint, sampling, sharding, train
from dlm.experiments import common
n = jax.device_count()
c = tiny_config(**{'train.device_batch_size': 8 // n, 'train.num_iterations': 5,
                   'train.checkpoint_every': 5})
workdir, out = sys.argv[1], sys.argv[2]
train.train(c, workdir, log=lambda *a, **k: None)
losses = [r['loss'] for r in common.loss_curve(workdir) if 'loss' in r]
run = checkpoint.load_run(workdir)
rows = sharding.global_rows(np.zeros((8, 16), np.int32))
kw, _ = sampling._prepare(run, 8, 0, 3, 0.0, 0, '', None, 0.0, 0.0, '', '', '', '', None)
samples = sampling.sample_tokens(run.params, jax.random.key(0), model=run.model, **kw)
json.dump({'devices': n, 'losses': losses,
           'eval_rows_on': len(rows.sharding.device_set),
           'eval_rows_replicated': rows.sharding.is_fully_replicated,
           'samples_replicated': samples.sharding.is_fully_replicated,
           'samples_shard_rows': samples.addressable_shards[0].data.shape[0],
           'bits': train.evaluate.evaluate(run.params, run.model, FrozenConfigDict(run.config),
                                           np.zeros((8, 16), np.int32) + 5,
                                           run.tokenizer.token_bytes(), 8,
                                           proposal=run.proposal, discrete=False)['bits_per_token']},
          open(out, 'w'))
'''


def _run(tmp_path, devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT),
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  out = tmp_path / f'{devices}.json'
  proc = subprocess.run([sys.executable, '-c', _RUN, str(tmp_path / f'run{devices}'), str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text())


def test_eight_devices_train_like_one_and_split_eval_and_sampling(tmp_path):
  one, eight = _run(tmp_path, 1), _run(tmp_path, 8)
  assert (one['devices'], eight['devices']) == (1, 8)
  np.testing.assert_allclose(eight['losses'], one['losses'], rtol=1e-4)
  assert eight['eval_rows_on'] == 8 and not eight['eval_rows_replicated']
  assert not eight['samples_replicated'] and eight['samples_shard_rows'] == 1
  np.testing.assert_allclose(eight['bits'], one['bits'], rtol=1e-4)
