"""Progress reporting: a tiny protocol the library calls and the CLI renders.

The library never prints; it reports steps to a :class:`Progress`. The
default does nothing; the CLI passes :class:`RichProgress`, which draws a
live bar on stderr when stderr is a terminal.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, description: str, total: int | None = None) -> None:
        """Begin a step of ``total`` units (None: unknown)."""

    def advance(self, units: int = 1) -> None:
        """Report ``units`` more done in the current step."""

    def finish(self) -> None:
        """End the current step."""


class NullProgress:
    """Reports nothing."""

    def start(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, units: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


class RichProgress:
    """A rich progress bar on stderr (transient; invisible when stderr is not a terminal)."""

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

    def start(self, description: str, total: int | None = None) -> None:
        self.finish()
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, units: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, units)

    def finish(self) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
        self._bar.stop()
