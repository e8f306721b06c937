"""TPU variant (one host or a multi-host slice): as the GPU one, with a global batch that every
slice size divides.

train.batch_size is the global batch: it is split over all chips of the slice (every process
places only its chips' rows, train.input='auto' -> 'host' when the slice has several hosts), so
it must be a multiple of the global device count: 1024 suits every power-of-two slice up to
1024 chips (v5litepod-8 ... v5litepod-256, v4-8 ... v4-2048 as 4 .. 1024 chips). Paths are not
in the config: pass --workdir and --config.data.corpora on the command line
(scripts/tpu_vm.sh, docs/tpu.md).
"""

from configs import gpu


def get_config():
    config = gpu.get_config()
    config.train.batch_size = 1024
    config.train.eval_batch_size = 4096
    return config
