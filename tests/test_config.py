"""Config checks: impossible values fail with one line naming the field."""

import json
import re

import ml_collections
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


def test_every_field_has_a_rule_and_the_defaults_pass_it():
  assert set(config_lib.RULES) == set(config_lib.flat_keys(config_lib.base_config()))
  config_lib.validate(config_lib.base_config())


@pytest.mark.parametrize('key', sorted(config_lib.RULES))
def test_every_field_rejects_a_value_of_the_wrong_type(key):
  d = config_lib.base_config().to_dict()
  section, _, name = key.rpartition('.')
  (d[section] if section else d)[name] = [1]  # a plain ConfigDict takes any type
  with pytest.raises(DlmError, match=rf'^{re.escape(key)}=\[1\] must '):
    config_lib.validate(ml_collections.ConfigDict(d))


# (field, a value just outside its range, the nearest valid one)
EDGES = [
    ('seed', -1, 0),
    ('model.sequence_len', 1, 2),
    ('model.n_layer', -1, 0),
    ('data.tokenizer_vocab_size', 257, 258),
    ('train.log_every', 0, 1),
    ('train.checkpoint_every', 0, 1),
    ('train.eval_batches', 0, 1),
    ('train.eval_every', -1, 0),
    ('train.matrix_lr', 0.0, 1e-6),
    ('train.grad_clip', -0.5, 0.0),
    ('train.warmdown_ratio', 1.01, 1.0),
    ('train.ema_decay', 1.0, 0.999),
    ('diffusion.label_dropout', 0.0, 0.01),
    ('diffusion.label_dropout', 1.0, 0.99),
    ('diffusion.proposal_floor', 0.0, 1.0),
    ('diffusion.proposal_bins', 3, 4),
    ('data.val_fraction', 1.0, 0.0),
    ('sample.top_p', 0.0, 1.0),
    ('sample.guidance', -0.1, 0.0),
    ('eval.bound_samples', 1, 2),
    ('train.matrix_lr', float('nan'), 0.02),
    ('diffusion.gumbel_mu', float('inf'), -3.0),
    ('model.family', 'gpt', 'masked'),
]


@pytest.mark.parametrize('key, bad, good', EDGES, ids=[f'{k}={b}' for k, b, _ in EDGES])
def test_ranges_end_where_they_say(key, bad, good):
  with pytest.raises(DlmError, match=rf'^{re.escape(key)}={re.escape(repr(bad))} must'):
    config_lib.validate(_with(key, bad))
  config_lib.validate(_with(key, good))


def _with(key, value):
  d = tiny_config().to_dict()
  section, _, name = key.rpartition('.')
  (d[section] if section else d)[name] = value
  return ml_collections.ConfigDict(d)


def test_messages_name_the_field_the_value_and_what_is_allowed():
  cases = {
      'train.log_every': (0, 'train.log_every=0 must be a positive integer'),
      'diffusion.allocation': ('uniform', "diffusion.allocation='uniform' must be one of "
                                          'schedule, gumbel, adaptive'),
      'diffusion.label_dropout': (1.5, 'diffusion.label_dropout=1.5 must be a number in (0, 1)'),
      'train.other_lr': (-1.0, 'train.other_lr=-1.0 must be a finite number > 0'),
      'seed': (2**32, 'seed=4294967296 must be an integer in [0, 4294967295]'),
  }
  for key, (value, message) in cases.items():
    with pytest.raises(DlmError) as e:
      config_lib.validate(_with(key, value))
    assert str(e.value) == message


def test_unknown_keys_are_rejected_with_the_nearest_name():
  c = tiny_config()
  c.train.log_evry = 5  # ConfigDicts accept new fields: a typo would be silently ignored
  with pytest.raises(DlmError) as e:
    config_lib.validate(c)
  assert str(e.value) == 'unknown config key train.log_evry; did you mean train.log_every?'
  c = tiny_config()
  c.optimizer = ml_collections.ConfigDict({'lr': 1.0})
  with pytest.raises(DlmError, match='^unknown config key optimizer.lr$'):
    config_lib.validate(c)
  d = tiny_config().to_dict()
  del d['sample']['top_p']
  with pytest.raises(DlmError, match='lacks sample.top_p'):
    config_lib.validate(ml_collections.ConfigDict(d))


def test_resume_allows_only_bookkeeping_changes():
  saved = tiny_config()
  now = tiny_config(**{'train.num_iterations': 60, 'train.log_every': 7, 'train.fsdp': 2,
                       'model.attention': 'xla', 'data.num_workers': 2, 'sample.num_steps': 3,
                       'eval.batch_size': 2, 'train.keep_checkpoints': 9})
  assert config_lib.resume_conflicts(saved, now) == []
  now.train.matrix_lr, now.seed, now.model.n_embd = 0.03, 1, 128
  assert config_lib.resume_conflicts(saved, now) == [
      'model.n_embd 64 there, 128 here', 'seed 0 there, 1 here',
      'train.matrix_lr 0.02 there, 0.03 here']
  for key in config_lib.MAY_CHANGE_ON_RESUME:  # names real fields or sections, no typos
    assert key in config_lib.RULES or key in config_lib.base_config()


