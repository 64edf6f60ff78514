"""Every shipped config loads, passes validation and shows a command that would run."""

import importlib.util
import re
import shlex

import pytest

from conftest import ROOT
from dlm import config as config_lib

CONFIGS = sorted((ROOT / 'configs').glob('*.py'))


def _load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


FLAGS = set(re.findall(r"flags\.DEFINE_\w+\(\s*'(\w+)'", (ROOT / 'main.py').read_text()))


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_is_valid_and_its_documented_commands_use_real_flags(path):
  """Each config passes validation, and the commands its docstring shows name this file (or a
  run of it), flags main.py defines and config fields that exist."""
  module = _load(path)
  config_lib.validate(module.get_config(), num_devices=1)
  commands = [l.strip() for l in module.__doc__.splitlines() if l.strip().startswith('python ')]
  assert any(f'configs/{path.name}' in c for c in commands), module.__doc__
  for command in commands:
    for token in shlex.split(command.split('#')[0].replace('\\', ' ')):
      name = token.partition('=')[0].removeprefix('--')
      if not token.startswith('--'):
        continue
      if name.startswith('config.'):
        assert name.removeprefix('config.') in config_lib.RULES, command
      else:
        assert name in FLAGS, command
    config_file = re.search(r'--config[= ](\S+)', command)
    assert config_file is None or (ROOT / config_file.group(1)).exists(), command


def test_the_gpu_config_accumulates_to_half_a_million_tokens():
  c = _load(ROOT / 'configs' / 'd12.py').get_config()
  assert config_lib.accumulation_steps(c, num_devices=1) * 32 * 1024 == 524288
  assert config_lib.accumulation_steps(c, num_devices=8) == 2


def test_configs_import_no_experiment_driver():
  """A config is data: loading every shipped one pulls in none of the experiment commands
  (their absl flags and drivers), only the library."""
  import subprocess
  import sys
  code = ('import importlib.util, pathlib, sys\n'
          'for p in sorted(pathlib.Path("configs").glob("*.py")):\n'
          '  s = importlib.util.spec_from_file_location(p.stem, p)\n'
          '  s.loader.exec_module(importlib.util.module_from_spec(s))\n'
          'print(sorted(m for m in sys.modules if m.startswith("dlm.experiments")))\n')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == '[]', out
