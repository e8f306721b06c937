"""A tiny, fast variant for tests and smoke runs: few clips, few epochs."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.synthetic.speakers = 4
    config.data.synthetic.clips_per_class = 2
    config.data.augment.recipe = 'none,noise'
    config.train.batch_size = 16
    config.train.epochs = 3
    return config
