"""Config checks: impossible values fail with one line naming the field."""

import pytest

from conftest import tiny_config
from dlm import config as config_lib
from dlm.errors import DlmError


@pytest.mark.parametrize('overrides, message', [
    ({'diffusion.allocation': 'uniform'}, 'diffusion.allocation'),
    ({'diffusion.path': 'ode'}, 'diffusion.path'),
    ({'diffusion.proposal_floor': 0.0}, 'proposal_floor'),
    ({'sample.sampler': 'ddpm'}, 'sample.sampler'),
    ({'sample.self_condition': 'both'}, 'sample.self_condition'),
    ({'sample.seq_len': 64}, 'exceeds model.sequence_len'),
    ({'diffusion.noise_schedule': 'quadratic'}, 'noise_schedule'),
    ({'diffusion.parameterization': 'score'}, 'parameterization'),
    ({'diffusion.loss': 'l1'}, 'diffusion.loss'),
    ({'train.total_batch_size': 100}, 'not divisible'),
    ({'model.n_head': 3}, 'not divisible by n_head'),
    ({'sample.temperature': 0.0}, 'temperature'),
])
def test_impossible_values_are_rejected(overrides, message):
  with pytest.raises(DlmError, match=message):
    config_lib.validate(tiny_config(**overrides))


def test_total_batch_size_sets_gradient_accumulation():
  c = tiny_config(**{'train.total_batch_size': 4 * 16 * 2 * 3})
  assert config_lib.accumulation_steps(c, num_devices=2) == 3


def test_depth_derives_width_and_heads_the_nanochat_way():
  c = config_lib.base_config()
  c.model.depth = 12
  m = config_lib.model_config(c, 50304)
  assert (m.n_layer, m.n_embd, m.n_head, m.vocab_size) == (12, 768, 12, 50304)


def test_model_vocab_smaller_than_the_tokenizer_is_rejected():
  with pytest.raises(DlmError, match='smaller than the tokenizer'):
    config_lib.model_config(tiny_config(**{'model.vocab_size': 64}), 320)


def test_json_round_trip(tmp_path):
  c = tiny_config(**{'diffusion.noise_schedule': 'sqrt'})
  config_lib.save_json(c, tmp_path / 'config.json')
  assert config_lib.load_json(tmp_path / 'config.json').to_dict() == c.to_dict()
