"""The shared backbone: bidirectional for diffusion, causal for the AR baseline, time-aware."""

import jax
import jax.numpy as jnp
import numpy as np

from dlm.model import ModelConfig, Transformer, count_params


def _random_params(model, *inputs):
  """Init, then replace every weight with noise: the zero-initialised projections would
  otherwise hide any mixing between positions."""
  params = model.init(jax.random.key(0), *inputs)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(treedef, [0.3 * jax.random.normal(k, x.shape) for k, x in
                                      zip(keys, leaves)])


def _cfg(**kw):
  return ModelConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, sequence_len=8,
                     diffusion_dim=8, **kw)


def test_diffusion_model_is_bidirectional():
  model = Transformer(_cfg())
  z = jax.random.normal(jax.random.key(2), (1, 8, 8))
  lam = jnp.zeros((1,))
  params = _random_params(model, z, lam)
  changed = z.at[0, -1].add(1.0)  # change only the last position
  out, out2 = model.apply(params, z, lam), model.apply(params, changed, lam)
  assert float(jnp.abs(out[0, 0] - out2[0, 0]).max()) > 1e-3  # the first position sees it


def test_causal_model_ignores_later_tokens():
  model = Transformer(_cfg(causal=True))
  tokens = jnp.arange(8)[None] % 64
  params = _random_params(model, tokens)
  changed = tokens.at[0, -1].set(33)
  out, out2 = model.apply(params, tokens), model.apply(params, changed)
  np.testing.assert_allclose(out[0, :-1], out2[0, :-1], atol=1e-5)
  assert float(jnp.abs(out[0, -1] - out2[0, -1]).max()) > 1e-3


def test_time_conditioning_changes_the_output():
  model = Transformer(_cfg(prior_logits=False))
  z = jax.random.normal(jax.random.key(2), (2, 8, 8))
  params = _random_params(model, z, jnp.zeros((2,)))
  out = model.apply(params, z, jnp.array([-5.0, 5.0]))
  out_same = model.apply(params, z[:1].repeat(2, 0), jnp.array([-5.0, 5.0]))
  assert float(jnp.abs(out_same[0] - out_same[1]).max()) > 1e-3
  assert out.shape == (2, 8, 64) and out.dtype == jnp.float32


def test_zero_head_gives_exactly_the_independent_token_posterior_at_init():
  from dlm import diffusion
  model = Transformer(_cfg())
  z = jax.random.normal(jax.random.key(2), (1, 8, 8))
  lam = jnp.array([1.0])
  params = model.init(jax.random.key(0), z, lam)
  E = model.apply(params, method=Transformer.embedding)
  np.testing.assert_allclose(model.apply(params, z, lam), diffusion.prior_logits(z, lam, E),
                             rtol=1e-5, atol=1e-4)


def test_normalised_embeddings_have_norm_sqrt_dim():
  model = Transformer(_cfg())
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8)), jnp.zeros((1,)))
  norms = jnp.linalg.norm(model.apply(params, method=Transformer.embedding), axis=-1)
  np.testing.assert_allclose(norms, np.sqrt(8), rtol=1e-5)


def test_sequence_longer_than_the_model_maximum_is_rejected():
  model = Transformer(_cfg(causal=True))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  try:
    model.apply(params, jnp.zeros((1, 9), jnp.int32))
  except ValueError as e:
    assert 'exceeds the model maximum' in str(e)
  else:
    raise AssertionError('no error for an over-long sequence')


def test_parameter_count():
  cfg = _cfg(causal=True)
  params = Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  per_layer = 4 * 32 * 32 + 2 * 4 * 32 * 32  # q k v out + mlp in/out (the AR model has no modulation)
  assert count_params(params, exclude_embeddings=True) == 2 * per_layer + 32 * 64
  assert count_params(params) == 2 * per_layer + 32 * 64 + 64 * 32


def _dot_dtypes(fn, *args, width: int):
  """Operand dtypes of every dot_general in fn's jaxpr that touches the model width."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'dot_general':
        if any(width in v.aval.shape for v in eqn.invars):
          found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
      for param in eqn.params.values():  # the bodies of scan, remat, pjit, custom_vjp ...
        for sub in (param if isinstance(param, (list, tuple)) else (param,)):
          inner = getattr(sub, 'jaxpr', sub)
          if hasattr(inner, 'eqns'):
            walk(inner)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def test_bfloat16_runs_every_width_matmul_in_bf16_and_trains_finitely(tmp_path):
  """Under dtype=bfloat16 the head, input projection, time MLP and modulation run in bf16 too,
  with float32 parameters; a short bf16 run keeps a finite loss."""
  from conftest import tiny_config
  from dlm import train
  cfg = ModelConfig(vocab_size=128, n_layer=2, n_head=2, n_embd=48, sequence_len=8,
                    diffusion_dim=16, dtype='bfloat16')
  model = Transformer(cfg)
  z, lam = jnp.zeros((2, 8, 16)), jnp.zeros((2,))
  params = model.init(jax.random.key(0), z, lam)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  dtypes = _dot_dtypes(lambda p: model.apply(p, z, lam), params, width=48)
  assert len(dtypes) >= 8 and all(d == ('bfloat16', 'bfloat16') for d in dtypes), dtypes
  assert model.apply(params, z, lam).dtype == jnp.float32
  result = train.train(tiny_config(**{'model.dtype': 'bfloat16', 'train.num_iterations': 4}),
                       str(tmp_path), log=lambda *a, **k: None)
  assert np.isfinite(result['val_loss']) and np.isfinite(result['bits_per_token'])


def test_attention_auto_is_xla_off_gpu_and_cudnn_is_refused_there():
  import pytest
  from dlm import config as config_lib
  from dlm.errors import DlmError
  c = config_lib.base_config()
  c.model.dtype = 'bfloat16'
  assert config_lib.attention(c) == ('cudnn' if jax.default_backend() == 'gpu' else 'xla')
  c.model.attention = 'cudnn'
  if jax.default_backend() != 'gpu':
    with pytest.raises(DlmError, match='model.attention=cudnn needs an NVIDIA GPU'):
      config_lib.validate(c)
  c.model.attention = 'flash'
  with pytest.raises(DlmError, match="model.attention='flash'"):
    config_lib.validate(c)


def test_every_remat_policy_gives_the_same_parameters_loss_and_gradients():
  """model.remat changes what the backward pass recomputes, never the values (so a run may
  resume with another policy: config.SAME_MATH), and it is really applied."""
  from dlm.model import REMAT
  z = jax.random.normal(jax.random.key(2), (2, 8, 8))
  lam = jnp.array([-1.0, 2.0])
  targets = jax.random.randint(jax.random.key(3), (2, 8), 0, 64)
  results = {}
  for remat in REMAT:
    model = Transformer(_cfg(remat=remat))
    params = _random_params(model, z, lam)

    def loss(p):
      logp = jax.nn.log_softmax(model.apply(p, z, lam))
      return -jnp.take_along_axis(logp, targets[..., None], -1).mean()
    traced = jax.jit(jax.value_and_grad(loss)).trace(params)
    rematerialised = 'remat' in str(traced.jaxpr)  # jax.checkpoint's primitive
    results[remat] = (params, *traced.lower().compile()(params), rematerialised)
  (p0, l0, g0, r0) = results['none']
  assert not r0
  for remat in REMAT[1:]:
    p, l, g, r = results[remat]
    assert r, remat
    assert jax.tree.structure(p) == jax.tree.structure(p0)  # checkpoints stay interchangeable
    np.testing.assert_allclose(l, l0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
