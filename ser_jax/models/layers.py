"""Layers shared by the networks."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def dropout(module: nn.Module, x: jax.Array, rate: float | jax.Array) -> jax.Array:
    """Inverted dropout whose rate may be a traced value (nn.Dropout needs a Python float)."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, x.shape)
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)
