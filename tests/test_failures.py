"""Runs survive preemption, kill -9 at any moment, damaged checkpoints, a full disk and a second
run on the same workdir, and resume on the loss curve of an uninterrupted run."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, tiny_config
from dlm import checkpoint, metrics_log, preemption, train
from dlm.errors import DlmError

T = 12


def _config(**overrides):
  return tiny_config(**{'train.num_iterations': T, 'train.checkpoint_every': 4,
                        'train.eval_every': 6, 'sample.num_samples': 1,
                        'train.compilation_cache': str(ROOT / '.jax_cache'), **overrides})


def _curve(workdir) -> list:
  """What a resumed run must reproduce exactly: each record's step, kind and values."""
  out = []
  for r in map(json.loads, (workdir / 'metrics.jsonl').read_text().splitlines()):
    out.append((r['step'], 'loss', r['loss'], r['grad_norm']) if 'loss' in r else
               (r['step'], 'eval', r['val_loss'], r.get('bits_per_byte')))
  return out


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """One uninterrupted run: (workdir, final evaluation). Checkpoints 4, 8, 12."""
  workdir = tmp_path_factory.mktemp('reference')
  result = train.train(_config(), str(workdir), log=lambda *a, **k: None)
  return workdir, result


def _copy(reference, tmp_path):
  shutil.copytree(reference[0], tmp_path / 'run')
  return tmp_path / 'run'


def _largest_file(step_dir):
  files = [os.path.join(r, n) for r, _, ns in os.walk(step_dir / 'state') for n in ns]
  return max(files, key=os.path.getsize)


# ---- the command, interrupted every way, against the uninterrupted run ----------------------

# Runs main.py; test hooks, chosen by environment variables, slow the steps down or stop the
# process at a precise moment (writing a marker file first) so that the test kills it there.
WRAPPER = '''
import os, runpy, sys, time
main = sys.argv.pop(1)
sys.path.insert(0, os.path.dirname(main))  # as `python main.py` has it
pause, mark = os.environ.get('PAUSE', ''), os.environ.get('MARK', '')

def hold():
  open(mark, 'w').close()
  time.sleep(600)

if os.environ.get('STEP_SLEEP'):
  from dlm import sharding
  to_device, delay = sharding.to_device, float(os.environ['STEP_SLEEP'])
  sharding.to_device = lambda *a, **k: (time.sleep(delay), to_device(*a, **k))[1]
if pause.startswith('save:'):  # the async save of that step, written but not yet renamed
  from orbax.checkpoint._src.path import atomicity
  finalize = atomicity.AtomicRenameTemporaryPath.finalize
  async def paused(self, *a, **k):
    if self._final_path.name == pause[5:]:
      hold()
    return await finalize(self, *a, **k)
  atomicity.AtomicRenameTemporaryPath.finalize = paused
if pause == 'final_eval':
  from dlm import evaluate
  evaluate_ = evaluate.evaluate
  evaluate.evaluate = lambda *a, **k: (hold() if k.get('bound') and k.get('discrete', True)
                                       else evaluate_(*a, **k))  # the final one: discrete too
sys.argv[0] = main
runpy.run_path(main, run_name='__main__')
'''


