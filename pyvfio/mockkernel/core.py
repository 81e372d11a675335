"""The mock kernel's core: open files, device-node routes, request dispatch, the host it runs on.

Subsystems (vfio, type1, spapr, iommufd, kvm, simulated PCI devices) build on three pieces:

* :class:`MockFile`, the kernel's ``struct file``: subclasses declare their ioctls with
  :func:`handles` (by the kernel's macro name; dispatch is by request *number*, as in the kernel),
  and may implement ``mmap``, ``pread``, ``pwrite`` and ``release``. A request the file does not
  handle gets ENOTTY, like the kernel.
* :class:`MockKernel`, which owns the fd table and the routes from device paths
  (``/dev/vfio/vfio``, ``/dev/kvm``...) to the functions that open them, its host (a fake
  /sys + /proc + /dev tree, :mod:`pyvfio.mockkernel.host`), and a ``dmesg`` list where
  subsystems log what the real kernel would print.
* :class:`KernelError`, raised by handlers with the errno the real kernel returns.

File descriptors handed out by the mock are real (each reserves an fd on /dev/null), so numbers
never collide with real fds and leak checks through /proc/self/fd work on both backends.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import threading
import weakref
from typing import Any, Callable, ClassVar

from .. import ioctls
from .host import FakeHost


class KernelError(Exception):
    """Raised by mock handlers: ``errno`` is what the real kernel returns; ``msg`` goes to dmesg."""

    def __init__(self, err: int, msg: str = "") -> None:
        super().__init__(err, msg)
        self.errno = err
        self.msg = msg


def handles(*names: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Mark a MockFile method as the handler of the named requests (kernel macro names)."""

    def mark(fn: Callable[..., int]) -> Callable[..., int]:
        fn.__mock_requests__ = names  # type: ignore[attr-defined]
        return fn

    return mark


class MockFile:
    """A mock ``struct file``. Handlers receive ``(self, arg)`` where ``arg`` is the cdata or int
    the caller passed to ioctl, and return the ioctl's value (0 or a new fd)."""

    #: request number -> method name, built per subclass from @handles.
    _requests: ClassVar[dict[int, str]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        table: dict[int, str] = {}
        for base in reversed(cls.__mro__[1:]):
            table.update(getattr(base, "_requests", {}))
        numbers = ioctls.request_names()
        owner: dict[int, str] = {}
        for attr, fn in vars(cls).items():
            for name in getattr(fn, "__mock_requests__", ()):
                if name not in numbers:
                    if name in ioctls.X86_ONLY:
                        continue  # an x86-only request (KVM_GET_REGS...) on another machine
                    raise KeyError(f"{cls.__name__}: no request named {name}")
                nr = numbers[name]
                if nr in owner and owner[nr] != attr:
                    raise TypeError(
                        f"{cls.__name__}: {name} shares request number {nr:#x} with a request "
                        f"handled by {owner[nr]}; handle both in one method and dispatch on state"
                    )
                owner[nr] = attr
                table[nr] = attr
        cls._requests = table

    def __init__(self, kernel: "MockKernel", path: str) -> None:
        self.kernel = kernel
        self.path = path
        self._refs = 1
        self.released = False

    # -- reference counting (fget/fput) ------------------------------------------------------
    def get(self) -> "MockFile":
        """Take a reference, as the kernel does when one object holds another's file."""
        self._refs += 1
        return self

    def put(self) -> None:
        """Drop a reference; the last one releases the file."""
        self._refs -= 1
        if self._refs == 0 and not self.released:
            self.released = True
            self.release()

    # -- operations -------------------------------------------------------------------------
    def ioctl(self, request: int, arg: Any) -> int:
        attr = self._requests.get(request)
        if attr is None:
            raise KernelError(errno.ENOTTY, f"{self.path}: unknown ioctl {request:#x}")
        return int(getattr(self, attr)(arg))

    def release(self) -> None:
        """Called when the last reference goes away (the kernel's ->release)."""

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> int:
        raise KernelError(errno.ENODEV, f"{self.path}: mmap not supported")

    def pread(self, size: int, offset: int) -> bytes:
        raise KernelError(errno.EINVAL, f"{self.path}: read not supported")

    def pwrite(self, data: bytes, offset: int) -> int:
        raise KernelError(errno.EINVAL, f"{self.path}: write not supported")

    def read(self, size: int) -> bytes:
        return self.pread(size, 0)

    def write(self, data: bytes) -> int:
        return self.pwrite(data, 0)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"


Opener = Callable[["MockKernel", "re.Match[str]", int], MockFile]

#: The subsystems a ``MockKernel()`` installs when none are given (filled by the package).
DEFAULT_SUBSYSTEMS: list[Any] = []


class MockKernel:
    """In-process kernel state shared by the mock subsystems.

    ``subsystems`` is the list of modules whose ``install(kernel)`` registers routes and state;
    by default :data:`DEFAULT_SUBSYSTEMS` (vfio with its default machine, type1, kvm, iommufd).
    """

    def __init__(self, subsystems: "list[Any] | None" = None) -> None:
        self.lock = threading.RLock()
        self.files: dict[int, MockFile] = {}
        self.routes: list[tuple[re.Pattern[str], Opener]] = []
        self.dmesg: list[str] = []
        self._host: FakeHost | None = None
        #: Per-subsystem state, keyed by the subsystem's name.
        self.state: dict[str, Any] = {}
        for sub in (DEFAULT_SUBSYSTEMS if subsystems is None else subsystems):
            sub.install(self)

    # -- routes and fds ---------------------------------------------------------------------
    def route(self, pattern: str, opener: Opener) -> None:
        """Route paths fully matching ``pattern`` (a regex) to ``opener(kernel, match, flags)``."""
        self.routes.append((re.compile(pattern), opener))

    def open(self, path: str, flags: int) -> int:
        with self.lock:
            for rx, opener in self.routes:
                m = rx.fullmatch(path)
                if m:
                    return self.install(opener(self, m, flags))
        raise KernelError(errno.ENOENT, f"{path}: no such device node in the mock kernel")

    def install(self, file: MockFile) -> int:
        """Give ``file`` a new fd (what anon_inode_getfd does) and return it."""
        fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self.files[fd] = file
        return fd

    def fget(self, fd: int, kind: "type[MockFile] | tuple[type[MockFile], ...] | None" = None) -> MockFile:
        """The file behind ``fd``; EBADF if none, EINVAL if it is not of ``kind``."""
        f = self.files.get(fd)
        if f is None:
            raise KernelError(errno.EBADF, f"fd {fd} is not a mock kernel file")
        if kind is not None and not isinstance(f, kind):
            raise KernelError(errno.EINVAL, f"fd {fd} is {type(f).__name__}, not the expected kind")
        return f

    def close(self, fd: int) -> None:
        with self.lock:
            f = self.files.pop(fd, None)
        if f is None:
            raise KernelError(errno.EBADF, f"fd {fd} is not open")
        os.close(fd)
        f.put()

    def log(self, msg: str) -> None:
        """Append a line to the mock's dmesg."""
        self.dmesg.append(msg)

    # -- the host ------------------------------------------------------------------------------
    @property
    def host(self) -> FakeHost:
        """The machine's /sys + /proc + /dev (a private directory, removed with the kernel)."""
        if self._host is None:
            root = tempfile.mkdtemp(prefix="pyvfio-mock-host-")
            weakref.finalize(self, shutil.rmtree, root, True)
            self._host = FakeHost(root)
        return self._host

    @property
    def sysfs_root(self) -> str:
        """The host's sysfs tree, populated by the subsystems."""
        return self.host.paths.sys
