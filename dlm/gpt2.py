"""GPT-2-family scorers from Hugging Face checkpoints, in jax.numpy (no other framework).

The diffusion-LM papers (MDLM, SEDD, Duo, Plaid) report generative perplexity under GPT-2 Large,
often with MAUVE (Pillutla et al. 2021), whose reference features are GPT-2 Large's as well. This
module reads a checkpoint in the hub's layout (config.json, model.safetensors, vocab.json,
merges.txt) into plain arrays and runs GPT-2 (Radford et al. 2019) forward: learned positions,
pre-LayerNorm blocks, tanh-GELU MLP, biases everywhere, the output head tied to the token
embedding. The layers run under `lax.scan` over stacked weights, so compile time does not grow
with depth (gpt2-xl has 48 layers).

The tokenizer is GPT-2's byte-level BPE built from vocab.json and merges.txt as a
`tiktoken.Encoding`: single bytes first, then each merge in file order, so tiktoken's
"lowest rank first" merging is GPT-2's merge order (the same construction tiktoken uses for its
own GPT-2 files); ranks map back to the checkpoint's ids through a table.

`load(spec)` takes a short name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2), a hub
repository id, or a local directory. Names go through `huggingface_hub`'s cache first and the
network only when the hub answers; offline, a missing file is one DlmError line.
"""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import tiktoken

from dlm.errors import DlmError

FILES = ('config.json', 'model.safetensors', 'vocab.json', 'merges.txt')
SHARDED_INDEX = 'model.safetensors.index.json'  # big checkpoints split over several files
# The short names users type, and the repositories that hold them today.
HUB_NAMES = {'gpt2': 'openai-community/gpt2', 'gpt2-medium': 'openai-community/gpt2-medium',
             'gpt2-large': 'openai-community/gpt2-large', 'gpt2-xl': 'openai-community/gpt2-xl',
             'distilgpt2': 'distilbert/distilgpt2'}
EOT = '<|endoftext|>'
# GPT-2's pre-tokenisation: contractions, letter runs, digit runs and other symbols each with at
# most one leading space, and whitespace runs (the last space stays with the next word).
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LENGTH_MULTIPLE = 64  # rows are padded up to a multiple of this: few shapes, few compilations


@dataclasses.dataclass(frozen=True)
class Config:
  vocab_size: int
  n_positions: int
  n_embd: int
  n_layer: int
  n_head: int
  layer_norm_epsilon: float = 1e-5

  @classmethod
  def from_json(cls, d: dict, where: str) -> 'Config':
    if d.get('model_type') != 'gpt2':
      raise DlmError(f'{where}: model_type {d.get("model_type")!r} is not gpt2')
    # Variants that change the arithmetic; no released GPT-2-family checkpoint sets them.
    if d.get('activation_function', 'gelu_new') != 'gelu_new' or d.get(
        'scale_attn_by_inverse_layer_idx') or d.get('reorder_and_upcast_attn') or not d.get(
        'scale_attn_weights', True):
      raise DlmError(f'{where}: a GPT-2 variant this scorer does not implement (activation '
                     f'{d.get("activation_function")!r} or attention scaling options)')
    try:
      return cls(vocab_size=d['vocab_size'], n_positions=d['n_positions'], n_embd=d['n_embd'],
                 n_layer=d['n_layer'], n_head=d['n_head'],
                 layer_norm_epsilon=d.get('layer_norm_epsilon', 1e-5))
    except KeyError as e:
      raise DlmError(f'{where}: config.json lacks {e.args[0]}') from None


# ---- files --------------------------------------------------------------------------------


def resolve(spec: str) -> str:
  """A local directory holding FILES for `spec` (a directory, short name or hub id)."""
  if os.path.isdir(spec):
    sharded = os.path.exists(os.path.join(spec, SHARDED_INDEX))
    missing = [f for f in FILES if not os.path.exists(os.path.join(spec, f))
               and not (f == 'model.safetensors' and sharded)]
    if missing:
      raise DlmError(f'{spec} is not a GPT-2 checkpoint directory: it lacks {", ".join(missing)}')
    return spec
  import huggingface_hub
  from dlm.data import sources
  repo = HUB_NAMES.get(spec, spec)
  patterns = [*FILES, SHARDED_INDEX, 'model-*.safetensors']
  try:  # the cache first: no network needed for a scorer used before
    return resolve(huggingface_hub.snapshot_download(repo, allow_patterns=patterns,
                                                     local_files_only=True))
  except Exception:  # not cached, or cached incompletely
    pass
  if not sources.online():
    raise DlmError(f'scorer {spec!r}: {repo} is not in the Hugging Face cache'
                   + ('' if spec in HUB_NAMES else ' nor a local directory')
                   + f' and the hub cannot be reached (offline); fetch {", ".join(FILES)} once '
                   'online or pass a local directory holding them')
  try:
    return resolve(huggingface_hub.snapshot_download(repo, allow_patterns=patterns))
  except DlmError:
    raise
  except Exception as e:
    raise DlmError(f'scorer {spec!r}: cannot download {repo} from the hub: '
                   f'{" ".join(str(e).split())[:200]}') from None


