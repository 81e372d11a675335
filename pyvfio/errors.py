"""pyvfio's error model: one translation point from errno to typed exceptions.

Two families:

* :class:`PyvfioError` (an :class:`OSError`) for what the kernel refused. It carries ``errno``,
  ``strerror``, the ``op`` (ioctl or syscall name, e.g. ``"VFIO_IOMMU_MAP_DMA"``), the ``path`` of
  the file it was issued on, and a ``hint`` saying what usually causes it and how to fix it.
  Subclasses mix in the builtin OSError subclasses, so ``except PermissionError`` still works.
* :class:`ArgumentError` (a :class:`ValueError`) for arguments rejected before any syscall.

Hints come from a registry keyed by ``(op, errno)``; upper layers register hints for the classic
failures (RLIMIT_MEMLOCK on MAP_DMA, dma_entry_limit, interrupt remapping) with
:func:`register_hint`, or pass a ``hint`` computed from their own context.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Callable

HintFn = Callable[["PyvfioError"], "str | None"]


class PyvfioError(OSError):
    """The kernel (or the mock kernel) refused an operation.

    Attributes: ``errno``, ``strerror``, ``op`` (ioctl/syscall name), ``path`` (file it was issued
    on, if known) and ``hint`` (a sentence on the usual cause and the fix, or None).
    """

    def __init__(
        self,
        err: int,
        strerror: str | None = None,
        *,
        op: str | None = None,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(err, strerror or os.strerror(err))
        self.op = op
        self.path = path
        self.hint = hint
        # OSError's own filename slot feeds str(); we format ourselves instead.

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno or 0, str(self.errno))
        where = f"{self.op}" if self.op else "operation"
        if self.path:
            where += f" on {self.path}"
        text = f"{where} failed: [{name}] {self.strerror}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def __reduce__(self):  # keep pickling (multiprocessing, pytest-xdist) lossless
        return (_rebuild, (type(self), self.errno, self.strerror, self.op, self.path, self.hint))

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description (the CLI's ``--json`` error document)."""
        return {
            "error": str(self),
            "errno": self.errno,
            "errno_name": _errno.errorcode.get(self.errno or 0),
            "op": self.op,
            "path": self.path,
            "hint": self.hint,
        }


def _rebuild(cls, err, strerror, op, path, hint):
    return cls(err, strerror, op=op, path=path, hint=hint)


class PermissionDeniedError(PyvfioError, PermissionError):
    """EPERM / EACCES."""


class NotFoundError(PyvfioError, FileNotFoundError):
    """ENOENT / ENODEV / ENXIO: no such file, device or object."""


class ExistsError(PyvfioError, FileExistsError):
    """EEXIST: e.g. an overlapping DMA mapping or memslot."""


class BusyError(PyvfioError):
    """EBUSY: the object is in use (a group held by another process, memory still mapped)."""


class InvalidArgumentError(PyvfioError):
    """EINVAL: the kernel rejected the arguments or the object's state."""


class OutOfMemoryError(PyvfioError):
    """ENOMEM: typically RLIMIT_MEMLOCK exceeded while pinning."""


class NoSpaceError(PyvfioError):
    """ENOSPC: a kernel limit such as vfio_iommu_type1's dma_entry_limit."""


class BadFileError(PyvfioError):
    """EBADF: the fd is closed or of the wrong kind."""


class InterruptedError_(PyvfioError, InterruptedError):
    """EINTR."""


class UnsupportedError(PyvfioError):
    """The kernel lacks the request or feature (ENOTTY, EOPNOTSUPP, ENOSYS, or a missing extension)."""

    def __init__(
        self,
        err: int = _errno.EOPNOTSUPP,
        strerror: str | None = None,
        *,
        op: str | None = None,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(err, strerror, op=op, path=path, hint=hint)


_BY_ERRNO: dict[int, type[PyvfioError]] = {
    _errno.EPERM: PermissionDeniedError,
    _errno.EACCES: PermissionDeniedError,
    _errno.ENOENT: NotFoundError,
    _errno.ENODEV: NotFoundError,
    _errno.ENXIO: NotFoundError,
    _errno.EEXIST: ExistsError,
    _errno.EBUSY: BusyError,
    _errno.EINVAL: InvalidArgumentError,
    _errno.ENOMEM: OutOfMemoryError,
    _errno.ENOSPC: NoSpaceError,
    _errno.EBADF: BadFileError,
    _errno.EINTR: InterruptedError_,
    _errno.ENOTTY: UnsupportedError,
    _errno.EOPNOTSUPP: UnsupportedError,
    _errno.ENOSYS: UnsupportedError,
}

_HINTS: dict[tuple[str | None, int], HintFn] = {}


def register_hint(op: str | None, err: int, hint: str | HintFn) -> None:
    """Register the hint for ``(op, errno)``; ``op=None`` applies to every op with that errno.

    ``hint`` is a sentence or a function of the error returning one (or None).
    """
    if callable(hint):
        _HINTS[(op, err)] = hint
    else:
        text: str = hint
        _HINTS[(op, err)] = lambda _e: text


def error_from_errno(
    err: int,
    *,
    op: str | None = None,
    path: str | None = None,
    hint: str | None = None,
) -> PyvfioError:
    """Build the typed exception for ``err`` — the one translation point of pyvfio."""
    cls = _BY_ERRNO.get(err, PyvfioError)
    exc = cls(err, op=op, path=path, hint=hint)
    if exc.hint is None:
        fn = _HINTS.get((op, err)) or _HINTS.get((None, err))
        if fn is not None:
            exc.hint = fn(exc)
    return exc


def from_oserror(e: OSError, *, op: str, path: str | None = None, hint: str | None = None) -> PyvfioError:
    """Translate an OSError raised by the os module into the pyvfio type (same errno)."""
    if isinstance(e, PyvfioError):
        return e
    return error_from_errno(e.errno or _errno.EIO, op=op, path=path or e.filename, hint=hint)


class ArgumentError(ValueError):
    """An argument was rejected before any syscall; the message says what is allowed."""


class AlignmentError(ArgumentError):
    """An address or size is not aligned as the kernel requires."""


class RangeError(ArgumentError):
    """An address range is empty, overflows, or falls outside what the kernel reported usable."""


class OverlapError(ArgumentError):
    """A range overlaps one already in use (mapping, memslot, registered memory)."""


class StateError(RuntimeError):
    """An object is used in a state that does not allow the operation (e.g. already closed).

    Raised before the syscall the state would make fail; ``hint`` says what to do first.
    """

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (hint: {self.hint})" if self.hint else text

    def __reduce__(self):  # keep the hint through pickling
        return (_rebuild_state, (type(self), str(self.args[0]) if self.args else "", self.hint))


def _rebuild_state(cls, message, hint):
    return cls(message, hint=hint)


# Generic hints; subsystems register op-specific ones next to their code.
register_hint(None, _errno.ENOTTY, "the kernel does not know this request (module missing or too old?)")
