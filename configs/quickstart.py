"""Quickstart: a small diffusion LM that trains on a laptop CPU in minutes (docs/results.md).

  python main.py --config configs/quickstart.py            # train, evaluate, show samples
  python main.py --mode=sample --workdir=runs/quickstart   # more samples
  python main.py --mode=eval --workdir=runs/quickstart --bound_samples=64   # bits per byte

Any field can be overridden, e.g. --config.data.path=tinystories to train on TinyStories from
the Hugging Face hub, or --config.data.path=stories.txt on a text file of your own.

500 steps rather than more: with the adaptive noise allocation (the default) the model spends
its steps where tokens are decided, so 500 of them beat the 1,200 the cosine schedule needed
(docs/results.md, 'The quickstart') and the whole command fits a laptop's coffee break.
"""

from dlm.config import base_config


def get_config():
  c = base_config()
  c.model.depth = 4
  c.model.sequence_len = 64
  c.model.diffusion_dim = 32
  c.data.tokenizer_vocab_size = 2048
  c.train.num_iterations = 500
  c.train.device_batch_size = 32
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.sample.num_steps = 64
  c.eval.eval_tokens = 16384
  c.eval.batch_size = 32
  return c
