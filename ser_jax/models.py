"""Models: the seed's Conv1D CNN over the 270-value feature vector (Keras semantics), a
temporal Conv1D over the clip's log-mel frame sequence, and an ensemble of either."""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections


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


def dropout(module: nn.Module, x: jax.Array, rate: float | jax.Array) -> jax.Array:
    """Inverted dropout whose rate may be a traced value (nn.Dropout needs a Python float)."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, x.shape)
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


MODEL_INPUTS = {"seed_cnn": "clip", "temporal_cnn": "sequence"}
"""What each model reads: "clip" the 270 clip features, "sequence" the log-mel frame sequence."""


def model_inputs(model_config: ml_collections.ConfigDict) -> str:
    """The input kind ("clip" or "sequence") of the model named by ``model_config.name``."""
    if model_config.name not in MODEL_INPUTS:
        raise ValueError(f"unknown model.name {model_config.name!r}; valid: "
                         f"{', '.join(map(repr, MODEL_INPUTS))}")
    return MODEL_INPUTS[model_config.name]


VARIANTS = {"plain": False, "centered": True}
"""Ensemble member variants (model.ensemble) and whether each removes the clip's mean log-mel."""


def ensemble_variants(model_config: ml_collections.ConfigDict) -> list[str]:
    """The member variants listed in ``model.ensemble`` ([] for a single network), checked."""
    variants = [v.strip() for v in model_config.get("ensemble", "").split(",") if v.strip()]
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"model.ensemble={model_config.ensemble!r}: unknown member variant "
                             f"{variant!r}; valid: {', '.join(map(repr, VARIANTS))}")
        if VARIANTS[variant] and model_inputs(model_config) != "sequence":
            raise ValueError(f"model.ensemble={model_config.ensemble!r}: 'centered' members "
                             f"need frame sequences, and model.name={model_config.name!r} reads "
                             "clip features; use 'plain' members or model.name='temporal_cnn'")
    if len(variants) == 1:
        raise ValueError(f"model.ensemble={model_config.ensemble!r} names one member; list two "
                         "or more (e.g. 'plain,centered'), or leave it empty for one network")
    return variants


def member_config(model_config: ml_collections.ConfigDict,
                  variant: str) -> ml_collections.ConfigDict:
    """The model config of one ensemble member: a single network of ``variant``."""
    member = ml_collections.ConfigDict(model_config.to_dict())
    member.ensemble, member.center = "", VARIANTS[variant]
    return member


def create_model(model_config: ml_collections.ConfigDict, num_classes: int,
                 dtype: jnp.dtype = jnp.float32) -> nn.Module:
    """Builds the model named by ``model_config.name``, or the ensemble (inference only) that
    ``model_config.ensemble`` lists."""
    shared = {"num_classes": num_classes, "filters": model_config.filters,
              "kernel_size": model_config.kernel_size, "pool_size": model_config.pool_size,
              "dropout": model_config.dropout, "dtype": dtype}

    def network(center: bool) -> nn.Module:
        if model_inputs(model_config) == "clip":
            return SeedCNN(**shared)
        return TemporalCNN(center=center, **shared)

    variants = ensemble_variants(model_config)
    if not variants:
        return network(model_config.get("center", False))
    return Ensemble(tuple(network(VARIANTS[v]) for v in variants))


def count_parameters(tree) -> int:
    """Total number of scalars in a pytree."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(tree))
