"""A minimal vCPU: load a few bytes of guest code, run until HLT, and its dirty ring.

Enough to make a guest write chosen pages (for dirty-log tests) and do port I/O (for ioeventfd
tests); not a VMM. Register setup helpers are x86-only (KVM_GET/SET_[S]REGS).
"""

from __future__ import annotations

import errno
import mmap
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import ioctls as I
from ..errors import ArgumentError, PyvfioError, StateError
from ..uapi import ffi
from ..core.fd import FdObject

if TYPE_CHECKING:
    from .vm import Vm

PAGE_SIZE = mmap.PAGESIZE

EXIT_NAMES = {v: k[len("KVM_EXIT_"):] for k, v in vars(I).items()
              if k.startswith("KVM_EXIT_") and k not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")}


@dataclass(frozen=True)
class IoExit:
    """A KVM_EXIT_IO: ``port``, ``size`` (bytes), ``out`` (guest wrote), ``data`` (count * size bytes)."""

    port: int
    size: int
    out: bool
    data: bytes


class VcpuExitError(RuntimeError):
    """The vCPU stopped for a reason the caller did not expect (shutdown, failed entry...)."""

    def __init__(self, reason: int, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"vCPU exit {EXIT_NAMES.get(reason, reason)}{': ' + detail if detail else ''}")


class Vcpu(FdObject):
    """A vCPU fd with its mmap'd ``struct kvm_run`` (:attr:`run_struct`). Made by Vm.create_vcpu.

    Threads: one thread drives one vCPU: ``run``/``run_until_halt``/``io_exit`` and the register
    calls share the kvm_run page and the kernel's vcpu mutex, so call them from that thread only;
    different vCPUs run concurrently, and alongside the VM's calls. ``dirty_ring`` is created on
    first use (first use from one thread). ``close()`` once the vCPU stopped running.
    """

    def __init__(self, vm: "Vm", fd: int, vcpu_id: int) -> None:
        self._adopt_fd(vm.backend, fd, f"anon_inode:kvm-vcpu:{vcpu_id}")
        self.vm = vm
        self.id = vcpu_id
        try:  # the fd is ours from here: close it if the kvm_run mapping cannot be made
            self._run_size = vm.kvm.vcpu_mmap_size
            self._run_addr = self.backend.mmap(self._run_size, mmap.PROT_READ | mmap.PROT_WRITE,
                                               mmap.MAP_SHARED, fd, 0)
        except BaseException:
            self._close_fd()
            raise
        self.run_struct = ffi.cast("struct kvm_run *", self._run_addr)
        self._ring: DirtyRing | None = None

    # -- registers (x86) -----------------------------------------------------------------------
    def get_regs(self):  # type: ignore[no-untyped-def]
        """KVM_GET_REGS: a ``struct kvm_regs`` cdata (x86)."""
        r = ffi.new("struct kvm_regs *")
        self._ioctl(I.KVM_GET_REGS, r)
        return r

    def set_regs(self, regs) -> None:  # type: ignore[no-untyped-def]
        """KVM_SET_REGS (x86)."""
        self._ioctl(I.KVM_SET_REGS, regs)

    def get_sregs(self):  # type: ignore[no-untyped-def]
        """KVM_GET_SREGS: a ``struct kvm_sregs`` cdata (x86)."""
        s = ffi.new("struct kvm_sregs *")
        self._ioctl(I.KVM_GET_SREGS, s)
        return s

    def set_sregs(self, sregs) -> None:  # type: ignore[no-untyped-def]
        """KVM_SET_SREGS (x86)."""
        self._ioctl(I.KVM_SET_SREGS, sregs)

    def setup_real_mode(self, entry: int) -> None:
        """Real mode, every segment base 0, start at ``entry`` (< 64 KiB). x86."""
        if not 0 <= entry < 0x10000:
            raise ArgumentError(f"real-mode entry {entry:#x} must be below 64 KiB")
        s = self.get_sregs()
        for seg in (s.cs, s.ds, s.es, s.fs, s.gs, s.ss):
            seg.base = 0
            seg.selector = 0
        self.set_sregs(s)
        r = ffi.new("struct kvm_regs *")
        r.rip = entry
        r.rflags = 2
        r.rsp = 0xF000
        self.set_regs(r)

    # -- running -------------------------------------------------------------------------------
    def run(self) -> int:
        """KVM_RUN once; returns ``kvm_run.exit_reason`` (KVM_EXIT_*). EINTR is returned as
        KVM_EXIT_INTR."""
        try:
            self._ioctl(I.KVM_RUN, 0)
        except PyvfioError as e:
            if e.errno == errno.EINTR:
                return I.KVM_EXIT_INTR
            raise
        return int(self.run_struct.exit_reason)

    def io_exit(self) -> IoExit:
        """Decode the current KVM_EXIT_IO (port, size, direction, data)."""
        io = self.run_struct.io
        n = int(io.size) * int(io.count)
        data = bytes(ffi.buffer(ffi.cast("char *", self._run_addr + int(io.data_offset)), n))
        return IoExit(int(io.port), int(io.size), int(io.direction) == I.KVM_EXIT_IO_OUT, data)

    def run_until_halt(self, max_exits: int = 1000) -> list[IoExit]:
        """Run until KVM_EXIT_HLT; returns the port I/O exits seen on the way (IN reads zeros).

        VcpuExitError on any other exit (MMIO, shutdown, internal error...) or after
        ``max_exits`` exits.
        """
        ios: list[IoExit] = []
        for _ in range(max_exits):
            reason = self.run()
            if reason == I.KVM_EXIT_HLT:
                return ios
            if reason == I.KVM_EXIT_IO:
                ios.append(self.io_exit())
                continue
            if reason == I.KVM_EXIT_INTR:
                continue
            detail = ""
            if reason == I.KVM_EXIT_MMIO:
                m = self.run_struct.mmio
                detail = f"{'write' if m.is_write else 'read'} of {int(m.len)} bytes at gpa {int(m.phys_addr):#x}"
            elif reason == I.KVM_EXIT_INTERNAL_ERROR:
                detail = f"suberror {int(self.run_struct.internal.suberror)}"
            elif reason == I.KVM_EXIT_FAIL_ENTRY:
                detail = f"hardware reason {int(self.run_struct.fail_entry.hardware_entry_failure_reason):#x}"
            raise VcpuExitError(reason, detail)
        raise VcpuExitError(-1, f"no HLT after {max_exits} exits")

    # -- dirty ring ----------------------------------------------------------------------------
    @property
    def dirty_ring(self) -> "DirtyRing":
        """This vCPU's dirty ring (needs Vm.enable_dirty_ring before the vCPU was created)."""
        if self._ring is None:
            if not self.vm.dirty_ring_bytes:
                raise StateError("the VM has no dirty ring: Vm.enable_dirty_ring() before creating vCPUs")
            self._ring = DirtyRing(self, self.vm.dirty_ring_bytes)
        return self._ring

    def _close_children(self) -> None:
        ring, self._ring = self._ring, None
        try:
            if ring is not None:
                ring.close()
        finally:
            try:
                self.backend.munmap(self._run_addr, self._run_size)
            finally:
                self.vm.vcpus.pop(self.id, None)

    def __repr__(self) -> str:
        return f"<Vcpu {self.id} fd={self._fd}>"


class DirtyRing:
    """A vCPU's dirty ring: ``struct kvm_dirty_gfn`` entries mmap'd from the vCPU fd at page
    KVM_DIRTY_LOG_PAGE_OFFSET. :meth:`harvest` collects the published entries and marks them
    for reset; then :meth:`Vm.reset_dirty_rings` re-protects those pages.

    Threads: :meth:`harvest` keeps an unlocked ``fetch_index``: one harvesting thread per ring.
    It may run while the vCPU runs (the kernel publishes entries with release semantics, the
    ring's own protocol); ``close()`` only with the vCPU.
    """

    ENTRY = np.dtype([("flags", "<u4"), ("slot", "<u4"), ("offset", "<u8")])

    def __init__(self, vcpu: Vcpu, size_bytes: int) -> None:
        self.vcpu = vcpu
        self.size = size_bytes
        self.nentries = size_bytes // 16
        self._addr = vcpu.backend.mmap(size_bytes, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED,
                                       vcpu.fileno(), I.KVM_DIRTY_LOG_PAGE_OFFSET * PAGE_SIZE)
        self.entries = np.frombuffer(ffi.buffer(ffi.cast("char *", self._addr), size_bytes), dtype=self.ENTRY)
        self.fetch_index = 0  # userspace's next entry to read (free-running)

    def harvest(self, limit: int | None = None) -> np.ndarray:
        """Collect published (DIRTY) entries in order; returns a structured array with fields
        ``slot`` (as_id << 16 | id) and ``offset`` (page within the slot), and flags each
        harvested entry RESET for the next KVM_RESET_DIRTY_RINGS."""
        flags = self.entries["flags"]
        idx = (self.fetch_index + np.arange(self.nentries)) % self.nentries
        clean = np.flatnonzero((flags[idx] & I.KVM_DIRTY_GFN_F_DIRTY) == 0)
        n = int(clean[0]) if clean.size else self.nentries
        if limit is not None:
            n = min(n, limit)
        sel = idx[:n]
        out = np.empty(n, dtype=[("slot", "<u4"), ("offset", "<u8")])
        out["slot"] = self.entries["slot"][sel]
        out["offset"] = self.entries["offset"][sel]
        flags[sel] = I.KVM_DIRTY_GFN_F_RESET
        self.fetch_index += n
        return out

    def close(self) -> None:
        if self._addr:
            self.entries = None  # type: ignore[assignment]
            self.vcpu.backend.munmap(self._addr, self.size)
            self._addr = 0
