"""TPU variant: as the GPU one; the batch is split over all chips of the slice."""

from configs import gpu


def get_config():
    config = gpu.get_config()
    config.train.batch_size = 1024
    return config
