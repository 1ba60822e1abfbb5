"""Progress reporting: a tiny protocol the library calls and the CLI renders.

The library never prints; it reports steps to a :class:`Progress`. The
default does nothing; the CLI passes :class:`RichProgress`, which draws a
live bar on stderr when stderr is a terminal.
"""

from __future__ import annotations

from typing import Protocol

#: Starts every plain progress line (stderr not a terminal), so logs and scripts can tell them from errors.
PLAIN_PREFIX = "onnxopt progress: "


class Progress(Protocol):
    def start(self, description: str, total: int | None = None) -> None:
        """Begin a step of ``total`` units (None: unknown)."""

    def advance(self, units: int = 1) -> None:
        """Report ``units`` more done in the current step."""

    def phase(self, description: str) -> None:
        """Rename the current step: what is running now (``quantize: profiling``)."""

    def finish(self) -> None:
        """End the current step."""


class NullProgress:
    """Reports nothing."""

    def start(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, units: int = 1) -> None:
        pass

    def phase(self, description: str) -> None:
        pass

    def finish(self) -> None:
        pass


class RichProgress:
    """A rich progress bar on stderr (transient); when stderr is not a terminal (a log, CI), one plain line
    per step and phase instead."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self._task: int | None = None
        self._plain = not console.is_terminal
        self._console = console

    def start(self, description: str, total: int | None = None) -> None:
        self.finish()
        if self._plain:
            self._line(description)
            return
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, units: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, units)

    def phase(self, description: str) -> None:
        if self._plain:
            self._line(description)
        elif self._task is not None:
            self._bar.update(self._task, description=description)

    def _line(self, text: str) -> None:
        import sys

        print(f"{PLAIN_PREFIX}{text}", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
        self._bar.stop()
