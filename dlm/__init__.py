"""dlm: diffusion language models in JAX/Flax, with an autoregressive baseline on the same backbone."""
