"""The training state as a plain pytree: {step, params, opt_state, faults[, ema][, noise]}.

`faults` counts the steps skipped for a non-finite loss or gradient (`train.make_train_step`).

`noise` (the families that keep one: gaussian, hybrid, latent) is the noise allocation's state
(`dlm.noise`): the running cross-entropy curve over log-SNR and the proposal q built from it,
checkpointed like the rest; the latent family keeps its frozen autoencoder there too (`frozen`).

Built once from the config by `create`; `jax.eval_shape` of the same function gives the
abstract target that Orbax restores into (with the shardings of the current mesh).
"""

import jax.numpy as jnp
import optax

from dlm import families, noise
from dlm.model import ModelConfig, Transformer, dummy_input
from dlm.optim import make_optimizer


def create(mcfg: ModelConfig, c, frozen=None):
  """(model, optimizer, init_fn) where init_fn(key) -> state. frozen: the arrays the family's
  `prepare` made (the latent family's autoencoder), put in its noise state as `frozen`; without
  them that part holds the family's placeholders of the same shapes (a restore target)."""
  model = Transformer(mcfg)
  tx = make_optimizer(c.train, mcfg.n_embd, mcfg.learn_embeddings)

  def init_fn(key):
    params = model.init(key, *dummy_input(mcfg))
    state = {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params),
             'faults': {'skipped': jnp.zeros((), jnp.int32), 'streak': jnp.zeros((), jnp.int32)}}
    if c.train.ema_decay:
      state['ema'] = params
    noise_state = families.of(mcfg).init_noise(c, mcfg)
    if noise_state is not None:
      state['noise'] = noise_state if frozen is None else dict(noise_state, frozen=frozen)
    return state
  return model, tx, init_fn


def sampling_params(state):
  """EMA weights where the run keeps them (Polyak averaging), else the raw ones."""
  return state.get('ema', state['params'])


def ema_update(ema, params, decay: float):
  return optax.incremental_update(params, ema, 1.0 - decay)


def proposal(state):
  """The run's noise proposal q ({cdf, edges}, `dlm.noise`), None for a family without one."""
  return noise.proposal(state['noise']) if 'noise' in state else None
