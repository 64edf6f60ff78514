"""A run whose workdir is a gs:// URL (on a local stand-in bucket, tests/fake_gcs.py) trains,
is preempted, resumes and samples like a local run, and nothing lands in a local 'gs:' folder."""

import json

import numpy as np

import fake_gcs
from conftest import tiny_config
from dlm import checkpoint, data, sampling, storage, train


def test_a_gs_workdir_trains_resumes_and_samples_like_a_local_one(tmp_path, monkeypatch, quiet):
  fake_gcs.install(tmp_path / 'bucket-root', monkeypatch)
  monkeypatch.setattr(storage, 'CACHE', str(tmp_path / 'cache'))
  monkeypatch.chdir(tmp_path)  # a path handled as a local one would appear here as gs:/...
  c = tiny_config()
  local = tmp_path / 'local'
  train.train(c, str(local), log=quiet)
  url = 'gs://bucket/run'
  assert train.train(c, url, log=quiet, stop_after=4) is None  # preempted after step 4
  lines = []
  train.train(c, url, log=lines.append)
  assert 'resuming from checkpoint 3 in gs://bucket/run' in lines

  remote = tmp_path / 'bucket-root' / 'bucket' / 'run'
  assert not (tmp_path / 'gs:').exists()
  assert sorted(p.name for p in remote.iterdir()) == sorted(p.name for p in local.iterdir())
  curve = lambda d: [json.loads(l) for l in (d / 'metrics.jsonl').read_text().splitlines()]
  a, b = curve(local), curve(remote)
  assert [r['step'] for r in a] == [r['step'] for r in b]
  np.testing.assert_allclose([r['loss'] for r in a if 'loss' in r],
                             [r['loss'] for r in b if 'loss' in r], rtol=1e-5)
  # grain memory-maps local copies of the bucket's shards, named by their checksums
  manifest = json.loads((remote / 'data' / 'manifest.json').read_text())
  cached = {p.stem for p in (tmp_path / 'cache' / 'shards').iterdir()}
  assert {r['sha256'] for r in manifest['shards']} <= cached
  np.testing.assert_array_equal(data.val_tokens(url, 50), data.val_tokens(str(local), 50))

  run = checkpoint.load_run(url)
  assert run.step == 6 and run.workdir == url
  records = sampling.generate(run, num_samples=2, seed=0, num_steps=4)
  same = sampling.generate(checkpoint.load_run(str(local)), num_samples=2, seed=0, num_steps=4)
  assert [r['text'] for r in records] == [r['text'] for r in same]
