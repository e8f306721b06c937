"""The seed's Conv1D CNN over the 270-value clip feature vector (Keras semantics)."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ser_jax.models.layers import dropout


class SeedCNN(nn.Module):
    """The seed's Conv1D network: three conv blocks, then Dense 64 -> 16 -> classes.

    Input (batch, length) or (batch, length, 1); output logits (batch, num_classes). 'SAME'
    padding and ReLU as in Keras; BatchNorm with Keras' momentum 0.99 and epsilon 1e-3.
    """

    num_classes: int = 7
    filters: int = 64
    kernel_size: int = 3
    pool_size: int = 2
    dropout: float = 0.2
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool,
                 dropout_rate: float | jax.Array | None = None) -> jax.Array:
        """``dropout_rate`` overrides ``self.dropout``; it may be traced (one per vmapped trial)."""
        def conv(features: int, stride: int) -> Callable[[jax.Array], jax.Array]:
            return nn.Conv(features, (self.kernel_size,), strides=(stride,), padding="SAME",
                           dtype=self.dtype)

        def pool_and_norm(h: jax.Array) -> jax.Array:
            h = nn.max_pool(h, (self.pool_size,), strides=(1,), padding="SAME")
            return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3,
                                dtype=self.dtype)(h)

        x = (x[..., None] if x.ndim == 2 else x).astype(self.dtype)
        f = self.filters
        for width, stride in ((f, 1), (f, 2), (f, 2)):
            x = nn.relu(conv(width, stride)(x))
        x = pool_and_norm(x)
        for width, stride in ((2 * f, 1), (2 * f, 2)):
            x = nn.relu(conv(width, stride)(x))
        x = pool_and_norm(x)
        x = nn.relu(conv(4 * f, 2)(x))
        x = pool_and_norm(x)
        if train:
            x = dropout(self, x, self.dropout if dropout_rate is None else dropout_rate)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(64, dtype=self.dtype)(x))
        x = nn.relu(nn.Dense(16, dtype=self.dtype)(x))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
