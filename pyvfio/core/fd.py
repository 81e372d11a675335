"""The fd-owner base of the kernel objects (vfio, iommufd, kvm, eventfds).

One owner per fd, closed once, children first; a ``weakref.finalize`` registered as soon as the
fd exists is the last resort, not the plan.
"""

from __future__ import annotations

import weakref
from typing import Any, Self

from ..errors import StateError
from ..ioctls import Request
from ..seam import Backend


def _close_quietly(backend: Backend, fd: int) -> None:
    try:
        backend.close(fd)
    except OSError:
        pass


def raise_first(errors: "list[Exception]", what: str) -> None:
    """After an unwind that went on past failures: raise the first of ``errors`` (if any), the
    others named in its notes (``what`` says which unwind)."""
    if not errors:
        return
    first = errors[0]
    for e in errors[1:]:
        first.add_note(f"also while {what}: {type(e).__name__}: {e}")
    raise first


class Closeable:
    """The close protocol every resource owner of pyvfio follows.

    Subclasses provide ``closed`` (an attribute or a property) and an idempotent ``close()``
    that releases children first; this base adds the context manager, so ``with`` always ends
    in ``close()``.
    """

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define close()")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FdObject(Closeable):
    """Owns one fd opened through ``backend``.

    ``fileno()``, ``closed``, idempotent ``close()`` (children first, then the fd) and context
    management. A ``weakref.finalize`` registered by :meth:`_adopt_fd` closes the fd if the object
    is dropped without ``close()`` (the last resort: children are not unwound in order then).
    """

    _fd: int = -1
    backend: Backend
    path: str

    def _adopt_fd(self, backend: Backend, fd: int, path: str) -> None:
        self.backend = backend
        self.path = path
        self._fd = fd
        self._finalizer = weakref.finalize(self, _close_quietly, backend, fd)

    def fileno(self) -> int:
        """The fd (StateError once closed)."""
        if self._fd < 0:
            raise StateError(f"{type(self).__name__} {self.path} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _close_fd(self) -> None:
        """Close the fd itself (once) and drop the finalizer."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self._finalizer.detach()
            self.backend.close(fd)

    def _close_children(self) -> None:
        """Close what this object owns before its own fd (subclasses)."""

    def close(self) -> None:
        """Close children, then the fd. Idempotent."""
        if self._fd < 0:
            return
        try:
            self._close_children()
        finally:
            self._close_fd()

    def _ioctl(self, request: Request, arg: Any = 0, *, hint: str | None = None) -> int:
        """``ioctl(fd, request, arg)`` through the backend; errors name ``request.name`` as op."""
        return self.backend.ioctl(self.fileno(), request, arg, hint=hint)


class Bundle(Closeable):
    """Kernel objects set up together (what an ``open_device`` returns) whose lifetime is one
    root :class:`FdObject`'s: ``closed``, ``close()`` and the context manager go to ``_root``,
    which closes the others first."""

    _root: FdObject

    @property
    def closed(self) -> bool:
        return self._root.closed

    def close(self) -> None:
        self._root.close()
