"""d12: the seed's GPU-sized diffusion model (12 layers, width 768), on one GPU or many.

  python main.py --config configs/d12.py --config.data.path=DATA --workdir=runs/d12

Width 768 and 12 heads come from depth 12; 1024-token windows, bf16 compute, 512K tokens per
optimiser step (gradient accumulation fills in what the devices cannot hold at once).
"""

from dlm.config import base_config


def get_config():
  c = base_config()
  c.model.depth = 12
  c.model.sequence_len = 1024
  c.model.diffusion_dim = 64
  c.model.dtype = 'bfloat16'
  c.data.tokenizer_vocab_size = 32768
  c.train.num_iterations = 5000
  c.train.device_batch_size = 32
  c.train.total_batch_size = 524288
  c.train.ema_decay = 0.999
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.eval.eval_tokens = 1048576
  return c
