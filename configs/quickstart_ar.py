"""The autoregressive twin of configs/quickstart.py: same data, tokenizer, optimiser, budget.

  python main.py --config configs/quickstart_ar.py                 # train, evaluate, sample
  python main.py --mode=eval --workdir=runs/quickstart_ar --scorer=runs/scorer

The causal model on the same backbone, with depth / width chosen so its non-embedding
parameters match the diffusion model's (dlm/ar_configs.py; 4 layers of width 296 against
the diffusion model's 4 of 256 plus its time conditioning).
"""

from configs.quickstart import get_config as quickstart
from dlm.ar_configs import ar_twin


def get_config():
  return ar_twin(quickstart())