class _Run:
  """main.py on the test's workdir in the background."""

  def __init__(self, tmp_path, workdir, **env):
    wrapper, config = tmp_path / 'wrapper.py', tmp_path / 'config.py'
    wrapper.write_text(WRAPPER)
    config.write_text('from ml_collections import ConfigDict\n'
                      f'def get_config():\n  return ConfigDict({_config().to_dict()!r})\n')
    self.mark = tmp_path / 'mark'
    self.mark.unlink(missing_ok=True)
    env = dict(os.environ, JAX_PLATFORMS='cpu', MARK=str(self.mark), **env)
    self.proc = subprocess.Popen(
        [sys.executable, str(wrapper), str(ROOT / 'main.py'), f'--config={config}',
         f'--workdir={workdir}'], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    self.watchdog = threading.Timer(240, self.proc.kill)
    self.watchdog.daemon = True
    self.watchdog.start()
    self.lines = []

  def wait_for_line(self, text: str) -> None:
    for line in self.proc.stdout:
      self.lines.append(line)
      if text in line:
        return
    raise AssertionError(f'no {text!r} in {self.lines}: {self.proc.stderr.read()}')

  def wait_for_mark(self) -> None:
    while not self.mark.exists():
      assert self.proc.poll() is None, self.finish()
      time.sleep(0.02)

  def kill(self, sig=signal.SIGKILL) -> None:
    self.proc.send_signal(sig)

  def finish(self):
    out, err = self.proc.communicate()
    self.watchdog.cancel()
    self.lines.append(out)
    return self.proc.returncode, ''.join(self.lines), err


@pytest.fixture
def start(tmp_path):
  """_Run's constructor; whatever is still running at the end of the test is killed."""
  runs = []
  yield lambda *a, **k: runs.append(_Run(tmp_path, *a, **k)) or runs[-1]
  for run in runs:
    run.watchdog.cancel()
    if run.proc.returncode is None:
      run.proc.kill()
      run.proc.communicate()


def _step_dirs(workdir):
  return sorted(os.listdir(workdir / 'checkpoints'))


def test_sigterm_kill9_anywhere_and_a_second_run_then_the_same_command_ends_on_the_same_curve(
    reference, tmp_path, start):
  ref_curve = _curve(reference[0])
  workdir = tmp_path / 'run'

  def same_as_reference_so_far():
    curve = _curve(workdir)  # parses every line: a torn one fails here
    assert curve == ref_curve[:len(curve)]

  # SIGTERM: the step in flight ends, a checkpoint at it, exit 0.
  run = start(workdir, STEP_SLEEP='0.5')
  run.wait_for_line('step 2/12')
  run.kill(signal.SIGTERM)
  rc, out, err = run.finish()
  assert rc == 0, err
  stopped = int(out.split('preempted at step ')[1].split(':')[0])
  assert 3 <= stopped <= 6 and str(stopped) in _step_dirs(workdir)  # before 8, as planned below
  assert 'received SIGTERM' in err and 'run the same command to resume' in out
  assert _curve(workdir)[-1][:2] == (stopped, 'loss')
  same_as_reference_so_far()

  # The same command resumes; a second run on the workdir meanwhile is refused at once, naming
  # the first, which goes on; then kill -9 between checkpoints.
  first = start(workdir, STEP_SLEEP='4')  # alive for as long as the second one takes
  first.wait_for_line(f'resuming from checkpoint {stopped}')
  second = subprocess.run([sys.executable, str(ROOT / 'main.py'), f'--config={tmp_path}/config.py',
                           f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=120)
  assert second.returncode == 1 and 'Traceback' not in second.stderr, second.stderr
  assert 'in use by another training run' in second.stderr
  assert f'pid {first.proc.pid}' in second.stderr
  first.wait_for_line(f'step {stopped + 1}/12')  # unaffected
  first.kill()
  first.finish()
  lock = json.loads((workdir / '.lock').read_text())  # left behind by the killed run
  assert lock['pid'] == first.proc.pid
  same_as_reference_so_far()

  # kill -9 in the middle of the asynchronous save of checkpoint 8; the stale lock is no bar.
  run = start(workdir, PAUSE='save:8')
  run.wait_for_mark()
  run.kill()
  run.finish()
  assert '8' not in _step_dirs(workdir) and '8.orbax-checkpoint-tmp' in _step_dirs(workdir)
  same_as_reference_so_far()
  latest = max(int(d) for d in _step_dirs(workdir) if d.isdigit())

  # ... which the next run ignores; kill -9 during the final evaluation.
  run = start(workdir, PAUSE='final_eval')
  run.wait_for_line(f'resuming from checkpoint {latest}')
  run.wait_for_mark()
  run.kill()
  run.finish()
  assert '12' in _step_dirs(workdir) and not [d for d in _step_dirs(workdir) if 'tmp' in d]
  same_as_reference_so_far()

  run = start(workdir)
  rc, out, err = run.finish()
  assert rc == 0, err
  assert 'resuming from checkpoint 12' in out and 'final: val_loss' in out
  assert _curve(workdir) == ref_curve  # bit for bit, no step twice, no half line
  assert not (workdir / '.lock').exists()


def test_a_second_signal_ends_the_process_at_once(tmp_path):
  script = ('import time\nfrom dlm import preemption\nguard = preemption.Guard()\n'
            'for step in guard.steps(0, 10**6):\n  print(step, flush=True)\n  time.sleep(0.02)\n'
            '  if guard.should_stop(step + 1):\n    print("saving", flush=True)\n'
            '    time.sleep(60)\n')
  proc = subprocess.Popen([sys.executable, '-c', script], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  try:
    assert proc.stdout.readline() == '0\n'
    proc.send_signal(signal.SIGUSR1)  # SLURM's advance notice
    for line in proc.stdout:
      if line == 'saving\n':
        break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == -signal.SIGINT
    assert 'received SIGUSR1' in proc.stderr.read()
  finally:
    proc.kill()


def test_the_guard_stops_on_each_signal_and_restores_the_handlers_after_the_loop():
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  for sig in preemption.SIGNALS:
    guard = preemption.Guard()
    stops = []
    for step in guard.steps(0, 5):
      assert signal.getsignal(sig) == (guard._handle if step < 2 else signal.SIG_DFL)
      if step == 1:
        signal.raise_signal(sig)
      if guard.should_stop(step + 1):
        stops.append(step + 1)
    assert stops == [2, 3, 4, 5] and guard.received == sig.name
    assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before
  for step in preemption.Guard().steps(0, 5):  # leaving the loop early restores them too
    break
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before
  with pytest.raises(ValueError):  # and so does an error
    for step in preemption.Guard().steps(0, 5):
      raise ValueError
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before


# ---- damaged checkpoints, a full disk -------------------------------------------------------

def test_truncated_checkpoints_are_set_aside_and_the_newest_good_one_resumes(
    reference, tmp_path, capfd):
  workdir = _copy(reference, tmp_path)
  ckpts = workdir / 'checkpoints'
  os.truncate(_largest_file(ckpts / '12'), 100)  # its manifest tells
  os.remove(ckpts / '8' / checkpoint.MANIFEST)  # as if killed before writing it: restore tells
  os.truncate(_largest_file(ckpts / '8'), 100)
  capfd.readouterr()
  lines = []
  result = train.train(_config(), str(workdir), log=lines.append)
  err = capfd.readouterr().err.strip().splitlines()
  assert len(err) == 2 and err[0].startswith('warning: checkpoint 12 in ')
  assert 'has 100 bytes' in err[0] and 'renamed it 12.corrupt' in err[0]
  assert err[1].startswith('warning: checkpoint 8 in ') and 'it cannot be read' in err[1]
  assert f'resuming from checkpoint 4 in {workdir}' in lines
  assert _step_dirs(workdir) == ['12', '12.corrupt', '4', '8', '8.corrupt']
  assert result['val_loss'] == reference[1]['val_loss']
  assert _curve(workdir) == _curve(reference[0])


def test_sampling_skips_damaged_checkpoints_and_names_a_damaged_one_asked_for(
    reference, tmp_path, capfd):
  workdir = _copy(reference, tmp_path)
  ckpts = workdir / 'checkpoints'
  os.remove(_largest_file(ckpts / '12'))
  os.remove(ckpts / '8' / checkpoint.MANIFEST)  # as if killed before the manifest was written
  os.remove(ckpts / '8' / 'state' / '_METADATA')
  capfd.readouterr()
  assert checkpoint.load_run(str(workdir)).step == 4
  err = capfd.readouterr().err.strip().splitlines()
  assert len(err) == 2 and 'checkpoint 12' in err[0] and 'is missing' in err[0]
  assert 'checkpoint 8' in err[1] and 'state/_METADATA is missing' in err[1]
  with pytest.raises(DlmError, match='checkpoint 12 in .* is damaged'):
    checkpoint.load_run(str(workdir), checkpoint=12)
  assert _step_dirs(workdir) == ['12', '4', '8']  # reading renames nothing


def test_a_flipped_bit_is_caught_by_the_checksum_before_any_restore(reference, tmp_path, capfd):
  """One byte of checkpoint 12's largest file changed in place (same size): the manifest's
  CRC-32 names the file, the run asked for at 12 is refused in one line, the latest usable
  one (8) is loaded instead, and an untouched checkpoint passes."""
  workdir = _copy(reference, tmp_path)
  victim = _largest_file(workdir / 'checkpoints' / '12')
  name = os.path.relpath(victim, workdir / 'checkpoints' / '12')
  with open(victim, 'r+b') as f:
    f.seek(os.path.getsize(victim) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x10]))
  ckpts = checkpoint.Checkpoints(str(workdir), read_only=True)
  assert ckpts.problem(8) is None
  assert ckpts.problem(12).startswith(f'{name} does not match its checksum (CRC-32 ')
  ckpts.close()
  with pytest.raises(DlmError) as e:
    checkpoint.load_run(str(workdir), checkpoint=12)
  assert '\n' not in str(e.value) and 'checkpoint 12 in ' in str(e.value)
  assert f'({name} does not match its checksum' in str(e.value)
  capfd.readouterr()
  assert checkpoint.load_run(str(workdir)).step == 8
  assert 'checkpoint 12' in capfd.readouterr().err


def test_no_usable_checkpoint_is_an_error_every_time_and_nothing_is_deleted(reference, tmp_path):
  workdir = _copy(reference, tmp_path)
  metrics = (workdir / 'metrics.jsonl').read_text()
  for step in ('4', '8', '12'):
    os.truncate(_largest_file(workdir / 'checkpoints' / step), 100)
  for _ in range(2):  # a second attempt does not start the run over
    with pytest.raises(DlmError, match='no usable checkpoint in .*: 12.corrupt, 4.corrupt, '
                                       '8.corrupt are damaged'):
      train.train(_config(), str(workdir), log=lambda *a, **k: None)
  assert _step_dirs(workdir) == ['12.corrupt', '4.corrupt', '8.corrupt']
  assert (workdir / 'metrics.jsonl').read_text() == metrics


def test_a_full_disk_stops_in_one_line_and_the_run_resumes_once_there_is_room(
    reference, tmp_path, monkeypatch):
  from etils.epath import gpath
  workdir = _copy(reference, tmp_path)
  for step in ('8', '12'):
    shutil.rmtree(workdir / 'checkpoints' / step)
  write_text = gpath._GPath.write_text

  def full(self, *a, **k):
    if f'{os.sep}checkpoints{os.sep}8' in str(self):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    return write_text(self, *a, **k)

  c = _config(**{'train.keep_checkpoints': 1})  # a complete save 8 would delete 4
  with monkeypatch.context() as m:
    m.setattr(gpath._GPath, 'write_text', full)
    with pytest.raises(DlmError) as e:
      train.train(c, str(workdir), log=lambda *a, **k: None)
  assert str(e.value) == (f'cannot write checkpoint 8 in {workdir}/checkpoints: No space left on '
                          'device; the earlier checkpoints (4) are untouched: make room and run '
                          'the same command to resume')
  assert checkpoint.Checkpoints(str(workdir), read_only=True).problem(4) is None
  # The failed save's Orbax threads may still be finishing in this process (a real run has
  # exited by now); the rerun would race them for checkpoints/8.orbax-checkpoint-tmp.
  for t in threading.enumerate():
    if t.name in ('write_metadata_after_commits', 'serialize_shardings'):
      try:
        t.join(timeout=30)
      except OSError:  # Orbax's threads re-raise their failure when joined
        pass
  result = train.train(c, str(workdir), log=lambda *a, **k: None)
  assert result['val_loss'] == reference[1]['val_loss']
  assert _curve(workdir) == _curve(reference[0])


# ---- metrics.jsonl ----------------------------------------------------------------------------

def test_the_metrics_log_drops_what_a_resumed_run_writes_again_and_a_torn_line(tmp_path):
  records = [{'step': 0, 'val_loss': 6.0}] + [{'step': s, 'loss': 5.0 - s} for s in range(1, 8)]
  records.insert(5, {'step': 4, 'val_loss': 3.5})
  text = ''.join(json.dumps(r) + '\n' for r in records)
  path = tmp_path / 'metrics.jsonl'
  path.write_text(text + '{"step": 8, "lo')  # killed mid-write
  metrics_log.MetricsLog(str(tmp_path), 5, last_step=10)
  assert [json.loads(l) for l in path.read_text().splitlines()] == [
      r for r in records if r['step'] <= 5]
  assert os.listdir(tmp_path) == ['metrics.jsonl']
  path.write_text(text + json.dumps({'step': 7, 'val_loss': 2.0}) + '\n')
  metrics_log.MetricsLog(str(tmp_path), 7, last_step=7)  # resumed at the end: evaluates again
  assert path.read_text() == text
  metrics_log.MetricsLog(str(tmp_path), 0)  # no checkpoint: everything is written again
  assert path.read_text() == ''
