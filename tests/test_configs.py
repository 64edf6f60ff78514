"""Every shipped config loads, passes validation and says in its docstring how to run it."""

import importlib.util

import pytest

from conftest import ROOT
from dlm import config as config_lib

CONFIGS = sorted((ROOT / 'configs').glob('*.py'))


def _load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_is_valid_and_documents_its_command(path):
  module = _load(path)
  c = module.get_config()
  config_lib.validate(c, num_devices=1)
  assert 'python ' in module.__doc__
  assert config_lib.model_config(c, 50304).n_embd % config_lib.model_config(c, 50304).n_head == 0


def test_the_gpu_config_accumulates_to_half_a_million_tokens():
  c = _load(ROOT / 'configs' / 'd12.py').get_config()
  assert config_lib.accumulation_steps(c, num_devices=1) * 32 * 1024 == 524288
  assert config_lib.accumulation_steps(c, num_devices=8) == 2
