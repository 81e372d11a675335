"""The mock backend: the seam's calls answered by an in-process :class:`MockKernel`.

The mock receives the very cdata the upper layers packed (or a cdata view over the very bytes
they packed into a ``bytearray``) and decodes it with the same ``ffi``.
Anonymous memory, eventfds and plain fds are real (the mock kernel writes to real eventfds to
signal interrupts, so select/poll work); files opened through the mock kernel are its own.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import error_from_errno
from ..mockkernel.core import KernelError, MockKernel
from ..uapi import ffi
from .base import O_RDWR_CLOEXEC, request_name
from .host import MockHost
from .real import RealBackend

log = logging.getLogger("pyvfio.mock")


class MockBackend(RealBackend):
    """Backend whose device nodes and ioctls are served by ``kernel`` (a fresh one by default)."""

    name = "mock"

    def __init__(self, kernel: MockKernel | None = None) -> None:
        super().__init__()
        self.kernel = kernel if kernel is not None else MockKernel()

    @property
    def host(self) -> MockHost:
        """The mock kernel's machine (its /sys, /proc, /dev tree, dmesg, driver core)."""
        if self._host is None:
            self._host = MockHost(self.kernel)
        else:
            self._host.refresh()  # type: ignore[attr-defined]
        return self._host  # type: ignore[return-value]

    @property
    def sysfs_root(self) -> str:
        return self.kernel.sysfs_root

    def _raise(self, e: KernelError, op: str, fd: int | None = None, path: str | None = None,
               hint: str | None = None) -> None:
        if e.msg:
            self.kernel.log(e.msg)
            log.debug("mock %s: %s", op, e.msg)
        where = path if path is not None else (self.path_of(fd) if fd is not None else None)
        raise error_from_errno(e.errno, op=op, path=where, hint=hint) from None

    def _mine(self, fd: int) -> bool:
        return fd in self.kernel.files

    def open(self, path: str, flags: int = O_RDWR_CLOEXEC) -> int:
        try:
            fd = self.kernel.open(path, flags)
        except KernelError as e:
            self._raise(e, "open", path=path)
        self.label(fd, path)
        return fd

    def close(self, fd: int) -> None:
        if not self._mine(fd):
            return super().close(fd)
        path = self._paths.pop(fd, None)
        try:
            self.kernel.close(fd)
        except KernelError as e:
            self._raise(e, "close", path=path)

    def ioctl(self, fd: int, request: int, arg: Any = 0, *, op: str | None = None,
              hint: str | None = None) -> int:
        """Served by the mock kernel's file for ``fd``. A packed ``bytearray`` argument (the
        hot paths' fast entry) becomes a cdata view of the request's argument struct over the
        very same bytes, so the kernel side decodes what the real kernel would read and its
        answers land in the caller's buffer."""
        if arg.__class__ is bytearray:
            arg = ffi.from_buffer(getattr(request, "cdecl", "char *"), arg)
        try:
            with self.kernel.lock:
                return self.kernel.fget(fd).ioctl(request, arg)
        except KernelError as e:
            self._raise(e, op or request_name(request), fd, hint=hint)
            raise AssertionError("unreachable")

    def mmap(self, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
        if fd < 0 or not self._mine(fd):
            return super().mmap(length, prot, flags, fd, offset)
        try:
            return self.kernel.fget(fd).mmap(length, prot, flags, offset)
        except KernelError as e:
            self._raise(e, "mmap", fd)
            raise AssertionError("unreachable")

    def _fileop(self, fd: int, op: str, *args: Any) -> Any:
        try:
            return getattr(self.kernel.fget(fd), op)(*args)
        except KernelError as e:
            self._raise(e, op, fd)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        if not self._mine(fd):
            return super().pread(fd, size, offset)
        return self._fileop(fd, "pread", size, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if not self._mine(fd):
            return super().pwrite(fd, data, offset)
        return self._fileop(fd, "pwrite", bytes(data), offset)

    def read(self, fd: int, size: int) -> bytes:
        if not self._mine(fd):
            return super().read(fd, size)
        return self._fileop(fd, "read", size)

    def write(self, fd: int, data: bytes) -> int:
        if not self._mine(fd):
            return super().write(fd, data)
        return self._fileop(fd, "write", bytes(data))

    def __repr__(self) -> str:
        return f"<MockBackend fds={sorted(self.kernel.files)}>"
