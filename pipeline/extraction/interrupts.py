"""SIGINT/SIGTERM during extraction: stop at the next batch boundary, leaving a resumable file."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class StopSignals:
    """SIGINT/SIGTERM set `signum`; the batch loop stops at the next batch boundary, so the
    partial file is left with every finished batch done. A second signal stops at once
    (still safe: only flushed batches are marked done)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: finishing the current batch, then stopping", signal.Signals(signum).name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def batches_until_stopped(batches, stop: StopSignals):
    """Yield batches until exhausted or a stop signal; decode workers killed by the same
    signal end the iteration quietly instead of failing the run."""
    iterator = iter(batches)
    while stop.signum is None:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except RuntimeError:
            if stop.signum is None:
                raise
            return
