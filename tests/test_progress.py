"""Progress output: a bar only on a terminal with a width; plain lines in logs, pipes and zero-width terminals."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import termios
import tty

import pytest

from skyloom.progress import Progress, draws_bar, iterate, terminal_width


@pytest.fixture
def terminal():
    """(stream writing to a pseudo-terminal, read_all(), set_columns(n)); output is not translated (raw mode)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    stream = os.fdopen(slave, "w", encoding="utf-8")

    def read_all() -> str:
        stream.flush()
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def set_columns(columns: int) -> None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))

    yield stream, read_all, set_columns
    stream.close()
    os.close(master)


def test_a_log_gets_lines_at_each_tenth_and_no_carriage_returns():
    log = io.StringIO()
    with Progress(200, "score", "seq", stream=log, min_seconds=0) as progress:
        for _ in range(200):
            progress.update()
            progress.set_postfix(tokens="1,234")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 10  # 10%, 20%, … 100%; close adds nothing new
    assert lines[0].startswith("score: 10% (20/200 seq), tokens=1,234 after ")
    assert lines[-1].startswith("score: 100% (200/200 seq)")


def test_lines_are_rate_limited_and_the_last_one_is_kept():
    log = io.StringIO()
    with Progress(1000, "pack", "B", unit_scale=True, stream=log) as progress:  # default: ≥ 5 s between lines
        for _ in range(10):
            progress.update(100)
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[-1]]
    assert log.getvalue().startswith("pack: 100% (1.00k/1.00k B) after ")


def test_without_a_total_a_line_per_interval_and_leave_false_stays_quiet():
    log = io.StringIO()
    with Progress(desc="count", unit="char", stream=log, every_seconds=0, leave=False) as progress:
        progress(5)  # (a callback taking the amount done)
        progress(7)
    assert log.getvalue().splitlines()[-1].startswith("count: 12 char after")
    quiet = io.StringIO()
    with Progress(desc="count", unit="char", stream=quiet, leave=False) as progress:
        progress(5)  # a short loop that printed no line prints none at the end either
    with Progress(10, "off", stream=quiet, enabled=False) as progress:
        progress.update(10)
    assert quiet.getvalue() == ""


def test_iterate_counts_items():
    log = io.StringIO()
    assert list(iterate(range(4), "ckpt", stream=log, min_seconds=0)) == [0, 1, 2, 3]
    assert log.getvalue().splitlines()[-1].startswith("ckpt: 100% (4/4 it)")
    assert list(iterate(range(4), "ckpt", stream=log, enabled=False)) == [0, 1, 2, 3]
    assert len(log.getvalue().splitlines()) == 4 and terminal_width(log) == 0


def test_a_zero_width_terminal_gets_lines_and_a_wide_one_a_bar(terminal):
    stream, read_all, set_columns = terminal
    set_columns(0)  # a terminal that reports no width (some CI runners, detached sessions)
    assert stream.isatty() and not draws_bar(stream)
    with Progress(10, "eval", "seq", stream=stream, min_seconds=0) as progress:
        progress.update(10)
    out = read_all()
    assert out.startswith("eval: 100% (10/10 seq)") and "\r" not in out and "|" not in out

    set_columns(80)
    assert draws_bar(stream)
    with Progress(10, "eval", "seq", stream=stream) as progress:
        progress.update(10)
    bar = read_all()
    assert "\r" in bar and "10/10" in bar and "|" in bar  # tqdm's bar, redrawn in place
