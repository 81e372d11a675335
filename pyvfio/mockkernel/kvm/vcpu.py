"""A vCPU file: KVM_RUN over the few real-mode instructions of :mod:`pyvfio.kvm.guestcode`, the
kvm_run page and the per-vCPU dirty ring.
"""

from __future__ import annotations

import errno
import mmap
from typing import TYPE_CHECKING, Any

import numpy as np

from ... import ioctls as I
from ...uapi import ffi
from ..core import KernelError, MockFile, MockKernel, handles
from ..memory import read_user, user_mapped, write_user
from .core import DIRTY_RING_RSVD_ENTRIES, PAGE, _SharedPages, _ptr

if TYPE_CHECKING:
    from .vm import Slot, VmFile


# ===============================================================================================
class VcpuFile(MockFile):
    """A vCPU: kvm_run page, x86 registers, a real-mode interpreter for guestcode, a dirty ring."""

    RUN_SIZE = 3 * PAGE
    PIO_OFFSET = PAGE

    def __init__(self, kernel: MockKernel, path: str, vm: VmFile, vid: int) -> None:
        super().__init__(kernel, path)
        vm.get()
        self.vm = vm
        self.id = vid
        self.run_pages = _SharedPages(self.RUN_SIZE, "kvm-run")
        self.run = ffi.cast("struct kvm_run *", self.run_pages.addr)
        self.regs = ffi.new("struct kvm_regs *")
        self.sregs = ffi.new("struct kvm_sregs *")
        self._reset_state()
        self.ring: _SharedPages | None = None
        self.ring_entries: np.ndarray | None = None
        self.ring_dirty_index = 0
        self.ring_reset_index = 0
        if vm.dirty_ring_size:
            self.ring = _SharedPages(vm.dirty_ring_size, "kvm-dirty-ring")
            self.ring_entries = np.frombuffer(self.ring.map, dtype=[("flags", "<u4"), ("slot", "<u4"),
                                                                    ("offset", "<u8")])

    def _reset_state(self) -> None:
        s = self.sregs
        for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
            seg.base, seg.limit, seg.selector, seg.type, seg.present, seg.s = 0, 0xFFFF, 0, 3, 1, 1
        s.cs.base, s.cs.limit, s.cs.selector, s.cs.type, s.cs.present, s.cs.s = 0xFFFF0000, 0xFFFF, 0xF000, 11, 1, 1
        s.tr.type, s.tr.present, s.tr.limit = 11, 1, 0xFFFF
        s.ldt.type, s.ldt.present, s.ldt.limit = 2, 1, 0xFFFF
        s.gdt.limit = s.idt.limit = 0xFFFF
        s.cr0 = 0x60000010
        s.apic_base = 0xFEE00900
        self.regs.rip = 0xFFF0
        self.regs.rflags = 2

    # -- registers ------------------------------------------------------------------------------
    @handles("KVM_GET_REGS")
    def get_regs(self, arg: Any) -> int:
        ffi.memmove(_ptr(arg, "struct kvm_regs"), self.regs, ffi.sizeof("struct kvm_regs"))
        return 0

    @handles("KVM_SET_REGS")
    def set_regs(self, arg: Any) -> int:
        ffi.memmove(self.regs, _ptr(arg, "struct kvm_regs"), ffi.sizeof("struct kvm_regs"))
        return 0

    @handles("KVM_GET_SREGS")
    def get_sregs(self, arg: Any) -> int:
        ffi.memmove(_ptr(arg, "struct kvm_sregs"), self.sregs, ffi.sizeof("struct kvm_sregs"))
        return 0

    @handles("KVM_SET_SREGS")
    def set_sregs(self, arg: Any) -> int:
        ffi.memmove(self.sregs, _ptr(arg, "struct kvm_sregs"), ffi.sizeof("struct kvm_sregs"))
        return 0

    # -- mmap -----------------------------------------------------------------------------------
    def mmap(self, length: int, prot: int, flags: int, offset: int) -> int:
        ring_off = I.KVM_DIRTY_LOG_PAGE_OFFSET * PAGE
        if offset >= ring_off and self.ring is not None:
            if not flags & mmap.MAP_SHARED or prot & mmap.PROT_EXEC:
                raise KernelError(errno.EINVAL, "kvm: the dirty ring must be mapped shared, not exec")
            return self.ring.user_mmap(length, offset - ring_off, flags, prot)
        return self.run_pages.user_mmap(length, offset, flags, prot)

    # -- guest memory ---------------------------------------------------------------------------
    def _mapped(self, s: Slot) -> None:
        key = (s.hva, s.npages)
        if key not in self._checked:
            if not user_mapped(s.hva, s.npages * PAGE, "r"):
                raise KernelError(errno.EFAULT, "kvm: memslot hva not mapped")
            self._checked.add(key)

    def _fetch(self, gpa: int, n: int) -> bytes | None:
        s = self.vm.slot_at(gpa)
        if s is None or s.gmem is not None:
            return None
        self._mapped(s)
        return read_user(s.hva + gpa - s.base_gfn * PAGE, n)

    def _store(self, gpa: int, value: int) -> int | None:
        """Guest write of one byte; returns an exit reason or None when done in the kernel."""
        s = self.vm.slot_at(gpa)
        if s is None or s.flags & I.KVM_MEM_READONLY or s.gmem is not None:
            if self.vm._ioeventfd_hit("mmio", gpa, 1, value):
                return None
            m = self.run.mmio
            m.phys_addr, m.len, m.is_write = gpa, 1, 1
            m.data[0] = value
            return I.KVM_EXIT_MMIO
        self._mapped(s)
        page = gpa // PAGE - s.base_gfn
        write_user(s.hva + gpa - s.base_gfn * PAGE, bytes([value]))
        if s.flags & I.KVM_MEM_LOG_DIRTY_PAGES:
            if self.vm.dirty_ring_size:
                if page not in s.ring_dirty:
                    s.ring_dirty.add(page)
                    self._ring_push(s.as_id << 16 | s.id, page)
            elif s.dirty is not None:
                s.mark(page)
        return None

    def _ring_full(self) -> bool:
        assert self.ring_entries is not None
        return self.ring_dirty_index - self.ring_reset_index >= self.ring_entries.size - DIRTY_RING_RSVD_ENTRIES

    def _ring_push(self, slot: int, offset: int) -> None:
        assert self.ring_entries is not None
        i = self.ring_dirty_index % self.ring_entries.size
        self.ring_entries["slot"][i] = slot
        self.ring_entries["offset"][i] = offset
        self.ring_entries["flags"][i] = I.KVM_DIRTY_GFN_F_DIRTY
        self.ring_dirty_index += 1

    def ring_reset(self) -> int:
        if self.ring_entries is None:
            return 0
        n = 0
        while self.ring_reset_index < self.ring_dirty_index:
            i = self.ring_reset_index % self.ring_entries.size
            if not int(self.ring_entries["flags"][i]) & I.KVM_DIRTY_GFN_F_RESET:
                break
            slot, off = int(self.ring_entries["slot"][i]), int(self.ring_entries["offset"][i])
            s = self.vm.slots.get(slot)
            if s is not None:
                s.ring_dirty.discard(off)
            self.ring_entries["flags"][i] = 0
            self.ring_reset_index += 1
            n += 1
        return n

    # -- KVM_RUN --------------------------------------------------------------------------------
    @handles("KVM_RUN")
    def run_vcpu(self, arg: Any) -> int:
        if self.run.immediate_exit:
            raise KernelError(errno.EINTR)
        self._checked: set[tuple[int, int]] = set()
        if self.ring_entries is not None and self._ring_full():
            self.run.exit_reason = I.KVM_EXIT_DIRTY_RING_FULL
            return 0
        for _ in range(1_000_000):
            reason = self._step()
            if reason is not None:
                self.run.exit_reason = reason
                return 0
        self.run.exit_reason = I.KVM_EXIT_INTR
        return 0

    def _internal_error(self) -> int:
        self.run.internal.suberror = 1  # KVM_INTERNAL_ERROR_EMULATION
        self.run.internal.ndata = 0
        return I.KVM_EXIT_INTERNAL_ERROR

    def _step(self) -> int | None:
        s, r = self.sregs, self.regs
        if s.cr0 & 1:  # the mock only runs real-mode guestcode
            return self._internal_error()
        ip = int(r.rip) & 0xFFFF
        pc = int(s.cs.base) + ip
        code = self._fetch(pc, 1)
        if code is None:
            return self._internal_error()
        op = code[0]

        def imm(n: int, at: int = 1) -> int:
            b = self._fetch(pc + at, n)
            if b is None:
                raise _Fault()
            return int.from_bytes(b, "little")

        try:
            if op == 0xF4:  # hlt
                r.rip = ip + 1
                return I.KVM_EXIT_HLT
            if op == 0x90:
                r.rip = ip + 1
                return None
            if op == 0xB8:  # mov ax, imm16
                r.rax = (int(r.rax) & ~0xFFFF) | imm(2)
                r.rip = ip + 3
                return None
            if op == 0xB0:  # mov al, imm8
                r.rax = (int(r.rax) & ~0xFF) | imm(1)
                r.rip = ip + 2
                return None
            if op == 0x8E and imm(1) == 0xD8:  # mov ds, ax
                sel = int(r.rax) & 0xFFFF
                s.ds.selector, s.ds.base = sel, sel << 4
                r.rip = ip + 2
                return None
            if op == 0xC6 and imm(1) == 0x06:  # mov byte [disp16], imm8
                gpa = int(s.ds.base) + imm(2, 2)
                value = imm(1, 4)
                r.rip = ip + 5
                return self._store(gpa, value)
            if op == 0xE6:  # out imm8, al
                port = imm(1)
                al = int(r.rax) & 0xFF
                r.rip = ip + 2
                if self.vm._ioeventfd_hit("pio", port, 1, al):
                    return None
                io = self.run.io
                io.direction, io.size, io.port, io.count, io.data_offset = I.KVM_EXIT_IO_OUT, 1, port, 1, self.PIO_OFFSET
                write_user(self.run_pages.addr + self.PIO_OFFSET, bytes([al]))
                return I.KVM_EXIT_IO
        except _Fault:
            return self._internal_error()
        return self._internal_error()

    def release(self) -> None:
        self.run_pages.close()
        if self.ring is not None:
            self.ring_entries = None
            self.ring.close()
        self.vm.vcpus.pop(self.id, None)
        self.vm.put()


class _Fault(Exception):
    pass


