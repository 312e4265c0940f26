"""A bounded, thread-safe least-recently-used cache that computes each missing value once.

The viewer keeps decoded chunks, statistics rows, photos and rankings in these, each with a
byte budget, so its memory stays flat however long one browses. Concurrent requests for the
same missing value wait for the one thread computing it instead of computing it again.
No torch.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


def size_of(value: object) -> int:
    """Approximate bytes held by a cached value: arrays and bytes exactly, tuples and lists summed."""
    if isinstance(value, np.ndarray):
        return value.nbytes + 112
    if isinstance(value, (bytes, bytearray, str)):
        return len(value) + 64
    if isinstance(value, (tuple, list)):
        return 64 + sum(size_of(v) for v in value)
    return sys.getsizeof(value)


class Lru(Generic[T]):
    """Values by key, at most `max_bytes` in all (`size_of` each); the least recently used go first.

    A value larger than the whole budget is returned but not kept.
    """

    def __init__(self, max_bytes: int, measure: Callable[[object], int] = size_of):
        self.max_bytes = max_bytes
        self._measure = measure
        self._items: OrderedDict[Hashable, tuple[T, int]] = OrderedDict()
        self._pending: dict[Hashable, Future] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        """The value of `key`, computed by `make()` when absent (once, whatever the threads)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            future = self._pending.get(key)
            owner = future is None
            if owner:
                future = self._pending[key] = Future()
                self.misses += 1
        if not owner:
            return future.result()
        try:
            value = make()
        except BaseException as err:
            with self._lock:
                del self._pending[key]
            future.set_exception(err)
            raise
        self._keep(key, value)
        future.set_result(value)
        return value

    def _keep(self, key: Hashable, value: T) -> None:
        size = self._measure(value)
        with self._lock:
            del self._pending[key]
            if size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0
