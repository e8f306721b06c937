"""Which ``train.*`` settings change what training computes, and which the compiled functions
read: the one list that the trainer cache and the cv fold fingerprint both use."""

import ml_collections

EXECUTION_ONLY = ("loop", "steps_per_call", "eval_batch_size", "input")
"""Settings that change how training runs, not what it computes (a run or cv fold trained with
other values of these is still valid)."""

HOST_ONLY = ("epochs", "early_stop_patience", "early_stop_min_delta")
"""Settings the host-side loop reads and the compiled functions do not."""


def result_settings(train_config: ml_collections.ConfigDict) -> dict:
    """The ``train`` settings that change results (for fingerprints of finished work)."""
    return {k: v for k, v in train_config.to_dict().items() if k not in EXECUTION_ONLY}


def compiled_settings(train_config: ml_collections.ConfigDict) -> dict:
    """The ``train`` settings compiled into a Trainer's functions (its cache key)."""
    return {k: v for k, v in train_config.to_dict().items() if k not in HOST_ONLY}
