"""Quickstart: a small diffusion LM that trains on a laptop CPU in a few minutes.

  python main.py --config configs/quickstart.py            # train, evaluate, show samples
  python main.py --mode=sample --workdir=runs/quickstart   # more samples
  python main.py --mode=eval --workdir=runs/quickstart     # held-out loss and bits per byte

Any field can be overridden, e.g. --config.data.path=../shared/data/tinystories/train.txt
--config.data.val_path=../shared/data/tinystories/valid.txt to train on TinyStories.
"""

from dlm.config import base_config


def get_config():
  c = base_config()
  c.model.depth = 4
  c.model.sequence_len = 64
  c.model.diffusion_dim = 32
  c.data.tokenizer_vocab_size = 2048
  c.train.num_iterations = 1200
  c.train.device_batch_size = 32
  c.train.log_every = 50
  c.train.eval_every = 400
  c.train.checkpoint_every = 400
  c.sample.num_steps = 200
  c.eval.eval_tokens = 16384
  c.eval.batch_size = 32
  return c
