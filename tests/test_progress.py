"""pipeline.progress: the one progress display (a bar on a terminal, else timed log lines)."""

from __future__ import annotations

import io
import logging

from pipeline import progress
from pipeline.progress import Bar, Progress

log = logging.getLogger("test.progress")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_lines_wait_for_the_interval(caplog, monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="test.progress")
    meter = Progress(10, Bar("x", "img"), lambda done: f"{done} of 10", log, initial=3)
    meter.update(2)  # less than LOG_EVERY_S after the start: no line yet
    assert meter.bar is None and caplog.messages == []
    monkeypatch.setattr(progress, "LOG_EVERY_S", -1.0)
    meter.update(4)
    meter.close()
    assert caplog.messages == ["9 of 10"]
    assert caplog.records[0].name == "test.progress"  # the caller's logger


def test_first_line_at_once_logs_the_first_update(caplog, monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="test.progress")
    meter = Progress(5, Bar("x", "img"), lambda done: f"{done} done", log, first_line_at_once=True)
    meter.update(1)
    meter.update(1)  # the next line waits LOG_EVERY_S
    assert caplog.messages == ["1 done"]


def test_a_terminal_gets_a_bar_and_no_lines(caplog, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress, "LOG_EVERY_S", -1.0)
    caplog.set_level(logging.INFO, logger="test.progress")
    meter = Progress(8, Bar("render", "png"), lambda done: f"{done}", log, initial=2)
    meter.update(6)
    meter.close()
    assert caplog.messages == [] and meter.bar.n == 8
    assert "render" in terminal.getvalue() and "8/8" in terminal.getvalue()


def test_nothing_to_count_draws_no_bar(monkeypatch):
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert Progress(0, Bar("x", "B"), str, log).bar is None
