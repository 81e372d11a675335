"""The Backend protocol every kernel interaction of pyvfio goes through (see :mod:`pyvfio.seam`)."""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

from .host import Host


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

    @property
    def host(self) -> Host:
        """The machine this backend talks to: its /sys, /proc, /dev, driver core, kernel log."""
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


__all__ = ["Backend", "request_name", "O_RDWR_CLOEXEC"]
