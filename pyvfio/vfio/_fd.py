"""Shared fd ownership for VFIO objects: one owner, closed once, finalizer as the last resort."""

from __future__ import annotations

import weakref
from typing import Any

from ..errors import StateError
from ..seam import Backend


def _close_quietly(backend: Backend, fd: int) -> None:
    try:
        backend.close(fd)
    except OSError:
        pass


class FdObject:
    """Owns one fd opened through ``backend``.

    ``fileno()``, ``closed``, idempotent ``close()`` and context management. A
    ``weakref.finalize`` registered as soon as the fd exists closes it if the object is dropped
    without ``close()`` (the last resort: children are not unwound in order then).
    """

    backend: Backend
    path: str

    def _adopt_fd(self, backend: Backend, fd: int, path: str) -> None:
        self.backend = backend
        self.path = path
        self._fd = fd
        self._finalizer = weakref.finalize(self, _close_quietly, backend, fd)

    def fileno(self) -> int:
        if self._fd < 0:
            raise StateError(f"{type(self).__name__} {self.path} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return getattr(self, "_fd", -1) < 0

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self._finalizer.detach()
            self.backend.close(fd)

    def close(self) -> None:
        self._close_fd()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
