"""When a diffusion bound may be printed as a result, and the headline ratios (pure functions).

The bound is a Monte-Carlo estimate (`dlm.evaluate`): beside the spread over sequences it
carries the error of its own draws (`*_mc_stderr`), which few draws (eval.bound_samples) or a
barely trained model make large. A report compares the bound with something, the AR twin's
exact NLL or another variant's bound, and a gap smaller than a few times that error is noise.
So a report prints the flag these functions return beside such a bound instead of a verdict.
"""

import math

MC_SHARE = 0.25  # the MC error may be at most this share of the gap it is compared with
Z = 3.0          # "below the AR NLL" needs this many combined standard errors
BPB_TARGET = 1.35    # the target: diffusion bits/byte <= 1.35 x the AR twin's
STEPS_TARGET = 0.20  # 32-step gen-PPL within 20% of 256-step gen-PPL
STEPS_PAIR = (32, 256)


def _sq(x) -> float:
  return 0.0 if x is None or not math.isfinite(x) else x * x


def _mc_flag(mc: float) -> str:
  return (f'⚠ not significant: Monte-Carlo error ±{mc:.3f} bits/token; '
          'raise eval.bound_samples')


def vs_exact(bound: dict, exact: dict, prefix: str = '') -> str:
  """'' when the diffusion bound (an evaluate() dict; prefix '' or 'discrete_') can be set
  beside the AR twin's exact NLL, else the warning to print instead of a verdict."""
  mc = bound.get(f'{prefix}bits_per_token_mc_stderr')
  if mc is None:
    return ''
  gap = bound[f'{prefix}bits_per_token'] - exact['bits_per_token']
  if mc > MC_SHARE * abs(gap):
    return _mc_flag(mc)
  # Sequences are shared, so the errors are correlated; adding them in quadrature overstates
  # the error of the difference, which only makes the claim "below the AR NLL" harder to make.
  se = math.sqrt(_sq(bound[f'{prefix}bits_per_token_stderr']) + _sq(mc)
                 + _sq(exact['bits_per_token_stderr']))
  if gap < 0 and -gap < Z * se:
    return (f'⚠ not significant: {-gap:.3f} bits/token below the AR NLL, less than {Z:g} '
            f'standard errors (±{se:.3f}); raise eval.bound_samples and eval.eval_tokens')
  return ''


def vs_others(bound: dict, others: list[dict]) -> str:
  """'' when the bound (an evaluate() dict) differs from the nearest of other variants' bounds
  by more than Z times their combined Monte-Carlo error, else the warning. The variants share
  the held-out sequences, so the spread over sequences largely cancels in the difference and
  the draws' error is what can reorder them. No others: nothing compared."""
  mc = bound.get('bits_per_token_mc_stderr')
  if mc is None or not others:
    return ''
  nearest = min(others, key=lambda o: abs(bound['bits_per_token'] - o['bits_per_token']))
  gap = abs(bound['bits_per_token'] - nearest['bits_per_token'])
  combined = math.sqrt(_sq(mc) + _sq(nearest.get('bits_per_token_mc_stderr')))
  return _mc_flag(mc) if gap < Z * combined else ''


def bpb_ratio(bound: dict, exact: dict) -> float:
  """Diffusion bits/byte over the AR twin's: the headline (target <= BPB_TARGET)."""
  return bound['bits_per_byte'] / exact['bits_per_byte']


def steps_ratios(steps_sweep: list[dict]) -> dict:
  """{sampler: gen-PPL at STEPS_PAIR[0] steps / at STEPS_PAIR[1] steps, None if not swept};
  the sampler None for a family without a choice of sampler."""
  ppl = {(q.get('sampler'), q['num_steps']): q['gen_ppl'] for q in steps_sweep}
  out = {}
  for sampler in dict.fromkeys(q.get('sampler') for q in steps_sweep):
    few, many = (ppl.get((sampler, s)) for s in STEPS_PAIR)
    out[sampler] = few / many if few and many else None
  return out
