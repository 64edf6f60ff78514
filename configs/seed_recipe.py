"""The seed's recipe, kept to show why dlm does not use it: pure eps-MSE, free embeddings,
the cosine schedule drawn uniformly in time.

  python main.py --config configs/seed_recipe.py

Same model, data and budget as the quickstart; only the objective differs. The seed trains
eps-prediction with MSE on trainable, unnormalised embeddings and decodes with an argmax head.
On TinyStories its loss falls towards zero while the embeddings drift, the head's cross-entropy
ends worse than uniform guessing, and its bound is several times dlm's (docs/results.md, 'The
seed's recipe beside dlm's').
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
