"""The fd-owner base shared by the KVM objects: one owner per fd, closed once, children first."""

from __future__ import annotations

import weakref
from typing import Any

from ..errors import StateError
from ..seam import Backend


def _close_fd(backend: Backend, fd: int) -> None:
    try:
        backend.close(fd)
    except OSError:
        pass


class FdOwner:
    """Owns one fd of ``backend``. ``close()`` is idempotent; a finalizer is the last resort."""

    _fd: int
    backend: Backend
    path: str

    def _own(self, backend: Backend, fd: int, path: str) -> None:
        self.backend = backend
        self._fd = fd
        self.path = path
        self._finalizer = weakref.finalize(self, _close_fd, backend, fd)

    def fileno(self) -> int:
        """The fd (StateError once closed)."""
        if self._fd < 0:
            raise StateError(f"{type(self).__name__} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _close_children(self) -> None:
        """Close what this object owns before its own fd (subclasses)."""

    def close(self) -> None:
        """Close children, then the fd. Idempotent."""
        if self._fd < 0:
            return
        try:
            self._close_children()
        finally:
            fd, self._fd = self._fd, -1
            self._finalizer.detach()
            self.backend.close(fd)

    def _ioctl(self, request: int, arg: Any = 0, *, op: str, hint: str | None = None) -> int:
        return self.backend.ioctl(self.fileno(), request, arg, op=op, hint=hint)

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
