"""The quickstart with latent diffusion: a text autoencoder (4 tokens -> one 32-d vector) is
trained first, then Gaussian diffusion runs on its 16 latents per 64-token window.

  python main.py --config configs/latent.py --workdir=runs/latent   # both stages, resumable
  python main.py --mode=sample --workdir=runs/latent --num_steps=64
  python main.py --mode=eval --workdir=runs/latent   # reconstruction_accuracy; no bits (why: docs/latent.md)

Token budget: the autoencoder stage takes latent.iterations steps and the diffusion stage
train.num_iterations, both of train.device_batch_size x model.sequence_len tokens, so the run
reads (latent.iterations + train.num_iterations) x 32 x 64 tokens in all. The experiments
(compare, infill, ablate) put it at another family's budget of N steps themselves: N x
latent.fraction autoencoder steps, the rest diffusion (`at_budget`, docs/latent.md).
"""

from configs.quickstart import get_config as quickstart


def get_config():
  c = quickstart()
  c.model.family = 'latent'
  c.diffusion.parameterization = 'x0'
  # 400 autoencoder steps: on the cpu preset's model they gave 99.3% of held-out tokens back
  # (docs/latent.md); the run reads 400 + 400 batches of 32 x 64 tokens in all
  c.latent.iterations = 400
  c.train.num_iterations = 400
  return c