def is_checkpoint_spec(spec: str) -> bool:
  """Whether `spec` names a GPT-2-family checkpoint (rather than a dlm run's workdir): a known
  short name, a directory with a Hugging Face config.json, or an `owner/name` hub id that is
  not a local path."""
  if spec in HUB_NAMES:
    return True
  config = os.path.join(spec, 'config.json')
  if os.path.isdir(spec):
    if not os.path.exists(config):
      return False
    try:
      with open(config) as f:
        return 'model_type' in json.load(f)
    except (OSError, ValueError):
      return False
  return '://' not in spec and spec.count('/') == 1 and not spec.startswith(('.', '/'))


def read_config(directory: str) -> Config:
  path = os.path.join(directory, 'config.json')
  try:
    with open(path) as f:
      return Config.from_json(json.load(f), path)
  except (OSError, ValueError) as e:
    raise DlmError(f'cannot read {path}: {e}') from None


def read_tensors(directory: str) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint by name, without the `transformer.` prefix that
  GPT2LMHeadModel's files put before GPT2Model's names."""
  from safetensors.numpy import load_file
  index = os.path.join(directory, SHARDED_INDEX)
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
  else:
    files = ['model.safetensors']
  out = {}
  for name in files:
    try:
      tensors = load_file(os.path.join(directory, name))
    except Exception as e:  # a truncated download, a file of another format
      raise DlmError(f'cannot read {os.path.join(directory, name)}: {e}') from None
    out.update((k.removeprefix('transformer.'), v) for k, v in tensors.items())
  return out


def params_from_tensors(tensors: dict[str, np.ndarray], c: Config, where: str = '') -> dict:
  """The nested parameter tree `forward` reads, float32, with each layer's tensors stacked on a
  leading layer axis. HF's Conv1D weights are stored (in, out): x @ w as they are."""
  def get(name, shape):
    if name not in tensors:
      raise DlmError(f'{where}: the checkpoint lacks {name}')
    t = np.asarray(tensors[name], np.float32)
    if t.shape != shape:
      raise DlmError(f'{where}: {name} has shape {t.shape}, config.json implies {shape}')
    return t

  d = c.n_embd
  layer_shapes = {'ln_1.weight': (d,), 'ln_1.bias': (d,), 'attn.c_attn.weight': (d, 3 * d),
                  'attn.c_attn.bias': (3 * d,), 'attn.c_proj.weight': (d, d),
                  'attn.c_proj.bias': (d,), 'ln_2.weight': (d,), 'ln_2.bias': (d,),
                  'mlp.c_fc.weight': (d, 4 * d), 'mlp.c_fc.bias': (4 * d,),
                  'mlp.c_proj.weight': (4 * d, d), 'mlp.c_proj.bias': (d,)}
  layers = {k: np.stack([get(f'h.{i}.{k}', s) for i in range(c.n_layer)])
            for k, s in layer_shapes.items()}
  return {'wte': get('wte.weight', (c.vocab_size, d)), 'wpe': get('wpe.weight', (c.n_positions, d)),
          'ln_f.weight': get('ln_f.weight', (d,)), 'ln_f.bias': get('ln_f.bias', (d,)),
          'layers': layers}


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's printable stand-in for each byte in vocab.json and merges.txt: printable Latin-1
  bytes stand for themselves, the other 68 for code points 256, 257, ... in byte order."""
  keep = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
          *range(ord('®'), ord('ÿ') + 1)]
  extra = iter(range(256, 512))
  return {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}


class Tokenizer:
  """GPT-2's byte-level BPE from vocab.json + merges.txt: encode to and decode from the
  checkpoint's ids."""

  def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], where: str = '') -> None:
    to_byte = {u: b for b, u in bytes_to_unicode().items()}

    def raw(token: str) -> bytes:
      try:
        return bytes(to_byte[ch] for ch in token)
      except KeyError:
        raise DlmError(f'{where}: vocab token {token!r} is not in byte-level form') from None

    singles = sorted((i, raw(t)) for t, i in vocab.items() if len(t) == 1 and t in to_byte)
    if len(singles) != 256:
      raise DlmError(f'{where}: vocab.json holds {len(singles)} of the 256 single bytes')
    ranks, rank_ids = {}, []
    for i, b in singles:
      ranks[b] = len(rank_ids)
      rank_ids.append(i)
    for a, b in merges:
      token = a + b
      if token not in vocab:
        raise DlmError(f'{where}: merge {a!r} {b!r} makes {token!r}, which vocab.json lacks')
      if raw(token) not in ranks:
        ranks[raw(token)] = len(rank_ids)
        rank_ids.append(vocab[token])
    if EOT not in vocab:
      raise DlmError(f'{where}: vocab.json lacks {EOT}')
    self.eot_id = vocab[EOT]
    self.rank_ids = np.asarray(rank_ids, np.int32)
    self.encoding = tiktoken.Encoding('gpt2-scorer', pat_str=PATTERN, mergeable_ranks=ranks,
                                      special_tokens={})
    self.vocab_bytes = {vocab[t]: raw(t) for t in vocab if t != EOT}

  @classmethod
  def from_dir(cls, directory: str) -> 'Tokenizer':
    vocab_path, merges_path = (os.path.join(directory, f) for f in ('vocab.json', 'merges.txt'))
    try:
      with open(vocab_path, encoding='utf-8') as f:
        vocab = json.load(f)
      with open(merges_path, encoding='utf-8') as f:
        lines = [l for l in f.read().split('\n') if l and not l.startswith('#version')]
    except (OSError, ValueError) as e:
      raise DlmError(f'cannot read the tokenizer in {directory}: {e}') from None
    merges = [tuple(l.split(' ')) for l in lines]
    if any(len(m) != 2 for m in merges):
      raise DlmError(f'{merges_path}: every line must be two tokens separated by a space')
    return cls(vocab, merges, directory)

  def encode(self, text: str) -> np.ndarray:
    """The checkpoint's ids of `text` (special tokens in it are plain text)."""
    return self.rank_ids[np.asarray(self.encoding.encode_ordinary(text), np.int64)]

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [self.rank_ids[np.asarray(r, np.int64)]
            for r in self.encoding.encode_ordinary_batch(list(texts))]

  def decode(self, ids) -> str:
    return b''.join(self.vocab_bytes.get(int(i), EOT.encode()) for i in ids).decode(
        'utf-8', errors='replace')


