"""A temporal Conv1D over a clip's log-mel frame sequence."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ser_jax.models.layers import dropout


class TemporalCNN(nn.Module):
    """A Conv1D over time: input (batch, frames, bands), output logits (batch, num_classes).

    Four blocks of Conv (widths f, 2f, 2f, 4f for f = filters) -> BatchNorm -> ReLU, the first
    three followed by max-pooling over time (pool_size) and dropout; then the mean and the max
    over time, concatenated, dropout, Dense 128 -> ReLU -> Dense num_classes.
    """

    num_classes: int = 7
    filters: int = 32
    kernel_size: int = 5
    pool_size: int = 2
    dropout: float = 0.3
    center: bool = False  # subtract each clip's mean over time from every band first
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool,
                 dropout_rate: float | jax.Array | None = None) -> jax.Array:
        """``dropout_rate`` overrides ``self.dropout``; it may be traced (one per vmapped trial)."""
        rate = self.dropout if dropout_rate is None else dropout_rate
        if self.center:
            x = x - jnp.mean(x, axis=1, keepdims=True)
        x = x.astype(self.dtype)
        widths = (self.filters, 2 * self.filters, 2 * self.filters, 4 * self.filters)
        for block, width in enumerate(widths):
            x = nn.Conv(width, (self.kernel_size,), padding="SAME", use_bias=False,
                        dtype=self.dtype)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3,
                             dtype=self.dtype)(x)
            x = nn.relu(x)
            if block < len(widths) - 1:
                x = nn.max_pool(x, (self.pool_size,), strides=(self.pool_size,), padding="SAME")
                if train:
                    x = dropout(self, x, rate / 2)
        x = jnp.concatenate([jnp.mean(x, axis=1), jnp.max(x, axis=1)], axis=-1)
        if train:
            x = dropout(self, x, rate)
        x = nn.relu(nn.Dense(128, dtype=self.dtype)(x))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
