"""Micro-batching: concurrent requests' window rows gathered into one model call.

Requests put their rows on an asyncio queue; one task takes the first waiting item, then keeps
taking items for up to ``max_wait_s`` or until ``max_rows`` rows are gathered (it stops waiting
early when no other admitted request is still on its way, e.g. decoding), and runs the
model on them in a single worker thread (the event loop never blocks on the model). With
``enabled=False`` every model call serves exactly one request (the comparison baseline).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class QueueFull(Exception):
    """More requests are admitted than the queue bound allows."""


@dataclasses.dataclass
class _Item:
    rows: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """Gathers rows from concurrent callers into calls of ``infer(rows) -> probabilities``."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], max_rows: int,
                 max_wait_s: float = 0.005, max_pending: int = 64, enabled: bool = True):
        self.infer = infer
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.max_pending = max_pending
        self.enabled = enabled
        self.pending = 0  # admitted requests not yet answered (decoding or waiting or running)
        self.calls = 0
        self.rows_served = 0
        self.in_model = 0  # requests whose rows are in the running model call
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None
        self._carry: _Item | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._model_thread.shutdown(wait=False, cancel_futures=True)

    def admit(self) -> None:
        """Counts a request in, or raises QueueFull; pair with :meth:`release`."""
        if self.pending >= self.max_pending:
            raise QueueFull(f"{self.pending} requests in flight (limit {self.max_pending})")
        self.pending += 1

    def release(self) -> None:
        self.pending -= 1

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities for ``rows`` (n, T); rows beyond ``max_rows`` go in several calls."""
        loop = asyncio.get_running_loop()
        futures = []
        for first in range(0, len(rows), self.max_rows):
            future = loop.create_future()
            await self._queue.put(_Item(rows[first:first + self.max_rows], future))
            futures.append(future)
        return np.concatenate(await asyncio.gather(*futures))

    async def _gather(self) -> list[_Item]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, rows = [first], len(first.rows)
        if not self.enabled:
            return batch
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_rows:
            if self.pending - self.in_model - len(batch) <= 0 and self._queue.empty():
                break  # nobody else is on the way: waiting would only add latency
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            if rows + len(item.rows) > self.max_rows:
                self._carry = item  # first in the next call
                break
            batch.append(item)
            rows += len(item.rows)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            rows = np.concatenate([item.rows for item in batch])
            self.in_model = len(batch)
            try:
                probabilities = await loop.run_in_executor(self._model_thread, self.infer, rows)
            except Exception as e:  # answer every waiting request, keep serving
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            finally:
                self.in_model = 0
            self.calls += 1
            self.rows_served += len(rows)
            first = 0
            for item in batch:
                if not item.future.done():  # a cancelled request (client gone) is skipped
                    item.future.set_result(probabilities[first:first + len(item.rows)])
                first += len(item.rows)
