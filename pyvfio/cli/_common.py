"""What the CLI's command modules share: exit codes, table formatting, the run environment's shape.

Command modules (``cli/dirty.py``...) import from here, never from the package itself; the
package (:mod:`pyvfio.cli`) imports them and adds their commands to the top-level group.
"""

from __future__ import annotations

from typing import Any, Callable, NoReturn, Protocol

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_PERMISSION, EXIT_UNSUPPORTED = 0, 1, 2, 3, 4, 5


class RunEnv(Protocol):
    """What a command needs of the run's environment (:class:`pyvfio.cli.Env` provides it)."""

    @property
    def backend(self) -> Any: ...

    def emit(self, doc: dict[str, Any], text: Callable[[], None], code: int = EXIT_OK) -> NoReturn: ...


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_NOT_FOUND", "EXIT_PERMISSION",
           "EXIT_UNSUPPORTED", "RunEnv", "table"]
