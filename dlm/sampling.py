"""Generating text from a trained run, for every family: the one entry point (`generate`) the
command line, the notebook and the experiments call.

Each family's jitted sampler (`sample_tokens` of `dlm.families.<family>`) does the work; this
module resolves the options the user left to the run's config, refuses the ones the family does
not take (a `--score_temperature` given to a masked run would be silently ignored otherwise),
builds the known tokens of a prompt or an infill template (`dlm.conditioning`), the label and
the guidance branches, splits the samples over the devices' mesh (data parallel) and turns ids
into records.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from dlm import conditioning, families, labels, sharding
from dlm.errors import DlmError

# Every sampling option: each family takes some of them (its SAMPLE_OPTIONS), read from the
# run's `sample` config when not given. The flag that sets each is --<name>.
OPTIONS = ('num_steps', 'sampler', 'temperature', 'score_temperature', 'self_condition',
           'clamp', 'top_p', 'order', 'cache')


def generate(run, num_samples: int = 4, seq_len: int = 0, seed: int = 0, prompt: str = '',
             infill: str = '', label: str = '', guidance=None, **options) -> list[dict]:
  """Samples from a loaded run (`dlm.checkpoint.load_run`), one dict per sample.

  options: any of OPTIONS the run's family takes (`families.<family>.SAMPLE_OPTIONS`); zero /
  empty / None ones take the run's `sample` config, and one the family does not take is
  refused. Each record carries the decoded `text` (documents joined by blank lines), the
  `documents`, the `tokens`, the seed and every setting, ready to be written as JSONL.

  prompt: text the samples continue (every family). infill: a template whose `[MASK:n]` /
  `[MASK]` placeholders the samples fill (the diffusion families; `conditioning.template`); the
  record's `fills` holds the text generated for each placeholder. label / guidance: the value
  of the run's `data.label` to steer towards and the classifier-free guidance scale (0: the
  unconditional model, 1: the conditional one, > 1: pushed further); the record's
  `attribute` is the label value read off the sample itself.
  """
  tokens, settings = sample_array(run, num_samples, seq_len, seed, prompt, infill, label,
                                  guidance, **options)
  return records(run, tokens, settings, seed)


def records(run, tokens: np.ndarray, settings: dict, seed: int) -> list[dict]:
  """One JSON-ready dict per row of `tokens` drawn with `settings` (see `generate`)."""
  label = _run_label(run)
  found = (np.asarray(labels.of_tokens(jnp.asarray(tokens), label.patterns))
           if label is not None else None)
  spans = settings.get('spans', [])
  out = []
  for i, row in enumerate(tokens):
    docs = run.tokenizer.decode_documents(row)
    r = dict(index=i, text='\n\n'.join(docs), documents=docs, tokens=row.tolist(), seed=seed,
             step=run.step, **settings)
    if spans:
      r['fills'] = [run.tokenizer.decode(row[a:b]) for a, b in spans]
    if found is not None:
      r['attribute'] = label.values[int(found[i])]
    out.append(r)
  return out


def _run_label(run):
  """The run's `data.label` (`labels.Label`), None for runs without one."""
  if not run.model_config.num_labels:
    return None
  return labels.build(run.config.data.label, run.tokenizer)


def condition(run, seq_len: int, prompt: str = '', infill: str = ''):
  """The `conditioning.Condition` of a prompt and / or an infill template, None without."""
  if infill and not families.of(run.model_config).INFILL:
    raise DlmError('--infill needs a diffusion run: an autoregressive model writes left to '
                   'right and never sees the text after a gap (use --prompt to continue a text)')
  if infill:
    return conditioning.template(run.tokenizer, infill, seq_len, run.config.sample.mask_len,
                                 prefix=prompt)
  if prompt:
    return conditioning.prompt(run.tokenizer, prompt, seq_len)
  return None


def guidance_branches(run, label: str, guidance) -> tuple[int, int, float]:
  """(branches, label id, scale) for `sample_tokens`; guidance None takes the config's."""
  W = run.config.sample.guidance if guidance is None else guidance
  if W < 0:
    raise DlmError(f'--guidance={W}: the guidance scale must be >= 0 (0: unconditional, '
                   '1: conditional, > 1: pushed further)')
  if not label:
    return 0, 0, W
  spec = _run_label(run)
  if spec is None and families.of(run.model_config).EXACT:
    raise DlmError(f'--label={label!r}: guidance needs a diffusion run trained with '
                   'data.label; this is an autoregressive run')
  if spec is None:
    raise DlmError(f'--label={label!r}: the run in {run.workdir} was trained without labels '
                   '(train a diffusion run with data.label, e.g. keyword:dragon)')
  # W = 0 and W = 1 need one branch: the mixture is exactly that branch.
  return (0 if W == 0 else 1 if W == 1 else 2), spec.index(label), W


