"""The quickstart with hybrid corruption (CANDI): masking decides which tokens are corrupted,
Gaussian noise on their embeddings how much.

  python main.py --config configs/hybrid.py
  python main.py --mode=sample --workdir=runs/hybrid --sampler=ddim
  python main.py --mode=eval --workdir=runs/hybrid --bound_samples=64

Clean tokens keep their exact identity, so the model learns from context; corrupted ones still
carry a noisy embedding that the Gaussian samplers move (docs/results.md, 'Model families side
by side').
"""

from configs.quickstart import get_config as quickstart


def get_config():
  c = quickstart()
  c.model.family = 'hybrid'
  return c
