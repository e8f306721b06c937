"""The temporal model: a Conv1D over each clip's log-mel frame sequence (108 frames x 128 bands).

The data stage stores the sequences (data.sequences); training masks spans of frames and bands
(SpecAugment) on the device. Two such networks are trained and averaged (model.ensemble).
Figures and the settings tried are in docs/results.md.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """The default config with the temporal model and its input pipeline."""
    config = default.get_config()
    config.data.sequences = True
    config.model.name = 'temporal_cnn'
    config.model.filters = 64  # conv widths 64, 128, 128, 256
    config.model.kernel_size = 5
    config.model.pool_size = 2
    config.model.dropout = 0.3
    # Two members trained one after another, their probabilities averaged: one on the log-mel
    # sequence as it is, one with each clip's mean log-mel removed per band (model.center).
    config.model.ensemble = 'plain,centered'
    config.train.batch_size = 32
    config.train.epochs = 60
    config.train.plateau_patience = 3
    config.train.early_stop_patience = 8
    config.train.spec_augment.time_masks = 2
    config.train.spec_augment.time_width = 12
    config.train.spec_augment.freq_masks = 2
    config.train.spec_augment.freq_width = 16
    config.train.mixup_alpha = 0.2
    return config