def sample_array(run, num_samples: int, seq_len: int = 0, seed: int = 0, prompt: str = '',
                 infill: str = '', label: str = '', guidance=None, trajectory: bool = False,
                 **options):
  """(token ids (num_samples, seq_len), the settings used): `generate` without decoding.
  trajectory=True (diffusion families): also the per-step ids and entropies of the sampler."""
  family = families.of(run.model_config)
  # Rows padded to a multiple of the devices and dropped: every random draw of a sampler is
  # indexed by row (partitionable threefry), so the kept rows are those of an unpadded run.
  kwargs, settings = prepare(run, sharding.padded(num_samples), seq_len, prompt, infill, label,
                             guidance, **options)
  out = family.sample_tokens(run.params, jax.random.key(seed), run.proposal, model=run.model,
                             trajectory=trajectory, **kwargs)
  if trajectory:
    return (sharding.fetch(out[0])[:num_samples], settings,
            jax.tree.map(lambda x: x[:, :num_samples], sharding.fetch(out[1])))  # (steps, N, L)
  return sharding.fetch(out)[:num_samples], settings


def resolve_options(run, family, options: dict) -> dict:
  """The family's sampling options, each given or else the run's config value; a given option
  the family does not take, or a value it does not know, is one DlmError."""
  given = {k: v for k, v in options.items() if v not in (None, '', 0, 0.0) or v is False}
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    raise DlmError(f'unknown sampling option {unknown[0]!r}; expected one of {", ".join(OPTIONS)}')
  for name in sorted(given):
    if name not in family.SAMPLE_OPTIONS:
      takes = ', '.join(f'--{o}' for o in OPTIONS if o in family.SAMPLE_OPTIONS)
      raise DlmError(f'--{name} does not apply to a {family.NAME} run (model.family='
                     f'{family.NAME} takes {takes})')
  sc, dc = run.config.sample, run.config.diffusion
  out = {name: given.get(name, sc[name]) for name in OPTIONS if name in family.SAMPLE_OPTIONS}
  samplers_ = getattr(family, 'SAMPLERS', None)
  if 'sampler' in out and samplers_ and out['sampler'] not in samplers_:
    raise DlmError(f'--sampler={out["sampler"]!r}: a {family.NAME} run samples with one of '
                   f'{", ".join(samplers_)}')
  if 'self_condition' in out:
    if out['self_condition'] not in ('previous', 'fresh'):
      raise DlmError(f'--self_condition={out["self_condition"]!r}: expected one of previous, '
                     'fresh')
    if not dc.self_condition:
      if 'self_condition' in given:
        raise DlmError('--self_condition: this run was trained without self-conditioning '
                       '(diffusion.self_condition=False)')
      out['self_condition'] = 'off'
  if 'order' in out and out['order'] not in ('random', 'confidence'):
    raise DlmError(f'--order={out["order"]!r}: expected random or confidence')
  return out


def prepare(run, num_samples: int, seq_len: int = 0, prompt: str = '', infill: str = '',
            label: str = '', guidance=None, **options):
  """(keyword arguments of the run's family's jitted `sample_tokens` beside the weights, the key
  and the proposal; the settings to record), arguments as in `sample_array`; num_samples must
  split over the devices (`sharding.padded`)."""
  family = families.of(run.model_config)
  sc = run.config.sample
  L = seq_len or sc.seq_len or run.model_config.sequence_len
  resolved = resolve_options(run, family, options)
  settings = dict(family=family.NAME, seq_len=L, **resolved)
  if run.proposal is not None:
    settings['allocation'] = run.config.diffusion.allocation
  cond = condition(run, L, prompt, infill)
  if cond is not None:
    settings.update(prompt=prompt, infill=infill)
  cond_tokens, known = conditioning.batch(cond, num_samples, L)
  mesh = sharding.make_mesh()
  kwargs = {'mesh': mesh} if cond is None else dict(
      mesh=mesh, cond_tokens=sharding.global_rows(cond_tokens, mesh),
      known=sharding.global_rows(known, mesh))
  branches, label_id, W = guidance_branches(run, label, guidance)
  if label:
    settings.update(label=label, guidance=W)
  if cond is not None and not family.EXACT:
    known_by = 'trained' if run.model_config.conditioning else 'replace'
    settings.update(known_by=known_by, spans=[list(s) for s in cond.spans])
    if known_by == 'replace':
      print('note: this run was trained without conditioning (diffusion.condition_fraction=0):'
            ' known tokens are held by replacement (RePaint-style), which follows them less '
            'closely', file=sys.stderr)
  if resolved.get('self_condition') == 'off':
    resolved['self_condition'] = ''
  return dict(num_samples=num_samples, seq_len=L, bos_id=run.tokenizer.bos_id, label=label_id,
              branches=branches, guidance=W, **resolved, **kwargs), settings