# ---- the network ---------------------------------------------------------------------------


def _layer_norm(x, w, b, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * w + b


def forward(params: dict, ids: jax.Array, c: Config) -> jax.Array:
  """(B, T) ids -> (B, T, D) hidden states after the final LayerNorm (HF's last
  `hidden_states`). Causal attention: padding after a row's end cannot reach its tokens."""
  B, T = ids.shape
  H, K = c.n_head, c.n_embd // c.n_head
  x = params['wte'][ids] + params['wpe'][:T]
  causal = jnp.tril(jnp.ones((T, T), bool))

  def block(x, p):
    h = _layer_norm(x, p['ln_1.weight'], p['ln_1.bias'], c.layer_norm_epsilon)
    q, k, v = jnp.split(h @ p['attn.c_attn.weight'] + p['attn.c_attn.bias'], 3, axis=-1)
    q, k, v = (t.reshape(B, T, H, K) for t in (q, k, v))
    logits = jnp.einsum('bqhk,bshk->bhqs', q, k) / np.sqrt(K)
    weights = jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)
    a = jnp.einsum('bhqs,bshk->bqhk', weights, v).reshape(B, T, H * K)
    x = x + a @ p['attn.c_proj.weight'] + p['attn.c_proj.bias']
    h = _layer_norm(x, p['ln_2.weight'], p['ln_2.bias'], c.layer_norm_epsilon)
    h = jax.nn.gelu(h @ p['mlp.c_fc.weight'] + p['mlp.c_fc.bias'], approximate=True)  # gelu_new
    return x + h @ p['mlp.c_proj.weight'] + p['mlp.c_proj.bias'], None

  x, _ = jax.lax.scan(block, x, params['layers'])
  return _layer_norm(x, params['ln_f.weight'], params['ln_f.bias'], c.layer_norm_epsilon)


