"""Live tracking (TensorBoard event files, W&B offline) holds every logged step once, also after a
kill -9 and a resume, and the validation figure is the same number for the same weights."""

import json
import struct
import time

import ml_collections
import numpy as np
import pytest

import fake_gcs
from conftest import tiny_config
from dlm import checkpoint, data, evaluate, train


def _records(path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def _events(directory) -> list[tuple]:
  """(tag, step, value) of every summary in the TensorBoard event files under `directory`:
  a float for a scalar, 'image' / the text for the others. A torn last record is skipped."""
  from tensorboardX.proto import event_pb2
  out = []
  for f in sorted(directory.glob('events.out.tfevents.*')):
    raw, i = f.read_bytes(), 0
    while i + 12 <= len(raw):  # TFRecord: length (8 bytes), its CRC (4), data, its CRC (4)
      n = struct.unpack('<Q', raw[i:i + 8])[0]
      if i + 16 + n > len(raw):
        break
      e = event_pb2.Event.FromString(raw[i + 12:i + 12 + n])
      i += 16 + n
      for v in e.summary.value:
        kind = v.WhichOneof('value')
        value = (v.simple_value if kind == 'simple_value' else 'image' if kind == 'image'
                 else v.tensor.string_val[0].decode() if kind == 'tensor' else kind)
        out.append((v.tag, e.step, value))
  return out


def _series(events, tag) -> dict:
  steps = [s for t, s, _ in events if t == tag]
  assert len(steps) == len(set(steps)), f'{tag}: a step twice in {sorted(steps)}'
  return {s: v for t, s, v in events if t == tag}


def test_event_files_hold_every_logged_step_once_and_the_same_validation_figure(tmp_path, quiet):
  c = tiny_config(**{'train.eval_every': 3, 'train.num_iterations': 6, 'train.eval_samples': 2})
  final = train.train(c, str(tmp_path), log=quiet)
  records = _records(tmp_path / 'metrics.jsonl')
  events = _events(tmp_path / 'tensorboard')
  loss = _series(events, 'train/loss')
  assert sorted(loss) == list(range(1, 7))
  np.testing.assert_allclose([loss[r['step']] for r in records if 'loss' in r],
                             [r['loss'] for r in records if 'loss' in r], rtol=1e-6)
  assert sorted(_series(events, 'train/tokens_per_sec')) == [2, 3, 4, 5, 6]
  assert 'train/grad_norm' in {t for t, _, _ in events}
  # the validation figure at every evaluation: the bound in bits/byte with its MC error
  evals = {r['step']: r for r in records if 'loss' not in r}
  assert sorted(evals) == [0, 3, 6]
  bpb = _series(events, 'val/bits_per_byte')
  assert sorted(bpb) == [0, 3, 6]
  np.testing.assert_allclose([bpb[s] for s in evals], [evals[s]['bits_per_byte'] for s in evals],
                             rtol=1e-6)
  assert final['bits_per_byte'] == evals[6]['bits_per_byte'] and final['discrete_bits_per_byte'] > 0
  assert evals[6]['bits_per_byte'] < evals[0]['bits_per_byte']
  assert all(0 < evals[s]['bits_per_byte_mc_stderr'] < 0.2 * evals[s]['bits_per_byte']
             for s in evals)
  assert sorted(_series(events, 'val/objective')) == [0, 3, 6]
  assert sorted(_series(events, 'curves/ce_vs_logsnr')) == [0, 3, 6]  # the running curve
  assert set(_series(events, 'curves/heldout_ce_vs_level').values()) == {'image'}
  texts = _series(events, 'samples/0/text_summary')
  assert sorted(texts) == [0, 3, 6] and all(t.strip() for t in texts.values())
  assert [len(evals[s]['samples']) for s in evals] == [2, 2, 2]
  # same weights, same number: checkpoint 3 evaluated again gives step 3's figure exactly
  run = checkpoint.load_run(str(tmp_path), 3)
  B, L = c.train.device_batch_size, c.model.sequence_len
  windows = data.eval_windows(data.val_tokens(str(tmp_path), B * L), L, B * L)
  run.config.eval.bound_samples = c.train.eval_bound_samples  # the draws of the evaluations
  again = evaluate.evaluate(run.params, run.model, ml_collections.FrozenConfigDict(run.config),
                            windows, run.tokenizer.token_bytes(), batch_size=B, seed=c.seed,
                            bound=True, proposal=run.proposal, discrete=False)
  assert again['bits_per_byte'] == evals[3]['bits_per_byte']
  assert again['val_loss'] == evals[3]['val_loss']


def test_kill9_and_resume_leave_each_step_once_in_the_event_files(tmp_path):
  """main.py held in the save of its last checkpoint (12) and killed with SIGKILL once its event
  file holds steps after checkpoint 8: the resumed run writes the event files again from
  metrics.jsonl, so steps 9 to 12 are not there twice."""
  from test_failures import T, _Run
  workdir = tmp_path / 'run'
  run = _Run(tmp_path, workdir, PAUSE=f'save:{T}')
  run.wait_for_mark()
  deadline = time.monotonic() + 30  # tensorboardX's thread flushes every 2 s
  while max(_series(_events(workdir / 'tensorboard'), 'train/loss') or [0]) < T:
    assert time.monotonic() < deadline
    time.sleep(0.1)
  run.kill()
  run.finish()
  rc, out, err = _Run(tmp_path, workdir).finish()
  assert rc == 0, err
  assert 'resuming from checkpoint 8' in out
  events = _events(workdir / 'tensorboard')
  records = _records(workdir / 'metrics.jsonl')
  loss = _series(events, 'train/loss')
  assert sorted(loss) == list(range(1, T + 1))
  np.testing.assert_allclose([loss[r['step']] for r in records if 'loss' in r],
                             [r['loss'] for r in records if 'loss' in r], rtol=1e-6)
  assert sorted(_series(events, 'val/bits_per_byte')) == [0, 6, T]


def test_a_gs_workdir_gets_its_event_file_and_tensorboard_off_writes_none(tmp_path, monkeypatch,
                                                                          quiet):
  fake_gcs.install(tmp_path / 'bucket-root', monkeypatch)
  train.train(tiny_config(**{'train.num_iterations': 3}), 'gs://bucket/run', log=quiet)
  events = _events(tmp_path / 'bucket-root' / 'bucket' / 'run' / 'tensorboard')
  assert sorted(_series(events, 'train/loss')) == [1, 2, 3]
  assert sorted(_series(events, 'val/bits_per_byte')) == [0, 3]
  local = tmp_path / 'local'
  train.train(tiny_config(**{'train.num_iterations': 1, 'train.tensorboard': False}),
              str(local), log=quiet)
  assert not (local / 'tensorboard').exists()
  assert not any('samples' in r for r in _records(local / 'metrics.jsonl'))  # eval_samples=0


def _wandb_records(path):
  """The records of a W&B transaction log (.wandb): a 7-byte header, then LevelDB-log-style
  32 KiB blocks of chunks, each with a 7-byte header (CRC, length, type: full / first /
  middle / last); read here because wandb no longer ships a Python reader for it."""
  raw, block = path.read_bytes(), 32768
  assert raw[:4] == b':W&B'
  i, parts = 7, b''
  while i + 7 <= len(raw):
    if block - i % block < 7:  # a block's tail too short for a chunk header is padding
      i += block - i % block
      continue
    n, kind = struct.unpack('<HB', raw[i + 4:i + 7])
    parts += raw[i + 7:i + 7 + n]
    i += 7 + n
    if kind in (1, 4):  # full, last
      yield parts
      parts = b''
    elif kind == 0:
      break


def _wandb_history(run_dir) -> list[dict]:
  """The history rows ({key: value}, with _step) of an offline W&B run."""
  from wandb.proto import wandb_internal_pb2
  rows = []
  for raw in _wandb_records(next(run_dir.glob('run-*.wandb'))):
    record = wandb_internal_pb2.Record()
    record.ParseFromString(raw)
    if record.WhichOneof('record_type') == 'history':
      rows.append({i.key or '/'.join(i.nested_key): json.loads(i.value_json)
                   for i in record.history.item})
  return rows


def test_wandb_offline_keeps_its_run_id_and_a_resume_continues_it(tmp_path, monkeypatch, quiet):
  pytest.importorskip('wandb')  # an optional dependency: only runs that set wandb_project
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  c = tiny_config(**{'train.num_iterations': 4, 'train.checkpoint_every': 2,
                     'train.tensorboard': False, 'train.wandb_project': 'dlm-test'})
  assert train.train(c, str(tmp_path), log=quiet, stop_after=2) is None
  run_id = (tmp_path / 'wandb_run_id').read_text().strip()
  train.train(c, str(tmp_path), log=quiet)
  assert (tmp_path / 'wandb_run_id').read_text().strip() == run_id
  runs = sorted((tmp_path / 'wandb').glob('offline-run-*'))
  assert len(runs) == 2 and all(r.name.endswith(f'-{run_id}') for r in runs)
  first, second = (_wandb_history(r) for r in runs)
  loss_steps = lambda rows: [r['_step'] for r in rows if 'train/loss' in r]
  assert loss_steps(first) == [1, 2] and loss_steps(second) == [3, 4]
  assert [r['_step'] for r in first + second if 'val/bits_per_byte' in r] == [0, 4]
