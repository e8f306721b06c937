"""Fixed-size batches: every batch padded with zero rows to one shape, so one compiled program
serves them all (rows do not interact at inference or feature extraction)."""

from collections.abc import Iterator, Sequence

import numpy as np


def padded_batches(x: np.ndarray, batch: int, indices: Sequence[int] | None = None
                   ) -> Iterator[tuple[np.ndarray, int]]:
    """Yields (rows of ``x`` zero-padded to ``batch`` rows, how many are real), in order.

    ``indices`` picks and orders the rows (default: all of them); only one batch is copied at
    a time.
    """
    count = len(x) if indices is None else len(indices)
    for start in range(0, count, batch):
        rows = (x[start:start + batch] if indices is None
                else x[np.asarray(indices[start:start + batch], dtype=np.int64)])
        rows = np.asarray(rows)
        if len(rows) < batch:
            rows = np.pad(rows, ((0, batch - len(rows)),) + ((0, 0),) * (rows.ndim - 1))
        yield rows, min(batch, count - start)
