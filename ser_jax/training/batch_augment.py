"""On-device augmentation of training batches inside the compiled train step.

SpecAugment-style masking of frame sequences (spans of frames and of bands set to 0, the mean
after standardization) and mixup (convex combinations of pairs of examples and of their one-hot
labels). Every draw comes from the step's key, so a run is reproducible and each epoch sees new
masks.
"""

import jax
import jax.numpy as jnp
import ml_collections


def span_mask(key: jax.Array, batch: int, length: int, count: int, max_width: int) -> jax.Array:
    """(batch, length) booleans, True inside `count` random spans per row.

    Each span's width is uniform in [0, max_width] (clipped to length) and its start uniform
    over the positions where it fits; spans may overlap.
    """
    width_key, start_key = jax.random.split(key)
    max_width = min(max_width, length)
    widths = jax.random.randint(width_key, (batch, count, 1), 0, max_width + 1)
    starts = jnp.floor(jax.random.uniform(start_key, (batch, count, 1))
                       * (length - widths + 1)).astype(jnp.int32)
    position = jnp.arange(length)
    return jnp.any((position >= starts) & (position < starts + widths), axis=1)


def spec_augment(x: jax.Array, key: jax.Array, *, time_masks: int, time_width: int,
                 freq_masks: int, freq_width: int) -> jax.Array:
    """Masks spans of frames and of bands of x (batch, frames, bands) with zeros."""
    batch, frames, bands = x.shape
    time_key, freq_key = jax.random.split(key)
    keep = jnp.ones((batch, frames, bands), bool)
    if time_masks and time_width:
        keep &= ~span_mask(time_key, batch, frames, time_masks, time_width)[:, :, None]
    if freq_masks and freq_width:
        keep &= ~span_mask(freq_key, batch, bands, freq_masks, freq_width)[:, None, :]
    return jnp.where(keep, x, jnp.zeros((), x.dtype))


def mixup(x: jax.Array, labels: jax.Array, key: jax.Array, *, alpha: float,
          num_classes: int) -> tuple[jax.Array, jax.Array]:
    """Mixes each example with a random partner: (mixed x, soft targets (batch, classes)).

    The weight of the example itself is max(l, 1 - l) for l ~ Beta(alpha, alpha), one per
    example, so every mixed example stays closest to its own.
    """
    weight_key, partner_key = jax.random.split(key)
    batch = x.shape[0]
    weight = jax.random.beta(weight_key, alpha, alpha, (batch,))
    weight = jnp.maximum(weight, 1.0 - weight)
    partner = jax.random.permutation(partner_key, batch)
    onehot = jax.nn.one_hot(labels, num_classes)
    shape = (batch,) + (1,) * (x.ndim - 1)
    mixed = weight.reshape(shape) * x + (1.0 - weight.reshape(shape)) * x[partner]
    targets = weight[:, None] * onehot + (1.0 - weight[:, None]) * onehot[partner]
    return mixed.astype(x.dtype), targets


def check_config(train_config: ml_collections.ConfigDict, inputs: str) -> None:
    """Raises ValueError for augmentation settings that cannot apply to the model's inputs."""
    spec = train_config.spec_augment
    values = {name: spec[name] for name in ("time_masks", "time_width", "freq_masks",
                                            "freq_width")}
    negative = [f"train.spec_augment.{name}={value}" for name, value in values.items()
                if value < 0]
    if negative or train_config.mixup_alpha < 0:
        raise ValueError(f"{', '.join(negative) or f'train.mixup_alpha={train_config.mixup_alpha}'}"
                         " must be >= 0 (0 turns it off)")
    if inputs != "sequence" and any(values.values()):
        raise ValueError("train.spec_augment masks frame sequences, but this model reads clip "
                         "features; set its counts to 0 or use model.name='temporal_cnn'")


def augment_batch(x: jax.Array, labels: jax.Array, key: jax.Array,
                  train_config: ml_collections.ConfigDict, num_classes: int
                  ) -> tuple[jax.Array, jax.Array]:
    """Applies the configured masking and mixup: (x, integer labels or soft targets)."""
    spec = train_config.spec_augment
    mask_key, mixup_key = jax.random.split(key)
    if (spec.time_masks and spec.time_width) or (spec.freq_masks and spec.freq_width):
        x = spec_augment(x, mask_key, time_masks=spec.time_masks, time_width=spec.time_width,
                         freq_masks=spec.freq_masks, freq_width=spec.freq_width)
    if train_config.mixup_alpha > 0:
        return mixup(x, labels, mixup_key, alpha=train_config.mixup_alpha,
                     num_classes=num_classes)
    return x, labels
