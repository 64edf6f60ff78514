"""The autoregressive twin of configs/d12.py (matched non-embedding parameters).

  python main.py --config configs/d12_ar.py --config.data.path=DATA --workdir=runs/d12_ar
"""

from configs.d12 import get_config as d12
from dlm.ar_configs import ar_twin


def get_config():
  return ar_twin(d12())
