"""Progress bars of the library's long loops (training, sampling), drawn here or reported to a host.

:func:`progress_bar` is the one way a loop shows progress: a context manager yielding
``update(completed=None, advance=0, **fields)``. With no sink it draws a rich bar on the terminal (label, bar,
done/total, the numeric fields as ``name value``, time left); a host that draws its own display (the bench
engine, whose pool processes run several stages at once) installs a sink with :func:`set_sink`, and every update
goes to ``sink(label, completed, total, fields)`` instead. Disabled, it is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

Sink = Callable[[str, int, int, Mapping[str, float]], None]

_sink: Sink | None = None


class Update(Protocol):
    """What :func:`progress_bar` yields: set ``completed`` or ``advance`` it, and show numeric ``fields``."""

    def __call__(self, completed: int | None = None, advance: int = 0, **fields: float) -> None:
        """Move to ``completed`` (if given) plus ``advance``; remember ``fields`` for the display."""


def set_sink(sink: Sink | None) -> Sink | None:
    """Route every bar's updates to ``sink(label, completed, total, fields)`` (None: draw); returns the previous."""
    global _sink
    previous, _sink = _sink, sink
    return previous


def fields_text(fields: Mapping[str, float]) -> str:
    """``loss 0.1234  it/s 12.3``: the fields as shown beside a bar."""
    return "  ".join(f"{name} {value:.4g}" for name, value in fields.items())


@contextmanager
def progress_bar(label: str, total: int, *, enabled: bool = True, completed: int = 0) -> Iterator[Update]:
    """A bar for ``total`` units of work named ``label``, starting at ``completed``; yields its ``update``."""
    state = {"completed": completed}
    fields: dict[str, float] = {}

    def updater(emit: Callable[[int, dict[str, float]], None]) -> Update:
        def update(completed: int | None = None, advance: int = 0, **new: float) -> None:
            state["completed"] = (state["completed"] if completed is None else completed) + advance
            fields.update(new)
            emit(state["completed"], fields)

        return update

    sink = _sink
    if not enabled:
        yield updater(lambda done, shown: None)
    elif sink is not None:
        report = updater(lambda done, shown: sink(label, done, total, dict(shown)))
        report()
        yield report
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[text]}"), TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task(label, total=total, completed=completed, text="")
            yield updater(lambda done, shown: bar.update(task, completed=done, text=fields_text(shown)))
