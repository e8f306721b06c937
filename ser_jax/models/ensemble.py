"""An ensemble: member networks (each trained as its own run) whose probabilities are averaged."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class Ensemble(nn.Module):
    """Member networks whose class probabilities are averaged (each trained as its own run).

    Returns :func:`mean_log_probs` (batch, classes): its softmax is the members' mean class
    probabilities, so evaluation and prediction read it as any model's logits.
    """

    members: Sequence[nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False,
                 dropout_rate: float | jax.Array | None = None) -> jax.Array:
        return mean_log_probs(jnp.stack([m(x, train=train, dropout_rate=dropout_rate)
                                         for m in self.members]))


def mean_log_probs(member_logits: jax.Array) -> jax.Array:
    """log of the mean over axis 0 of softmax(member_logits): (members, ..., C) -> (..., C)."""
    log_probs = jax.nn.log_softmax(member_logits, axis=-1)
    return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(member_logits.shape[0])
