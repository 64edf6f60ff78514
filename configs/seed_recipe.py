"""The seed's recipe, kept to show why dlm does not use it: pure eps-MSE, free embeddings.

  python main.py --config configs/seed_recipe.py

Same model, data and budget as the quickstart; only the objective differs. The seed trains
eps-prediction with MSE on trainable, unnormalised embeddings and decodes with an argmax head.
The MSE can be driven toward zero by shrinking the embeddings (watch embed_norm in the log):
the loss looks excellent while the samples and the likelihood bound are poor.
"""

from configs.quickstart import get_config as quickstart


def get_config():
  c = quickstart()
  c.diffusion.loss = 'mse'
  c.diffusion.parameterization = 'eps'
  c.diffusion.normalize_embeddings = False
  c.diffusion.prior_logits = False
  c.diffusion.self_condition = False
  return c
