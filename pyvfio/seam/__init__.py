"""The syscall seam: every kernel interaction of pyvfio goes through a :class:`Backend`.

Two implementations share this protocol:

* ``real`` (:class:`pyvfio.seam.real.RealBackend`): libc through cffi. ``ioctl`` returns the
  ioctl's own return value (a new fd for VFIO_GROUP_GET_DEVICE_FD or KVM_CREATE_VM).
* ``mock`` (:class:`pyvfio.seam.mock.MockBackend`): an in-process kernel that receives the very
  same packed structs, decodes them with the same ``ffi`` and answers with the kernel's results
  and errnos; unknown requests get ENOTTY like the kernel.

Objects take ``backend=`` (an instance or ``"real"``/``"mock"``); the default comes from the
environment variable ``PYVFIO_BACKEND`` (``real`` when unset).
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

from ..errors import ArgumentError

#: Default flags for opening device nodes.
O_RDWR_CLOEXEC = os.O_RDWR | os.O_CLOEXEC


@runtime_checkable
class Backend(Protocol):
    """What pyvfio needs from the kernel. Every method raises PyvfioError with errno and op."""

    name: str

    @property
    def sysfs_root(self) -> str:
        """Root of the sysfs tree this backend describes ("/sys" for the real kernel)."""
        ...

    def open(self, path: str, flags: int = O_RDWR_CLOEXEC) -> int: ...
    def close(self, fd: int) -> None: ...
    def ioctl(self, fd: int, request: int, arg: Any = 0, *, op: str | None = None,
              hint: str | None = None) -> int: ...
    def mmap(self, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int: ...
    def munmap(self, addr: int, length: int) -> None: ...
    def eventfd(self, initval: int = 0, flags: int = os.EFD_CLOEXEC) -> int: ...
    def pread(self, fd: int, size: int, offset: int) -> bytes: ...
    def pwrite(self, fd: int, data: bytes, offset: int) -> int: ...
    def read(self, fd: int, size: int) -> bytes: ...
    def write(self, fd: int, data: bytes) -> int: ...
    def label(self, fd: int, path: str) -> None: ...
    def path_of(self, fd: int) -> str | None: ...


def request_name(request: int) -> str:
    """The op name of an ioctl request: its kernel name, or its number for a bare int."""
    return getattr(request, "name", "") or f"ioctl {int(request):#x}"


_singletons: dict[str, Backend] = {}


def get_backend(backend: "Backend | str | None" = None) -> Backend:
    """Resolve ``backend`` (instance, name, or None for ``$PYVFIO_BACKEND``/real) to a Backend.

    Named backends are process-wide singletons; build a fresh ``MockBackend()`` for an isolated
    mock kernel (what the tests do).
    """
    if backend is not None and not isinstance(backend, str):
        return backend
    name = backend or os.environ.get("PYVFIO_BACKEND", "real")
    if name not in _singletons:
        if name == "real":
            from .real import RealBackend

            _singletons[name] = RealBackend()
        elif name == "mock":
            from .mock import MockBackend

            _singletons[name] = MockBackend()
        else:
            raise ArgumentError(f"unknown backend {name!r}: use 'real' or 'mock'")
    return _singletons[name]


__all__ = ["Backend", "get_backend", "request_name", "O_RDWR_CLOEXEC"]
