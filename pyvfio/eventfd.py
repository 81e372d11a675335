"""Eventfds: creation through the seam, waiting with a timeout via poll(2).

An :class:`EventFd` is what VFIO_DEVICE_SET_IRQS (``VFIO_IRQ_SET_DATA_EVENTFD``) registers for an
interrupt vector, and what a KVM ioeventfd/irqfd binding (pyvfio.kvm.eventfd) creates when it is
not handed one: the kernel adds 1 to its counter each time it fires. ``wait`` blocks in poll(2)
until the counter is non-zero (or the timeout passes) and reads (which resets) it.

Example (runs on the mock)::

    >>> from pyvfio.seam.mock import MockBackend
    >>> with EventFd(backend=MockBackend()) as efd:
    ...     efd.signal(); efd.wait(0.1)
    1
"""

from __future__ import annotations

import errno
import os
import select
import sys
from typing import Iterable

from .core.fd import FdObject
from .errors import ArgumentError
from .seam import Backend, get_backend

_EFD_NONBLOCK = getattr(os, "EFD_NONBLOCK", 0o4000)
_EFD_CLOEXEC = getattr(os, "EFD_CLOEXEC", 0o2000000)


class EventFd(FdObject):
    """An eventfd(2) owned by this object (non-blocking, close-on-exec).

    ``fileno()`` is the number to hand to SET_IRQS or KVM_IRQFD/KVM_IOEVENTFD; ``close()`` is
    idempotent (the kernel keeps its own reference while the eventfd is registered).

    Threads: no shared state besides the fd: ``signal``, ``read``, ``poll`` and ``wait`` may run
    concurrently from several threads (the kernel's counter is atomic; of two concurrent readers
    one gets the count, the other 0). ``close()`` must not race with them.
    """

    def __init__(self, initval: int = 0, *, backend: "Backend | str | None" = None) -> None:
        if not 0 <= initval < 2**32:
            raise ArgumentError(f"eventfd initval {initval} must be in [0, 2**32)")
        be = get_backend(backend)
        self._adopt_fd(be, be.eventfd(initval, _EFD_CLOEXEC | _EFD_NONBLOCK), "anon_inode:[eventfd]")

    def __repr__(self) -> str:
        return "<EventFd closed>" if self.closed else f"<EventFd fd={self._fd}>"

    # -- counter -----------------------------------------------------------------------------
    def poll(self, timeout: float | None = 0.0) -> bool:
        """True if the counter is non-zero within ``timeout`` seconds (None: wait forever).

        Does not consume the count.
        """
        return bool(wait_any([self], timeout))

    def wait(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds for the counter; read and reset it.

        Returns the number of signals since the last read (0 if the timeout passed first).
        """
        if not self.poll(timeout):
            return 0
        return self.read()

    def read(self) -> int:
        """Read and reset the counter without blocking; 0 if it was zero."""
        try:
            data = self.backend.read(self.fileno(), 8)
        except BlockingIOError:
            return 0
        except OSError as e:
            if e.errno == errno.EAGAIN:  # through the seam's typed error
                return 0
            raise
        return int.from_bytes(data, sys.byteorder)

    def signal(self, value: int = 1) -> None:
        """Add ``value`` to the counter (what the kernel does when the interrupt fires)."""
        if not 0 < value < 2**64 - 1:
            raise ArgumentError(f"eventfd increment {value} must be in [1, 2**64-1)")
        self.backend.write(self.fileno(), value.to_bytes(8, sys.byteorder))


def wait_any(eventfds: Iterable[EventFd], timeout: float | None = None) -> list[EventFd]:
    """poll(2) a set of eventfds; return those whose counter is non-zero (empty on timeout)."""
    fds = {e.fileno(): e for e in eventfds}
    if timeout is not None and timeout < 0:
        raise ArgumentError(f"timeout {timeout} must be >= 0 or None")
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    ms = None if timeout is None else int(timeout * 1000 + 0.999)
    return [fds[fd] for fd, ev in p.poll(ms) if ev & select.POLLIN]


__all__ = ["EventFd", "wait_any"]
