"""The launchers' dry runs print what each host would run, and a remote workdir that cannot be
reached stops in one line instead of becoming a local directory named 'gs:'."""

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


def test_an_unreachable_gs_workdir_is_one_line_not_a_local_directory(tmp_path):
  """Without gcsfs (as here) a gs:// workdir stops in one line naming the package; it never
  becomes a local directory named 'gs:'. (tests/test_storage.py trains on a stand-in bucket.)"""
  import pytest
  pytest.importorskip('fsspec')
  try:
    import gcsfs  # noqa: F401
    pytest.skip('gcsfs is installed: gs:// would be reached for real')
  except ImportError:
    pass
  p = subprocess.run([sys.executable, str(ROOT / 'main.py'), '--workdir=gs://bucket/run',
                      '--config', str(ROOT / 'configs/quickstart.py')], cwd=tmp_path,
                     env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
                     timeout=120)
  assert p.returncode == 1 and 'Traceback' not in p.stderr
  assert p.stderr.startswith('error: --workdir=gs://bucket/run needs a package'), p.stderr
  assert 'gcsfs' in p.stderr and p.stderr.count('\n') == 1
  assert not (tmp_path / 'gs:').exists()
