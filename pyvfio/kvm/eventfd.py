"""ioeventfd and irqfd bindings of a VM (KVM_IOEVENTFD, KVM_IRQFD).

Each binding owns the :class:`~pyvfio.eventfd.EventFd` it created (or borrows an fd passed in)
and is undone by ``close()``: deassign first, then close the eventfd it owns.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from .. import ioctls as I
from ..core.fd import Closeable
from ..errors import ArgumentError, register_hint
from ..eventfd import EventFd
from ..uapi import ffi
from ..uapi.args import as_int, u32, u64

if TYPE_CHECKING:
    from .vm import Vm

register_hint("KVM_IOEVENTFD", errno.EEXIST, "another ioeventfd already covers this address/length/datamatch")
register_hint("KVM_IRQFD", errno.EBUSY, "this eventfd is already an irqfd of the VM")
register_hint("KVM_IRQFD", errno.EINVAL, "x86 needs KVM_CREATE_IRQCHIP (Vm.create_irqchip) before irqfds")


class _Binding(Closeable):
    """An ioeventfd/irqfd registration; ``closed`` once deassigned (the one close protocol)."""

    vm: "Vm"
    _owned: EventFd | None
    eventfd: int
    active: bool

    def _register(self, eventfd: int | None, flags: int) -> None:
        """Borrow ``eventfd`` (or create and own a non-blocking close-on-exec EventFd) and assign
        it with ``flags``; an eventfd created here is closed again if the ioctl fails."""
        if eventfd is None:
            self._owned = EventFd(backend=self.vm.backend)
            eventfd = self._owned.fileno()
        else:
            self._owned = None
        self.eventfd = eventfd
        self.active = False
        try:
            self._ioctl(flags)
        except BaseException:
            if self._owned is not None:
                self._owned.close()
            raise
        self.active = True

    def fileno(self) -> int:
        return self.eventfd

    @property
    def closed(self) -> bool:
        return not self.active

    def _ioctl(self, flags: int) -> None:
        raise NotImplementedError

    def _undo(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Deassign, then close the eventfd if this binding created it. Idempotent."""
        if not self.active:
            return
        self.active = False
        try:
            if not self.vm.closed:
                self._undo()
        finally:
            if self._owned is not None:
                self._owned.close()
            try:
                self.vm._children.remove(self)
            except ValueError:
                pass

    def read(self) -> int:
        """Read (and reset) the eventfd counter; BlockingIOError if nothing was signalled."""
        return int.from_bytes(os.read(self.eventfd, 8), "little")


class IoEventFd(_Binding):
    """Guest writes of ``length`` bytes (0: any) to MMIO/PIO ``addr`` (matching ``datamatch``)
    signal :attr:`eventfd` instead of exiting to userspace.

    ArgumentError before the syscall for a length other than 0/1/2/4/8 or datamatch with length
    0; EEXIST: same registration exists; ENOSPC: too many devices on the bus.

    Threads: each (de)assign packs a fresh ``struct kvm_ioeventfd``; ``read`` may run from any
    thread while the guest signals. ``close()`` once, not concurrently with itself.
    """

    def __init__(self, vm: "Vm", addr: int, length: int = 4, *, eventfd: int | None = None,
                 datamatch: int | None = None, pio: bool = False) -> None:
        addr = u64(addr, "ioeventfd address")
        length = as_int(length, "ioeventfd length")
        if datamatch is not None:
            datamatch = u64(datamatch, "ioeventfd datamatch")
        if length not in (0, 1, 2, 4, 8):
            raise ArgumentError(f"ioeventfd length {length} must be 0, 1, 2, 4 or 8")
        if datamatch is not None and length == 0:
            raise ArgumentError("an ioeventfd with datamatch needs a length")
        if addr < 0 or addr + length > 1 << 64:
            raise ArgumentError(f"ioeventfd range {addr:#x}+{length} overflows")
        if pio and addr + length > 0x10000:
            raise ArgumentError(f"port {addr:#x}+{length} is beyond the 64 KiB I/O space")
        self.vm = vm
        self.addr, self.length, self.datamatch, self.pio = addr, length, datamatch, pio
        self._register(eventfd, 0)

    def _ioctl(self, flags: int) -> None:
        a = ffi.new("struct kvm_ioeventfd *")
        a.addr = self.addr
        a.len = self.length
        a.fd = self.eventfd
        a.flags = flags | (I.KVM_IOEVENTFD_FLAG_PIO if self.pio else 0)
        if self.datamatch is not None:
            a.flags |= I.KVM_IOEVENTFD_FLAG_DATAMATCH
            a.datamatch = self.datamatch
        self.vm._ioctl(I.KVM_IOEVENTFD, a)

    def _undo(self) -> None:
        self._ioctl(I.KVM_IOEVENTFD_FLAG_DEASSIGN)


class IrqFd(_Binding):
    """Signalling :attr:`eventfd` injects guest interrupt ``gsi`` (with an optional resample fd).

    EINVAL: no in-kernel irqchip (x86) or bad flags; EBUSY: eventfd already used as irqfd.

    Threads: each (de)assign packs a fresh ``struct kvm_irqfd``; ``trigger`` and ``read`` may run
    from any number of threads (the eventfd counter is atomic in the kernel). ``close()`` once,
    not concurrently with itself.
    """

    def __init__(self, vm: "Vm", gsi: int, *, eventfd: int | None = None, resample_fd: int | None = None) -> None:
        self.vm = vm
        self.gsi = u32(gsi, "irqfd gsi")
        if resample_fd is not None:
            resample_fd = u32(resample_fd, "irqfd resample fd")
        self.resample_fd = resample_fd
        self._register(eventfd, I.KVM_IRQFD_FLAG_RESAMPLE if resample_fd is not None else 0)

    def _ioctl(self, flags: int) -> None:
        a = ffi.new("struct kvm_irqfd *")
        a.fd = self.eventfd
        a.gsi = self.gsi
        a.flags = flags
        if self.resample_fd is not None:
            a.resamplefd = self.resample_fd
        self.vm._ioctl(I.KVM_IRQFD, a)

    def trigger(self) -> None:
        """Signal the eventfd (what a device's interrupt does)."""
        os.write(self.eventfd, (1).to_bytes(8, "little"))

    def _undo(self) -> None:
        self._ioctl(I.KVM_IRQFD_FLAG_DEASSIGN)
