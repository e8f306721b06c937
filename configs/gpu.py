"""GPU variant: one compiled program per epoch, larger batches, bf16 compute."""

from configs import default


def get_config():
    config = default.get_config()
    config.train.loop = 'scan'
    config.train.batch_size = 256
    config.train.eval_batch_size = 4096
    config.train.compute_dtype = 'bfloat16'
    config.data.batch_size = 256
    return config
