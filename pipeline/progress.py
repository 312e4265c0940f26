"""Progress of a long loop: a tqdm bar when stderr is a terminal, else a log line every
LOG_EVERY_S seconds. The one implementation extract, render and verify use. No torch.

tqdm is imported only when a bar is drawn: importing it costs about 40 ms, which `info`,
`verify` and `--help` do not pay.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LOG_EVERY_S", "Bar", "Progress"]

LOG_EVERY_S = 30.0


@dataclass(frozen=True)
class Bar:
    """How the terminal bar looks (tqdm's options of the same names)."""

    desc: str  # the bar's label: "extract", "render", a verify pass
    unit: str  # what one step of `Progress.update` counts: "img", "png", "B", "file"
    unit_scale: bool = False  # 1.2M instead of 1200000
    leave: bool = True  # the finished bar stays on the terminal
    smoothing: float = 0.3  # tqdm's default; 0.1 follows the average rate more than the last


class Progress:
    """Counts steps towards `total`: a tqdm bar on a terminal (none when `total` is 0), else
    `line(done)` logged to `log` at most every LOG_EVERY_S seconds, the first one LOG_EVERY_S
    seconds after the start (or at the first update with `first_line_at_once`)."""

    def __init__(
        self,
        total: int,
        bar: Bar,
        line: Callable[[int], str],
        log: logging.Logger,
        *,
        initial: int = 0,
        first_line_at_once: bool = False,
    ):
        self.done, self.line, self.log = initial, line, log
        self.last_log_s = -math.inf if first_line_at_once else time.perf_counter()
        self.bar = None
        if sys.stderr.isatty() and total:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=bar.desc,
                unit=bar.unit,
                unit_scale=bar.unit_scale,
                leave=bar.leave,
                smoothing=bar.smoothing,
                dynamic_ncols=True,
            )

    def update(self, steps: int) -> None:
        """`steps` more done: the bar moves, or a line is logged when LOG_EVERY_S have passed."""
        self.done += steps
        if self.bar is not None:
            self.bar.update(steps)
            return
        now = time.perf_counter()
        if now - self.last_log_s > LOG_EVERY_S:
            self.last_log_s = now
            self.log.info(self.line(self.done))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
