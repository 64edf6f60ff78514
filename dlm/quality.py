"""Sample quality: draw samples, score them under a frozen AR scorer, and set their statistics
beside held-out text of the same shape.

Generative perplexity is exp(mean NLL) of the samples' tokens under a *separate* model, never
one of the models compared (a model scoring its own samples rewards its own biases). Two kinds
of scorer:
- a larger AR run trained here on the same training split (`configs/scorer.py`), the default
  of the experiment commands. It shares the runs' tokenizer, so no re-tokenisation is involved
  (`same_tokenizer` checks it); its figures compare our runs with each other only.
- a GPT-2-family checkpoint (`dlm.gpt2`, e.g. gpt2-large), the yardstick of the diffusion-LM
  papers. Each row is decoded to text and re-encoded by GPT-2's tokenizer (`retokenize`), so
  the figure does not depend on our tokenizer and can be set beside published ones of the same
  length (docs/scoring.md). With held-out rows as a reference it also gives MAUVE (Pillutla et
  al. 2021) on the scorer's features.
Either way each row is scored from its second token on, given the tokens before it in the row,
for samples and held-out windows alike, and gen-PPL pools the NLL over all scored tokens of all
rows (exp of the token-weighted mean).
"""

import math
import time

import jax
import numpy as np

from dlm import families, gpt2, metrics, sampling
from dlm.errors import DlmError
from dlm.families import ar


def same_tokenizer(a, b) -> bool:
  return (a.vocab_size == b.vocab_size and a.encoding._pat_str == b.encoding._pat_str
          and a.encoding._mergeable_ranks == b.encoding._mergeable_ranks
          and a.encoding._special_tokens == b.encoding._special_tokens)


def load_scorer(spec: str):
  """A GPT-2-family checkpoint (a short name such as gpt2-large, a hub id or a local directory
  in the hub's layout, `gpt2.is_checkpoint_spec`) or else the workdir of an AR run."""
  from dlm import checkpoint
  return gpt2.load(spec) if gpt2.is_checkpoint_spec(spec) else checkpoint.load_run(spec)


def describe_scorer(scorer) -> dict:
  if isinstance(scorer, gpt2.Scorer):
    return scorer.describe()
  from dlm.model import count_params
  return {'workdir': scorer.workdir, 'non_embedding_params': count_params(scorer.params, True),
          'n_layer': scorer.model_config.n_layer, 'n_embd': scorer.model_config.n_embd}


def check_scorer(run, scorer, seq_len: int) -> None:
  if isinstance(scorer, gpt2.Scorer):
    return  # text in, any tokenizer, any length (`gpt2.Scorer.score` windows long rows)
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


def retokenize(rows: np.ndarray, tokenizer, scorer: gpt2.Scorer) -> list[np.ndarray]:
  """Rows of a run's tokens as rows of the scorer's: each stretch between document boundaries
  is decoded to text and encoded by the scorer's tokenizer, and each boundary becomes the
  scorer's `<|endoftext|>`, GPT-2's own document separator. A row that starts with a boundary
  (AR samples do) so starts with `<|endoftext|>`; a diffusion sample starts mid-text. A row
  whose text encodes to nothing is `<|endoftext|>` alone."""
  eot = np.array([scorer.tokenizer.eot_id], np.int32)
  out = []
  for row in np.asarray(rows):
    stretches = np.split(row, np.flatnonzero(row == tokenizer.bos_id))  # all but [0] open with one
    texts = [tokenizer.decode(stretches[0])] + [tokenizer.decode(s[1:]) for s in stretches[1:]]
    parts = []
    for i, ids in enumerate(scorer.tokenizer.encode_batch(texts)):
      parts += [eot, ids.astype(np.int32)] if i else [ids.astype(np.int32)]
    tokens = np.concatenate(parts)
    out.append(tokens if len(tokens) else eot)
  return out


