"""Sample quality: draw samples, score them under a frozen AR scorer, and set their statistics
beside held-out text of the same shape.

Generative perplexity is exp(mean NLL) of the samples' tokens under a *separate*, larger AR model
trained on the same training split (`configs/scorer.py`), never one of the models compared (a
model scoring its own samples rewards its own biases). The scorer must share the runs'
tokenizer, so no re-tokenisation is involved (`same_tokenizer` checks it). Each row is scored from its second token on, given the
tokens before it in the row, for samples and held-out windows alike.
"""

import math
import time

import jax
import numpy as np

from dlm import families, metrics, sampling
from dlm.errors import DlmError
from dlm.families import ar


def same_tokenizer(a, b) -> bool:
  return (a.vocab_size == b.vocab_size and a.encoding._pat_str == b.encoding._pat_str
          and a.encoding._mergeable_ranks == b.encoding._mergeable_ranks
          and a.encoding._special_tokens == b.encoding._special_tokens)


def check_scorer(run, scorer, seq_len: int) -> None:
  if not families.of(scorer.model_config).EXACT:
    raise DlmError(f'the scorer in {scorer.workdir} is not an autoregressive run (model.family=ar)')
  if not same_tokenizer(run.tokenizer, scorer.tokenizer):
    raise DlmError(f'the scorer in {scorer.workdir} uses another tokenizer than {run.workdir}')
  if scorer.model_config.sequence_len < seq_len - 1:
    raise DlmError(f'the scorer reads {scorer.model_config.sequence_len} tokens, fewer than '
                   f'the {seq_len - 1} to score')


def token_nll(scorer, rows: np.ndarray, batch_size: int = 64) -> np.ndarray:
  """(N, L - 1): the scorer's NLL in nats of rows[:, j + 1] given rows[:, :j + 1]."""
  rows = np.asarray(rows, np.int32)
  return np.concatenate([
      np.asarray(ar.nll_nats(scorer.params, r[:, 1:], r[:, 0], model=scorer.model))
      for r in (rows[i:i + batch_size] for i in range(0, len(rows), batch_size))])


def generative_nll(scorer, rows: np.ndarray, batch_size: int = 64) -> float:
  """Mean NLL in nats per token of rows[:, 1:] under the scorer, each given its row's prefix."""
  return float(np.mean(token_nll(scorer, rows, batch_size)))


def row_quality(rows: np.ndarray, boundary: int, scorer=None) -> dict:
  """gen-PPL (with a scorer) and the token statistics of `metrics.token_stats`."""
  out = metrics.token_stats(rows, boundary)
  if scorer is not None:
    nll = generative_nll(scorer, rows)
    out.update(gen_nll=nll, gen_ppl=math.exp(nll))
  return out


def sample_quality(run, num_samples: int, seed: int = 0, scorer=None, **settings) -> dict:
  """Draw num_samples samples (settings as in `sampling.sample_array`) and measure them."""
  rows, used = sampling.sample_array(run, num_samples, seed=seed, **settings)
  if scorer is not None:
    check_scorer(run, scorer, rows.shape[1])
  return {**used, 'num_samples': num_samples, **row_quality(rows, run.tokenizer.bos_id, scorer)}


def samples_per_second(run, num_samples: int, repeats: int = 2, **settings) -> float:
  """Throughput of the jitted sampler at this batch size, compilation excluded (a warm-up call
  at the same shapes comes first)."""
  jax.block_until_ready(sampling.sample_array(run, num_samples, seed=0, **settings)[0])
  start = time.perf_counter()
  for r in range(repeats):
    jax.block_until_ready(sampling.sample_array(run, num_samples, seed=r + 1, **settings)[0])
  return repeats * num_samples / (time.perf_counter() - start)
