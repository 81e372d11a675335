"""The real backend: libc through cffi (ABI mode), errors through pyvfio.errors."""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any

from ..errors import error_from_errno, from_oserror
from ..uapi import ffi, lib
from .base import O_RDWR_CLOEXEC, request_name
from .host import Host

MAP_FAILED = (1 << 64) - 1
_fcntl_ioctl = fcntl.ioctl


class RealBackend:
    """Talks to the running kernel. ``ioctl`` returns the ioctl's own return value."""

    name = "real"

    def __init__(self) -> None:
        self._paths: dict[int, str] = {}
        self._host: Host | None = None

    @property
    def host(self) -> Host:
        """The machine: /sys, /proc and /dev of this host."""
        if self._host is None:
            self._host = Host.real()
        return self._host

    @property
    def sysfs_root(self) -> str:
        return self.host.sys

    # -- files -----------------------------------------------------------------------------
    def open(self, path: str, flags: int = O_RDWR_CLOEXEC) -> int:
        """open(2). ENOENT: no such node; EBUSY: a VFIO group already open elsewhere."""
        try:
            fd = os.open(path, flags)
        except OSError as e:
            raise from_oserror(e, op="open", path=path) from None
        self._paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        """close(2). EBADF if ``fd`` is not open."""
        path = self._paths.pop(fd, None)
        try:
            os.close(fd)
        except OSError as e:
            raise from_oserror(e, op="close", path=path) from None

    def label(self, fd: int, path: str) -> None:
        """Name an fd that an ioctl created (for error messages)."""
        self._paths[fd] = path

    def path_of(self, fd: int) -> str | None:
        return self._paths.get(fd)

    # -- ioctl ------------------------------------------------------------------------------
    def ioctl(self, fd: int, request: int, arg: Any = 0, *, op: str | None = None,
              hint: str | None = None) -> int:
        """ioctl(2); returns the ioctl's own value. Errors carry ``op`` (default: the request's
        name) and ``hint``.

        ``arg`` is a cdata pointer, an integer, or -- the fast entry of the hot paths -- a
        ``bytearray`` holding the packed argument struct: the kernel reads and writes it in
        place (``fcntl.ioctl`` with the mutate flag, which returns the ioctl's value).
        """
        if arg.__class__ is bytearray:
            try:
                return _fcntl_ioctl(fd, request, arg, True)
            except OSError as e:
                raise error_from_errno(e.errno or errno.EIO, op=op or request_name(request),
                                       path=self._paths.get(fd), hint=hint) from None
        if isinstance(arg, int):
            arg = ffi.cast("unsigned long", arg)  # a variadic argument must be typed cdata
        ret = lib.ioctl(fd, request, arg)  # request is a fixed `unsigned long` parameter
        if ret < 0:
            raise error_from_errno(ffi.errno, op=op or request_name(request),
                                   path=self._paths.get(fd), hint=hint)
        return int(ret)

    # -- memory -----------------------------------------------------------------------------
    def mmap(self, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
        """mmap(2); returns the address. fd=-1 with MAP_ANONYMOUS for plain memory."""
        p = lib.mmap(ffi.NULL, length, prot, flags, fd, offset)
        addr = int(ffi.cast("uintptr_t", p))
        if addr == MAP_FAILED:
            raise error_from_errno(ffi.errno, op="mmap", path=self._paths.get(fd))
        return addr

    def munmap(self, addr: int, length: int) -> None:
        if lib.munmap(ffi.cast("void *", addr), length) != 0:
            raise error_from_errno(ffi.errno, op="munmap")

    # -- eventfd and plain I/O --------------------------------------------------------------
    def eventfd(self, initval: int = 0, flags: int = os.EFD_CLOEXEC) -> int:
        try:
            fd = os.eventfd(initval, flags)
        except OSError as e:
            raise from_oserror(e, op="eventfd") from None
        self._paths[fd] = "anon_inode:[eventfd]"
        return fd

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        try:
            return os.pread(fd, size, offset)
        except OSError as e:
            raise from_oserror(e, op="pread", path=self._paths.get(fd)) from None

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        try:
            return os.pwrite(fd, data, offset)
        except OSError as e:
            raise from_oserror(e, op="pwrite", path=self._paths.get(fd)) from None

    def read(self, fd: int, size: int) -> bytes:
        try:
            return os.read(fd, size)
        except OSError as e:
            raise from_oserror(e, op="read", path=self._paths.get(fd)) from None

    def write(self, fd: int, data: bytes) -> int:
        try:
            return os.write(fd, data)
        except OSError as e:
            raise from_oserror(e, op="write", path=self._paths.get(fd)) from None

    def __repr__(self) -> str:
        return "<RealBackend>"
