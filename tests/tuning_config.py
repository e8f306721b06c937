"""A tiny tune config for the tuning tests (in-process and as --config= for worker processes).

Set data.corpora to a synthetic corpus folder (the tests write one); speakers synthetic_01..04:
03 validates, 04 is the test speaker the study must never read.
"""

from configs import tune


def get_config():
    config = tune.get_config()
    config.data.augment.recipe = 'none'
    config.data.split.val_speakers = 'synthetic_03'
    config.data.split.test_speakers = 'synthetic_04'
    config.train.epochs = 2
    config.train.batch_size = 8
    config.train.eval_batch_size = 64
    config.tune.trials = 2
    config.tune.pruner = 'none'
    space = config.tune.spaces.seed_cnn
    space.filters.choices = (4,)
    space.kernel_size.high = 3
    space.pool_size.high = 2
    space.batch_size.choices = (8,)
    return config
