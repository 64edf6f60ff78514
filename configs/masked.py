"""The quickstart with masked (absorbing-state) diffusion: MDLM / MD4 on the same backbone.

  python main.py --config configs/masked.py
  python main.py --mode=sample --workdir=runs/masked --num_steps=128 --order=confidence
  python main.py --mode=eval --workdir=runs/masked --bound_samples=64

Tokens are hidden at random and the model predicts them from the tokens left visible, so it
learns from context at every noise level; its bound is the masked ELBO (docs/results.md, 'Model
families side by side').
"""

from configs.quickstart import get_config as quickstart


def get_config():
  c = quickstart()
  c.model.family = 'masked'
  return c
