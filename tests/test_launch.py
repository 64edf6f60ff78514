"""The launchers' dry runs print what each host would run, and a multi-process run without
prepared data stops at once naming the command that prepares it. (A remote workdir that cannot
be reached is a row of test_bad_inputs.py.)"""

import os
import subprocess
import sys

from conftest import ROOT


def _launch(script, *args, **env):
  return subprocess.run(['bash', str(ROOT / 'launch' / script), *args], cwd=ROOT,
                        env=dict(os.environ, DRY_RUN='1', **env), capture_output=True,
                        text=True, timeout=60)


def test_local_dry_run_prints_one_command_per_process():
  p = _launch('local.sh', '3', '--config', 'configs/quickstart.py')
  assert p.returncode == 0, p.stderr
  lines = p.stdout.strip().splitlines()
  assert [l.split(':')[0] for l in lines] == ['process 0', 'process 1', 'process 2']
  assert all('--num_processes=3' in l and '--config configs/quickstart.py' in l for l in lines)
  assert all(f'--process_id={i}' in l for i, l in enumerate(lines))


def test_slurm_and_tpu_dry_runs_print_the_per_host_command():
  p = _launch('slurm.sh', '--config', 'configs/d12.py', WORKDIR='/shared/runs/d12')
  assert p.returncode == 0 and 'srun python main.py --distributed --workdir=/shared/runs/d12 ' \
      '--config configs/d12.py' in p.stdout, p.stderr
  assert '#SBATCH --requeue' in (ROOT / 'launch' / 'slurm.sh').read_text()
  p = _launch('tpu_pod.sh', '--config', 'configs/d12.py', TPU='v5p-64', ZONE='z',
              WORKDIR='/mnt/bucket/d12')
  assert p.returncode == 0 and p.stdout.startswith('every worker of v5p-64: gcloud'), p.stderr
  assert '--worker=all' in p.stdout and '--workdir=/mnt/bucket/d12' in p.stdout


def test_a_multi_process_run_without_prepared_data_stops_at_once_naming_the_command(tmp_path):
  """Both processes stop with the same line instead of waiting in a collective while process 0
  tokenizes; the command it names prepares the data in one process."""
  import shlex
  import socket
  import time
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  workdir = tmp_path / 'run'
  tiny = ['--config.data.num_generated_stories=300', '--config.data.tokenizer_vocab_size=320']
  began = time.perf_counter()
  p = subprocess.run(['bash', str(ROOT / 'launch' / 'local.sh'), '2', '--config',
                      'configs/quickstart.py', f'--workdir={workdir}', *tiny], cwd=ROOT,
                     env=dict(os.environ, PORT=str(port), HF_HUB_OFFLINE='1'),
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 1 and time.perf_counter() - began < 60
  assert 'Traceback' not in p.stderr, p.stderr
  # the two processes' lines share one pipe, and may interleave
  assert p.stderr.count('error: no prepared data in') == 2, p.stderr
  assert 'a 2-process run does not tokenize' in p.stderr
  command = ['python', 'main.py', '--mode=prepare', f'--workdir={workdir}', '--config',
             'configs/quickstart.py', *tiny]
  assert p.stderr.count(f'prepare it first in one process: {shlex.join(command)}') == 2
  assert not any(workdir.iterdir())  # nothing written before the check
  p = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True,
                     env=dict(os.environ, JAX_PLATFORMS='cpu', HF_HUB_OFFLINE='1'), timeout=300)
  assert p.returncode == 0, p.stderr
  assert (workdir / 'data' / 'manifest.json').exists() and (workdir / 'config.json').exists()
  assert not (workdir / 'checkpoints').exists()