def test_a_saved_config_with_an_unknown_field_is_one_line(tmp_path):
  path = tmp_path / 'config.json'
  path.write_text(json.dumps({'train': {'log_every': 1, 'warp_drive': 3}}))
  with pytest.raises(DlmError, match='does not know: train.warp_drive'):
    config_lib.load_json(path)
  path.write_text(json.dumps({'train': {'log_every': 'often'}}))
  with pytest.raises(DlmError, match='config.json: .*log_every'):
    config_lib.load_json(path)
  path.write_text(json.dumps({'sample': {'num_steps': 0}}))  # edited by hand
  with pytest.raises(DlmError, match='config.json: sample.num_steps=0 must be a positive integer'):
    config_lib.load_json(path)


# ---- the command line's rules (main.py only parses and dispatches) --------------------------

@pytest.mark.parametrize('mode, given, kwargs, message', [
    ('train', {'seed'}, {}, '--seed does not apply to --mode=train (a flag of --mode=sample|eval)'
                            '; the training seed is --config.seed'),
    ('eval', {'prompt'}, {}, '--prompt does not apply to --mode=eval (a flag of --mode=sample)'),
    ('prepare', {'batch_size'}, {}, '--batch_size does not apply to --mode=prepare'),
    ('sample', set(), {'config_given': True}, '--config and --config.* apply to --mode=train'),
    ('prepare', {'distributed'}, {'distributed': True}, '--mode=prepare runs in one process'),
])
def test_a_flag_the_mode_does_not_read_is_refused(mode, given, kwargs, message):
  with pytest.raises(DlmError, match=re.escape(message)):
    config_lib.check_command(mode, given, **kwargs)


def test_the_flags_each_mode_reads_pass():
  for mode, names in config_lib.MODE_FLAGS.items():
    config_lib.check_command(mode, set(names) - {'config'}, config_given=mode == 'train',
                             distributed=mode != 'prepare')


def test_sampling_and_evaluation_flag_values_are_checked_against_the_run():
  import types
  run = types.SimpleNamespace(config=tiny_config(),
                              model_config=types.SimpleNamespace(family='gaussian',
                                                                 sequence_len=16))
  ok = dict(num_steps=4, seq_len=16, num_samples=2, temperature=0.5, top_p=0.0,
            score_temperature=0.0, guidance=None, label='')
  config_lib.check_sample_flags(run, ok)
  for bad, message in [({'seq_len': 17}, "--seq_len=17 exceeds the model's sequence_len=16"),
                       ({'num_steps': -1}, '--num_samples, --seq_len, --num_steps and '),
                       ({'score_temperature': -1.0}, '--score_temperature must be positive'),
                       ({'guidance': 2.0}, '--guidance steers towards a --label'),
                       ({'guidance': -2.0, 'label': 'yes'}, '--guidance=-2: the guidance scale'),
                       ({'order': 'confidence'}, '--order does not apply to a gaussian run')]:
    with pytest.raises(DlmError, match=re.escape(message)):
      config_lib.check_sample_flags(run, {**ok, **bad})
  config_lib.check_eval_flags({'eval_tokens': 64, 'batch_size': 2, 'bound_samples': 0})
  with pytest.raises(DlmError, match='--bound_samples must be >= 2'):
    config_lib.check_eval_flags({'bound_samples': 1})
  with pytest.raises(DlmError, match='--eval_tokens and --batch_size must be positive'):
    config_lib.check_eval_flags({'batch_size': -4})
  config_lib.check_eval_windows(4, 4, 'validation split', 16, 64)
  with pytest.raises(DlmError, match=re.escape('x.txt gives 3 windows of 16 tokens, fewer than '
                                               '--batch_size=4: lower --batch_size')):
    config_lib.check_eval_windows(3, 4, 'x.txt', 16, 48)


def test_an_output_that_would_overwrite_the_run_or_cannot_be_written_is_refused(tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  config_lib.check_output(str(tmp_path / 'new' / 'out.jsonl'), str(run))
  config_lib.check_output('', str(run))
  for output, message in [(run / 'config.json', "would overwrite the run's own config.json"),
                          (tmp_path, 'is a directory'),
                          (run / 'config.json' / 'x', "would overwrite the run's own")]:
    with pytest.raises(DlmError, match=re.escape(message)):
      config_lib.check_output(str(output), str(run))