def gpt2_quality(scorer: gpt2.Scorer, rows: np.ndarray, tokenizer) -> tuple[dict, np.ndarray]:
  """(gen-PPL under the GPT-2-family scorer with the statistics of its tokens, (N, D) MAUVE
  features) of rows of the run's tokens (see `retokenize`)."""
  key = (rows.shape, hash(np.asarray(rows).tobytes()), tokenizer.fingerprint())
  if key not in scorer.cache:  # held-out rows are scored once per sweep, not once per point
    tokens = retokenize(rows, tokenizer, scorer)
    nll, features = scorer.score(tokens)
    pooled = np.concatenate(nll)
    gen_nll = float(pooled.mean()) if len(pooled) else float('nan')
    scorer.cache[key] = {
        'gen_nll': gen_nll, 'gen_ppl': math.exp(gen_nll), 'scorer': scorer.name,
        # SEDD's training script averages per-sample perplexities instead (>= gen_ppl, Jensen)
        'gen_ppl_sample_mean': float(np.mean([math.exp(x.mean()) for x in nll if len(x)])),
        'scored_tokens': int(len(pooled)),
        'scorer_tokens_per_row': float(np.mean([len(t) for t in tokens])),
        # the entropy the papers set beside gen-PPL, in the scorer's (GPT-2's) tokens
        'scorer_unigram_entropy': float(np.mean([metrics.entropy(t.tolist()) for t in tokens]))
    }, features
  stats, features = scorer.cache[key]
  return dict(stats), features


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, seed: int = 25) -> dict:
  """MAUVE (Pillutla et al. 2021) of two feature sets with mauve-text's defaults: PCA to 90 %
  of the variance, k-means into max(2, n / 10) buckets, scaling factor 5. Near 1 when the two
  histograms agree; its spread over seeds is large below a few hundred rows per side."""
  import mauve  # mauve-text; only GPT-2-family scoring needs it
  out = mauve.compute_mauve(p_features=np.asarray(p_features, np.float32),
                            q_features=np.asarray(q_features, np.float32), seed=seed,
                            device_id=-1, verbose=False)
  return {'mauve': float(out.mauve), 'mauve_buckets': int(out.num_buckets)}


def row_quality(rows: np.ndarray, boundary: int, scorer=None, tokenizer=None,
                reference: np.ndarray | None = None) -> dict:
  """gen-PPL (with a scorer) and the token statistics of `metrics.token_stats`. A GPT-2-family
  scorer needs the rows' tokenizer, and gives MAUVE against `reference` rows when given."""
  out = metrics.token_stats(rows, boundary)
  if isinstance(scorer, gpt2.Scorer):
    stats, features = gpt2_quality(scorer, rows, tokenizer)
    out.update(stats)
    if reference is not None:
      out.update(mauve_score(features, gpt2_quality(scorer, reference, tokenizer)[1]))
  elif scorer is not None:
    nll = generative_nll(scorer, rows)
    out.update(gen_nll=nll, gen_ppl=math.exp(nll))
  return out


def sample_quality(run, num_samples: int, seed: int = 0, scorer=None,
                   reference: np.ndarray | None = None, **settings) -> dict:
  """Draw num_samples samples (settings as in `sampling.sample_array`) and measure them; with a
  GPT-2-family scorer and held-out `reference` rows, MAUVE against them too."""
  rows, used = sampling.sample_array(run, num_samples, seed=seed, **settings)
  if scorer is not None:
    check_scorer(run, scorer, rows.shape[1])
  return {**used, 'num_samples': num_samples,
          **row_quality(rows, run.tokenizer.bos_id, scorer, run.tokenizer, reference)}


def samples_per_second(run, num_samples: int, repeats: int = 2, **settings) -> float:
  """Throughput of the jitted sampler at this batch size, compilation excluded (a warm-up call
  at the same shapes comes first)."""
  jax.block_until_ready(sampling.sample_array(run, num_samples, seed=0, **settings)[0])
  start = time.perf_counter()
  for r in range(repeats):
    jax.block_until_ready(sampling.sample_array(run, num_samples, seed=r + 1, **settings)[0])
  return repeats * num_samples / (time.perf_counter() - start)
