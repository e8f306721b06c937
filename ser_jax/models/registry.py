"""Models by name: what each reads, the ensemble's member variants, and create_model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ser_jax.core.lists import parse_list
from ser_jax.models.ensemble import Ensemble
from ser_jax.models.seed_cnn import SeedCNN
from ser_jax.models.temporal_cnn import TemporalCNN

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
    variants = parse_list(model_config.get("ensemble", ""))
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
        if model_config.get("center", False) and model_inputs(model_config) != "sequence":
            raise ValueError(f"model.center=True removes each clip's mean over time, which needs "
                             f"frame sequences; model.name={model_config.name!r} reads clip "
                             "features: set model.center=False or model.name='temporal_cnn'")
        return network(model_config.get("center", False))
    return Ensemble(tuple(network(VARIANTS[v]) for v in variants))


def count_parameters(tree) -> int:
    """Total number of scalars in a pytree."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(tree))
