"""The frozen scorer for generative perplexity: a larger AR model on the quickstart's data.

  python main.py --config configs/scorer.py --workdir runs/scorer
  python main.py --mode=eval --workdir=runs/quickstart --scorer=runs/scorer

It must not be one of the models compared: 6 layers of width 384 (the
quickstart pair has 4 of 256 / 296), trained twice as long on the same training split. It
scores the pair's samples token for token, so it must share their tokenizer: the compare and
ablate commands train it first and point the other runs' `data.path` at its prepared tokens
(tokenizer included); `dlm.quality.check_scorer` refuses a scorer with another tokenizer.
"""

from configs.quickstart import get_config as quickstart
from dlm.ar_configs import scorer_config


def get_config():
  return scorer_config(quickstart())
