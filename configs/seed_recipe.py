"""The seed's recipe, kept to show why dlm does not use it: pure eps-MSE, free embeddings,
the cosine schedule drawn uniformly in time.

  python main.py --config configs/seed_recipe.py

Same model, data and budget as the quickstart; only the objective differs. The seed trains
eps-prediction with MSE on trainable, unnormalised embeddings and decodes with an argmax head.
On TinyStories (README, Results) its loss falls to 0.08 while the embeddings drift (embed_norm
5.6 -> 11.7), the head's cross-entropy ends worse than uniform guessing, the bound is 228
bits/byte against dlm's 1.9, and the samples are "a a a and a a ...".
"""

from configs.quickstart import get_config as quickstart


def get_config():
  c = quickstart()
  c.diffusion.loss = 'mse'
  c.diffusion.parameterization = 'eps'
  c.diffusion.normalize_embeddings = False
  c.diffusion.prior_logits = False
  c.diffusion.self_condition = False
  c.diffusion.allocation = 'schedule'  # cosine, times uniform on the 1000-step grid
  return c