@functools.partial(jax.jit, static_argnames='c')
def nll_and_features(params: dict, ids: jax.Array, lengths: jax.Array,
                     c: Config) -> tuple[jax.Array, jax.Array]:
  """((B, T - 1) NLL in nats of ids[:, j + 1] given ids[:, :j + 1], (B, D) the hidden state at
  each row's last real token, position lengths - 1: MAUVE's feature)."""
  h = forward(params, ids, c)
  logits = h[:, :-1] @ params['wte'].T
  target = ids[:, 1:]
  nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, target[..., None], -1)[..., 0]
  return nll, h[jnp.arange(len(ids)), lengths - 1]


# ---- scoring -------------------------------------------------------------------------------


def counted(window: np.ndarray, eot: int) -> np.ndarray:
  """Which of window[1:] gen-PPL counts: every token but an `<|endoftext|>` after the window's
  first, MDLM's rule (its samples end in runs of end-of-text padding, which would otherwise
  dominate). The first boundary is a prediction like any other token."""
  is_eot = np.asarray(window) == eot
  return (~is_eot | (np.cumsum(is_eot) == 1))[1:]


@dataclasses.dataclass
class Scorer:
  """A loaded GPT-2-family checkpoint: its name, config, parameters (on device) and tokenizer."""
  name: str
  config: Config
  params: dict
  tokenizer: Tokenizer
  batch_size: int = 8
  cache: dict = dataclasses.field(default_factory=dict, repr=False)  # `quality.gpt2_quality`'s

  def describe(self) -> dict:
    c = self.config
    return {'name': self.name, 'n_layer': c.n_layer, 'n_embd': c.n_embd,
            'n_positions': c.n_positions,
            'params': int(sum(np.size(x) for x in jax.tree.leaves(self.params)))}

  def score(self, rows: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """([per row, the NLL of its counted tokens (`counted`) from the second on, each given the
    ones before], (N, D) features).

    A row longer than the context (n_positions) is scored in consecutive windows of that size,
    each window's first token given nothing and so not scored (as MDLM splits its samples);
    the feature is the last hidden state of the row's first window, as MAUVE truncates to the
    model's context. Rows are batched by padded length, in batches of `batch_size` (the last
    one padded with copies so every call has one of a few shapes)."""
    n_ctx = self.config.n_positions
    pieces = []  # (row, window index, window)
    for r, row in enumerate(rows):
      if len(row) == 0:
        raise ValueError('cannot score an empty row')
      pieces += [(r, k, row[i:i + n_ctx]) for k, i in enumerate(range(0, len(row), n_ctx))]
    nll = {}
    features = np.zeros((len(rows), self.config.n_embd), np.float32)
    pieces.sort(key=lambda p: len(p[2]))
    for start in range(0, len(pieces), self.batch_size):
      group = pieces[start:start + self.batch_size]
      T = min(n_ctx, -(-len(group[-1][2]) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE)
      ids = np.zeros((self.batch_size, T), np.int32)
      lengths = np.ones(self.batch_size, np.int32)
      for j, (_, _, w) in enumerate(group):
        ids[j, :len(w)], lengths[j] = w, len(w)
      out_nll, out_h = (np.asarray(a) for a in nll_and_features(self.params, ids, lengths,
                                                                self.config))
      for j, (r, k, w) in enumerate(group):
        nll[r, k] = out_nll[j, :len(w) - 1][counted(w, self.tokenizer.eot_id)]
        if k == 0:
          features[r] = out_h[j]
    return [np.concatenate([nll[r, k] for k in range(-(-len(row) // n_ctx))])
            for r, row in enumerate(rows)], features


def load(spec: str, batch_size: int = 8) -> Scorer:
  """The scorer `spec` names (see the module docstring), its parameters on the default device."""
  directory = resolve(spec)
  c = read_config(directory)
  params = params_from_tensors(read_tensors(directory), c, directory)
  tokenizer = Tokenizer.from_dir(directory)
  if max(tokenizer.rank_ids.max(), tokenizer.eot_id) >= c.vocab_size:
    raise DlmError(f'{directory}: the tokenizer has ids beyond the model\'s vocab_size '
                   f'{c.vocab_size}')
  return Scorer(spec, c, jax.device_put(params), tokenizer, batch_size)
