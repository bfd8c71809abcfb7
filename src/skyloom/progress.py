"""Progress of a long loop: a tqdm bar on a terminal, plain periodic log lines everywhere else.

A bar redraws itself with carriage returns, which a log file, CI output or a pipe keeps as one unreadable
line (and a terminal of zero width cannot draw at all). So the bar is drawn only where stderr is a terminal
with a width; elsewhere a line is written every 10% of the total (at most one per 5 s) or, without a total,
every 30 s. tqdm is imported only to draw a bar or to scale a unit (10.8k).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

__all__ = ["Progress", "draws_bar", "iterate", "terminal_width"]

T = TypeVar("T")


def terminal_width(stream: TextIO) -> int:
    """Columns of the terminal `stream` writes to; 0 when it is not a terminal (or reports no width)."""
    try:
        if not stream.isatty():
            return 0
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # a replaced stream without a file descriptor, or a closed one
        return 0


def draws_bar(stream: TextIO) -> bool:
    """Whether a progress bar can be drawn on `stream` (a terminal with a width); else log lines are written."""
    return terminal_width(stream) > 0


def _amount(n: float, unit_scale: bool) -> str:
    if unit_scale:
        from tqdm import tqdm

        return tqdm.format_sizeof(n)  # 10.8k, 3.93M: what the bar shows
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.1f}"


class Progress:
    """`update(n)` as work finishes; `close()` at the end (or use it as a context manager).

    On a terminal this is a tqdm bar; otherwise `desc: 40% (4,000/10,000 seq) after 12 s` lines (see the module doc).
    `enabled=False` makes every call a no-op; `leave=False` drops the final line of a loop that printed none.
    """

    def __init__(
        self,
        total: float | None = None,
        desc: str = "",
        unit: str = "it",
        *,
        enabled: bool = True,
        unit_scale: bool = False,
        leave: bool = True,
        stream: TextIO | None = None,
        every_fraction: float = 0.1,
        min_seconds: float = 5.0,
        every_seconds: float = 30.0,
    ):
        self.total, self.desc, self.unit, self.unit_scale, self.leave = total, desc, unit, unit_scale, leave
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.every_fraction, self.min_seconds, self.every_seconds = every_fraction, min_seconds, every_seconds
        self.n: float = 0
        self.postfix: dict[str, Any] = {}
        self.bar = None
        self.started = self.last_line = time.monotonic()
        self.lines = 0
        self.printed_n: float = 0  # n at the last line written
        self.closed = False
        if enabled and draws_bar(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                unit_scale=unit_scale,
                leave=leave,
                file=self.stream,
                dynamic_ncols=True,
            )

    def update(self, n: float = 1) -> None:
        if not self.enabled:
            return
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        since = now - self.last_line
        if self.total:
            step = self.every_fraction * self.total
            crossed = int(self.n // step) > int(self.printed_n // step) if step > 0 else False
            if (crossed and since >= self.min_seconds) or since >= self.every_seconds:
                self._line(now)
        elif since >= self.every_seconds:
            self._line(now)

    __call__ = update  # a callback that takes the amount done (e.g. characters read)

    def set_postfix(self, **values: Any) -> None:
        """Extra `key=value` fields shown after the counts (e.g. tokens written so far)."""
        if not self.enabled:
            return
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if not self.enabled or self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.n != self.printed_n and (self.leave or self.lines):
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        done = _amount(self.n, self.unit_scale)
        if self.total:
            counts = f"{100 * self.n / self.total:.0f}% ({done}/{_amount(self.total, self.unit_scale)} {self.unit})"
        else:
            counts = f"{done} {self.unit}"
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        prefix = f"{self.desc}: " if self.desc else ""
        print(f"{prefix}{counts}{extra} after {now - self.started:.0f} s", file=self.stream, flush=True)
        self.last_line, self.printed_n, self.lines = now, self.n, self.lines + 1

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iterate(
    items: Iterable[T], desc: str = "", unit: str = "it", *, total: int | None = None, **options: Any
) -> Iterator[T]:
    """`items`, one `update()` per item (total: `len(items)` when it has one); `options` go to `Progress`."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, **options) as progress:
        for item in items:
            yield item
            progress.update()
